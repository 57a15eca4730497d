"""The executor runs a task only once the SuperNode has confirmed its message."""

from __future__ import annotations

import os
import threading
import time

import pytest

from fedmed.client.confirmed_messages import DIR_NAME, clear_stale, mark, wait_for

MESSAGE = "0123456789abcdef" * 4


def test_a_confirmed_message_is_seen_once(tmp_path):
    mark(tmp_path, MESSAGE)
    assert oct((tmp_path / DIR_NAME).stat().st_mode & 0o777) == "0o700"
    assert wait_for(tmp_path, MESSAGE, timeout=0)
    assert not wait_for(tmp_path, MESSAGE, timeout=0)  # its marker is gone


def test_the_executor_waits_for_a_confirmation_that_comes_soon(tmp_path):
    threading.Timer(0.1, mark, args=(tmp_path, MESSAGE)).start()
    started = time.monotonic()
    assert wait_for(tmp_path, MESSAGE, timeout=5)
    assert time.monotonic() - started < 3


def test_a_message_never_confirmed_is_not_run(tmp_path):
    """The coordinator stopped while the message arrived: the SuperNode never confirmed it."""
    assert not wait_for(tmp_path, MESSAGE, timeout=0.1)


@pytest.mark.parametrize("bad", ["", "../x", "ABCDEF0123456789", "0123/4567"])
def test_a_message_id_is_a_file_name_only_when_it_is_hex(tmp_path, bad):
    with pytest.raises(ValueError, match="message ID"):
        mark(tmp_path, bad)


def test_markers_left_by_a_crash_are_cleared(tmp_path):
    mark(tmp_path, MESSAGE)
    old = time.time() - 2 * 24 * 3600
    os.utime(tmp_path / DIR_NAME / MESSAGE, (old, old))
    mark(tmp_path, "f" * 64)
    clear_stale(tmp_path)
    assert sorted(p.name for p in (tmp_path / DIR_NAME).iterdir()) == ["f" * 64]
