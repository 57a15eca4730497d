"""The coordinator's executor (`fedmed.server.app_executor`) runs the run's ServerApp in its
own process with Flower's ServerApp runner, in place of Flower's SuperExec and its
`flwr-serverapp` child. The end-to-end tests run it for real; this one fails loudly, and
first, if a Flower upgrade changes the internals it relies on."""

from __future__ import annotations

import inspect


def test_the_flower_internals_it_relies_on():
    from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=no-name-in-module
    from flwr.supercore.constant import TaskType
    from flwr.superlink.runtime import run_serverapp

    parameters = inspect.signature(run_serverapp).parameters
    assert {"runtime_api_address", "log_queue", "token", "insecure", "certificates", "parent_pid",
            "runtime_dependency_install"} <= set(parameters)
    request = AcquireTaskRequest(supported_task_types=[TaskType.SERVER_APP])
    assert list(request.supported_task_types) == [TaskType.SERVER_APP]


def test_the_superlink_accepts_process_isolation():
    """`fedmed server start` runs the SuperLink with `--isolation process`, so that it starts
    no SuperExec of its own."""
    from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink

    args = _parse_args_run_superlink().parse_args(["--insecure", "--isolation", "process"])
    assert args.isolation == "process"
