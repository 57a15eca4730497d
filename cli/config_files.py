"""`--config FILE.toml` for the long-running commands, and `fedmed init`'s examples.

A config file gives defaults for a command's flags; flags given on the command line
override it. Keys are the flag names without the leading dashes (`min-sites = 3`).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import click

FEDERATION_EXAMPLE = """\
# fedmed coordinator settings: fedmed server start --config federation.toml
# Every key is a flag of `fedmed server start`; flags on the command line win.

out = "runs/consortium-1"        # run folder: metrics.jsonl, checkpoints/, model-final.pt
address = "0.0.0.0:9092"         # where sites connect (the public, TLS-only port)
certs = "certs"                  # fedmed certs init --out certs --server-name ...
sites-dir = "site-keys"          # enrolled sites: one SITE.pub each (fedmed certs site)
rounds = 10                      # federated rounds
min-sites = 3                    # sites a round needs; fewer ends the run cleanly
round-timeout = 1800             # seconds to wait for the sites in a round
join-timeout = 120               # seconds round 1 waits for every enrolled site
# tensorboard = "tb/consortium-1"  # also log each round as TensorBoard scalars
# init-from = "public.pt"       # start from a saved model (fedmed pretrain, an earlier model-final.pt)
# freeze = "body"                # with init-from: none | body (train the head only) | all-but-last-block

model = "scatternet"             # scatternet | dpcnn | cnn | resnet18
image-size = 64                  # model input side in pixels
frames = "middle"                # multi-frame files: middle | all (one image per frame) | mip
# modality = "CT"                # train on these Modality codes only; recorded in the model
classes = "normal,abnormal"      # class names, in label order
epochs = 1                       # local epochs per round
batch-size = 32
lr = 0.001
optimizer = "adam"               # adam | sgd
seed = 0
augment = true                   # label-preserving augmentation at the sites
flips = false                    # left-right flips too: only where laterality carries no meaning
augment-views = 1                # with DP: K augmented views per record, averaged before clipping
strategy = "fedavg"              # fedavg | fedavgm (server momentum) | fedadam (server-side Adam)
# server-momentum = 0.9          # fedavgm only
# server-lr = 0.01               # fedadam only
# A site training with DP-SGD uses these instead of batch-size, lr and optimizer:
# plain SGD on Poisson batches (docs/privacy.md, "The DP recipe", explains the defaults).
dp-batch-size = 512              # expected batch size
dp-lr = 1.0                      # decayed by a cosine over the rounds
dp-momentum = 0.0
"""

SITE_EXAMPLE = """\
# fedmed site settings: fedmed client --config site.toml
# Every key is a flag of `fedmed client`; flags on the command line win.

site = "A"                       # this hospital's name in the federation's reports
data = "/pacs-export"            # DICOM folder: labels.csv (SOPInstanceUID,label) or class sub-folders
server = "coordinator.example.org:9092"
certs = "site-certs"             # ca.crt and this site's key (fedmed certs site A --out site-certs)
# state = "/var/lib/fedmed/A"    # cache and privacy ledger; default ~/.fedmed/sites/<site>

# Privacy: this site's budget for everything it will ever train on this data.
epsilon = 8.0
# delta = 1e-6                   # default: 1/(10 N) rounded down, at most 1e-5
max-grad-norm = 1.0
# no-dp = true                   # train WITHOUT differential privacy (recorded in the run)
# no-dp-metrics = true           # with DP on, send EXACT evaluation metrics (trials; recorded)
"""

EXAMPLES = {"federation.toml": FEDERATION_EXAMPLE, "site.toml": SITE_EXAMPLE}


def _check_type(path: Path, key: str, value: Any, param: click.Parameter | None) -> None:
    """A value must have its flag's type: click would turn `rounds = 2.5` into 2 silently."""
    kind = getattr(param, "type", None)
    if param is None or kind is None:
        return
    values = value if getattr(param, "multiple", False) and isinstance(value, list) else [value]
    for item in values:
        if isinstance(kind, click.types.IntParamType) and (isinstance(item, bool) or not isinstance(item, int)):
            expected = "a whole number, e.g. 3"
        elif isinstance(kind, click.types.FloatParamType) and (isinstance(item, bool)
                                                               or not isinstance(item, (int, float))):
            expected = "a number, e.g. 0.5"
        elif isinstance(kind, click.types.BoolParamType) and not isinstance(item, bool):
            expected = "true or false"
        elif isinstance(kind, (click.types.StringParamType, click.Path)) and not isinstance(item, str):
            expected = 'a quoted string, e.g. "value"'
        else:
            continue
        raise click.BadParameter(f"{path}: {key} = {item!r}: expected {expected}")


def read_config_file(path: Path, allowed: set[str] | dict[str, click.Parameter]) -> dict[str, Any]:
    """Parse a TOML config into flag defaults; unknown keys and values of the wrong type
    are errors naming the key."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise click.BadParameter(f"{path}: no such file; `fedmed init` writes examples") from None
    except tomllib.TOMLDecodeError as exc:
        raise click.BadParameter(f"{path}: not valid TOML ({exc})") from None
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in allowed:
            raise click.BadParameter(
                f"{path}: unknown key {key!r}; expected one of "
                f"{', '.join(sorted(a.replace('_', '-') for a in allowed))}")
        _check_type(path, key, value, allowed.get(name) if isinstance(allowed, dict) else None)
        out[name] = value
    return out


def apply_config_file(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """Eager `--config` callback: the file's values become the command's defaults.

    Click consults `ctx.default_map` for every parameter it has not yet processed, and an
    eager option is processed first — so the file fills in, and the command line overrides.
    """
    if value is None or ctx.resilient_parsing:
        return value
    allowed = {p.name: p for p in ctx.command.params if p.name and p.name != param.name}
    ctx.default_map = {**(ctx.default_map or {}), **read_config_file(value, allowed)}
    return value


def write_examples(out_dir: Path, force: bool = False) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in EXAMPLES.items():
        path = out_dir / name
        if path.exists() and not force:
            raise click.ClickException(f"{path} exists; pass --force to overwrite it")
        path.write_text(text)
        written.append(path)
    return written
