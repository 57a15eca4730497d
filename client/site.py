"""Who a site is and where its data lives, as the ClientApp sees it.

In a deployment the SuperNode's node config names the site and its folders
(`site='A' data-dir='/pacs-export' state-dir='/var/lib/fedmed/A'`); in a simulation the
simulation builds the same `Site` for each partition. Either way the data loader runs at
the site and its result never leaves it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fedmed.client.errors import SafeError
from fedmed.client.privacy.policy import PrivacyPolicy
from fedmed.common.federation import FederationConfig

DEFAULT_STATE_ROOT = Path("~/.fedmed/sites")


@dataclass(frozen=True)
class Site:
    name: str
    state_dir: Path
    load_data: Callable[[FederationConfig], "object"]  # -> fedmed.client.sitedata.SiteData
    privacy: PrivacyPolicy = PrivacyPolicy()


def default_state_dir(site: str) -> Path:
    return (DEFAULT_STATE_ROOT / site).expanduser()


def dicom_site(name: str, data_dir: Path, state_dir: Path, privacy: PrivacyPolicy = PrivacyPolicy()) -> Site:
    """A site whose data is a DICOM folder (labels.csv or class sub-folders). Its images
    are read from the site's image cache; a short-lived child scans and decodes the
    folder first when it changed (`fedmed.client.sitedata.fill`), so the process that
    trains never loads pydicom."""

    def load(config: FederationConfig):
        from fedmed.client.sitedata.fill import load_site

        return load_site(
            data_dir,
            state_dir,
            config.image,
            config.classes,
            val_fraction=config.val_fraction,
            seed=config.seed,
            say=lambda line: print(f"[fedmed site {name}] {line}", flush=True),
        )

    return Site(name=name, state_dir=state_dir, load_data=load, privacy=privacy)


class SiteConfigError(SafeError, ValueError):
    """The node config does not describe a usable site."""


def site_from_node_config(node_config: dict) -> Site:
    """The site a SuperNode was started for (see `fedmed client`)."""
    try:
        name = str(node_config["site"])
        data_dir = Path(str(node_config["data-dir"]))
    except KeyError as missing:
        raise SiteConfigError(
            f"node config: missing {missing.args[0]!r}; start sites with `fedmed client`"
        ) from None
    state = node_config.get("state-dir")
    state_dir = Path(str(state)) if state else default_state_dir(name)
    return dicom_site(name, data_dir, state_dir, PrivacyPolicy.from_node_config(node_config))
