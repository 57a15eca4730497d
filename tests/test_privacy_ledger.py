"""The privacy ledger: cumulative ε across runs, restarts, and refusal of every tampering."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest

from fedmed.client.privacy import LedgerError, PrivacyLedger, epsilon
from fedmed.client.privacy.ledger import HEAD_NAME, LEDGER_NAME, canonical_hash
from pld_reference import pld_epsilon  # noqa: E402 — tests/ is on sys.path under pytest

DELTA = 1e-5
DATA = "sha256:5f1c0d-site-a-train"


def read_rows(state_dir):
    with open(state_dir / LEDGER_NAME, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def write_rows(state_dir, rows):
    with open(state_dir / LEDGER_NAME, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def rehash_chain(rows):
    """What an administrator who rewrites the ledger and recomputes every hash would do."""
    prev = "0" * 64
    for row in rows:
        row["prev"] = prev
        row["hash"] = canonical_hash(row)
        prev = row["hash"]
    return rows


def write_head(state_dir, rows, data=DATA):
    head = {"v": 1, "data": data, "lines": len(rows), "last_hash": rows[-1]["hash"] if rows else "0" * 64}
    (state_dir / HEAD_NAME).write_text(json.dumps(head) + "\n")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A ledger of two runs: run 1 rounds 1-3, run 2 rounds 1-2."""
    state_dir = tmp_path_factory.mktemp("recorded")
    ledger = PrivacyLedger.open(state_dir, DATA)
    for rnd in (1, 2, 3):
        ledger.append(1, rnd, 1.1, 0.01, 50, DELTA)
    for rnd in (1, 2):
        ledger.append(2, rnd, 1.3, 0.01, 50, DELTA)
    return state_dir


@pytest.fixture
def state(recorded, tmp_path):
    """A private copy of the recorded ledger to tamper with."""
    state_dir = tmp_path / "state"
    shutil.copytree(recorded, state_dir)
    return state_dir


def refused(state_dir, fingerprint=DATA):
    with pytest.raises(LedgerError) as err:
        PrivacyLedger.open(state_dir, fingerprint)
    message = str(err.value)
    assert "\n" not in message
    assert str(state_dir) in message
    return message


# ----------------------------------------------------------------------------- normal use
def test_fresh_state_is_an_empty_ledger(tmp_path):
    ledger = PrivacyLedger.open(tmp_path / "new", DATA)
    assert ledger.entries == () and ledger.history == [] and ledger.epsilon == 0.0
    assert ledger.spent(DELTA) == 0.0
    assert not (tmp_path / "new").exists()  # nothing is written until a round is recorded


def test_reopen_and_cumulative_across_runs(state):
    ledger = PrivacyLedger.open(state, DATA)
    assert len(ledger) == 5
    assert ledger.history == [(1.1, 0.01, 50)] * 3 + [(1.3, 0.01, 50)] * 2
    assert ledger.runs() == [1, 2]
    assert ledger.rounds_in_run(1) == [1, 2, 3] and ledger.rounds_in_run(2) == [1, 2]
    assert ledger.rounds_in_run(3) == []
    eps = [entry.epsilon for entry in ledger.entries]
    assert eps == sorted(eps) and eps[0] > 0
    # the last line composes both runs, not just run 2
    assert ledger.epsilon == pytest.approx(epsilon(ledger.history, DELTA))
    assert ledger.epsilon > epsilon([(1.3, 0.01, 100)], DELTA) + 0.1
    assert ledger.spent(DELTA) == pytest.approx(ledger.epsilon)
    # a restart: a third run continues the same budget
    entry = PrivacyLedger.open(state, DATA).append(3, 1, 1.3, 0.01, 50, DELTA)
    assert entry.epsilon > eps[-1]
    again = PrivacyLedger.open(state, DATA)
    assert len(again) == 6 and again.epsilon == pytest.approx(entry.epsilon)
    assert again.entries[-1] == entry


def test_files_are_private(state):
    for name in (LEDGER_NAME, HEAD_NAME):
        mode = stat.S_IMODE(os.stat(state / name).st_mode)
        assert mode & 0o077 == 0, oct(mode)


def test_audit_recomputes_every_line(state):
    assert len(PrivacyLedger.audit(state)) == 5
    assert len(PrivacyLedger.audit(state, DATA)) == 5


@pytest.mark.parametrize(
    "schedule",
    [
        # (run, noise multiplier, sample rate, steps) per round
        [(1, 1.1, 0.01, 100)] * 10,  # sigma 1.1, q 0.01, 1000 steps
        [(1, 0.8, 0.05, 50)] * 4,  # sigma 0.8, q 0.05, 200 steps
        [(1, 1.1, 0.01, 300), (1, 1.5, 0.02, 200)] * 2 + [(2, 1.1, 0.01, 300), (2, 1.5, 0.02, 200)],
    ],
    ids=["s1.1-q0.01-1000", "s0.8-q0.05-200", "mixed-two-runs"],
)
def test_ledger_epsilon_matches_google_pld_as_an_auditor_recomputes_it(tmp_path, schedule):
    ledger = PrivacyLedger.open(tmp_path, DATA)
    rounds: dict[int, int] = {}
    for run, sigma, q, steps in schedule:
        rounds[run] = rounds.get(run, 0) + 1
        ledger.append(run, rounds[run], sigma, q, steps, DELTA)
    # the auditor reads the rows, rebuilds the history and recomputes independently
    rows = read_rows(tmp_path)
    history = [(row["noise_multiplier"], row["sample_rate"], row["steps"]) for row in rows]
    reference = pld_epsilon(history, rows[-1]["delta"])
    assert rows[-1]["epsilon"] == pytest.approx(reference, rel=0.02)
    assert rows[-1]["epsilon"] == pytest.approx(epsilon(history, DELTA))


def test_lock_serialises_two_writers(state):
    a = PrivacyLedger.open(state, DATA)
    b = PrivacyLedger.open(state, DATA)
    first = a.append(3, 1, 1.3, 0.01, 50, DELTA)
    second = b.append(4, 1, 1.3, 0.01, 50, DELTA)  # b re-reads the line a wrote first
    assert second.prev == first.hash
    assert second.epsilon > first.epsilon
    assert len(PrivacyLedger.open(state, DATA)) == 7


def test_line_written_before_a_crash_is_kept_and_head_repaired(state):
    head_before = (state / HEAD_NAME).read_bytes()
    PrivacyLedger.open(state, DATA).append(3, 1, 1.3, 0.01, 50, DELTA)
    (state / HEAD_NAME).write_bytes(head_before)  # the process stopped before the head moved
    ledger = PrivacyLedger.open(state, DATA)
    assert len(ledger) == 6  # the extra, correctly chained line only adds to the spend
    ledger.append(3, 2, 1.3, 0.01, 50, DELTA)
    assert json.loads((state / HEAD_NAME).read_text())["lines"] == 7


def test_bad_append_arguments_are_refused(state):
    ledger = PrivacyLedger.open(state, DATA)
    for args in [(True, 1, 1.0, 0.01, 10, DELTA), (1, -1, 1.0, 0.01, 10, DELTA), (1, 1, 0.0, 0.01, 10, DELTA),
                 (1, 1, 1.0, 0.01, 10, 0.0)]:
        with pytest.raises(LedgerError):
            ledger.append(*args)
    with pytest.raises(LedgerError):
        ledger.append(1, 1, 1.0, 0.01, 10, DELTA, accountant="gdp")
    assert len(PrivacyLedger.open(state, DATA)) == 5


# ----------------------------------------------------------------------------- tampering
@pytest.mark.parametrize(
    "field, value",
    [
        ("run", 9),
        ("round", 7),
        ("noise_multiplier", 5.0),
        ("sample_rate", 0.001),
        ("steps", 5),
        ("delta", 1e-3),
        ("epsilon", 0.01),
        ("accountant", "rdp"),
        ("data", "other"),
        ("time", "2020-01-01T00:00:00+00:00"),
        ("prev", "f" * 64),
    ],
)
def test_modified_field_is_refused(state, field, value):
    rows = read_rows(state)
    rows[1][field] = value
    write_rows(state, rows)
    message = refused(state)
    assert "line 2 was modified (hash mismatch)" in message
    assert "restore it from backup" in message


def test_removed_middle_line_is_refused(state):
    rows = read_rows(state)
    write_rows(state, rows[:2] + rows[3:])
    assert "line 3 does not follow line 2" in refused(state)


def test_removed_first_line_is_refused(state):
    write_rows(state, read_rows(state)[1:])
    assert "line 1 does not start the hash chain" in refused(state)


def test_swapped_lines_are_refused(state):
    rows = read_rows(state)
    rows[1], rows[2] = rows[2], rows[1]
    write_rows(state, rows)
    assert "does not follow" in refused(state)


def test_truncated_tail_is_refused(state):
    write_rows(state, read_rows(state)[:3])
    message = refused(state)
    assert "truncated" in message and "the last 2 lines were removed" in message


def test_rewritten_ledger_with_recomputed_hashes_is_refused_by_the_head(state):
    rows = read_rows(state)
    rows[0]["steps"] = 5  # every hash recomputed, but the head still anchors the old chain
    write_rows(state, rehash_chain(rows))
    assert "line 5 does not match the hash recorded in privacy-ledger.head" in refused(state)


def test_cut_last_line_is_refused(state):
    raw = (state / LEDGER_NAME).read_bytes()
    (state / LEDGER_NAME).write_bytes(raw[:-20])
    assert "line 5 is incomplete" in refused(state)


def test_garbage_line_is_refused(state):
    with open(state / LEDGER_NAME, "a") as f:
        f.write("not json\n")
    assert "line 6 is not valid JSON" in refused(state)


def test_other_data_is_refused(state):
    message = refused(state, fingerprint="sha256:another-data-set")
    assert "belongs to other training data" in message
    assert "move privacy-ledger.jsonl and privacy-ledger.head" in message


def test_other_sites_ledger_copied_in_is_refused(state, tmp_path):
    other = tmp_path / "other"
    ledger = PrivacyLedger.open(other, "sha256:site-b")
    ledger.append(1, 1, 1.0, 0.01, 10, DELTA)
    for name in (LEDGER_NAME, HEAD_NAME):
        shutil.copy(other / name, state / name)
    assert "belongs to other training data" in refused(state)


def test_missing_head_is_refused(state):
    (state / HEAD_NAME).unlink()
    assert "head file privacy-ledger.head is missing" in refused(state)


def test_missing_ledger_with_head_is_refused(state):
    (state / LEDGER_NAME).unlink()
    assert "the file is missing" in refused(state)


def test_unreadable_head_is_refused(state):
    (state / HEAD_NAME).write_text("{")
    assert "unreadable" in refused(state)


def test_recorded_epsilon_that_does_not_match_the_rows_is_refused(state):
    rows = read_rows(state)
    rows[-1]["epsilon"] = rows[-1]["epsilon"] / 2  # under-counts, with a consistent chain and head
    rehash_chain(rows)
    write_rows(state, rows)
    write_head(state, rows)
    assert "line 5 records epsilon" in refused(state)


def test_audit_catches_a_wrong_epsilon_in_the_middle(state):
    rows = read_rows(state)
    rows[1]["epsilon"] = 0.001
    rehash_chain(rows)
    write_rows(state, rows)
    write_head(state, rows)
    PrivacyLedger.open(state, DATA)  # open checks the last line (the spend that matters) only
    with pytest.raises(LedgerError, match="line 2 records epsilon"):
        PrivacyLedger.audit(state, DATA)


def test_a_format_1_ledger_is_read_and_carried_on(tmp_path):
    """Ledgers written before rows named their mechanism stay valid: their rows are DP-SGD
    rounds of images, and new rows chain onto them."""
    prev, rows = "0" * 64, []
    for rnd in (1, 2):
        history = [(1.1, 0.01, 50)] * rnd
        row = {"v": 1, "run": 1, "round": rnd, "noise_multiplier": 1.1, "sample_rate": 0.01, "steps": 50,
               "delta": DELTA, "epsilon": epsilon(history, DELTA), "accountant": "prv", "data": DATA,
               "time": "2025-01-01T00:00:00+00:00", "prev": prev}
        row["hash"] = canonical_hash(row)
        prev = row["hash"]
        rows.append(row)
    write_rows(tmp_path, rows)
    write_head(tmp_path, rows)
    ledger = PrivacyLedger.open(tmp_path, DATA)
    assert [e.mechanism for e in ledger.entries] == ["dp-sgd", "dp-sgd"]
    entry = ledger.append(2, 1, 1.1, 0.01, 50, DELTA)
    assert entry.prev == rows[-1]["hash"] and entry.epsilon == pytest.approx(epsilon([(1.1, 0.01, 150)], DELTA))
    assert len(PrivacyLedger.audit(tmp_path, DATA)) == 3
    assert read_rows(tmp_path)[-1]["v"] == 2
