"""The site's executor: runs ClientApp tasks for its SuperNode, approved apps only.

`fedmed client` starts `flower-supernode --isolation process`, which fetches messages
from the coordinator but runs nothing itself: it queues each message as a task on its
local Runtime API and waits for an executor to take it. Flower's own executor
(`flower-superexec`) would install the run's app bundle and import whatever ClientApp
module the bundle names. This one, started next to the SuperNode by `fedmed client`:

1. takes a ClientApp task (`AcquireTask`) and pulls its message, context and bundle;
2. hashes the bundle it received and asks `AppApproval` whether it may run;
3. if so, runs fedmed's installed ClientApp on the message; nothing from the bundle is
   imported or installed, so an approved hash is also the only code that can run;
4. if not, replies "declined: app-not-approved" without touching the site's data or
   model, and logs the refusal at the site with the bundle's hash. A task whose message
   the SuperNode has not confirmed (the coordinator stopped while it was arriving) is
   declined the same way ("message-not-confirmed", `client/confirmed_messages.py`).

It does not poll for tasks: it sleeps until the SuperNode signals that one is waiting
(`client/task_signal.py`), looking on its own only every `IDLE_CHECK_S` seconds in case
a signal was missed. Tasks run in this one process, so torch is imported once per site
rather than once per message, and decoded images stay in memory between rounds; their ClientApp calls run
one at a time.

Only this executor can take the SuperNode's tasks: `AcquireTask` is signed with the
secret `fedmed client` wrote for both (`client/runtime_secret.py`; Flower's
`--superexec-auth-secret-file`), and every other Runtime call needs the task token
`AcquireTask` returns. The check is only as good as the site's trust in its own
installed fedmed.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import threading
import time
import traceback
from pathlib import Path

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.constant import SubStatus
from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=no-name-in-module
from flwr.supercore.app_utils import start_parent_process_monitor
from flwr.supercore.constant import TaskType
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

from fedmed.client.app_approval import AppApproval
from fedmed.client.confirmed_messages import clear_stale, wait_for
from fedmed.client.runtime_secret import read_runtime_secret
from fedmed.client.task_signal import TaskSignal, state_dir_of
from fedmed.common.protocol import SITE_KEY, SiteStatus

POLL_SECONDS = 0.5  # without a wake-up pipe
IDLE_CHECK_S = 5.0  # with one: a missed signal costs at most this

# Freed buffers of 4 MiB and more (an evaluation batch's activations: tens of MB) go back
# to the system at once. glibc's default would raise its mmap threshold after the first
# such free (up to 32 MiB), and from then on serve them from a heap that stays resident:
# measured 20-30 MiB more per executor after each round. Smaller ones (a training batch's
# activations) stay on the heap: an mmap for each of those almost doubled a round's CPU.
MMAP_THRESHOLD = 4 * 2**20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt() parameter number


def _give_back_large_buffers() -> None:
    """Set the allocator's mmap threshold (glibc; elsewhere its own defaults apply), and
    turn off MKL's buffer cache, which keeps its largest work buffers for reuse."""
    os.environ.setdefault("MKL_DISABLE_FAST_MM", "1")  # read when torch first calls MKL
    try:
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):
        pass


def _return_free_heap() -> None:
    """Give the heap's free pages back to the system once a task is done (glibc's
    malloc_trim; elsewhere nothing). A round leaves freed memory inside the heap, below
    its top, that glibc keeps resident for reuse: measured 8-16 MiB per executor after a
    `cnn` round, for about 1 ms; the next round's first steps take it back."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _client(address: str, *interceptors) -> RuntimeHttpClient:
    return RuntimeHttpClient.from_server_address(
        server_address=address, insecure=True, root_certificates=None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"), *interceptors],
        retry_invoker=make_simple_http_retry_invoker(),
    )


def declined_reply(message: Message, site: str, reason: str) -> Message:
    content = RecordDict({SITE_KEY: ConfigRecord({"name": site, "status": SiteStatus.DECLINED.value,
                                                  "reason": reason})})
    return Message(content=content, reply_to=message)


# One task's ClientApp at a time: training is not written to share the process's data
# and device with another training.
_RUN_ONE_AT_A_TIME = threading.Lock()


def run_task(address: str, token: str, approval: AppApproval, client_app,
             confirmed_in: Path | None = None) -> None:
    """Pull one task's inputs, run (or decline) it, push the reply and the task's end.
    With `confirmed_in` (the site's state folder) a task runs only once the SuperNode has
    confirmed its message (`confirmed_messages`)."""
    client = _client(address, RuntimeTokenHttpInterceptor(token))
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    context, status, details = None, SubStatus.FAILED, "fedmed executor failed"
    try:
        message, context, run, fab = pull_task_input(client)
        site = str(context.node_config.get("site", f"node-{context.node_id}"))
        unconfirmed = confirmed_in is not None and not wait_for(confirmed_in, message.metadata.message_id)
        if unconfirmed:
            print(f"[fedmed site {site}] a task of run {run.run_id} was declined: its message was never "
                  "confirmed to the coordinator (it stopped while the message arrived); nothing trained",
                  flush=True)
        with _RUN_ONE_AT_A_TIME:
            reason = "message-not-confirmed" if unconfirmed else approval.check(fab.content, fab.hash_str, run.run_id)
            if reason is None:
                reply = client_app(message=message, context=context)
                details = ""
            else:
                reply = declined_reply(message, site, reason)
                details = reason
        push_message(client, reply, context)
        status = SubStatus.COMPLETED
    except Exception as exc:  # noqa: BLE001 — one bad task must not end the site's executor
        frames = traceback.extract_tb(exc.__traceback__)
        where = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(frames[-3:]))
        print(f"[fedmed executor] task failed: {type(exc).__name__} at {where}", file=sys.stderr, flush=True)
    finally:
        try:
            push_task_output(client=client, context=context, sub_status=status, details=details)
        finally:
            heartbeat.stop()
            client.close()
            _return_free_heap()


ACQUIRE_TASK = "/flwr.proto.Runtime/AcquireTask"


def serve(address: str, approval: AppApproval, wake: Path | None = None, secret: bytes | None = None) -> None:
    """Take ClientApp tasks from the SuperNode at `address` until stopped; between
    tasks, sleep until the SuperNode signals on `wake` (or poll, without one).
    `secret` signs AcquireTask (the SuperNode's `--superexec-auth-secret-file`)."""
    # fedmed's installed ClientApp, never the bundle's. Imported before the first task
    # arrives: it brings torch, whose import would otherwise eat into round 1's timeout.
    from fedmed.client.app import app as client_app
    from flwr.supercore.interceptors.http.superexec_auth import SuperExecAuthHttpInterceptor

    signal = TaskSignal(wake) if wake is not None else None
    if wake is not None:
        clear_stale(state_dir_of(wake))
    signer = [SuperExecAuthHttpInterceptor(master_secret=secret, protected_methods={ACQUIRE_TASK})] if secret else []
    acquirer = _client(address, *signer)
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
    while True:
        response = acquirer.AcquireTask(request)
        if response.HasField("task") and response.token:
            # Each task in its own thread: a task whose inputs never arrive (the SuperNode
            # dropped the message of a run the coordinator stopped, e.g. after a restart)
            # waits out Flower's pull timeout there instead of blocking the next run.
            threading.Thread(target=run_task, args=(address, response.token, approval, client_app,
                                                    None if wake is None else state_dir_of(wake)),
                             name=f"task-{response.task.task_id}", daemon=True).start()
        elif signal is not None:
            signal.wait(IDLE_CHECK_S)
        else:
            time.sleep(POLL_SECONDS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="fedmed site executor (approved apps only)")
    parser.add_argument("--runtime-api-address", required=True, help="the SuperNode's Runtime API HOST:PORT")
    parser.add_argument("--site", required=True)
    parser.add_argument("--state", type=Path, default=None, help="site state folder (refusal log)")
    parser.add_argument("--approve", action="append", default=[], help="extra approved bundle SHA-256")
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument("--wake", type=Path, default=None, help="the SuperNode's task-waiting pipe")
    parser.add_argument("--auth-secret-file", type=Path, default=None,
                        help="the SuperNode's --superexec-auth-secret-file")
    args = parser.parse_args(argv)
    _give_back_large_buffers()
    if args.parent_pid is not None:
        start_parent_process_monitor(args.parent_pid)
    approval = AppApproval.default(tuple(args.approve), args.state, args.site)
    print(f"[fedmed site {args.site}] runs only approved app bundles: "
          f"{', '.join(sorted(approval.approved))}", flush=True)
    try:
        secret = read_runtime_secret(args.auth_secret_file) if args.auth_secret_file else None
        serve(args.runtime_api_address, approval, args.wake, secret)
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
