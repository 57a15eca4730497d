"""The `fedmed` command: examples in every --help, config files with flag overrides,
one-line errors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedmed.cli.main import app

runner = CliRunner()

def _commands(command=None, path=()):
    """Every command and group of `fedmed`, as argument lists."""
    import typer.main

    command = command or typer.main.get_command(app)
    yield list(path)
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from _commands(sub, (*path, name))


COMMANDS = list(_commands())


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "fedmed")
def test_every_help_shows_an_example(command):
    for flag in ("--help", "-h"):
        result = runner.invoke(app, [*command, flag], terminal_width=200)
        assert result.exit_code == 0, result.output
        assert "Example: fedmed" in result.output


def _unboxed(output: str) -> str:
    """The text of click's error box, which wraps at 80 columns wherever a path ends."""
    return " ".join(output.replace("│", " ").split())


def test_version():
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"fedmed {version('fedmed')} (Flower {version('flwr')})"


@pytest.mark.parametrize("text, message", [
    ("rounds = 2.5\n", "rounds = 2.5: expected a whole number"),
    ('rounds = "3"\n', "rounds = '3': expected a whole number"),
    ("lr = true\n", "lr = True: expected a number"),
    ("model = 3\n", "model = 3: expected a quoted string"),
])
def test_config_values_must_have_their_flags_type(tmp_path, text, message):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    result = runner.invoke(app, ["simulate", "--config", str(config), "--out", str(tmp_path / "run")],
                           terminal_width=300)
    assert result.exit_code == 2 and message in _unboxed(result.output), result.output


@pytest.mark.parametrize("args, message", [
    (["simulate", "--out", "x", "--data", ".", "--partition", "dirichlet:0.5"],
     "--partition: only for --npz (with --data the sites are the folder's sub-folders); drop it"),
    (["simulate", "--out", "x", "--data", ".", "--sites", "4"], "--sites: only for --npz"),
    (["server", "start", "--resume", "x", "--rounds", "9", "--lr", "0.1"],
     "--rounds, --lr: a resumed run keeps the training settings it started with; drop them"),
])
def test_conflicting_options_are_refused(args, message):
    result = runner.invoke(app, args, terminal_width=300)
    assert result.exit_code == 2 and message in result.output, result.output


def test_config_file_gives_defaults_and_flags_override(tmp_path, monkeypatch, synthetic_sites):
    captured = {}

    def fake_simulate(sites, config, out, **kwargs):
        captured.update(sites=[s.name for s in sites], config=config, out=out, meta=kwargs.get("meta"))
        return {"status": "completed"}

    monkeypatch.setattr("fedmed.simulations.runner.simulate", fake_simulate)
    config = tmp_path / "sim.toml"
    config.write_text(f'data = "{synthetic_sites}"\nout = "{tmp_path / "run"}"\n'
                      'rounds = 7\nmodel = "resnet18"\nbatch-size = 8\nno-dp = true\n')
    result = runner.invoke(app, ["simulate", "--config", str(config), "--rounds", "2"])
    assert result.exit_code == 0, result.output
    assert captured["config"].rounds == 2              # the flag wins
    assert captured["config"].model == "resnet18"      # the file fills in
    assert captured["config"].batch_size == 8
    assert captured["sites"] == ["A", "B", "C"]
    assert captured["meta"]["dp"] is False


def test_unknown_config_key_is_named(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("roundz = 3\n")
    result = runner.invoke(app, ["simulate", "--config", str(config)], terminal_width=300)
    assert result.exit_code != 0
    assert "unknown key 'roundz'" in _unboxed(result.output), result.output


def test_init_writes_examples_that_parse(tmp_path):
    result = runner.invoke(app, ["init", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    import tomllib

    assert tomllib.loads((tmp_path / "federation.toml").read_text())["rounds"] == 10
    assert tomllib.loads((tmp_path / "site.toml").read_text())["site"] == "A"
    again = runner.invoke(app, ["init", "--out", str(tmp_path)])
    assert again.exit_code != 0 and "--force" in again.output


@pytest.mark.parametrize("example, command", [("federation.toml", ["server", "start"]), ("site.toml", ["client"])])
def test_init_examples_are_accepted_by_their_commands(tmp_path, example, command):
    import typer.main

    from fedmed.cli.config_files import EXAMPLES, read_config_file

    click_command = typer.main.get_command(app)
    for name in command:
        click_command = click_command.commands[name]
    allowed = {p.name: p for p in click_command.params}
    path = tmp_path / example
    path.write_text(EXAMPLES[example])
    assert read_config_file(path, allowed)  # raises on any key the command lacks or value of the wrong type


@pytest.mark.parametrize("args, message", [
    (["simulate", "--out", "x"], "give exactly one of --data DIR or --npz FILE"),
    (["simulate", "--out", "x", "--data", "/nonexistent-site-root"], "--data /nonexistent-site-root"),
    (["simulate", "--out", "x", "--npz", "/nonexistent.npz"], "/nonexistent.npz"),
    (["simulate", "--out", "x", "--data", ".", "--model", "vgg"], "model: expected one of cnn, dpcnn, resnet18"),
    (["data", "synth", "--out", "x", "--sites", ","], "--sites"),
])
def test_bad_input_is_one_clear_line(args, message):
    result = runner.invoke(app, args, terminal_width=300)
    assert result.exit_code != 0
    assert message in result.output, result.output


def test_augmentation_options_reach_the_federation_config(tmp_path, monkeypatch, synthetic_sites):
    captured = {}

    def fake_simulate(sites, config, out, **kwargs):
        captured["simulate"] = config
        return {"status": "completed"}

    def fake_start_server(options):
        captured["server"] = options.config
        return 0

    monkeypatch.setattr("fedmed.simulations.runner.simulate", fake_simulate)
    monkeypatch.setattr("fedmed.server.deployment.start_server", fake_start_server)
    result = runner.invoke(app, ["simulate", "--data", str(synthetic_sites), "--out", str(tmp_path / "sim"),
                                 "--no-augment", "--flips", "--augment-views", "3"])
    assert result.exit_code == 0, result.output
    config = captured["simulate"]
    assert (config.augment, config.flips, config.augment_views) == (False, True, 3)

    # The config file reaches them too (keys are the flag names), and a flag overrides it.
    federation = tmp_path / "federation.toml"
    federation.write_text("augment = false\nflips = true\naugment-views = 4\n")
    result = runner.invoke(app, ["server", "start", "--insecure", "--out", str(tmp_path / "srv"),
                                 "--config", str(federation), "--augment-views", "2"])
    assert result.exit_code == 0, result.output
    config = captured["server"]
    assert (config.augment, config.flips, config.augment_views) == (False, True, 2)

    # The defaults are the config's own.
    from fedmed.common.federation import FederationConfig

    result = runner.invoke(app, ["server", "start", "--insecure", "--out", str(tmp_path / "srv2")])
    assert result.exit_code == 0, result.output
    default = FederationConfig()
    config = captured["server"]
    assert (config.augment, config.flips, config.augment_views) == (default.augment, default.flips,
                                                                      default.augment_views)


@pytest.mark.parametrize("args, message", [
    (["server", "start", "--insecure", "--out", "x", "--augment-views", "0"],
     "error: augmentation views: expected 1 to 64, got 0"),
    (["simulate", "--out", "x", "--data", ".", "--augment-views", "65"],
     "error: augmentation views: expected 1 to 64, got 65"),
    (["server", "start", "--resume", "x", "--no-augment", "--augment-views", "2"],
     "--no-augment, --augment-views: a resumed run keeps the training settings it started with"),
])
def test_bad_augmentation_options_are_one_clear_line(args, message):
    result = runner.invoke(app, args, terminal_width=300)
    assert result.exit_code == 2 and message in result.output, result.output


@pytest.mark.parametrize("command", [["pretrain"], ["simulate"], ["server", "start"]])
def test_model_help_lists_the_models_that_can_be_built(command):
    from fedmed.common.models import _BUILDERS, MODEL_NAMES

    assert set(MODEL_NAMES) == set(_BUILDERS)  # the names the CLI and config know are the registry's
    result = runner.invoke(app, [*command, "--help"], terminal_width=400)
    assert result.exit_code == 0, result.output
    assert f"One of {', '.join(MODEL_NAMES)}" in _unboxed(result.output), result.output
