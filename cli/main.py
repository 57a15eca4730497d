"""The `fedmed` command: a thin typer layer over library functions.

Each command parses flags, calls one function of `fedmed.server`, `fedmed.client` or
`fedmed.simulations`, and turns its errors into one clear line and an exit code.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from fedmed.cli.certs import certs_app
from fedmed.cli.enroll import server_enroll
from fedmed.cli.config_files import apply_config_file, write_examples
from fedmed.cli.model_tools import Freeze, InitFrom, transfer_start
from fedmed.common.federation import MODEL_NAMES, STRATEGIES, STRATEGY_SETTINGS, FederationConfig, parse_classes
from fedmed.common.interrupts import EXIT_INTERRUPTED, exit_now
from fedmed.common.settings import DEFAULT_CLASSES, ImageSettings

app = typer.Typer(
    name="fedmed",
    help="Federated learning for medical imaging across hospitals.\n\n"
    "Example: fedmed demo",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Sub-commands inherit the help option names from the root context.
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            fedmed_version = version("fedmed")
        except PackageNotFoundError:
            fedmed_version = "unknown (not installed)"
        typer.echo(f"fedmed {fedmed_version} (Flower {version('flwr')})")
        raise typer.Exit(0)


@app.callback()
def _root(
    show_version: Annotated[Optional[bool], typer.Option("--version", is_eager=True, callback=_version,
                                                         help="Print fedmed's version and exit.")] = None,
) -> None:
    """Federated learning for medical imaging across hospitals.

    Example: fedmed demo
    """


def _one_line_on_interrupt(command):
    """Ctrl-C (or SIGTERM where the command maps it to Ctrl-C) before a command's own
    handling: one line and exit code 130, not a traceback or click's "Aborted!"."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            typer.secho("interrupted; stopped", err=True)
            exit_now(EXIT_INTERRUPTED)
        except typer.Exit as stop:
            if stop.exit_code == EXIT_INTERRUPTED:
                exit_now(EXIT_INTERRUPTED)  # the command said its one line; end at once
            raise
    return wrapper
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
Model = Annotated[str, typer.Option("--model", help=f"One of {', '.join(MODEL_NAMES)}; scatternet (fixed scattering features and a linear head: fewest trained weights, best under DP-SGD) is the default.")]
ImageSize = Annotated[int, typer.Option("--image-size", help="Model input side in pixels.")]
Window = Annotated[Optional[str], typer.Option("--window", help="CENTER,WIDTH overriding the files' window, e.g. -600,1500.")]
Classes = Annotated[str, typer.Option("--classes", help="Class names, in label order.")]
Modality = Annotated[str, typer.Option("--modality", help="DICOM Modality codes the federation trains on, e.g. CT or CT,MR; sites leave out other modalities and the model records them, so predict can warn. Empty: any.")]
Frames = Annotated[str, typer.Option("--frames", help="Multi-frame files: middle (one image, the middle frame), all (every frame an image) or mip (max-intensity projection).")]
MinSites = Annotated[int, typer.Option("--min-sites", help="Sites a round needs.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed for splits, initial weights and training.")]
TensorBoard = Annotated[Optional[Path], typer.Option("--tensorboard", help="Also log each round's metrics as TensorBoard scalars in this folder.")]
RoundTimeout = Annotated[float, typer.Option("--round-timeout", help="Seconds to wait for the sites in a round.")]
Augment = Annotated[bool, typer.Option("--augment/--no-augment", help="Label-preserving augmentation at the sites (small rotations, shifts, zoom, brightness and contrast). Sites without DP augment every batch; a DP-SGD site augments only with --augment-views 2 or more.")]
Flips = Annotated[bool, typer.Option("--flips/--no-flips", help="With --augment, also flip images left-right; only where left and right carry no meaning (not chest X-rays).")]
AugmentViews = Annotated[int, typer.Option("--augment-views", metavar="K", help="With DP-SGD and --augment, K augmented views of each sampled record averaged before clipping, so the privacy unit stays the record (1: no augmentation under DP).")]
# What each strategy does, in one phrase (its module in server/strategy/ says more); the
# help lists the names FederationConfig accepts, which are the ones the registry builds.
_STRATEGY_PHRASES = {
    "fedavg": "the sites' updates averaged, weighted by their image counts",
    "fedavgm": "FedAvg with server momentum, --server-momentum",
    "fedadam": "the average applied by server-side Adam, step --server-lr",
}
_DEFAULTS = FederationConfig()
Strategy = Annotated[str, typer.Option("--strategy", metavar="NAME", help="How the coordinator combines the sites' updates, one of "
                                       + "; ".join(f"{name} ({_STRATEGY_PHRASES[name]})" for name in STRATEGIES) + ".")]
ServerLr = Annotated[float, typer.Option("--server-lr", help="fedadam's server step size (used by --strategy fedadam only; fedavgm steps by 1).")]
ServerMomentum = Annotated[float, typer.Option("--server-momentum", help="fedavgm's server momentum, 0 to < 1 (used by --strategy fedavgm only).")]
DpBatchSize = Annotated[int, typer.Option("--dp-batch-size", help="A DP-SGD site's expected Poisson batch size (the DP recipe's, used instead of --batch-size; docs/privacy.md, \"The DP recipe\", explains the defaults).")]
DpLr = Annotated[float, typer.Option("--dp-lr", help="A DP-SGD site's SGD learning rate, cosine-decayed over the rounds (used instead of --lr).")]
DpMomentum = Annotated[float, typer.Option("--dp-momentum", help="A DP-SGD site's SGD momentum, 0 to < 1.")]
ConfigFile = Annotated[Optional[Path], typer.Option(
    "--config", is_eager=True, callback=apply_config_file,
    help="TOML file of flag defaults (keys are flag names); flags given here override it.")]


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _refuse_given(ctx: typer.Context, names: list[str], why: str) -> None:
    """Options given on the command line that the others make meaningless are an error,
    not silently ignored (a config file may hold settings for either case)."""
    from click.core import ParameterSource

    params = {p.name: p for p in ctx.command.params}

    def flag(name: str) -> str:
        # An on/off pair (--augment/--no-augment) is named as the user wrote it.
        param = params.get(name)
        if getattr(param, "secondary_opts", None) and ctx.params.get(name) is False:
            return param.secondary_opts[0]
        return f"--{name.replace('_', '-')}"

    given = [flag(name) for name in names
             if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)]
    if given:
        _fail(f"{', '.join(given)}: {why}; drop {'it' if len(given) == 1 else 'them'}")


def _refuse_unused(ctx: typer.Context, config: FederationConfig) -> None:
    """Settings given on the command line that the run's strategy or augmentation leaves
    unused are an error: the user meant something the run would not do."""
    for name in ("server_lr", "server_momentum"):
        if name not in STRATEGY_SETTINGS[config.strategy]:
            users = [s for s, settings in STRATEGY_SETTINGS.items() if name in settings]
            _refuse_given(ctx, [name], f"only --strategy {' or '.join(users)} uses it, this run's strategy is "
                                       f"{config.strategy}")
    if not config.augment:
        _refuse_given(ctx, ["flips", "augment_views"], "augmentation is off (--no-augment)")


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
                min_sites, seed, round_timeout, frames="middle", modality="", augment=True, flips=False,
                augment_views=1, **settings) -> FederationConfig:
    """The run's FederationConfig from the shared options; `settings` are further fields by
    name (strategy, server_lr, ...). A bad value is the config's own one-line error."""
    try:
        modalities = tuple(m.strip().upper() for m in modality.split(",") if m.strip())
        return FederationConfig(
            rounds=rounds, epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
            model=model, image=ImageSettings(size=image_size, window=_window(window), frames=frames,
                                             modalities=modalities),
            classes=parse_classes(classes), min_sites=min_sites, seed=seed, round_timeout=round_timeout,
            augment=augment, flips=flips, augment_views=augment_views, **settings,
        )
    except ValueError as exc:
        _fail(str(exc))


@app.command()
@_one_line_on_interrupt
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for the demo's data and run.")] = Path("demo"),
    rounds: Rounds = 6,
    epochs: Epochs = 3,
    images_per_site: Annotated[int, typer.Option("--images-per-site")] = 240,
    dp_rounds: Annotated[int, typer.Option("--dp-rounds", help="Rounds of the short DP-SGD federation that follows, for its row (0: none).")] = 2,
) -> None:
    """Synthetic DICOM for three hospitals, a short federation on this machine, then a
    shorter one with DP-SGD on the same sites.

    Example: fedmed demo --out demo
    """
    from fedmed.simulations.demo import run_demo

    if dp_rounds < 0:
        _fail(f"--dp-rounds: expected 0 or more, got {dp_rounds}")
    try:
        status = run_demo(out, rounds=rounds, epochs=epochs, images_per_site=images_per_site,
                          dp_rounds=dp_rounds)
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
@_one_line_on_interrupt
def simulate(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", help="Run folder for metrics, checkpoints and the final model.")],
    data: Annotated[Optional[Path], typer.Option("--data", help="Folder with one DICOM sub-folder per site.")] = None,
    npz: Annotated[Optional[Path], typer.Option("--npz", help="MedMNIST-style .npz to split across sites.")] = None,
    sites: Annotated[int, typer.Option("--sites", help="Number of sites for --npz.")] = 3,
    partition: Annotated[str, typer.Option("--partition", help="iid, dirichlet:ALPHA or quantity:ALPHA (for --npz).")] = "iid",
    state: Annotated[Optional[Path], typer.Option("--state", help="Sites' state folders go to STATE/<site>/.")] = None,
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="Run on an existing Ray cluster.")] = None,
    rounds: Rounds = 5, epochs: Epochs = 1, batch_size: BatchSize = 32, lr: LearningRate = 1e-3,
    optimizer: Optimizer = "adam", model: Model = "scatternet", image_size: Annotated[Optional[int], typer.Option("--image-size", help="Model input side in pixels (default 64 for DICOM, the file's for --npz).")] = None,
    window: Window = None, classes: Classes = ",".join(DEFAULT_CLASSES), min_sites: Annotated[Optional[int], typer.Option("--min-sites", help="Sites a round needs (default: all).")] = None,
    seed: Seed = 0, round_timeout: RoundTimeout = 1800.0, frames: Frames = "middle", modality: Modality = "",
    augment: Augment = True, flips: Flips = False, augment_views: AugmentViews = 1,
    strategy: Strategy = _DEFAULTS.strategy, server_lr: ServerLr = _DEFAULTS.server_lr,
    server_momentum: ServerMomentum = _DEFAULTS.server_momentum, dp_batch_size: DpBatchSize = _DEFAULTS.dp_batch_size,
    dp_lr: DpLr = _DEFAULTS.dp_lr, dp_momentum: DpMomentum = _DEFAULTS.dp_momentum,
    epsilon: Annotated[float, typer.Option("--epsilon", help="Each simulated site's privacy budget over all runs on its data.")] = 8.0,
    delta: Annotated[Optional[float], typer.Option("--delta", help="delta of the budget (default: 1/(10 N) capped at 1e-5).")] = None,
    max_grad_norm: Annotated[float, typer.Option("--max-grad-norm", help="Per-image gradient clipping norm C.")] = 1.0,
    no_dp: Annotated[bool, typer.Option("--no-dp", help="Train WITHOUT differential privacy (recorded in the outputs).")] = False,
    no_dp_metrics: Annotated[bool, typer.Option("--no-dp-metrics", help="With DP on, sites send EXACT evaluation metrics, for trials (recorded).")] = False,
    privacy_unit: Annotated[str, typer.Option("--privacy-unit", help="What DP protects: 'image' (each image) or 'patient' (each patient one record: one of its images per round; needs patient IDs).")] = "image",
    verbose: Annotated[bool, typer.Option("--verbose", help="Show Flower's and Ray's logs.")] = False,
    tensorboard: TensorBoard = None,
    config_file: ConfigFile = None,
    init_from: InitFrom = None,
    freeze: Freeze = "none",
) -> None:
    """Run a federation on this machine with Flower's simulation engine.

    Example: fedmed simulate --data demo/data --rounds 5 --out runs/sim1
    Example: fedmed simulate --npz pneumoniamnist.npz --sites 3 --partition dirichlet:0.5 --out runs/pm
    Example: fedmed simulate --data demo/data --init-from public.pt --freeze body --out runs/tl
    """
    from fedmed.client.privacy.policy import PrivacyPolicy
    from fedmed.server import progress
    from fedmed.simulations.runner import simulate as run_simulation
    from fedmed.simulations.sites import check_dicom_sites, dicom_sites, npz_sites

    if (data is None) == (npz is None):
        _fail("give exactly one of --data DIR or --npz FILE")
    if data is not None:
        _refuse_given(ctx, ["sites", "partition"], "only for --npz (with --data the sites are the "
                      "folder's sub-folders)")
    state_root = state or (out / "state")
    try:
        privacy = PrivacyPolicy(enabled=not no_dp, epsilon=epsilon, delta=delta, max_grad_norm=max_grad_norm,
                                private_metrics=not no_dp_metrics, unit=privacy_unit)
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
                         min_sites or len(site_list), seed, round_timeout, frames, modality,
                         augment, flips, augment_views, strategy=strategy, server_lr=server_lr,
                         server_momentum=server_momentum, dp_batch_size=dp_batch_size, dp_lr=dp_lr,
                         dp_momentum=dp_momentum)
    _refuse_unused(ctx, config)
    if data is not None:
        try:
            check_dicom_sites(data, config.classes)
        except ValueError as exc:
            _fail(str(exc))
    transfer = transfer_start(init_from, freeze, config)
    typer.echo(f"simulating {len(site_list)} site(s): {', '.join(s.name for s in site_list)}; "
               f"{config.rounds} round(s) of {config.model}; "
               + ("differential privacy OFF (--no-dp)" if no_dp else f"DP-SGD, budget epsilon={epsilon:g} per site")
               + f"; outputs in {out}")
    if transfer:
        from fedmed.common.starting_model import describe_transfer

        typer.echo(describe_transfer(transfer))
    board = _tensorboard(tensorboard)
    typer.echo(progress.header())

    def on_round(record: dict) -> None:
        typer.echo(progress.row(record))
        for warning in progress.warnings(record, config.classes):
            typer.secho(warning, fg=typer.colors.YELLOW)
        if board is not None:
            board.round(record)

    def on_site_warning(site: str, text: str) -> None:
        # The researcher holds every simulated site's data; a deployed site's warning stays
        # on that site's own `fedmed client` output.
        typer.secho(f"site {site}: warning: {text}", fg=typer.colors.YELLOW)

    try:
        status = run_simulation(site_list, config, out, ray_address=ray_address, verbose=verbose,
                                meta={"dp": not no_dp, "epsilon": None if no_dp else epsilon, **transfer},
                                on_round=on_round, on_site_warning=on_site_warning)
    except ValueError as exc:  # refused before the run started (a state folder in use, too few sites)
        _fail(str(exc))
    finally:
        if board is not None:
            board.close()
    if status["status"] != "completed":
        _fail(f"run failed: {status.get('reason')}", code=1)
    from fedmed.server.outputs import read_metrics

    rows = read_metrics(out)
    words = progress.final_words(rows[-1] if rows else None, config.classes)
    if words:
        typer.secho(words, fg=typer.colors.YELLOW)
    typer.echo(f"done{' (with warnings)' if words else ''}: metrics {out / 'metrics.jsonl'}, "
               f"final model {out / 'model-final.pt'}")


@server_app.command("start")
@_one_line_on_interrupt
def server_start(
    ctx: typer.Context,
    out: Annotated[Optional[Path], typer.Option("--out", help="Run folder for metrics, checkpoints, the final model and the audit log.")] = None,
    address: Annotated[str, typer.Option("--address", help="HOST:PORT the sites connect to (port 0: a free port, printed at start).")] = "127.0.0.1:9092",
    certs: Annotated[Optional[Path], typer.Option("--certs", help="Folder with ca.crt, server.crt, server.key (fedmed certs init).")] = None,
    sites_dir: Annotated[Optional[Path], typer.Option("--sites-dir", help="Folder of enrolled sites' public keys, SITE.pub (fedmed certs site).")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="No TLS, no site keys; binds to loopback only.")] = False,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue an interrupted run folder after its last completed round (its config is used).")] = None,
    max_update_ratio: Annotated[float, typer.Option("--max-update-ratio", help="Reject a site's update that moves the model by more than this times its norm.")] = 50.0,
    max_example_ratio: Annotated[float, typer.Option("--max-example-ratio", help="Reject a reply claiming more than this times the median example count of the other sites.")] = 100.0,
    max_request_bytes: Annotated[Optional[int], typer.Option("--max-request-bytes", help="Largest object upload the public port accepts, in bytes (default: sized from the model).")] = None,
    tensorboard: TensorBoard = None,
    join_timeout: Annotated[float, typer.Option("--join-timeout", help="Seconds the first round waits for every enrolled site before it starts with those present (at least --min-sites).")] = 120.0,
    rounds: Rounds = 5, epochs: Epochs = 1, batch_size: BatchSize = 32, lr: LearningRate = 1e-3,
    optimizer: Optimizer = "adam", model: Model = "scatternet", image_size: ImageSize = 64,
    window: Window = None, classes: Classes = ",".join(DEFAULT_CLASSES), min_sites: MinSites = 2,
    seed: Seed = 0, round_timeout: RoundTimeout = 1800.0, frames: Frames = "middle", modality: Modality = "",
    augment: Augment = True, flips: Flips = False, augment_views: AugmentViews = 1,
    strategy: Strategy = _DEFAULTS.strategy, server_lr: ServerLr = _DEFAULTS.server_lr,
    server_momentum: ServerMomentum = _DEFAULTS.server_momentum, dp_batch_size: DpBatchSize = _DEFAULTS.dp_batch_size,
    dp_lr: DpLr = _DEFAULTS.dp_lr, dp_momentum: DpMomentum = _DEFAULTS.dp_momentum,
    config_file: ConfigFile = None,
    init_from: InitFrom = None,
    freeze: Freeze = "none",
) -> None:
    """Start the coordinator: enroll the sites, run the federation's rounds, write the run folder.

    Example: fedmed server start --certs certs --sites-dir site-keys --address 0.0.0.0:9092 --rounds 3 --min-sites 3 --out runs/r1
    Example: fedmed server start --certs certs --sites-dir site-keys --address 0.0.0.0:9092 --resume runs/r1
    Example: fedmed server start --insecure --rounds 3 --min-sites 3 --out runs/r1
    Example: fedmed server start --insecure --min-sites 3 --model resnet18 --init-from resnet18-f37072fd.pth --freeze all-but-last-block --out runs/tl
    """
    from fedmed.server.deployment import DeploymentError, ServerOptions, start_server
    from fedmed.server.strategy.update_checks import UpdateLimits

    if (out is None) == (resume is None):
        _fail("give --out RUN_DIR for a new run or --resume RUN_DIR to continue one")
    if resume is not None:
        _refuse_given(ctx, ["rounds", "epochs", "batch_size", "lr", "optimizer", "model", "image_size", "window",
                            "classes", "min_sites", "seed", "round_timeout", "frames", "modality", "augment",
                            "flips", "augment_views", "strategy", "server_lr", "server_momentum",
                            "dp_batch_size", "dp_lr", "dp_momentum"],
                      "a resumed run keeps the training settings it started with")
    config = None if resume else _federation(rounds, epochs, batch_size, lr, optimizer, model, image_size,
                                             window, classes, min_sites, seed, round_timeout, frames, modality,
                                             augment, flips, augment_views, strategy=strategy,
                                             server_lr=server_lr, server_momentum=server_momentum,
                                             dp_batch_size=dp_batch_size, dp_lr=dp_lr, dp_momentum=dp_momentum)
    if config is not None:
        _refuse_unused(ctx, config)
    try:
        options = ServerOptions(out_dir=resume or out, config=config, address=address, insecure=insecure,
                                certs=certs, sites_dir=sites_dir, resume=resume is not None,
                                update_limits=UpdateLimits(max_update_ratio=max_update_ratio,
                                                           max_example_ratio=max_example_ratio),
                                join_timeout=join_timeout, tensorboard=tensorboard,
                                max_request_bytes=max_request_bytes,
                                init_from=init_from, freeze=freeze)
        code = start_server(options)
    except (DeploymentError, ValueError) as exc:
        _fail(str(exc))
    raise typer.Exit(code)


@app.command()
@_one_line_on_interrupt
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
    no_dp_metrics: Annotated[bool, typer.Option("--no-dp-metrics", help="With DP on, send EXACT evaluation metrics, for trials (recorded in the ledger and the outputs).")] = False,
    privacy_unit: Annotated[str, typer.Option("--privacy-unit", help="What DP protects: 'image' (each image) or 'patient' (each patient one record: one of its images per round; needs patient IDs).")] = "image",
    eval_share: Annotated[float, typer.Option("--eval-share", help="With DP on, the share of epsilon a run's noised evaluation metrics use (0-1).")] = 0.1,
    new_ledger: Annotated[Optional[str], typer.Option("--new-ledger", metavar="REASON", help="Start a new privacy ledger although this state folder shows the data was trained on; REASON is recorded in it.")] = None,
    classes: Classes = ",".join(DEFAULT_CLASSES),
    give_up_after: Annotated[float, typer.Option("--give-up-after", help="Seconds a join failure that retrying cannot fix (TLS or protocol mismatch) may last before the site exits; an unreachable coordinator is retried without end.")] = 10.0,
    config_file: ConfigFile = None,
) -> None:
    """Join a federation as one hospital: images stay here, only weight updates leave.

    Example: fedmed client --site A --data /pacs-export --server fl.example.org:9092 --certs site-certs
    Example: fedmed client --site A --data /pacs-export --server 127.0.0.1:9092 --insecure
    """
    from fedmed.client.privacy.policy import PrivacyPolicy
    from fedmed.client.supernode import ClientOptions, ClientSetupError, run_client

    try:
        privacy = PrivacyPolicy(enabled=not no_dp, epsilon=epsilon, delta=delta, max_grad_norm=max_grad_norm,
                                private_metrics=not no_dp_metrics, eval_share=eval_share, new_ledger=new_ledger,
                                unit=privacy_unit)
        code = run_client(ClientOptions(site=site, data_dir=data, server=server, state_dir=state,
                                        insecure=insecure, certs=certs, approve=tuple(approve or ()),
                                        privacy=privacy, classes=parse_classes(classes),
                                        give_up_after=give_up_after))
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

# Model tools (evaluate a model locally, make a starting model) live in fedmed.cli.model_tools.
from fedmed.cli.model_tools import evaluate, pretrain  # noqa: E402

app.command()(evaluate)
app.command()(pretrain)


def run() -> None:
    app()


if __name__ == "__main__":
    run()
