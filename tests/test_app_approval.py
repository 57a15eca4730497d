"""Which app bundles a site runs: its own fedmed's, or hashes it approved."""

from __future__ import annotations

import hashlib
import json

import pytest
from flwr.cli.build import build_fab_from_files

from fedmed.client.app_approval import REASON, AppApproval, parse_hashes
from fedmed.common.app_bundle import app_pyproject, fab_hash


def _fab(pyproject: str, extra: dict[str, bytes] | None = None) -> bytes:
    return build_fab_from_files({"pyproject.toml": pyproject.encode(), **(extra or {})})[0]


def test_the_sites_own_fedmed_bundle_is_approved(tmp_path):
    approval = AppApproval.default(state_dir=tmp_path, site="A")
    fab = _fab(app_pyproject())
    assert hashlib.sha256(fab).hexdigest() == fab_hash()
    assert approval.check(fab, fab_hash(), run_id=1) is None
    assert not (tmp_path / "app-refusals.jsonl").exists()


def test_a_modified_bundle_is_refused_and_logged_once_per_run(tmp_path, capsys):
    approval = AppApproval.default(state_dir=tmp_path, site="A")
    modified = _fab(app_pyproject().replace("fedmed.client.app:app", "payload:app"),
                    {"payload.py": b"app = None\n"})
    digest = hashlib.sha256(modified).hexdigest()
    for _ in range(3):
        assert approval.check(modified, digest, run_id=7) == REASON
    lines = (tmp_path / "app-refusals.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["fab_sha256"] == digest
    assert f"--approve {digest}" in capsys.readouterr().err


def test_a_bundle_is_judged_by_its_bytes_not_by_the_hash_it_claims(tmp_path):
    approval = AppApproval.default(state_dir=tmp_path)
    modified = _fab(app_pyproject(version="9.9.9"))
    assert approval.check(modified, fab_hash(), run_id=1) == REASON


def test_approve_adds_a_reviewed_bundle():
    other = _fab(app_pyproject(version="9.9.9"))
    digest = hashlib.sha256(other).hexdigest()
    approval = AppApproval.default((digest.upper(),))
    assert approval.check(other, digest, run_id=1) is None
    with pytest.raises(ValueError, match="--approve 'abc'"):
        parse_hashes(["abc"])
