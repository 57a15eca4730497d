"""The `fedmed` command: a thin typer layer over library functions.

Each command parses flags, calls one function of `fedmed.server`, `fedmed.client` or
`fedmed.simulations`, and turns its errors into one clear line and an exit code.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from fedmed.cli.certs import certs_app
from fedmed.cli.enroll import server_enroll
from fedmed.cli.config_files import apply_config_file, write_examples
from fedmed.common.federation import FederationConfig, parse_classes
from fedmed.common.settings import DEFAULT_CLASSES, ImageSettings

app = typer.Typer(
    name="fedmed",
    help="Federated learning for medical imaging across hospitals.\n\n"
    "Example: fedmed demo",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Site data tools.\n\nExample: fedmed data synth --out demo-data", no_args_is_help=True)
server_app = typer.Typer(help="The coordinator.\n\nExample: fedmed server start --insecure --rounds 3 --min-sites 3 --out runs/r1",
                         no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(server_app, name="server")
app.add_typer(certs_app, name="certs")
server_app.command("enroll")(server_enroll)

# Training options shared by `simulate` and `server start` (the coordinator decides them).
Rounds = Annotated[int, typer.Option("--rounds", help="Federated rounds.")]
Epochs = Annotated[int, typer.Option("--epochs", help="Local epochs per round at each site.")]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Local batch size.")]
LearningRate = Annotated[float, typer.Option("--lr", help="Local learning rate.")]
Optimizer = Annotated[str, typer.Option("--optimizer", help="sgd or adam.")]
Model = Annotated[str, typer.Option("--model", help="dpcnn (small, built for DP-SGD), cnn or resnet18.")]
ImageSize = Annotated[int, typer.Option("--image-size", help="Model input side in pixels.")]
Window = Annotated[Optional[str], typer.Option("--window", help="CENTER,WIDTH overriding the files' window, e.g. -600,1500.")]
Classes = Annotated[str, typer.Option("--classes", help="Class names, in label order.")]
MinSites = Annotated[int, typer.Option("--min-sites", help="Sites a round needs.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed for splits, initial weights and training.")]
TensorBoard = Annotated[Optional[Path], typer.Option("--tensorboard", help="Also log each round's metrics as TensorBoard scalars in this folder.")]
RoundTimeout = Annotated[float, typer.Option("--round-timeout", help="Seconds to wait for the sites in a round.")]
ConfigFile = Annotated[Optional[Path], typer.Option(
    "--config", is_eager=True, callback=apply_config_file,
    help="TOML file of flag defaults (keys are flag names); flags given here override it.")]


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _window(text: Optional[str]) -> tuple[float, float] | None:
    if not text:
        return None
    try:
        center, width = (float(v) for v in text.split(","))
    except ValueError:
        _fail(f"--window {text!r}: expected CENTER,WIDTH, e.g. -600,1500")
    return center, width


def _tensorboard(folder: Optional[Path]):
    """The TensorBoard log for --tensorboard, or None; a missing package is a clear error."""
    if folder is None:
        return None
    from fedmed.server.tensorboard_log import TensorBoardLog

    try:
        return TensorBoardLog(folder)
    except ValueError as exc:
        _fail(str(exc))


def _federation(rounds, epochs, batch_size, lr, optimizer, model, image_size, window, classes,
                min_sites, seed, round_timeout) -> FederationConfig:
    try:
        return FederationConfig(
            rounds=rounds, epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
            model=model, image=ImageSettings(size=image_size, window=_window(window)),
            classes=parse_classes(classes), min_sites=min_sites, seed=seed, round_timeout=round_timeout,
        )
    except ValueError as exc:
        _fail(str(exc))


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for the demo's data and run.")] = Path("demo"),
    rounds: Rounds = 6,
    epochs: Epochs = 3,
    images_per_site: Annotated[int, typer.Option("--images-per-site")] = 240,
) -> None:
    """Synthetic DICOM for three hospitals, then a short federation on this machine.

    Example: fedmed demo --out demo
    """
    from fedmed.simulations.demo import run_demo

    try:
        status = run_demo(out, rounds=rounds, epochs=epochs, images_per_site=images_per_site)
    except ValueError as exc:
        _fail(str(exc))
    raise typer.Exit(0 if status["status"] == "completed" else 1)


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option("--out", help="Folder to write one sub-folder per site into.")],
    sites: Annotated[str, typer.Option("--sites", help="Comma-separated site names.")] = "A,B,C",
    images_per_site: Annotated[int, typer.Option("--images-per-site")] = 120,
    seed: Seed = 0,
) -> None:
    """Write synthetic CT sites (DICOM + labels.csv) that differ like real scanners.

    Example: fedmed data synth --out demo-data --sites A,B,C --images-per-site 120 --seed 0
    """
    from fedmed.simulations.synthetic_dicom import write_sites

    names = [s.strip() for s in sites.split(",") if s.strip()]
    if not names:
        _fail("--sites: expected comma-separated site names, e.g. A,B,C")
    if images_per_site < 1:
        _fail(f"--images-per-site: expected at least 1, got {images_per_site}")
    summary = write_sites(out, names, images_per_site=images_per_site, seed=seed)
    for name, info in summary.items():
        typer.echo(f"{name}: {info}")
    typer.echo(f"wrote {len(summary)} site(s) under {out}")


@app.command()
def simulate(
    out: Annotated[Path, typer.Option("--out", help="Run folder for metrics, checkpoints and the final model.")],
    data: Annotated[Optional[Path], typer.Option("--data", help="Folder with one DICOM sub-folder per site.")] = None,
    npz: Annotated[Optional[Path], typer.Option("--npz", help="MedMNIST-style .npz to split across sites.")] = None,
    sites: Annotated[int, typer.Option("--sites", help="Number of sites for --npz.")] = 3,
    partition: Annotated[str, typer.Option("--partition", help="iid, dirichlet:ALPHA or quantity:ALPHA (for --npz).")] = "iid",
    state: Annotated[Optional[Path], typer.Option("--state", help="Sites' state folders go to STATE/<site>/.")] = None,
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="Run on an existing Ray cluster.")] = None,
    rounds: Rounds = 5, epochs: Epochs = 1, batch_size: BatchSize = 32, lr: LearningRate = 1e-3,
    optimizer: Optimizer = "adam", model: Model = "dpcnn", image_size: Annotated[Optional[int], typer.Option("--image-size", help="Model input side in pixels (default 64 for DICOM, the file's for --npz).")] = None,
    window: Window = None, classes: Classes = ",".join(DEFAULT_CLASSES), min_sites: Annotated[Optional[int], typer.Option("--min-sites", help="Sites a round needs (default: all).")] = None,
    seed: Seed = 0, round_timeout: RoundTimeout = 1800.0,
    epsilon: Annotated[float, typer.Option("--epsilon", help="Each simulated site's privacy budget over all runs on its data.")] = 8.0,
    delta: Annotated[Optional[float], typer.Option("--delta", help="delta of the budget (default: 1/(10 N) capped at 1e-5).")] = None,
    max_grad_norm: Annotated[float, typer.Option("--max-grad-norm", help="Per-image gradient clipping norm C.")] = 1.0,
    no_dp: Annotated[bool, typer.Option("--no-dp", help="Train WITHOUT differential privacy (recorded in the outputs).")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", help="Show Flower's and Ray's logs.")] = False,
    tensorboard: TensorBoard = None,
    config_file: ConfigFile = None,
) -> None:
    """Run a federation on this machine with Flower's simulation engine.

    Example: fedmed simulate --data demo/data --rounds 5 --out runs/sim1
    Example: fedmed simulate --npz pneumoniamnist.npz --sites 3 --partition dirichlet:0.5 --out runs/pm
    """
    from fedmed.client.privacy.policy import PrivacyPolicy
    from fedmed.server import progress
    from fedmed.simulations.runner import simulate as run_simulation
    from fedmed.simulations.sites import dicom_sites, npz_sites

    if (data is None) == (npz is None):
        _fail("give exactly one of --data DIR or --npz FILE")
    state_root = state or (out / "state")
    try:
        privacy = PrivacyPolicy(enabled=not no_dp, epsilon=epsilon, delta=delta, max_grad_norm=max_grad_norm)
        if data is not None:
            site_list = dicom_sites(data, state_root, privacy)
            size = image_size or 64
        else:
            from fedmed.client.sitedata import read_medmnist

            size = image_size or int(read_medmnist(npz)["train"][0].shape[-1])
            site_list = npz_sites(npz, sites, partition, seed, state_root, privacy)
    except ValueError as exc:
        _fail(str(exc))
    config = _federation(rounds, epochs, batch_size, lr, optimizer, model, size, window, classes,
                         min_sites or len(site_list), seed, round_timeout)
    typer.echo(f"simulating {len(site_list)} site(s): {', '.join(s.name for s in site_list)}; "
               f"{config.rounds} round(s) of {config.model}; "
               + ("differential privacy OFF (--no-dp)" if no_dp else f"DP-SGD, budget epsilon={epsilon:g} per site")
               + f"; outputs in {out}")
    board = _tensorboard(tensorboard)
    typer.echo(progress.header())

    def on_round(record: dict) -> None:
        typer.echo(progress.row(record))
        if board is not None:
            board.round(record)

    try:
        status = run_simulation(site_list, config, out, ray_address=ray_address, verbose=verbose,
                                meta={"dp": not no_dp, "epsilon": None if no_dp else epsilon},
                                on_round=on_round)
    finally:
        if board is not None:
            board.close()
    if status["status"] != "completed":
        _fail(f"run failed: {status.get('reason')}", code=1)
    typer.echo(f"done: metrics {out / 'metrics.jsonl'}, final model {out / 'model-final.pt'}")


@server_app.command("start")
def server_start(
    out: Annotated[Optional[Path], typer.Option("--out", help="Run folder for metrics, checkpoints, the final model and the audit log.")] = None,
    address: Annotated[str, typer.Option("--address", help="HOST:PORT the sites connect to.")] = "127.0.0.1:9092",
    certs: Annotated[Optional[Path], typer.Option("--certs", help="Folder with ca.crt, server.crt, server.key (fedmed certs init).")] = None,
    sites_dir: Annotated[Optional[Path], typer.Option("--sites-dir", help="Folder of enrolled sites' public keys, SITE.pub (fedmed certs site).")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="No TLS, no site keys; binds to loopback only.")] = False,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue an interrupted run folder after its last completed round (its config is used).")] = None,
    max_update_ratio: Annotated[float, typer.Option("--max-update-ratio", help="Reject a site's update that moves the model by more than this times its norm.")] = 50.0,
    tensorboard: TensorBoard = None,
    join_timeout: Annotated[float, typer.Option("--join-timeout", help="Seconds the first round waits for every enrolled site before it starts with those present (at least --min-sites).")] = 120.0,
    rounds: Rounds = 5, epochs: Epochs = 1, batch_size: BatchSize = 32, lr: LearningRate = 1e-3,
    optimizer: Optimizer = "adam", model: Model = "dpcnn", image_size: ImageSize = 64,
    window: Window = None, classes: Classes = ",".join(DEFAULT_CLASSES), min_sites: MinSites = 2,
    seed: Seed = 0, round_timeout: RoundTimeout = 1800.0,
    config_file: ConfigFile = None,
) -> None:
    """Start the coordinator: enroll the sites, run the federation's rounds, write the run folder.

    Example: fedmed server start --certs certs --sites-dir site-keys --address 0.0.0.0:9092 --rounds 3 --min-sites 3 --out runs/r1
    Example: fedmed server start --certs certs --sites-dir site-keys --address 0.0.0.0:9092 --resume runs/r1
    Example: fedmed server start --insecure --rounds 3 --min-sites 3 --out runs/r1
    """
    from fedmed.server.deployment import DeploymentError, ServerOptions, start_server
    from fedmed.server.strategy.update_checks import UpdateLimits

    if (out is None) == (resume is None):
        _fail("give --out RUN_DIR for a new run or --resume RUN_DIR to continue one")
    config = None if resume else _federation(rounds, epochs, batch_size, lr, optimizer, model, image_size,
                                             window, classes, min_sites, seed, round_timeout)
    try:
        options = ServerOptions(out_dir=resume or out, config=config, address=address, insecure=insecure,
                                certs=certs, sites_dir=sites_dir, resume=resume is not None,
                                update_limits=UpdateLimits(max_update_ratio=max_update_ratio),
                                join_timeout=join_timeout, tensorboard=tensorboard)
        code = start_server(options)
    except (DeploymentError, ValueError) as exc:
        _fail(str(exc))
    raise typer.Exit(code)


@app.command()
def client(
    site: Annotated[str, typer.Option("--site", help="This site's name, as the coordinator will list it.")],
    data: Annotated[Path, typer.Option("--data", help="The site's DICOM folder (labels.csv or class sub-folders).")],
    server: Annotated[str, typer.Option("--server", help="The coordinator's HOST:PORT.")] = "127.0.0.1:9092",
    state: Annotated[Optional[Path], typer.Option("--state", help="Site state folder (cache, privacy ledger); default ~/.fedmed/sites/<site>.")] = None,
    certs: Annotated[Optional[Path], typer.Option("--certs", help="Folder with the federation's ca.crt and this site's SITE.key (fedmed certs site).")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="Connect without TLS or a key; loopback only.")] = False,
    approve: Annotated[Optional[list[str]], typer.Option("--approve", help="Also run app bundles with this SHA-256 (repeatable); fedmed's own is always approved.")] = None,
    epsilon: Annotated[float, typer.Option("--epsilon", help="This site's privacy budget (epsilon) over all runs on its data.")] = 8.0,
    delta: Annotated[Optional[float], typer.Option("--delta", help="delta of the budget (default: 1/(10 N) capped at 1e-5, N = training images).")] = None,
    max_grad_norm: Annotated[float, typer.Option("--max-grad-norm", help="Per-image gradient clipping norm C.")] = 1.0,
    no_dp: Annotated[bool, typer.Option("--no-dp", help="Train WITHOUT differential privacy (recorded in the run's outputs).")] = False,
    classes: Classes = ",".join(DEFAULT_CLASSES),
    config_file: ConfigFile = None,
) -> None:
    """Join a federation as one hospital: images stay here, only weight updates leave.

    Example: fedmed client --site A --data /pacs-export --server fl.example.org:9092 --certs site-certs
    Example: fedmed client --site A --data /pacs-export --server 127.0.0.1:9092 --insecure
    """
    from fedmed.client.privacy.policy import PrivacyPolicy
    from fedmed.client.supernode import ClientOptions, ClientSetupError, run_client

    try:
        privacy = PrivacyPolicy(enabled=not no_dp, epsilon=epsilon, delta=delta, max_grad_norm=max_grad_norm)
        code = run_client(ClientOptions(site=site, data_dir=data, server=server, state_dir=state,
                                        insecure=insecure, certs=certs, approve=tuple(approve or ()),
                                        privacy=privacy, classes=parse_classes(classes)))
    except (ClientSetupError, ValueError) as exc:
        _fail(str(exc))
    raise typer.Exit(code)


@app.command()
def init(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the examples into.")] = Path("."),
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing files.")] = False,
) -> None:
    """Write commented example config files: federation.toml (coordinator), site.toml (site).

    Example: fedmed init --out config && fedmed client --config config/site.toml
    """
    for path in write_examples(out, force):
        typer.echo(f"wrote {path}")


# The operator's commands live in fedmed.cli.operator.
from fedmed.cli.operator import data_check, predict, report  # noqa: E402

data_app.command("check")(data_check)
app.command()(report)
app.command()(predict)


def run() -> None:
    app()


if __name__ == "__main__":
    run()
