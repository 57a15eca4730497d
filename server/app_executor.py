"""The coordinator's executor: takes the run's ServerApp task and runs it in this process.

Flower's SuperLink would start Flower's SuperExec, a process that asks it for ServerApp
tasks and starts a second one, `flwr-serverapp`, for each: two Flower processes, each
with Flower's HTTP stack in memory (about 90 and 130 MiB measured), the first only to
start the second. `fedmed server start` instead runs the SuperLink with `--isolation
process` (it then starts nothing itself) and starts this executor next to it, which

1. asks the SuperLink's Runtime API for a ServerApp task (`AcquireTask`) until the run
   that `fedmed server start` submits has one;
2. runs it here, with Flower's own ServerApp runner (`run_serverapp`, what
   `flwr-serverapp` runs): it pulls the task's inputs, installs the run's app bundle and
   loads the ServerApp the bundle names -- fedmed's, by its installed module -- runs it,
   pushes the task's output, and ends this process with the ServerApp's exit code.

One run per process, as `fedmed server start` submits one run. The SuperLink listens on
loopback only; this executor asks it there, as Flower's SuperExec did.

Flower internals relied on (`tests/test_light_processes.py` fails if an upgrade changes
them): `flwr.superlink.runtime.run_serverapp`'s keyword arguments and the
Runtime API's `AcquireTask` for `TaskType.SERVER_APP`, both as Flower's SuperExec and
`flwr-serverapp` use them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from queue import Queue

POLL_SECONDS = 0.25  # between asks for the task, on loopback; it arrives once the run is submitted


def acquire_serverapp_task(address: str, root_certificates: bytes | None) -> str:
    """Wait for a ServerApp task on the SuperLink at `address`; its token."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=no-name-in-module
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    client = RuntimeHttpClient.from_server_address(
        server_address=address, insecure=root_certificates is None, root_certificates=root_certificates,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
        retry_invoker=make_simple_http_retry_invoker(),
    )
    request = AcquireTaskRequest(supported_task_types=[TaskType.SERVER_APP])
    try:
        while True:
            response = client.AcquireTask(request)
            if response.HasField("task") and response.token:
                return response.token
            time.sleep(POLL_SECONDS)
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="fedmed coordinator executor (the run's ServerApp)")
    parser.add_argument("--runtime-api-address", required=True, help="the SuperLink's HOST:PORT")
    parser.add_argument("--root-certificates", type=Path, default=None,
                        help="the federation CA (the SuperLink serves TLS); none: plain HTTP on loopback")
    parser.add_argument("--parent-pid", type=int, default=None)
    args = parser.parse_args(argv)
    from flwr.supercore.app_utils import start_parent_process_monitor
    from flwr.supercore.logger import mirror_output_to_queue, restore_output
    from flwr.superlink.runtime import run_serverapp

    if args.parent_pid is not None:
        start_parent_process_monitor(args.parent_pid)
    certificates = args.root_certificates.read_bytes() if args.root_certificates else None
    try:
        token = acquire_serverapp_task(args.runtime_api_address, certificates)
    except KeyboardInterrupt:
        return 0
    # As `flwr-serverapp`: the ServerApp's output also goes to the SuperLink (`flwr log`).
    log_queue: Queue[str | None] = Queue()
    mirror_output_to_queue(log_queue)
    try:
        run_serverapp(runtime_api_address=args.runtime_api_address, log_queue=log_queue, token=token,
                      insecure=certificates is None, certificates=certificates, parent_pid=None,
                      runtime_dependency_install=False)
    finally:
        restore_output()
    return 0  # run_serverapp ends the process itself, with the ServerApp's exit code


if __name__ == "__main__":
    sys.exit(main())
