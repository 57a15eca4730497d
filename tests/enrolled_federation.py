"""A coordinator's CA and the public keys of its enrolled sites, as the end-to-end tests
set them up: `fedmed server init` and `fedmed client keygen` done by their library calls."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterable

from fedmed.common.certs import init_federation, make_site_keys


def enrolled_federation(tmp_path: Path, sites: Iterable[str], enrolled: Iterable[str] | None = None,
                        certs: str = "coordinator-certs") -> tuple[Path, Path]:
    """The coordinator's certificate folder and its `--sites-dir`. Every site in `sites`
    gets keys in ``tmp_path/certs-<site>``; those in `enrolled` (all, by default) have
    their public key in the sites folder."""
    co = tmp_path / certs
    init_federation(co, "localhost")
    keys = tmp_path / "site-keys"
    keys.mkdir()
    sites = tuple(sites)
    for site in sites:
        make_site_keys(site, tmp_path / f"certs-{site}", co / "ca.crt")
    for site in sites if enrolled is None else tuple(enrolled):
        shutil.copy(tmp_path / f"certs-{site}" / f"{site}.pub", keys)
    return co, keys
