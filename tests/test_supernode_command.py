"""The node config `fedmed client` hands its SuperNode is one Flower can read."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from flwr.common.config import parse_config_args

from fedmed.client.privacy.policy import PrivacyPolicy
from fedmed.client.site import site_from_node_config
from fedmed.client.supernode import ClientOptions, supernode_command


def test_every_privacy_setting_reaches_the_site_as_flower_parses_it(tmp_path: Path):
    privacy = replace(PrivacyPolicy(), unit="patient", new_ledger="new export of 2026", eval_share=0.2)
    options = ClientOptions(site="A", data_dir=tmp_path, server="127.0.0.1:9092", state_dir=tmp_path / "state",
                            insecure=True, privacy=privacy)
    command = supernode_command(options, 9094)
    parsed = parse_config_args([command[command.index("--node-config") + 1]])
    assert parsed["privacy-unit"] == "patient" and parsed["new-ledger"] == "new export of 2026"
    assert site_from_node_config(parsed).privacy == privacy
