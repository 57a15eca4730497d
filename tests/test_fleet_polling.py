"""The site's request pacing, the executor's wake-up pipe and the coordinator's reply
collection, without processes; and the Flower internals they rely on."""

from __future__ import annotations

import threading
from contextlib import contextmanager

import pytest

from fedmed.client import fleet_polling
from fedmed.client.fleet_polling import (ACTIVE_WINDOW_S, BUSY_CAP_S, BUSY_FLOOR_S, IDLE_S, FleetPacing,
                                         check_flower_internals, install)
from fedmed.client.task_signal import TaskSignal, notify, signal_path
from fedmed.common.backoff import Backoff

# Flower's SuperNode heartbeat is sent about every 17.5–22.5 s (30 s interval less its
# call timeout, times 0.7–0.9); an idle site's rate counts it too.
HEARTBEATS_PER_S = 1 / 17.5
IDLE_RATE_LIMIT = 0.5  # requests per second per idle site


def test_flower_supernode_internals_are_the_ones_fedmed_paces():
    """Fails when a Flower upgrade changes the SuperNode loop `fleet_polling` wraps:
    re-read flwr/supernode/start_client_internal.py and adapt fleet_polling.install."""
    import flwr

    check_flower_internals()
    assert flwr.__version__ == "1.42.0", "fleet_polling was checked against flwr 1.42.0's SuperNode"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _pull_after(clock: FakeClock, at: float, message="msg"):
    return lambda: message if clock.now >= at else None


def test_pacing_is_quick_while_a_run_is_active_and_slow_when_idle():
    clock = FakeClock()
    pacing = FleetPacing(clock=clock, sleep=clock.sleep)
    assert pacing.receive(_pull_after(clock, 1.0)) == "msg"
    # Just connected counts as active: 50 ms, growing, never above the busy cap.
    assert clock.sleeps[0] == BUSY_FLOOR_S
    assert clock.sleeps == sorted(clock.sleeps) and max(clock.sleeps) <= BUSY_CAP_S
    # A message answered: the next one is looked for quickly again.
    clock.sleeps.clear()
    pacing.mark_activity()
    pacing.receive(_pull_after(clock, clock.now + 0.3))
    assert clock.sleeps[0] == BUSY_FLOOR_S
    # Nothing for longer than the active window: idle pace.
    clock.sleeps.clear()
    pacing.receive(_pull_after(clock, clock.now + ACTIVE_WINDOW_S + 60))
    idle = [s for s in clock.sleeps if s == IDLE_S]
    assert idle and clock.sleeps[-1] == IDLE_S
    assert 1 / IDLE_S + HEARTBEATS_PER_S <= IDLE_RATE_LIMIT


def test_a_run_with_long_gaps_keeps_the_site_active_between_its_messages():
    clock = FakeClock()
    pacing = FleetPacing(clock=clock, sleep=clock.sleep)
    pacing.receive(_pull_after(clock, 40.0))  # a slow round: 40 s between messages
    assert pacing.window >= 40.0
    clock.sleeps.clear()
    pacing.receive(_pull_after(clock, clock.now + 35.0))
    assert max(clock.sleeps) <= BUSY_CAP_S


def test_backoff_grows_to_its_cap_and_starts_over():
    pace = Backoff(0.1, 0.3, factor=2)
    assert [pace.next() for _ in range(4)] == [0.1, 0.2, 0.3, 0.3]
    pace.reset()
    assert pace.next() == 0.1
    with pytest.raises(ValueError):
        Backoff(0.5, 0.1)


def test_installed_connection_paces_receive_and_wakes_the_executor(monkeypatch, tmp_path):
    from flwr.supernode import start_client_internal as loop

    message = type("Message", (), {"metadata": type("M", (), {"message_id": "m1"})()})()
    answers = iter([None, None, (message, "tree")])
    confirmed = []

    @contextmanager
    def fake_connection(*args, **kwargs):
        yield (7, lambda: next(answers), "send", "get_run", "get_fab", "pull_object", "push_object",
               lambda run_id, object_id: confirmed.append((run_id, object_id)))

    # Restored after the test, whatever install() put there.
    monkeypatch.setattr(loop, "http_request_response", fake_connection)
    monkeypatch.setattr(loop, "time", loop.time)
    monkeypatch.setattr(loop, "_push_messages", loop._push_messages)
    monkeypatch.setattr(fleet_polling, "check_flower_internals", lambda: None)
    wake = signal_path(tmp_path)
    waiter = TaskSignal(wake)
    clock = FakeClock()
    install(wake, FleetPacing(clock=clock, sleep=clock.sleep))
    with loop.http_request_response("127.0.0.1:1", True) as conn:
        node_id, receive, *_, confirm = conn
        assert node_id == 7
        assert receive() == (message, "tree")
        assert clock.sleeps == [BUSY_FLOOR_S, BUSY_FLOOR_S * 1.5]
        assert not waiter.wait(0)
        confirm(1, "ab" * 32)
    assert confirmed == [(1, "ab" * 32)]
    assert waiter.wait(0)
    assert (tmp_path / "confirmed-messages" / ("ab" * 32)).exists()  # the executor may run its task
    # The reply wait (Flower sleeps 0.5 s) is short; other sleeps are Flower's own.
    assert loop.time.sleep is not None and loop.time.monotonic is not None
    waiter.close()


def test_task_signal_wakes_a_waiting_executor(tmp_path):
    path = signal_path(tmp_path)
    assert notify(path) is False  # no pipe yet: nothing happens
    signal = TaskSignal(path)
    assert signal.wait(0.01) is False
    woke = []
    waiter = threading.Thread(target=lambda: woke.append(signal.wait(10)))
    waiter.start()
    assert notify(path) is True
    waiter.join(5)
    assert woke == [True]
    assert signal.wait(0.01) is False  # the wake-up was consumed
    signal.close()


class _FakeGrid:
    """Replies become available after a number of pulls each."""

    def __init__(self, ready_after: dict[str, int]) -> None:
        self.ready_after = ready_after
        self.pulls = 0

    def push_messages(self, messages):
        return list(self.ready_after)

    def pull_messages(self, ids):
        self.pulls += 1
        out = []
        for i in ids:
            if self.pulls >= self.ready_after[i]:
                out.append(_Reply(i))
        return out


class _Reply:
    def __init__(self, reply_to: str) -> None:
        self.metadata = type("M", (), {"reply_to_message_id": reply_to})()


def test_fast_grid_collects_every_reply_as_it_lands():
    from fedmed.server.fast_grid import FastGrid

    inner = _FakeGrid({"a": 1, "b": 3, "c": 4})
    grid = FastGrid(inner, floor=0.001, cap=0.002)
    replies = grid.send_and_receive(["m"] * 3, timeout=10)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["a", "b", "c"]
    assert inner.pulls == 4


def test_fast_grid_gives_up_at_the_timeout():
    from fedmed.server.fast_grid import FastGrid

    inner = _FakeGrid({"a": 1, "b": 10**9})
    replies = FastGrid(inner, floor=0.01, cap=0.02).send_and_receive(["m"] * 2, timeout=0.2)
    assert [r.metadata.reply_to_message_id for r in replies] == ["a"]


def test_flower_grid_internals_are_the_ones_fedmed_quickens():
    """Fails when a Flower upgrade changes how the deployment grid pulls a reply's objects:
    re-read flwr/superlink/grid/http_grid.py and adapt fast_grid.quicken_object_pulls."""
    from fedmed.server.fast_grid import check_flower_internals as grid_internals

    grid_internals()


def test_an_object_still_uploading_is_asked_for_again_soon_then_left_to_flower():
    from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError

    from fedmed.common.object_pulls import CAP_S, FLOOR_S, QUICK_WINDOW_S, quick_retry

    clock = FakeClock()
    calls = []

    def pull(object_id, ready_at):
        calls.append(clock.now)
        if clock.now < ready_at:
            raise ObjectUnavailableError(object_id)
        return b"content"

    quick = quick_retry(pull, clock=clock, sleep=clock.sleep)
    assert quick("a", 0.3) == b"content"
    assert clock.sleeps[0] == FLOOR_S and max(clock.sleeps) <= CAP_S and clock.now < 0.6
    # An uploader that stalled: after the quick window Flower's own (slow) backoff takes over.
    clock.sleeps.clear()
    with pytest.raises(ObjectUnavailableError):
        quick("b", float("inf"))
    assert sum(clock.sleeps) <= QUICK_WINDOW_S and len(clock.sleeps) < 40


class _TimedGrid:
    """Answers every message once `after` seconds have passed since its push; records
    when each pull came, in seconds after the push."""

    def __init__(self, after: float) -> None:
        self.after, self.pushed, self.pull_times = after, 0.0, []

    def push_messages(self, messages):
        import time

        self.pushed = time.monotonic()
        self.pull_times.append([])
        return ["m"]

    def pull_messages(self, ids):
        import time

        elapsed = time.monotonic() - self.pushed
        self.pull_times[-1].append(elapsed)
        return [_Reply("m")] if elapsed >= self.after and "m" in ids else []


def test_fast_grid_waits_for_most_of_a_phase_as_long_as_the_last_two():
    """From the third phase of a kind on, the first pull waits LEAD of the shorter of the
    last two; the first two phases (round 1 decodes images) are pulled for at once."""
    from fedmed.server.fast_grid import LEAD, FastGrid

    inner = _TimedGrid(after=0.4)
    grid = FastGrid(inner, floor=0.01, cap=0.02)
    for _ in range(3):
        assert len(grid.send_and_receive(["m"], timeout=10)) == 1
    first, second, third = (times[0] for times in inner.pull_times)
    assert first < 0.4 and second < 0.4  # no history yet: pulled for from the start
    assert third >= LEAD * min(grid.took[""][:2])
    assert len(grid.took[""]) == 3


def test_an_active_site_first_waits_most_of_its_usual_wait():
    """From the third message on, the first ask comes LEAD of the shorter of the last two
    waits after the reply; until then it asks at once."""
    from fedmed.client.fleet_polling import LEAD

    clock = FakeClock()
    pacing = FleetPacing(clock=clock, sleep=clock.sleep)
    for gap in (5.0, 0.4):  # round 1 (images decoded), then a usual wait
        clock.sleeps.clear()
        pacing.receive(_pull_after(clock, clock.now + gap))
        assert clock.sleeps[0] == BUSY_FLOOR_S
    before = list(pacing.waits)
    clock.sleeps.clear()
    pacing.receive(_pull_after(clock, clock.now + 0.6))
    assert clock.sleeps[0] == pytest.approx(LEAD * min(before)) and min(before) < 1.0
    assert clock.sleeps[1] == BUSY_FLOOR_S


def test_an_object_whose_sender_stopped_uploading_ends_its_pull_at_give_up_at():
    """A site killed mid-reply: past `give_up_at` the object's pull fails for good, and
    Flower's `pull_objects` (which would otherwise retry for up to two hours) gives up."""
    import time

    from flwr.supercore.inflatable.inflatable_utils import ObjectPullError, ObjectUnavailableError, pull_objects

    from fedmed.common.object_pulls import quick_retry

    def never(object_id):
        raise ObjectUnavailableError(object_id)

    started = time.monotonic()
    with pytest.raises(ObjectPullError, match="did not finish uploading"):
        pull_objects(["x", "y"], quick_retry(never, give_up_at=started + 0.3))
    assert time.monotonic() - started < 3


class _StalledGrid(_FakeGrid):
    """Reply "a" is half-uploaded: the pull that finds it blocks until the deadline's
    grace, then returns it as an error; reply "b" lands while that pull is blocked."""

    def __init__(self) -> None:
        super().__init__({"a": 1, "b": 2})
        self.limits = []

    def pull_messages(self, ids):
        from fedmed.server import fast_grid

        self.limits.append(fast_grid._GIVE_UP_AT.get())
        self.pulls += 1
        if self.pulls == 1:
            import time

            time.sleep(0.3)  # past the timeout: the stalled reply's objects
            return [_Reply("a")]
        return [_Reply(i) for i in ids if i == "b"]


def test_a_stalled_reply_does_not_cost_the_phase_the_others():
    from fedmed.server.fast_grid import FastGrid

    inner = _StalledGrid()
    replies = FastGrid(inner, floor=0.01, cap=0.02).send_and_receive(["m"] * 2, timeout=0.1)
    # The last pull after the timeout collects "b", which landed during the stalled one.
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["a", "b"]
    assert inner.pulls == 2
    assert all(limit is not None for limit in inner.limits)  # every pull's objects have a give-up time


class _Msg:
    def __init__(self, reply_to: str) -> None:
        self.metadata = type("M", (), {"reply_to_message_id": reply_to})()


def test_a_stale_reply_does_not_take_the_place_of_the_awaited_one():
    """After a coordinator restart the SuperNode's state can hold a reply to a message of
    the stopped run; the push that sends it is made again for the awaited reply, instead
    of leaving that reply until the run's next message (after the round timed out)."""
    from fedmed.client.fleet_polling import ReplyTracker

    ready = [["old-instruction"], ["new-instruction"]]  # what each push finds in the state
    sent = []

    def push(state, object_store, send, push_object):  # as Flower's: send what is there
        for reply_to in ready.pop(0):
            try:
                send(_Msg(reply_to))
            except RuntimeError:  # Flower logs a failed or stopped-run send and goes on
                pass

    def send(message):
        sent.append(message.metadata.reply_to_message_id)
        if message.metadata.reply_to_message_id == "old-instruction":
            raise RuntimeError("run not running")

    tracker = ReplyTracker()
    tracker.took("new-instruction")
    tracker.push_until_answered(push)(None, None, send, None)
    assert sent == ["old-instruction", "new-instruction"] and not ready

    # The usual case: one push, the awaited reply.
    ready[:] = [["next"], ["never pushed"]]
    tracker.took("next")
    tracker.push_until_answered(push)(None, None, send, None)
    assert sent[-1] == "next" and ready == [["never pushed"]]
