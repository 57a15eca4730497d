"""The operator's commands: check a site folder, report on a run, predict with a model.

Plain functions with typer annotations; `fedmed.cli.main` registers them. Each calls one
library function and turns its errors into one line and an exit code: 0 done, 1 the
result says no (a site that cannot train), 2 bad input.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedmed.common.federation import parse_classes
from fedmed.common.settings import DEFAULT_CLASSES

# Text output lists this many paths per section; --json lists them all.
_SHOWN_PATHS = 8
_LABEL_PROBLEMS = {
    "unknown_keys": "labels.csv rows matching no file",
    "unlabelled_images": "images without a label",
    "labels_not_in_class_list": "labels not in the class list",
    "conflicting_labels": "images with conflicting labels",
    "folders_not_in_class_list": "images in a folder not named after a class",
}


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def data_check(
    data_dir: Annotated[Path, typer.Argument(help="The site's DICOM folder (labels.csv or class sub-folders).")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    classes: Annotated[str, typer.Option("--classes", help="Class names, in label order.")] = ",".join(DEFAULT_CLASSES),
) -> None:
    """Check a site folder before joining: what would train, what is skipped, privacy warnings.

    Runs here and sends nothing. Without labels yet it inventories every file (what is
    decodable, modalities, sizes, syntaxes, patients). Exit code 1: the site cannot train
    as it is.

    Example: fedmed data check /pacs-export --classes normal,abnormal
    """
    from fedmed.client.datacheck import check_site

    try:
        with _progress_bar() as progress:
            report = check_site(data_dir, parse_classes(classes), progress=progress)
    except ValueError as exc:
        _fail(str(exc))
    if json_out:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _print_check(report.to_dict(), Console(highlight=False))
    raise typer.Exit(0 if report.can_train else 1)


class _progress_bar:
    """A transient progress bar on stderr for a long scan: the check reads every header,
    then decodes every image (a few ms each, minutes for a large export)."""

    def __enter__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeRemainingColumn(), console=Console(stderr=True), transient=True)
        self._bar.__enter__()
        self._tasks: dict[str, int] = {}
        return self.update

    def update(self, done: int, total: int, what: str) -> None:
        if what not in self._tasks:
            self._tasks[what] = self._bar.add_task(what, total=total)
        self._bar.update(self._tasks[what], completed=done, total=total)

    def __exit__(self, *exc) -> None:
        self._bar.__exit__(*exc)


def _counts_table(title: str, counts: dict, key: str, value: str = "images") -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", show_edge=False)
    table.add_column(key)
    table.add_column(value, justify="right")
    for name, n in counts.items():
        table.add_row(escape(str(name)), str(n))
    return table


def _print_check(d: dict, console: Console) -> None:
    files = d["files"]
    console.print(f"[bold]fedmed data check[/bold]: {escape(d['data_dir'])}  "
                  f"(classes {escape(', '.join(d['classes']))})")
    summary = Table(box=box.SIMPLE_HEAD, show_header=False, show_edge=False)
    summary.add_column("what")
    summary.add_column("value", justify="right")
    summary.add_row("files found", str(files["found"]))
    if d["labels_found"]:
        summary.add_row("labelled images", str(files["labelled"]))
        summary.add_row("decodable (will train)", str(files["decodable"]))
    else:
        summary.add_row("decodable images (no labels yet)", str(files["decodable"]))
    summary.add_row("skipped", str(files["skipped"]))
    summary.add_row("patients", str(d["patients"]))
    per_patient = d["images_per_patient"]
    if per_patient:
        summary.add_row("images per patient (min / median / max)",
                        f"{per_patient['min']} / {per_patient['median']:g} / {per_patient['max']}")
    spacing = d["pixel_spacing_mm"]
    if spacing.get("min") is not None:
        summary.add_row("pixel spacing, mm (min - max)", f"{spacing['min']:.3g} - {spacing['max']:.3g}")
    if spacing.get("missing"):
        summary.add_row("images without pixel spacing", str(spacing["missing"]))
    console.print(summary)

    if d["site_folders"]:
        console.print(f"site folders: {escape(', '.join(d['site_folders']))}")
    if d["labels_found"]:
        classes = Table(title="classes", box=box.SIMPLE_HEAD, title_justify="left", show_edge=False)
        for column in ("class", "images", "patients"):
            classes.add_column(column, justify="left" if column == "class" else "right")
        for name in d["classes"]:
            classes.add_row(name, str(d["images_per_class"].get(name, 0)), str(d["patients_per_class"].get(name, 0)))
        console.print(classes)
    if d["label_values"]:
        console.print(_counts_table("label values found", d["label_values"], "label", "count"))
    headers = Table(title="decodable images by header value", box=box.SIMPLE_HEAD,
                    title_justify="left", show_edge=False)
    for column in ("attribute", "value", "images"):
        headers.add_column(column, justify="right" if column == "images" else "left")
    for attribute, key in (("modality", "modalities"), ("photometric", "photometric_interpretations"),
                           ("transfer syntax", "transfer_syntaxes"), ("rows x columns", "image_sizes"),
                           ("frames per file", "frames_per_file")):
        for i, (value, n) in enumerate(d[key].items()):
            headers.add_row(attribute if i == 0 else "", escape(str(value)), str(n))
    if files["decodable"]:
        console.print(headers)
    if d["skipped"]:
        console.print(_counts_table("skipped files", d["skipped"], "reason", "files"))
    labels = {_LABEL_PROBLEMS.get(k, k): v for k, v in d["label_problems"].items() if v}
    if labels:
        console.print(_counts_table("label problems", labels, "problem", "count"))
    if d["skipped_files"]:
        _print_paths(console, "skipped files (local paths, for you only)",
                     [f"{escape(f['path'])}  [dim]({escape(f['reason'])})[/dim]" for f in d["skipped_files"]])
    for warning in d["privacy_warnings"]:
        _print_paths(console, f"[yellow]privacy:[/yellow] {warning['message']} ({warning['count']} file(s))",
                     [escape(path) for path in warning["files"]])
    for text in d["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {escape(text)}")
    for text in d["problems"]:
        console.print(f"[red]problem:[/red] {escape(text)}")
    if d["can_train"]:
        console.print(f"[green bold]ready[/green bold]: {files['decodable']} images can train")
    else:
        console.print("[red bold]cannot train[/red bold]: fix the problems above")


def _print_paths(console: Console, title: str, lines: list[str]) -> None:
    console.print(title)
    for line in lines[:_SHOWN_PATHS]:
        console.print(f"  {line}", soft_wrap=True)
    if len(lines) > _SHOWN_PATHS:
        console.print(f"  ... and {len(lines) - _SHOWN_PATHS} more (--json lists all)")


def report(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (config.json, metrics.jsonl).")],
    tensorboard: Annotated[Optional[Path], typer.Option("--tensorboard", help="Also write the run's rounds as TensorBoard scalars into this folder.")] = None,
) -> None:
    """Plots and a self-contained report.html for a run folder.

    Metrics per round and site, participation, the final table and the privacy summary.

    Example: fedmed report runs/r1
    Example: fedmed report runs/r1 --tensorboard tb/r1 && tensorboard --logdir tb
    """
    from fedmed.server.report import write_report

    try:
        page = write_report(run_dir)
        if tensorboard is not None:
            from fedmed.server.tensorboard_log import export_run

            count = export_run(run_dir, tensorboard)
            typer.echo(f"wrote {count} round(s) of TensorBoard scalars to {tensorboard}")
    except ValueError as exc:
        _fail(str(exc))
    typer.echo(f"wrote {page} (plots in {page.parent / 'plots'})")


def predict(
    inputs: Annotated[list[Path], typer.Argument(help="DICOM files or folders (searched recursively).")],
    model: Annotated[Path, typer.Option("--model", help="A saved model, e.g. RUN_DIR/model-final.pt.")],
    out: Annotated[Path, typer.Option("--out", help="CSV to write: path,predicted,prob_<class>...,error.")] = Path("preds.csv"),
) -> None:
    """Class probabilities for DICOM files, preprocessed exactly as the model was trained.

    Files that cannot be used get a row with the reason; the batch always finishes.

    Example: fedmed predict --model runs/r1/model-final.pt /pacs-export/new --out preds.csv
    """
    from fedmed.client.predict import load_model, predict_files, write_predictions_csv

    try:
        loaded = load_model(model)
    except ValueError as exc:
        _fail(str(exc))
    predictions = predict_files(loaded, inputs)
    if not predictions:
        _fail("no input files found: give DICOM files or folders holding them")
    write_predictions_csv(out, predictions, loaded.classes)
    failed = sum(1 for p in predictions if p.error)
    typer.echo(f"{len(predictions)} file(s): {len(predictions) - failed} predicted, {failed} "
               f"could not be used; wrote {out}")
    unlike = [p for p in predictions if p.warning and not p.error]
    if unlike:
        kinds = sorted({part for p in unlike for part in p.warning.split("; ")})
        typer.secho(f"warning: {len(unlike)} file(s) unlike the model's training data (see the "
                    f"warning column): {'; '.join(kinds[:3])}" + (f"; and {len(kinds) - 3} more" if len(kinds) > 3 else ""),
                    fg=typer.colors.YELLOW, err=True)
    if not loaded.trained_on.get("modalities"):
        typer.echo("note: the model does not say which modality it was trained on (train with "
                   "--modality, e.g. CT), so a file of another modality cannot be flagged")
    if failed == len(predictions):
        _fail(f"nothing could be predicted: {predictions[0].error}"
              + (" (and others, see the error column)" if len(predictions) > 1 else ""), code=1)
