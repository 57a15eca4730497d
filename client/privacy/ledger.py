"""The site's privacy ledger: every release it ever made from its data, with the cumulative ε.

Modelled on the history of Opacus' accountants: an explicit, serialisable list of the
mechanisms applied, from which ε is recomputed rather than trusted.
``<state_dir>/privacy-ledger.jsonl`` holds one JSON object per line, in order::

    {"v": 2, "run": 7, "round": 3, "mechanism": "dp-sgd", "unit": "image",
     "noise_multiplier": 1.1, "sample_rate": 0.01, "steps": 100, "delta": 1e-05,
     "epsilon": 0.91, "accountant": "prv", "data": "<data fingerprint>", "note": "",
     "time": "2025-01-31T10:02:03+00:00", "prev": "<hash of the line before>",
     "hash": "<hash of this line>"}

``mechanism`` says what the row is:

* ``dp-sgd`` -- a training round: ``steps`` steps of the Poisson-subsampled Gaussian
  mechanism (Abadi et al. 2016), written *before* the round trains (a reservation, below);
* ``gaussian`` -- a release of noised evaluation counts: the Gaussian mechanism, history
  entry (σ, 1, 1) (`fedmed.client.privacy.disclosure`);
* ``settled``, ``new-ledger``, ``open-release`` -- records that spend nothing (0 steps): a
  reservation settled after its process died, an administrator's deliberate new ledger
  (the reason in ``note``), exact metrics the site chose to send for a trial.

``epsilon`` is cumulative: the ε, at that line's ``delta`` and with that line's accountant,
of *every* line up to and including it -- all runs, all restarts, training and releases --
composed as one history (`fedmed.client.privacy.accounting.epsilon`). It is never a
per-round or per-run figure. An auditor recomputes it from the rows alone: take
``(noise_multiplier, sample_rate, steps)`` of lines 1..k and compose them. Format-1 lines
(without mechanism, unit and note) are DP-SGD rounds of images and are still read.

Reserve before spending
-----------------------
`PrivacyLedger.reserve` checks the budget and writes the row in one step under the
ledger's file lock, re-reading whatever another process appended first: two runs on one
state folder cannot both pass the check on the same history. A training reservation holds
a lock on an in-flight file (``privacy-inflight-<hash>``) while the round trains; one left
unlocked (its process died) is settled on the next open with a ``settled`` row. It stays
counted: its update may have left the site.

Integrity
---------
* ``hash`` is the SHA-256 of the line's canonical JSON (keys sorted, no spaces, the ``hash``
  field left out) and ``prev`` is the previous line's ``hash`` (64 zeros on the first line):
  a hash chain. A changed field breaks the line's hash; a line removed from the middle,
  inserted or moved breaks the chain.
* ``<state_dir>/privacy-ledger.head`` anchors the end of the chain: the number of lines and
  the last hash, rewritten atomically (temporary file, fsync, rename) after every append.
  Removing lines from the end of the ledger leaves it shorter than its head says.
* Every line and the head carry the site's *data fingerprint*. A ledger is per data set: it
  records what was spent on those records. Opening it for other data is refused.
* On open, the recorded ε of the last line is recomputed from the rows and must match.
  `PrivacyLedger.audit` recomputes every line's ε.
* A missing ledger where the state folder shows the data set was spent on -- the run plan
  (``privacy-plan.json``) for the same fingerprint, or the mark the ledger leaves in the
  image cache folder (``cache/privacy-spent-<fingerprint>``) -- is refused, not started
  afresh.

Any of these failing raises `LedgerError`, whose message names the file, what is wrong and
what to do. fedmed never starts a fresh budget silently: a site whose ledger is refused
stops until an administrator restores the ledger from backup.

A line the head does not cover yet (the process stopped between appending the line and
rewriting the head) is accepted when it chains correctly: it can only add to the spend.

Honest limits
-------------
The hash chain and the head live on the site's own disk. They stop accidental edits, naive
edits and a lost tail; they do not stop an administrator who rewrites the lines and
recomputes every hash, nor one who deletes the ledger, its head, the plan *and* the mark
in the cache folder (which looks exactly like a site that never trained). What fedmed
guarantees is that *it* never under-counts: it refuses rather than guesses, it records
each spend before it happens, and the ledger lets an auditor check the arithmetic.

Starting a new ledger deliberately (new data set)
-------------------------------------------------
An administrator whose site's training data really changed moves ``privacy-ledger.jsonl``
and ``privacy-ledger.head`` out of the state directory (keep them: they are the record of
what the old data spent) and starts the site with ``--new-ledger 'REASON'``; the reason is
the new ledger's first row. If the new data set shares patients with the old one, the old
spending still applies to them; a fresh budget is then the administrator's decision, made
on the record, not fedmed's.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .accounting import ACCOUNTANT, ACCOUNTANTS, Accountant, AccountingError, HistoryEntry, check_delta
from .accounting import check_entry, epsilon
from .budget import BudgetDecision, decide_round
from .planning import PLAN_FILE, load_plan
from .policy import PRIVACY_UNITS

LEDGER_NAME = "privacy-ledger.jsonl"
HEAD_NAME = "privacy-ledger.head"
LOCK_NAME = "privacy-ledger.lock"
FORMAT_VERSION = 2
HEAD_VERSION = 1
READABLE_VERSIONS = (1, 2)
GENESIS_HASH = "0" * 64
FILE_MODE = 0o600
"""Ledger files are readable and writable by the site's service account only."""

EPSILON_ABS_TOLERANCE = 1e-6
EPSILON_REL_TOLERANCE = 1e-3
"""A recorded ε must equal the recomputed one within 1e-6 + 0.1 % (room for numerical
libraries that differ in the last digits; the spend fedmed uses is the recomputed value)."""

_FIELDS = (
    "v",
    "run",
    "round",
    "mechanism",
    "unit",
    "noise_multiplier",
    "sample_rate",
    "steps",
    "delta",
    "epsilon",
    "accountant",
    "data",
    "note",
    "time",
    "prev",
    "hash",
)
_ENTRY_FIELDS = tuple(name for name in _FIELDS if name != "v")
_FIELDS_V1 = tuple(name for name in _FIELDS if name not in ("mechanism", "unit", "note"))

DP_SGD = "dp-sgd"
"""A training round: ``steps`` Poisson-subsampled Gaussian steps (Abadi et al. 2016)."""
GAUSSIAN = "gaussian"
"""A release of noised counts: one Gaussian mechanism, history entry (σ, 1, 1)."""
SETTLED = "settled"
"""A reservation whose round never reported back, settled as spent (it costs nothing more)."""
NEW_LEDGER = "new-ledger"
"""First row of a ledger started deliberately (``--new-ledger REASON``) over old evidence."""
OPEN_RELEASE = "open-release"
"""A non-private release the site chose for trials (``--no-dp-metrics``): not covered by ε."""
MECHANISMS = (DP_SGD, GAUSSIAN, SETTLED, NEW_LEDGER, OPEN_RELEASE)
SPENDING = (DP_SGD, GAUSSIAN)
"""Mechanisms whose rows add to ε; the others are records with 0 steps."""
UNITS = PRIVACY_UNITS
RECORD_DELTA = 1e-5
"""δ written on a new-ledger row, which spends nothing (ε 0 at any δ) but has the fields."""

INFLIGHT_PREFIX = "privacy-inflight-"
SPENT_MARKER_DIR = "cache"
SPENT_MARKER_PREFIX = "privacy-spent-"

_RESTORE = "restore it from backup; fedmed never starts a fresh budget silently"


class LedgerError(RuntimeError):
    """The privacy ledger cannot be trusted (edited, truncated, other data) or written."""


def canonical_hash(row: dict[str, Any]) -> str:
    """SHA-256 (hex) of a row's canonical JSON: keys sorted, no spaces, ``hash`` left out."""
    body = {k: v for k, v in row.items() if k != "hash"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class LedgerEntry:
    """One row of the ledger (see the module docstring)."""

    run: int | str
    round: int
    mechanism: str
    unit: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    epsilon: float
    accountant: str
    data: str
    note: str
    time: str
    prev: str
    hash: str

    @property
    def history_entry(self) -> HistoryEntry:
        """``(noise_multiplier, sample_rate, steps)``, Opacus' accountant history format
        (0 steps for a row that records without spending)."""
        return (self.noise_multiplier, self.sample_rate, self.steps)

    def to_row(self) -> dict[str, Any]:
        """The JSON object of this entry's line (fields in the documented order)."""
        row: dict[str, Any] = {"v": FORMAT_VERSION}
        for name in _ENTRY_FIELDS:
            row[name] = getattr(self, name)
        return row


@dataclass
class Reservation:
    """A round's ε, recorded before the round runs (`PrivacyLedger.reserve`).

    While the round runs, its process holds a lock on an in-flight file; `finish` removes
    it. A reservation whose file is found unlocked (its process died) is settled on the
    next open: counted, since an update may have left.
    """

    entry: LedgerEntry
    line: int
    _fd: int | None = None
    _path: Path | None = None

    def finish(self) -> None:
        if self._path is not None:
            self._path.unlink(missing_ok=True)
            self._path = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _is_run_id(value: Any) -> bool:
    return _is_int(value) or (isinstance(value, str) and value != "")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _eps_matches(recorded: float, recomputed: float) -> bool:
    return abs(recorded - recomputed) <= EPSILON_ABS_TOLERANCE + EPSILON_REL_TOLERANCE * abs(recomputed)


class PrivacyLedger:
    """The privacy ledger of one site and one data set (see the module docstring).

    Open it with `PrivacyLedger.open`; never construct it directly.
    """

    def __init__(self, state_dir: Path, data_fingerprint: str, entries: list[LedgerEntry], size: int):
        self.state_dir = state_dir
        self.data_fingerprint = data_fingerprint
        self._entries = entries
        self._size = size  # bytes of the ledger file covered by `_entries`
        self._verified_eps: float | None = None
        self._new_ledger_reason: str | None = None

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, state_dir: str | os.PathLike[str], data_fingerprint: str,
             new_ledger: str | None = None) -> "PrivacyLedger":
        """Open (and verify) the ledger in ``state_dir`` for the data with ``data_fingerprint``.

        No ledger and no head: an empty ledger (files are created by the first row) --
        unless the state folder shows that this data set was spent on before (a plan for
        it, or the ledger's mark in the image cache folder), which is refused unless
        ``new_ledger`` gives the administrator's reason for starting afresh; the reason is
        then the new ledger's first row. Otherwise the hash chain, the head, the data
        fingerprint and the last line's ε are checked; any failure raises `LedgerError`.
        Reservations left by a process that died are settled (`Reservation`).
        """
        if not isinstance(data_fingerprint, str) or not data_fingerprint:
            raise LedgerError("privacy ledger: the data fingerprint must be a non-empty string")
        directory = Path(state_dir)
        ledger = cls(directory, data_fingerprint, [], 0)
        ledger._reload()
        ledger._verify_last_epsilon()
        if not ledger._entries:
            evidence = ledger._evidence_of_spending()
            if evidence and not (new_ledger and new_ledger.strip()):
                raise ledger._error(
                    f"it is missing, but {evidence} shows this data set was trained on here before",
                    "restore the ledger from backup, or, to start a new budget knowingly, start the "
                    "site with --new-ledger 'REASON' (the reason is recorded in the new ledger)",
                )
            ledger._new_ledger_reason = new_ledger.strip() if new_ledger and new_ledger.strip() else None
        if any(directory.glob(f"{INFLIGHT_PREFIX}*")):
            with ledger._locked():
                ledger._catch_up()
        return ledger

    def _evidence_of_spending(self) -> str | None:
        """A file in the state folder saying this data set has been spent on, or None."""
        plan = load_plan(self.state_dir)
        if plan is not None and plan.data == self.data_fingerprint:
            return PLAN_FILE
        marker = self.state_dir / SPENT_MARKER_DIR / f"{SPENT_MARKER_PREFIX}{self.data_fingerprint[:32]}"
        if marker.exists():
            return f"{SPENT_MARKER_DIR}/{marker.name}"
        return None

    @classmethod
    def audit(cls, state_dir: str | os.PathLike[str], data_fingerprint: str | None = None) -> "PrivacyLedger":
        """Open the ledger and recompute the ε of *every* line (an auditor's check).

        With ``data_fingerprint`` None, the fingerprint recorded in the head is used (an
        auditor without the site's data can still check the arithmetic and the chain).
        Costs one accounting per line; `open` only recomputes the last line.
        """
        directory = Path(state_dir)
        if data_fingerprint is None:
            head = _read_head(directory / HEAD_NAME) if (directory / HEAD_NAME).exists() else None
            data_fingerprint = head["data"] if head else "unknown"
        ledger = cls.open(directory, data_fingerprint)
        history: list[HistoryEntry] = []
        for number, entry in enumerate(ledger._entries, start=1):
            history.append(entry.history_entry)
            ledger._check_line_epsilon(number, entry, history)
        return ledger

    @property
    def path(self) -> Path:
        return self.state_dir / LEDGER_NAME

    @property
    def head_path(self) -> Path:
        return self.state_dir / HEAD_NAME

    def _error(self, what: str, todo: str = _RESTORE) -> LedgerError:
        return LedgerError(f"privacy ledger {self.path}: {what}; {todo}")

    def _reload(self) -> None:
        """Read and verify chain, head and fingerprint; replaces the in-memory entries."""
        ledger_exists, head_exists = self.path.exists(), self.head_path.exists()
        if not ledger_exists and not head_exists:
            self._entries, self._size = [], 0
            return
        if not head_exists:
            raise self._error(
                f"its head file {HEAD_NAME} is missing, so a lost tail cannot be ruled out",
                "restore both files from backup; fedmed never starts a fresh budget silently",
            )
        head = _read_head(self.head_path, self._error)
        if head["data"] != self.data_fingerprint:
            raise self._data_error(head["data"])
        if not ledger_exists:
            raise self._error(
                f"the file is missing but its head {self.head_path.name} records {head['lines']} lines",
                _RESTORE,
            )
        raw = self.path.read_bytes()
        entries = self._parse(raw)
        n = len(entries)
        if n < head["lines"]:
            missing = head["lines"] - n
            raise self._error(
                f"truncated: its head records {head['lines']} lines but the file has {n} "
                + (f"(the last {missing} lines were removed)" if missing > 1 else "(the last line was removed)")
            )
        anchored = entries[head["lines"] - 1].hash if head["lines"] else GENESIS_HASH
        if anchored != head["last_hash"]:
            raise self._error(
                f"line {head['lines']} does not match the hash recorded in {self.head_path.name} "
                "(the ledger was replaced or rewritten)"
            )
        self._entries, self._size = entries, len(raw)
        self._verified_eps = None

    def _data_error(self, found: str) -> LedgerError:
        return LedgerError(
            f"privacy ledger {self.path} belongs to other training data (ledger data {found!r}, "
            f"this site's data {self.data_fingerprint!r}); a ledger is per data set: if the site's "
            f"data set really changed, move {LEDGER_NAME} and {HEAD_NAME} out of {self.state_dir} "
            "to start a new ledger deliberately"
        )

    def _parse(self, raw: bytes) -> list[LedgerEntry]:
        if raw and not raw.endswith(b"\n"):
            last = raw.count(b"\n") + 1
            raise self._error(
                f"line {last} is incomplete (the file does not end with a newline: "
                "a write was interrupted or the file was cut)"
            )
        entries: list[LedgerEntry] = []
        prev = GENESIS_HASH
        for number, line in enumerate(raw.split(b"\n")[:-1] if raw else [], start=1):
            try:
                row = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise self._error(f"line {number} is not valid JSON (it was edited or damaged)") from None
            if not isinstance(row, dict) or row.get("v") not in READABLE_VERSIONS:
                version = row.get("v") if isinstance(row, dict) else None
                raise self._error(
                    f"line {number} has format version {version!r}, this fedmed reads {READABLE_VERSIONS}",
                    "open it with the fedmed version that wrote it",
                )
            if set(row) != set(_FIELDS if row["v"] == FORMAT_VERSION else _FIELDS_V1):
                raise self._error(f"line {number} does not have the ledger's fields (it was edited)")
            if canonical_hash(row) != row["hash"]:
                raise self._error(f"line {number} was modified (hash mismatch)")
            if row["prev"] != prev:
                raise self._error(
                    f"line {number} does not follow line {number - 1} in the hash chain "
                    "(lines were removed from the middle, inserted or reordered)"
                    if number > 1
                    else "line 1 does not start the hash chain (lines were removed from the start)"
                )
            if row["data"] != self.data_fingerprint:
                raise self._data_error(row["data"])
            entries.append(self._entry(number, row))
            prev = row["hash"]
        return entries

    def _entry(self, number: int, row: dict[str, Any]) -> LedgerEntry:
        if row["v"] == 1:  # format 1 recorded DP-SGD rounds of images only
            row = {**row, "mechanism": DP_SGD, "unit": "image", "note": ""}
        ok = (
            _is_run_id(row["run"])
            and _is_int(row["round"])
            and row["round"] >= 0
            and _is_number(row["noise_multiplier"])
            and _is_number(row["sample_rate"])
            and _is_int(row["steps"])
            and _is_number(row["delta"])
            and 0 < row["delta"] < 1
            and _is_number(row["epsilon"])
            and row["epsilon"] >= 0
            and row["accountant"] in ACCOUNTANTS
            and row["mechanism"] in MECHANISMS
            and row["unit"] in UNITS
            and isinstance(row["note"], str)
            and isinstance(row["time"], str)
            and (row["mechanism"] in SPENDING or row["steps"] == 0)
        )
        if ok:
            try:
                check_entry((row["noise_multiplier"], row["sample_rate"], row["steps"]))
            except AccountingError:
                ok = False
        if not ok:
            raise self._error(f"line {number} has a field of the wrong type or out of range")
        return LedgerEntry(**{name: row[name] for name in _ENTRY_FIELDS})

    def _check_line_epsilon(self, number: int, entry: LedgerEntry, history: list[HistoryEntry]) -> float:
        recomputed = epsilon(history, entry.delta, entry.accountant)
        if not _eps_matches(entry.epsilon, recomputed):
            raise self._error(
                f"line {number} records epsilon {entry.epsilon:.6g} but its rows give {recomputed:.6g} "
                f"({entry.accountant}, delta {entry.delta:g}); the recorded spend is wrong"
            )
        return recomputed

    def _verify_last_epsilon(self) -> None:
        if not self._entries:
            self._verified_eps = 0.0
            return
        recomputed = self._check_line_epsilon(len(self._entries), self._entries[-1], self.history)
        self._verified_eps = max(recomputed, self._entries[-1].epsilon)

    # ------------------------------------------------------------------ reading
    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        """Every round recorded, oldest first."""
        return tuple(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def history(self) -> list[HistoryEntry]:
        """``(noise_multiplier, sample_rate, steps)`` per line, oldest first (Opacus' format)."""
        return [entry.history_entry for entry in self._entries]

    @property
    def epsilon(self) -> float:
        """The cumulative ε of the last line (0 for an empty ledger), as verified on open:
        the larger of the recorded and the recomputed value."""
        if self._verified_eps is None:
            self._verify_last_epsilon()
        assert self._verified_eps is not None
        return self._verified_eps

    @property
    def delta(self) -> float | None:
        """δ of the last line, None for an empty ledger."""
        return self._entries[-1].delta if self._entries else None

    def spent(self, delta: float, accountant: Accountant = ACCOUNTANT) -> float:
        """ε of everything in the ledger at ``delta`` (0 when empty); the verified value of
        the last line when it was recorded at this ``delta`` with this accountant."""
        last = self._entries[-1] if self._entries else None
        if last is not None and last.delta == float(delta) and last.accountant == accountant:
            return self.epsilon
        return epsilon(self.history, delta, accountant)

    def rounds_in_run(self, run: int | str) -> list[int]:
        """Round numbers recorded for ``run``, in the order trained (a round trained twice,
        e.g. after a restart, appears twice: it was spent twice)."""
        return [entry.round for entry in self._entries if entry.run == run]

    def runs(self) -> list[int | str]:
        """Run ids in the ledger, in order of first appearance."""
        return list(dict.fromkeys(entry.run for entry in self._entries))

    # ------------------------------------------------------------------ writing
    def append(
        self,
        run: int | str,
        round: int,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        delta: float,
        accountant: Accountant = ACCOUNTANT,
        *,
        mechanism: str = DP_SGD,
        unit: str = "image",
        note: str = "",
    ) -> LedgerEntry:
        """Record one row unconditionally and return its entry (`reserve` is the
        budget-checked form the site uses).

        The entry's ε is computed here, by composing the whole ledger's history plus this
        row at ``delta``. The line is appended, flushed and fsynced, then the head is
        replaced atomically. Appends from several processes are serialised with a file
        lock; if another process appended meanwhile, the ledger is re-read (and verified)
        first.
        """
        row = self._checked_row(run, round, noise_multiplier, sample_rate, steps, delta,
                                accountant, mechanism, unit, note)
        with self._locked():
            self._catch_up()
            return self._write_row(row, None)

    def reserve(
        self,
        run: int | str,
        round: int,
        entry: HistoryEntry,
        delta: float,
        target_epsilon: float,
        *,
        mechanism: str = DP_SGD,
        unit: str = "image",
        in_flight: bool = True,
    ) -> tuple[BudgetDecision, Reservation | None]:
        """Check the budget and record the row, as one step under the ledger's lock.

        ``entry`` is the row's ``(noise_multiplier, sample_rate, steps)``. Returns the
        decision and, when it fits, the reservation (already counted in the
        ledger). Another process's spending is re-read under the same lock, so two runs on
        one state folder cannot both pass the check on the same history. With
        ``in_flight``, the reservation holds an in-flight lock until `Reservation.finish`;
        a crash leaves it to be settled on the next open.
        """
        row = self._checked_row(run, round, *entry, delta, ACCOUNTANT, mechanism, unit, "")
        with self._locked():
            self._catch_up()
            decision = decide_round(self, target_epsilon, row["delta"], row["noise_multiplier"],
                                    row["sample_rate"], row["steps"])
            if not decision.train:
                return decision, None
            entry = self._write_row(row, decision.epsilon_after)
            reservation = Reservation(entry, len(self._entries))
            if in_flight:
                path = self.state_dir / f"{INFLIGHT_PREFIX}{entry.hash[:16]}"
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
                fcntl.flock(fd, fcntl.LOCK_EX)
                os.write(fd, (json.dumps({"line": reservation.line, "hash": entry.hash}) + "\n").encode())
                reservation._fd, reservation._path = fd, path
        return decision, reservation

    def _checked_row(self, run, round, noise_multiplier, sample_rate, steps, delta, accountant,
                     mechanism, unit, note) -> dict[str, Any]:
        def refuse(what: str) -> LedgerError:
            return LedgerError(f"privacy ledger {self.path}: not appended: {what}")

        if not _is_run_id(run):
            raise refuse(f"run must be an int or a non-empty string, got {run!r}")
        if not _is_int(round) or round < 0:
            raise refuse(f"round must be an int >= 0, got {round!r}")
        if accountant not in ACCOUNTANTS:
            raise refuse(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
        if mechanism not in MECHANISMS or unit not in UNITS or not isinstance(note, str):
            raise refuse(f"mechanism {mechanism!r} / unit {unit!r} / note: not a known value")
        try:
            sigma, q, n_steps = check_entry((noise_multiplier, sample_rate, steps))
            delta = check_delta(delta)
        except AccountingError as err:
            raise refuse(str(err)) from None
        if mechanism not in SPENDING and n_steps:
            raise refuse(f"a {mechanism!r} row spends nothing: steps must be 0")
        return {"v": FORMAT_VERSION, "run": run, "round": round, "mechanism": mechanism, "unit": unit,
                "noise_multiplier": sigma, "sample_rate": q, "steps": n_steps, "delta": delta,
                "accountant": accountant, "note": note}

    def _catch_up(self) -> None:
        """Under the lock: re-read what other processes appended, settle abandoned
        reservations, and write a pending new-ledger row."""
        on_disk = self.path.stat().st_size if self.path.exists() else 0
        if on_disk != self._size or self.head_path.exists() != bool(self._size):
            self._reload()
            self._verify_last_epsilon()
        self._settle_abandoned()
        if self._new_ledger_reason is not None and not self._entries:
            last = {"run": "admin", "round": 0, "mechanism": NEW_LEDGER, "unit": "image",
                    "noise_multiplier": 1.0, "sample_rate": 1.0, "steps": 0, "delta": RECORD_DELTA,
                    "accountant": ACCOUNTANT, "note": self._new_ledger_reason, "v": FORMAT_VERSION}
            self._write_row(last, 0.0)
        self._new_ledger_reason = None

    def _settle_abandoned(self) -> None:
        """Settle every reservation whose process is gone (its in-flight file is unlocked)."""
        for path in sorted(self.state_dir.glob(f"{INFLIGHT_PREFIX}*")):
            fd = os.open(path, os.O_RDONLY)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its round is still running
                if os.fstat(fd).st_nlink == 0:
                    continue  # finished between our listing and our lock
                try:
                    info = json.loads(path.read_text() or "{}")
                except ValueError:
                    info = {}
                line = info.get("line")
                reserved = self._entries[line - 1] if isinstance(line, int) and 0 < line <= len(self._entries) else None
                if reserved is not None and reserved.hash == info.get("hash"):
                    row = {"v": FORMAT_VERSION, "run": reserved.run, "round": reserved.round,
                           "mechanism": SETTLED, "unit": reserved.unit,
                           "noise_multiplier": reserved.noise_multiplier,
                           "sample_rate": reserved.sample_rate, "steps": 0, "delta": reserved.delta,
                           "accountant": reserved.accountant,
                           "note": f"line {line} reserved but never reported back; counted as spent"}
                    self._write_row(row, None)
                path.unlink(missing_ok=True)
            finally:
                os.close(fd)

    def _write_row(self, row: dict[str, Any], cumulative: float | None) -> LedgerEntry:
        """Append ``row`` (under the lock); ``cumulative`` is its ε when already known."""
        if cumulative is None:
            cumulative = epsilon(self.history + [(row["noise_multiplier"], row["sample_rate"], row["steps"])],
                                 row["delta"], row["accountant"])
        row = {**row, "epsilon": cumulative, "data": self.data_fingerprint,
               "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "prev": self._entries[-1].hash if self._entries else GENESIS_HASH}
        row["hash"] = canonical_hash(row)
        line = (json.dumps(row, ensure_ascii=True, allow_nan=False) + "\n").encode("ascii")
        created = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        try:
            written = 0
            while written < len(line):
                written += os.write(fd, line[written:])
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            _fsync_dir(self.state_dir)
            self._mark_spent()
        entry = LedgerEntry(**{name: row[name] for name in _ENTRY_FIELDS})
        self._entries.append(entry)
        self._size += len(line)
        self._verified_eps = cumulative
        self._write_head()
        return entry

    def _mark_spent(self) -> None:
        """Leave a mark in the image cache folder that this data set has a ledger: deleting
        the two ledger files then no longer looks like a site that never trained."""
        folder = self.state_dir / SPENT_MARKER_DIR
        folder.mkdir(parents=True, exist_ok=True)
        marker = folder / f"{SPENT_MARKER_PREFIX}{self.data_fingerprint[:32]}"
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        try:
            os.write(fd, (self.data_fingerprint + "\n").encode())
        finally:
            os.close(fd)

    def _write_head(self) -> None:
        head = {
            "v": HEAD_VERSION,
            "data": self.data_fingerprint,
            "lines": len(self._entries),
            "last_hash": self._entries[-1].hash if self._entries else GENESIS_HASH,
        }
        tmp = self.state_dir / (HEAD_NAME + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        try:
            os.write(fd, (json.dumps(head) + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.head_path)
        _fsync_dir(self.state_dir)

    @contextlib.contextmanager
    def _locked(self):
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.state_dir / LOCK_NAME, os.O_WRONLY | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock


def _read_head(path: Path, error=None) -> dict[str, Any]:
    """Read and check a head file; ``error(what, todo)`` builds the exception."""

    def fail(what: str) -> LedgerError:
        if error is not None:
            return error(what, _RESTORE)
        return LedgerError(f"privacy ledger head {path}: {what}; {_RESTORE}")

    try:
        head = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise fail(f"its head file {path.name} is unreadable") from None
    if (
        not isinstance(head, dict)
        or head.get("v") != HEAD_VERSION
        or not isinstance(head.get("data"), str)
        or not _is_int(head.get("lines"))
        or head["lines"] < 0
        or not isinstance(head.get("last_hash"), str)
    ):
        raise fail(f"its head file {path.name} is malformed")
    return head

