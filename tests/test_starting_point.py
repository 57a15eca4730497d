"""Round 1's weights and the frozen names, made by a child process so the ServerApp never
imports torch (`fedmed.server.starting_point`)."""

from __future__ import annotations

import numpy as np

from fedmed.common.federation import FederationConfig
from fedmed.common.settings import ImageSettings
from fedmed.server import starting_point


def test_the_child_writes_what_the_serverapp_would_have_built(tmp_path):
    config = FederationConfig(model="cnn", image=ImageSettings(size=28), seed=3)
    meta = {"freeze": "body"}
    made = starting_point.read(tmp_path, config.to_dict(), meta)  # no file yet: made in a child
    here = starting_point.compute(config, meta)
    assert list(made.arrays) == list(here.arrays) and made.frozen == here.frozen and made.frozen
    assert all(np.array_equal(made.arrays[k], here.arrays[k]) for k in here.arrays)
    # Made for these settings: read again as it is; other settings are made afresh.
    stamp = (tmp_path / starting_point.FILE).stat().st_mtime_ns
    starting_point.read(tmp_path, config.to_dict(), meta)
    assert (tmp_path / starting_point.FILE).stat().st_mtime_ns == stamp
    other = starting_point.read(tmp_path, FederationConfig(model="cnn", image=ImageSettings(size=28),
                                                           seed=4).to_dict(), meta)
    assert not all(np.array_equal(other.arrays[k], here.arrays[k]) for k in here.arrays)


def test_an_unusable_init_from_file_is_reported_and_the_frozen_names_still_known(tmp_path):
    config = FederationConfig(model="cnn", image=ImageSettings(size=28))
    meta = {"freeze": "body", "init_from": {"path": str(tmp_path / "gone.pt"), "sha256": "0" * 64}}
    point = starting_point.read(tmp_path, config.to_dict(), meta)
    assert point.arrays is None and "gone.pt" in point.error
    assert point.frozen == starting_point.compute(config, {"freeze": "body"}).frozen
