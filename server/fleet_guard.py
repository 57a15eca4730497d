"""What one enrolled site may ask of the Fleet API: the proxy's rules, without its I/O.

Flower 1.42's SuperLink checks that a Fleet request's node belongs to the key that
signed it, and little else (`flwr/superlink/servicer/fleet/fleet_handlers.py`): a pushed
message without `reply_to` is stored as an instruction to whatever `dst_node_id` it
names, so one site could send another a training task of its own making, and
`pull-object` / `confirm-message-received` serve or delete any object or message whose
ID the caller names. The public-port proxy (`server/proxy.py`) therefore parses every
Fleet request (protobuf, as the SuperNode's `fleet_http_connection.py` sends it) and
refuses, before the SuperLink sees it:

- a request whose signature headers are missing, malformed, stale or wrong
  (`check_signature`, run on the headers alone, before any body is read);
- a request whose `node` / `node_id` is not the node the signing key was enrolled as;
- a pushed message that is not a reply to the coordinator: `dst_node_id` must be the
  SuperLink's, `src_node_id` the requesting node, and `reply_to_message_id` an
  instruction this proxy delivered to that node (same run, same message type);
- `pull-object` of an object that is not part of a message delivered to that node,
  `confirm-message-received` of a message not delivered to it, and `push-object` of an
  object the SuperLink did not ask that node for.

What was delivered is learnt from the responses the proxy forwards (`observe`): the
proxy is the only way in, so it sees every instruction a site receives. The memory of
delivered messages is bounded per node (the oldest are forgotten first); a reply to a
forgotten instruction is refused, which the SuperNode handles as it handles a stopped
run (it drops the reply).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import functools
import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterable

from google.protobuf.message import DecodeError

from flwr.common.constant import SUPERLINK_NODE_ID, SYSTEM_TIME_TOLERANCE, TIMESTAMP_HEADER, TIMESTAMP_TOLERANCE
from flwr.proto.fab_pb2 import GetFabRequest  # pylint: disable=no-name-in-module
from flwr.proto.fleet_pb2 import (  # pylint: disable=no-name-in-module
    ActivateNodeRequest,
    DeactivateNodeRequest,
    PullMessagesRequest,
    PullMessagesResponse,
    PushMessagesRequest,
    PushMessagesResponse,
    RegisterNodeFleetRequest,
    UnregisterNodeFleetRequest,
)
from flwr.proto.heartbeat_pb2 import SendNodeHeartbeatRequest  # pylint: disable=no-name-in-module
from flwr.proto.message_pb2 import (  # pylint: disable=no-name-in-module
    ConfirmMessageReceivedRequest,
    ObjectTree,
    PullObjectRequest,
    PushObjectRequest,
)
from flwr.proto.run_pb2 import GetRunRequest  # pylint: disable=no-name-in-module
from flwr.supercore.constant import FLEET_HTTP_PUBLIC_KEY_HEADER, FLEET_HTTP_SIGNATURE_HEADER

# The Fleet calls (`flwr/superlink/routers/fleet/router.py`) and their request types.
REQUESTS = {
    "register-node": RegisterNodeFleetRequest,
    "activate-node": ActivateNodeRequest,
    "deactivate-node": DeactivateNodeRequest,
    "unregister-node": UnregisterNodeFleetRequest,
    "send-node-heartbeat": SendNodeHeartbeatRequest,
    "pull-messages": PullMessagesRequest,
    "push-messages": PushMessagesRequest,
    "get-run": GetRunRequest,
    "get-fab": GetFabRequest,
    "push-object": PushObjectRequest,
    "pull-object": PullObjectRequest,
    "confirm-message-received": ConfirmMessageReceivedRequest,
}
# Calls a key makes before it has a node: the SuperLink itself maps key -> node there.
KEY_CALLS = ("register-node", "activate-node")
SIGNATURE_HEADERS = (FLEET_HTTP_PUBLIC_KEY_HEADER, FLEET_HTTP_SIGNATURE_HEADER, TIMESTAMP_HEADER)
# Instructions remembered per node; a federation sends each site two per round.
REMEMBERED_PER_NODE = 512


class Refused(Exception):
    """A request the proxy will not forward; `reason` is a short fixed code."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@functools.lru_cache(maxsize=1024)
def _public_key(public_key_pem: bytes):
    """A SuperNode's key, parsed once: the same few keys sign every request."""
    from flwr.supercore.primitives.asymmetric import bytes_to_public_key

    return bytes_to_public_key(public_key_pem)


@functools.lru_cache(maxsize=1024)
def key_sha256(public_key_pem: bytes) -> str:
    """The enrolled-key fingerprint (`fedmed.common.certs.key_fingerprint`) of the PEM
    public key a SuperNode sends in its `flwr-public-key` header."""
    from cryptography.hazmat.primitives import serialization

    key = _public_key(public_key_pem)
    blob = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return hashlib.sha256(blob.split()[1]).hexdigest()


def check_signature(headers: dict[str, str], now: datetime.datetime | None = None) -> bytes:
    """Check Flower's SuperNode signature headers (a signed timestamp); return the PEM
    public key. Raises `Refused` as the SuperLink would answer 401, but before the body
    is read: an unauthenticated request costs the proxy its headers only."""
    from flwr.supercore.primitives.asymmetric import verify_signature

    if any(not headers.get(name) for name in SIGNATURE_HEADERS):
        raise Refused("unauthenticated:missing-signature")
    try:
        public_key = base64.b64decode(headers[FLEET_HTTP_PUBLIC_KEY_HEADER], validate=True)
        signature = base64.b64decode(headers[FLEET_HTTP_SIGNATURE_HEADER], validate=True)
        timestamp = headers[TIMESTAMP_HEADER]
        signed_at = datetime.datetime.fromisoformat(timestamp)
        now = now or datetime.datetime.now(datetime.timezone.utc)
        age = (now - signed_at).total_seconds()
        key = _public_key(public_key)
    except (ValueError, TypeError, UnicodeError, binascii.Error):
        raise Refused("unauthenticated:malformed-signature") from None
    if not -SYSTEM_TIME_TOLERANCE < age < TIMESTAMP_TOLERANCE + SYSTEM_TIME_TOLERANCE:
        raise Refused("unauthenticated:stale-timestamp")
    try:
        valid = verify_signature(key, timestamp.encode("ascii"), signature)
    except (ValueError, TypeError, UnicodeError):
        valid = False
    if not valid:
        raise Refused("unauthenticated:bad-signature")
    return public_key


def parse(call: str, body: bytes):
    """The request's protobuf, or `Refused` for an unknown call or undecodable body."""
    kind = REQUESTS.get(call)
    if kind is None:
        raise Refused("unknown-call")
    request = kind()
    try:
        request.ParseFromString(body)
    except DecodeError:
        raise Refused("malformed-request") from None
    return request


def _tree_ids(tree: ObjectTree) -> Iterable[str]:
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node.object_id
        stack.extend(node.children)


@dataclass
class _Delivered:
    run_id: int
    message_type: str
    objects: set[str]


@dataclass
class _NodeView:
    """What one node was given: instructions (by message ID) and objects it may pull or push."""

    delivered: OrderedDict[str, _Delivered] = field(default_factory=OrderedDict)
    to_push: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def remember(self, message_id: str, entry: _Delivered) -> None:
        self.delivered[message_id] = entry
        self.delivered.move_to_end(message_id)
        while len(self.delivered) > REMEMBERED_PER_NODE:
            self.delivered.popitem(last=False)

    def may_push(self, object_ids: Iterable[str]) -> None:
        for object_id in object_ids:
            self.to_push[object_id] = None
        while len(self.to_push) > REMEMBERED_PER_NODE * 64:
            self.to_push.popitem(last=False)


class FleetGuard:
    """The per-node rules; `check` before forwarding a request, `observe` its response."""

    def __init__(self) -> None:
        self._nodes: dict[int, _NodeView] = {}

    def _view(self, node_id: int) -> _NodeView:
        return self._nodes.setdefault(node_id, _NodeView())

    def check(self, call: str, node_id: int, request) -> None:
        """Raise `Refused` unless node `node_id` may make this (parsed) request."""
        if call in KEY_CALLS:
            return  # the SuperLink checks these against the signing key itself
        claimed = request.node_id if call in ("deactivate-node", "unregister-node") else request.node.node_id
        if claimed != node_id:
            raise Refused("node-id-not-the-signers")
        view = self._view(node_id)
        if call == "push-messages":
            self._check_reply(request, node_id, view)
        elif call == "pull-object":
            if not any(request.object_id in d.objects for d in view.delivered.values()):
                raise Refused("object-not-delivered-to-this-site")
        elif call == "confirm-message-received":
            if request.message_object_id not in view.delivered:
                raise Refused("message-not-delivered-to-this-site")
        elif call == "push-object":
            if request.object_id not in view.to_push:
                raise Refused("object-not-requested-from-this-site")

    @staticmethod
    def _check_reply(request: PushMessagesRequest, node_id: int, view: _NodeView) -> None:
        if len(request.messages_list) != 1 or len(request.message_object_trees) != 1:
            raise Refused("push-not-one-message")
        meta = request.messages_list[0].metadata
        if not meta.reply_to_message_id:
            raise Refused("push-not-a-reply")
        if meta.dst_node_id != SUPERLINK_NODE_ID:
            raise Refused("reply-not-to-coordinator")
        if meta.src_node_id != node_id:
            raise Refused("reply-src-not-this-site")
        instruction = view.delivered.get(meta.reply_to_message_id)
        if instruction is None:
            raise Refused("reply-to-unknown-instruction")
        if meta.run_id != instruction.run_id or meta.message_type != instruction.message_type:
            raise Refused("reply-does-not-match-instruction")

    def observe(self, call: str, node_id: int, response_body: bytes) -> None:
        """Learn from a successful response what the node was given or asked for."""
        if call == "pull-messages":
            response = PullMessagesResponse()
            response.ParseFromString(response_body)
            view = self._view(node_id)
            for message, tree in zip(response.messages_list, response.message_object_trees):
                meta = message.metadata
                if meta.dst_node_id == node_id:
                    view.remember(meta.message_id, _Delivered(meta.run_id, meta.message_type,
                                                              set(_tree_ids(tree))))
        elif call == "push-messages":
            response = PushMessagesResponse()
            response.ParseFromString(response_body)
            self._view(node_id).may_push(response.objects_to_push)

    def confirmed(self, node_id: int, message_id: str) -> None:
        """The node has the whole message: its objects may no longer be pulled (a
        reply to it still comes, so the instruction itself is kept)."""
        delivered = self._view(node_id).delivered.get(message_id)
        if delivered is not None:
            delivered.objects.clear()

    def forget_node(self, node_id: int) -> None:
        self._nodes.pop(node_id, None)
