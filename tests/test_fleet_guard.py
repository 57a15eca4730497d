"""The proxy's per-site Fleet rules, on protobuf requests as a SuperNode sends them."""

from __future__ import annotations

import base64
import datetime

import pytest
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.proto.fleet_pb2 import (  # pylint: disable=no-name-in-module
    DeactivateNodeRequest,
    PullMessagesRequest,
    PullMessagesResponse,
    PushMessagesRequest,
    PushMessagesResponse,
)
from flwr.proto.message_pb2 import (  # pylint: disable=no-name-in-module
    ConfirmMessageReceivedRequest,
    Message,
    Metadata,
    ObjectTree,
    PullObjectRequest,
    PushObjectRequest,
)
from flwr.proto.node_pb2 import Node  # pylint: disable=no-name-in-module

from fedmed.server.fleet_guard import FleetGuard, Refused, check_signature, key_sha256, parse

A, B = 1111, 2222
RUN = 7


def _instruction(message_id: str, dst: int, kind: str = "train") -> tuple[Message, ObjectTree]:
    meta = Metadata(run_id=RUN, message_id=message_id, src_node_id=SUPERLINK_NODE_ID, dst_node_id=dst,
                    message_type=kind)
    tree = ObjectTree(object_id=message_id, children=[ObjectTree(object_id=f"{message_id}-content",
                                                                 children=[ObjectTree(object_id="shared-array")])])
    return Message(metadata=meta), tree


def _deliver(guard: FleetGuard, node: int, *messages: tuple[Message, ObjectTree]) -> None:
    response = PullMessagesResponse(messages_list=[m for m, _ in messages],
                                    message_object_trees=[t for _, t in messages])
    guard.observe("pull-messages", node, response.SerializeToString())


def _push(src: int, dst: int, reply_to: str = "", kind: str = "train", node: int | None = None,
          run: int = RUN) -> PushMessagesRequest:
    meta = Metadata(run_id=run, message_id="reply", src_node_id=src, dst_node_id=dst,
                    reply_to_message_id=reply_to, message_type=kind)
    return PushMessagesRequest(node=Node(node_id=src if node is None else node),
                               messages_list=[Message(metadata=meta)],
                               message_object_trees=[ObjectTree(object_id="reply")])


def _reason(guard: FleetGuard, call: str, node: int, request) -> str | None:
    try:
        guard.check(call, node, parse(call, request.SerializeToString()))
    except Refused as refusal:
        return refusal.reason
    return None


def test_a_reply_to_a_delivered_instruction_passes():
    guard = FleetGuard()
    _deliver(guard, A, _instruction("ins-a", A))
    assert _reason(guard, "push-messages", A, _push(A, SUPERLINK_NODE_ID, "ins-a")) is None


@pytest.mark.parametrize("request_, reason", [
    # the attack: an instruction of A's making, addressed to B
    (_push(A, B), "push-not-a-reply"),
    (_push(A, B, "ins-a"), "reply-not-to-coordinator"),
    (_push(B, SUPERLINK_NODE_ID, "ins-a", node=A), "reply-src-not-this-site"),
    (_push(B, SUPERLINK_NODE_ID, "ins-b"), None),  # B itself, to its own instruction: fine
    (_push(A, SUPERLINK_NODE_ID, "ins-b"), "reply-to-unknown-instruction"),
    (_push(A, SUPERLINK_NODE_ID, "ins-a", kind="evaluate"), "reply-does-not-match-instruction"),
    (_push(A, SUPERLINK_NODE_ID, "ins-a", run=RUN + 1), "reply-does-not-match-instruction"),
])
def test_a_site_pushes_only_replies_to_its_own_instructions(request_, reason):
    guard = FleetGuard()
    _deliver(guard, A, _instruction("ins-a", A))
    _deliver(guard, B, _instruction("ins-b", B))
    sender = request_.node.node_id
    assert _reason(guard, "push-messages", sender, request_) == reason


def test_a_site_pulls_and_confirms_only_what_it_was_given():
    guard = FleetGuard()
    _deliver(guard, A, _instruction("ins-a", A))
    _deliver(guard, B, _instruction("ins-b", B))
    pull = lambda node, obj: PullObjectRequest(node=Node(node_id=node), run_id=RUN, object_id=obj)  # noqa: E731
    assert _reason(guard, "pull-object", A, pull(A, "ins-a-content")) is None
    assert _reason(guard, "pull-object", A, pull(A, "shared-array")) is None  # same content, own copy
    assert _reason(guard, "pull-object", A, pull(A, "ins-b-content")) == "object-not-delivered-to-this-site"
    confirm = lambda node, mid: ConfirmMessageReceivedRequest(  # noqa: E731
        node=Node(node_id=node), run_id=RUN, message_object_id=mid)
    assert _reason(guard, "confirm-message-received", A, confirm(A, "ins-b")) == \
        "message-not-delivered-to-this-site"
    assert _reason(guard, "confirm-message-received", A, confirm(A, "ins-a")) is None
    guard.confirmed(A, "ins-a")
    assert _reason(guard, "pull-object", A, pull(A, "ins-a-content")) == "object-not-delivered-to-this-site"
    # A reply to a confirmed instruction is still expected.
    assert _reason(guard, "push-messages", A, _push(A, SUPERLINK_NODE_ID, "ins-a")) is None


def test_a_site_pushes_only_the_objects_asked_of_it():
    guard = FleetGuard()
    guard.observe("push-messages", A, PushMessagesResponse(objects_to_push=["obj-1"]).SerializeToString())
    push = lambda obj: PushObjectRequest(node=Node(node_id=A), run_id=RUN, object_id=obj,  # noqa: E731
                                         object_content=b"x")
    assert _reason(guard, "push-object", A, push("obj-1")) is None
    assert _reason(guard, "push-object", A, push("obj-2")) == "object-not-requested-from-this-site"


def test_node_ids_in_other_calls_must_be_the_signers():
    guard = FleetGuard()
    assert _reason(guard, "pull-messages", A, PullMessagesRequest(node=Node(node_id=B))) == "node-id-not-the-signers"
    assert _reason(guard, "pull-messages", A, PullMessagesRequest(node=Node(node_id=A))) is None
    assert _reason(guard, "deactivate-node", A, DeactivateNodeRequest(node_id=B)) == "node-id-not-the-signers"


def test_garbage_is_refused():
    with pytest.raises(Refused, match="malformed-request"):
        parse("push-messages", b"\xff\xff\xff")
    with pytest.raises(Refused, match="unknown-call"):
        parse("start-run", b"")


def _signed(private_key, when: datetime.datetime) -> dict[str, str]:
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes, sign_message

    stamp = when.isoformat()
    return {"flwr-public-key": base64.b64encode(public_key_to_bytes(private_key.public_key())).decode(),
            "flwr-signature": base64.b64encode(sign_message(private_key, stamp.encode())).decode(),
            "flwr-timestamp": stamp}


def test_signature_headers_are_checked_before_the_body():
    from cryptography.hazmat.primitives.asymmetric import ec

    from fedmed.common.certs import key_fingerprint

    key = ec.generate_private_key(ec.SECP384R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    good = _signed(key, now)
    assert key_sha256(check_signature(good)) == key_fingerprint(key.public_key())
    for headers, reason in [
        ({}, "missing-signature"),
        ({**good, "flwr-signature": ""}, "missing-signature"),
        ({**good, "flwr-public-key": "not base64!"}, "malformed-signature"),
        (_signed(key, now - datetime.timedelta(hours=1)), "stale-timestamp"),
        ({**good, "flwr-signature": _signed(ec.generate_private_key(ec.SECP384R1()), now)["flwr-signature"]},
         "bad-signature"),
    ]:
        with pytest.raises(Refused, match=reason):
            check_signature(headers)
