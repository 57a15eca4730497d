"""Commands about a model file: check it on local data, or make a starting model.

Plain functions with typer annotations; `fedmed.cli.main` registers them. Each calls one
library function (`fedmed.client.evaluation`, `fedmed.client.pretrain`) and turns its
errors into one line and exit code 2.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from fedmed.common.federation import MODEL_NAMES, FederationConfig


# Options of `simulate` and `server start` that start a federation from a saved model.
InitFrom = Annotated[Optional[Path], typer.Option(
    "--init-from", help="Start from this model instead of random weights: a fedmed model (an earlier run's "
    "model-final.pt, a `fedmed pretrain` output) or a torchvision ResNet-18 state-dict file on this machine.")]
Freeze = Annotated[str, typer.Option(
    "--freeze", help="With --init-from, which weights the sites leave as they are: none, body (train only the "
    "head) or all-but-last-block.")]


def transfer_start(init_from: Optional[Path], freeze: str, config) -> dict:
    """config.json's `init_from`/`freeze` for a new run, or exit with one line."""
    from fedmed.common.starting_model import transfer_meta

    try:
        return transfer_meta(init_from, freeze, config)
    except ValueError as exc:
        _fail(str(exc))


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


@contextmanager
def progress_bar(description: str) -> Iterator:
    """A progress(done, total) callback drawing a bar on stderr (nothing when not a terminal)."""
    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console, transient=True,
                  disable=not console.is_terminal) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _num(value, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _print_evaluation(d: dict, console: Console) -> None:
    console.print(f"[bold]fedmed evaluate[/bold]: {escape(d['model'])} on {escape(d['data'])}")
    console.print(f"{d['num_images']} image(s): "
                  + ", ".join(f"{escape(c)} {n}" for c, n in d["images_per_class"].items())
                  + (f"; skipped {sum(d['skipped'].values())} file(s): "
                     + ", ".join(f"{escape(r)} {n}" for r, n in d["skipped"].items()) if d["skipped"] else ""))
    threshold = ("arg-max (the model carries no threshold)" if d["threshold"] is None
                 else f"P({escape(d['classes'][1])}) ≥ {d['threshold']:.3f} ({d['threshold_source']})")
    auc = d["auc"]
    table = Table(box=box.SIMPLE_HEAD, show_header=False, show_edge=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("loss", _num(d["loss"], 4))
    table.add_row("accuracy", _num(d["accuracy"]))
    table.add_row("balanced accuracy", _num(d["balanced_accuracy"]))
    table.add_row("ROC AUC (95 % CI)", f"{_num(auc['auc'])} ({_num(auc['low'])} - {_num(auc['high'])})")
    positive = f" ({escape(d['classes'][1])} positive)" if len(d["classes"]) == 2 else " (macro)"
    table.add_row(f"sensitivity{positive}", _num(d["sensitivity"]))
    table.add_row(f"specificity{positive}", _num(d["specificity"]))
    console.print(table)
    console.print(f"decision: {threshold}; AUC interval: {auc['method']}")
    confusion = Table(title="confusion matrix (rows true, columns predicted)",
                      box=box.SIMPLE_HEAD, title_justify="left", show_edge=False)
    confusion.add_column("true \\ predicted")
    for c in d["classes"]:
        confusion.add_column(escape(c), justify="right")
    for c, row in zip(d["classes"], d["confusion"]):
        confusion.add_row(escape(c), *(str(v) for v in row))
    console.print(confusion)
    balanced = d.get("balanced_threshold")
    if balanced and d["threshold"] != balanced["threshold"] and not (
            math.isclose(d["sensitivity"] or 0, balanced["sensitivity"] or 0)
            and math.isclose(d["specificity"] or 0, balanced["specificity"] or 0)):
        console.print(f"[dim]on this data, P({escape(d['classes'][1])}) ≥ {balanced['threshold']:.3f} "
                      f"would give sensitivity {_num(balanced['sensitivity'])}, specificity "
                      f"{_num(balanced['specificity'])} (balanced accuracy "
                      f"{_num(balanced['balanced_accuracy'])}); try it with --threshold[/dim]")


def evaluate(
    model: Annotated[Path, typer.Option("--model", help="A saved model, e.g. RUN_DIR/model-final.pt.")],
    data: Annotated[Optional[Path], typer.Option("--data", help="A labelled DICOM folder (labels.csv or class sub-folders), as `fedmed client` reads it.")] = None,
    npz: Annotated[Optional[Path], typer.Option("--npz", help="A MedMNIST-style .npz file.")] = None,
    split: Annotated[str, typer.Option("--split", help="The .npz split to evaluate: train, val or test.")] = "test",
    threshold: Annotated[Optional[float], typer.Option("--threshold", help="Cut-off on P(class 1) to use instead of the model's own (two classes).")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the results to this JSON file.")] = None,
) -> None:
    """Validate a model on this site's own labelled test set; nothing leaves this machine.

    Prints loss, accuracy, balanced accuracy, ROC AUC with its 95 % confidence interval, sensitivity and specificity at the model's operating threshold, the confusion matrix and the images per class.

    Example: fedmed evaluate --model runs/r1/model-final.pt --data /pacs-export/test --json eval.json
    Example: fedmed evaluate --model runs/pm/model-final.pt --npz pneumoniamnist.npz --split test
    """
    from fedmed.client.evaluation import evaluate_model

    if (data is None) == (npz is None):
        _fail("give exactly one of --data DIR or --npz FILE")
    try:
        with progress_bar("decoding images") as progress:
            result = evaluate_model(model, data_dir=data, npz=npz, split=split, threshold=threshold,
                                    progress=progress)
    except ValueError as exc:
        _fail(str(exc))
    d = result.to_dict()
    _print_evaluation(d, Console(highlight=False))
    if json_out is not None:
        try:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(d, indent=2) + "\n")
        except OSError as exc:
            _fail(f"--json {json_out}: cannot write it ({exc.strerror or type(exc).__name__})")
        typer.echo(f"wrote {json_out}")


# The federation's default model, so that a default pretrain fits a default federation.
_DEFAULT_MODEL = FederationConfig.model


def pretrain(
    out: Annotated[Path, typer.Option("--out", help="The model file to write (start a federation from it with --init-from).")],
    data: Annotated[Optional[Path], typer.Option("--data", help="A labelled DICOM folder the coordinator may use (public data), or a folder of such folders each with its labels.csv.")] = None,
    npz: Annotated[Optional[Path], typer.Option("--npz", help="A MedMNIST-style .npz: trains on its train split, validates on val.")] = None,
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over the training images.")] = 5,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Batch size.")] = 32,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate.")] = 1e-3,
    optimizer: Annotated[str, typer.Option("--optimizer", help="sgd or adam.")] = "adam",
    model: Annotated[str, typer.Option("--model", help=f"One of {', '.join(MODEL_NAMES)}: the federation's --model.")] = _DEFAULT_MODEL,
    image_size: Annotated[Optional[int], typer.Option("--image-size", help="Model input side in pixels (default 64 for DICOM, the file's for --npz); the federation's --image-size.")] = None,
    window: Annotated[Optional[str], typer.Option("--window", help="CENTER,WIDTH overriding the files' window, e.g. -600,1500.")] = None,
    classes: Annotated[Optional[str], typer.Option("--classes", help="Class names, in label order: the federation's --classes.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the split, initial weights and training.")] = 0,
    init_from: InitFrom = None,
) -> None:
    """Train a starting model centrally on data the coordinator may use (e.g. public images).

    The federation then starts from it: `fedmed simulate|server start --init-from MODEL`. The pretraining data must not overlap the data the federated model is evaluated on.

    Example: fedmed pretrain --npz public-chest.npz --epochs 5 --out public.pt
    Example: fedmed pretrain --data public-ct --image-size 64 --classes normal,abnormal --out public.pt
    """
    from fedmed.cli.main import _federation
    from fedmed.client.pretrain import pretrain as run_pretrain
    from fedmed.common.settings import DEFAULT_CLASSES

    if (data is None) == (npz is None):
        _fail("give exactly one of --data DIR or --npz FILE")
    size = image_size
    if size is None and npz is not None:
        from fedmed.client.sitedata import read_medmnist

        try:
            size = int(read_medmnist(npz)["train"][0].shape[-1])
        except ValueError as exc:
            _fail(str(exc))
    config = _federation(1, epochs, batch_size, lr, optimizer, model, size or 64, window,
                         classes or ",".join(DEFAULT_CLASSES), 1, seed, 1800.0)
    try:
        with progress_bar("decoding images") as decoding, progress_bar("training") as training:
            result = run_pretrain(config, out, data_dir=data, npz=npz, init_from=init_from,
                                  decode_progress=decoding, train_progress=training)
    except ValueError as exc:
        _fail(str(exc))
    threshold = "arg-max" if result.threshold is None else f"{result.threshold:.3f}"
    typer.echo(f"trained {config.model} on {result.train_images} image(s), {epochs} epoch(s): final training "
               f"loss {_num(result.train_loss, 4)}; held-out AUC {_num(result.val_auc)} on "
               f"{result.val_images} image(s); threshold {threshold}")
    typer.echo(f"wrote {result.path}; start a federation from it with --init-from {result.path}")
