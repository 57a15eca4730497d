"""The `fedmed` command: examples in every --help, config files with flag overrides,
one-line errors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedmed.cli.main import app
from fedmed.common.federation import FederationConfig

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


@pytest.fixture
def captured(monkeypatch):
    """The FederationConfig `simulate` and `server start` would run with, by command;
    neither runs."""
    seen = {}

    def fake_simulate(sites, config, out, **kwargs):
        seen["simulate"] = config
        return {"status": "completed"}

    def fake_start_server(options):
        seen["server"] = options.config
        return 0

    monkeypatch.setattr("fedmed.simulations.runner.simulate", fake_simulate)
    monkeypatch.setattr("fedmed.server.deployment.start_server", fake_start_server)
    return seen


def test_augmentation_options_reach_the_federation_config(tmp_path, captured, synthetic_sites):
    result = runner.invoke(app, ["simulate", "--data", str(synthetic_sites), "--out", str(tmp_path / "sim"),
                                 "--augment", "--flips", "--augment-views", "3"])
    assert result.exit_code == 0, result.output
    config = captured["simulate"]
    assert (config.augment, config.flips, config.augment_views) == (True, True, 3)

    # The config file reaches them too (keys are the flag names), and a flag overrides it.
    federation = tmp_path / "federation.toml"
    federation.write_text("augment = false\nflips = true\naugment-views = 4\n")
    result = runner.invoke(app, ["server", "start", "--insecure", "--out", str(tmp_path / "srv"),
                                 "--config", str(federation), "--augment", "--augment-views", "2"])
    assert result.exit_code == 0, result.output
    config = captured["server"]
    assert (config.augment, config.flips, config.augment_views) == (True, True, 2)

    # The defaults are the config's own.
    from fedmed.common.federation import FederationConfig

    result = runner.invoke(app, ["server", "start", "--insecure", "--out", str(tmp_path / "srv2")])
    assert result.exit_code == 0, result.output
    default = FederationConfig()
    config = captured["server"]
    assert (config.augment, config.flips, config.augment_views) == (default.augment, default.flips,
                                                                      default.augment_views)


@pytest.mark.parametrize("command", [["pretrain"], ["simulate"], ["server", "start"]])
def test_model_help_lists_the_models_that_can_be_built(command):
    from fedmed.common.models import _BUILDERS, MODEL_NAMES

    assert set(MODEL_NAMES) == set(_BUILDERS)  # the names the CLI and config know are the registry's
    result = runner.invoke(app, [*command, "--help"], terminal_width=400)
    assert result.exit_code == 0, result.output
    assert f"One of {', '.join(MODEL_NAMES)}" in _unboxed(result.output), result.output


STRATEGY_AND_DP_FIELDS = ("strategy", "server_lr", "server_momentum", "dp_batch_size", "dp_lr", "dp_momentum")


def _strategy_and_dp(config):
    return tuple(getattr(config, name) for name in STRATEGY_AND_DP_FIELDS)


def test_strategy_and_dp_recipe_options_reach_the_federation_config(tmp_path, captured, synthetic_sites):
    result = runner.invoke(app, ["simulate", "--data", str(synthetic_sites), "--out", str(tmp_path / "sim"),
                                 "--strategy", "fedavgm", "--server-momentum", "0.8",
                                 "--dp-batch-size", "256", "--dp-lr", "0.25", "--dp-momentum", "0.5"])
    assert result.exit_code == 0, result.output
    assert _strategy_and_dp(captured["simulate"]) == ("fedavgm", FederationConfig().server_lr, 0.8, 256, 0.25, 0.5)

    result = runner.invoke(app, ["server", "start", "--insecure", "--out", str(tmp_path / "srv0"),
                                 "--strategy", "fedadam", "--server-lr", "0.03",
                                 "--dp-batch-size", "64", "--dp-lr", "2", "--dp-momentum", "0.9"])
    assert result.exit_code == 0, result.output
    assert _strategy_and_dp(captured["server"]) == ("fedadam", 0.03, FederationConfig().server_momentum, 64, 2.0, 0.9)

    # The config file reaches them too (keys are the flag names), and a flag overrides it.
    federation = tmp_path / "federation.toml"
    federation.write_text('strategy = "fedadam"\nserver-lr = 0.1\nserver-momentum = 0.5\n'
                          'dp-batch-size = 128\ndp-lr = 0.5\ndp-momentum = 0.3\n')
    result = runner.invoke(app, ["server", "start", "--insecure", "--out", str(tmp_path / "srv"),
                                 "--config", str(federation), "--dp-lr", "0.7"])
    assert result.exit_code == 0, result.output
    assert _strategy_and_dp(captured["server"]) == ("fedadam", 0.1, 0.5, 128, 0.7, 0.3)

    # The defaults are the config's own.
    result = runner.invoke(app, ["simulate", "--data", str(synthetic_sites), "--out", str(tmp_path / "sim2")])
    assert result.exit_code == 0, result.output
    assert _strategy_and_dp(captured["simulate"]) == _strategy_and_dp(FederationConfig())


@pytest.mark.parametrize("args, message", [
    (["server", "start", "--insecure", "--out", "x", "--augment-views", "0"],
     "error: augmentation views: expected 1 to 64, got 0"),
    (["simulate", "--out", "x", "--data", ".", "--augment-views", "65"],
     "error: augmentation views: expected 1 to 64, got 65"),
    (["server", "start", "--resume", "x", "--no-augment", "--augment-views", "2"],
     "--no-augment, --augment-views: a resumed run keeps the training settings it started with"),
    (["server", "start", "--insecure", "--out", "x", "--strategy", "fedprox"],
     "error: strategy: expected one of fedavg, fedavgm, fedadam, got 'fedprox'"),
    (["simulate", "--out", "x", "--data", ".", "--server-lr", "0"],
     "error: server learning rate: expected a positive number, got 0.0"),
    (["server", "start", "--insecure", "--out", "x", "--server-momentum", "1"],
     "error: server momentum: expected 0 <= momentum < 1, got 1.0"),
    (["simulate", "--out", "x", "--data", ".", "--dp-batch-size", "0"],
     "error: DP batch size: expected at least 1, got 0"),
    (["server", "start", "--insecure", "--out", "x", "--dp-lr", "-1"],
     "error: DP learning rate: expected a positive number, got -1.0"),
    (["simulate", "--out", "x", "--data", ".", "--dp-momentum", "1.5"],
     "error: DP momentum: expected 0 <= momentum < 1, got 1.5"),
    (["server", "start", "--resume", "x", "--strategy", "fedavgm", "--server-momentum", "0.5"],
     "--strategy, --server-momentum: a resumed run keeps the training settings it started with; drop them"),
    (["server", "start", "--resume", "x", "--server-lr", "0.1", "--dp-batch-size", "64", "--dp-lr", "0.5",
      "--dp-momentum", "0.1"],
     "--server-lr, --dp-batch-size, --dp-lr, --dp-momentum: a resumed run keeps the training settings"),
    (["server", "start", "--insecure", "--out", "x", "--strategy", "fedavgm", "--server-lr", "0.5"],
     "error: --server-lr: only --strategy fedadam uses it, this run's strategy is fedavgm; drop it"),
    (["server", "start", "--insecure", "--out", "x", "--server-momentum", "0.5"],
     "error: --server-momentum: only --strategy fedavgm uses it, this run's strategy is fedavg; drop it"),
    (["server", "start", "--insecure", "--out", "x", "--no-augment", "--flips", "--augment-views", "2"],
     "error: --flips, --augment-views: augmentation is off (--no-augment); drop them"),
])
def test_bad_training_options_are_one_clear_line(args, message):
    result = runner.invoke(app, args, terminal_width=300)
    assert result.exit_code == 2 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


@pytest.mark.parametrize("command", [["simulate"], ["server", "start"]])
def test_strategy_help_lists_the_strategies_that_can_be_built(command):
    from fedmed.cli.main import _STRATEGY_PHRASES
    from fedmed.common.federation import STRATEGIES, FederationConfig
    from fedmed.server.strategy.registry import build_strategy

    # Every name the config accepts builds its own strategy class: the names are the registry's.
    built = {type(build_strategy(FederationConfig(strategy=name))) for name in STRATEGIES}
    assert len(built) == len(STRATEGIES)
    result = runner.invoke(app, [*command, "--help"], terminal_width=400)
    assert result.exit_code == 0, result.output
    listed = "; ".join(f"{name} ({_STRATEGY_PHRASES[name]})" for name in STRATEGIES)
    assert f"one of {listed}." in _unboxed(result.output), result.output
