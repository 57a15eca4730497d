"""`fedmed report`: plots and one self-contained HTML page for a run folder.

Reads only what the run folder holds (config.json, metrics.jsonl, status.json: aggregate
numbers the sites chose to send) and writes

  RUN_DIR/plots/accuracy.png, auc.png, loss.png   aggregate and per-site, per round
  RUN_DIR/plots/sensitivity_specificity.png       the same for the two per-class rates
  RUN_DIR/plots/roc.png, confusion.png            the final round, per site, when sites sent them
  RUN_DIR/plots/epsilon.png                       each site's reported ε, when any site sent one
  RUN_DIR/plots/participation.png                 which sites trained, failed, ran out of budget
  RUN_DIR/report.html                             when, how long, which fedmed; model health;
                                                  config, plots (embedded), final table, privacy

The page embeds its plots, so it can be mailed or archived on its own. Missing values
(a failed site, an AUC undefined on a one-class split, a rate withheld by the small-cell
rule, a run without DP) are shown as gaps and dashes, never as zeros. A model that predicts
one class, ranks the classes the wrong way round or misses most of a class at a site is
flagged in words (the rule of `fedmed.common.model_health`, worded by
`fedmed.server.report_stats.health_flags`), so a run never reads as a
plain green "completed" when its model is not one to trust. Sites are listed by the names
in the metrics (and config.json's site list or {node id: name} map), never by node IDs.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import matplotlib as mpl
# Figures drawn on the Agg canvas directly, never through pyplot: no display is needed
# and the process's global backend is left alone.
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from fedmed.common.file_replace import replace_text
from fedmed.common.model_health import MIN_RATE, confusion_matrix
from fedmed.common.model_health import finite_number as _num
from fedmed.server.report_stats import auc_interval, class_counts, health_flags, wilson_interval

__all__ = ["write_report"]

# The names `fedmed.server.outputs` writes; not imported from there, as that module loads
# Flower, which reading a finished run does not need.
CONFIG_FILE, METRICS_FILE, STATUS_FILE = "config.json", "metrics.jsonl", "status.json"
REPORT_FILE = "report.html"
PLOTS_DIR = "plots"

PLOTTED_METRICS = (("accuracy", "Accuracy"), ("auc", "ROC AUC"), ("loss", "Validation loss"))
DEFAULT_CLASSES = ("normal", "abnormal")
# Participation categories, in legend order: (label, colour, cell text).
_PARTICIPATION = {
    "trained": ("trained", "#43a047", ""),
    "failed": ("failed", "#e53935", "F"),
    "budget-exhausted": ("out of privacy budget", "#fb8c00", "B"),
    "declined": ("declined", "#757575", "D"),
    "other": ("other status", "#8e24aa", "?"),
    "absent": ("no reply", "#eeeeee", "-"),
}
_DPI = 110
# Plots of several panels, shown at the page's full width.
_WIDE_PLOTS = ("sensitivity_specificity.png", "confusion.png")
_WIDE = ' class="wide"'


@dataclass
class _Run:
    run_dir: Path
    config: dict[str, Any]
    status: dict[str, Any] | None
    records: list[dict[str, Any]]
    bad_lines: int
    sites: list[str]

    @property
    def rounds(self) -> list[int]:
        return [int(r.get("round", i + 1)) for i, r in enumerate(self.records)]

    def site(self, record: dict[str, Any], name: str) -> dict[str, Any] | None:
        return (record.get("sites") or {}).get(name)

    @property
    def classes(self) -> tuple[str, ...]:
        classes = (self.config.get("federation") or {}).get("classes")
        return tuple(str(c) for c in classes) if isinstance(classes, list) and classes else DEFAULT_CLASSES

    def flags(self, record: dict[str, Any]) -> dict[str, list[str]]:
        """{site or "all sites": health flags} for one round's evaluation."""
        out = {name: health_flags(self.site(record, name), self.classes) for name in self.sites}
        out["all sites"] = health_flags(record.get("aggregate"), self.classes)
        return {k: v for k, v in out.items() if v}


def write_report(run_dir: str | os.PathLike[str]) -> Path:
    """Write the plots and `report.html` into `run_dir`; return the page's path.

    Raises ValueError naming the folder when it holds neither config.json nor metrics.jsonl.
    """
    run = _read_run(Path(run_dir))
    plots_dir = run.run_dir / PLOTS_DIR
    plots_dir.mkdir(exist_ok=True)
    plots: list[tuple[str, Path]] = []
    if run.records:
        for key, title in PLOTTED_METRICS:
            plots.append((title, _save(_metric_figure(run, key, title), plots_dir / f"{key}.png")))
        last = run.records[-1]
        if any(_roc(run.site(last, name)) for name in run.sites):
            plots.append((f"ROC curves, round {_count(last.get('round'))}",
                          _save(_roc_figure(run), plots_dir / "roc.png")))
        plots.append(("Sensitivity and specificity per round",
                      _save(_rates_figure(run), plots_dir / "sensitivity_specificity.png")))
        if any(confusion_matrix(run.site(last, name) or {}) for name in run.sites):
            plots.append((f"Confusion matrices, round {_count(last.get('round'))}",
                          _save(_confusion_figure(run), plots_dir / "confusion.png")))
        if any(_num(s.get("epsilon")) is not None
               for r in run.records for s in (r.get("sites") or {}).values()):
            plots.append(("Privacy spent (ε) per site",
                          _save(_epsilon_figure(run), plots_dir / "epsilon.png")))
        plots.append(("Participation per round",
                      _save(_participation_figure(run), plots_dir / "participation.png")))
    page = run.run_dir / REPORT_FILE
    replace_text(page, _page(run, plots))
    return page


# -- reading -------------------------------------------------------------------------------

def _read_run(run_dir: Path) -> _Run:
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir}: no such run folder; give the --out folder of a run")
    has_config, has_metrics = (run_dir / CONFIG_FILE).is_file(), (run_dir / METRICS_FILE).is_file()
    if not has_config and not has_metrics:
        raise ValueError(f"{run_dir}: not a run folder (no {CONFIG_FILE} or {METRICS_FILE})")
    config = _read_json(run_dir / CONFIG_FILE) if has_config else {}
    status = _read_json(run_dir / STATUS_FILE) if (run_dir / STATUS_FILE).is_file() else None
    records, bad = [], 0
    if has_metrics:
        for line in (run_dir / METRICS_FILE).read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                bad += 1  # a line cut short by a crash; the rest of the run still reports
                continue
            if isinstance(record, dict):
                records.append(record)
            else:
                bad += 1
    listed = config.get("sites") or []
    # A TLS deployment maps node IDs to site names; only the names are shown.
    names = {str(s) for s in (listed.values() if isinstance(listed, dict) else listed)}
    for record in records:
        names.update(str(s) for s in (record.get("sites") or {}))
    return _Run(run_dir, config, status, records, bad, sorted(names))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise ValueError(f"{path}: not valid JSON; the run folder is damaged") from None
    return data if isinstance(data, dict) else {}


def _series(run: _Run, key: str, site: str | None) -> list[float]:
    out = []
    for record in run.records:
        entry = record.get("aggregate") if site is None else run.site(record, site)
        value = _num((entry or {}).get(key))
        out.append(math.nan if value is None else value)
    return out


def _category(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "absent"
    status = str(entry.get("status", "ok"))
    if status == "ok":
        return "trained"
    return status if status in _PARTICIPATION else "other"


# -- plots ---------------------------------------------------------------------------------

def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, format="png", dpi=_DPI)
    return path


_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
_DASHES = ("-", "--", "-.", ":")


def _site_style(run: _Run, name: str) -> dict[str, Any]:
    """Colour, marker and dash per site, shrinking markers: sites reporting equal values
    (the same ε, a perfect accuracy) stay visible on top of each other."""
    i = run.sites.index(name)
    return {"color": _site_colours(run)[name], "marker": _MARKERS[i % len(_MARKERS)],
            "linestyle": _DASHES[i % len(_DASHES)], "markersize": max(3.0, 7.0 - 1.0 * i),
            "alpha": 0.85}


def _site_colours(run: _Run) -> dict[str, Any]:
    cmap = mpl.colormaps["tab10" if len(run.sites) <= 10 else "tab20"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(run.sites)}


def _metric_figure(run: _Run, key: str, title: str) -> Figure:
    fig = _figure(6.4, 3.4)
    ax = fig.subplots()
    rounds = run.rounds
    for name in run.sites:
        ax.plot(rounds, _series(run, key, name), linewidth=1.3, label=f"site {name}",
                **_site_style(run, name))
    ax.plot(rounds, _series(run, key, None), marker="s", markersize=5, linewidth=2.6,
            color="black", label="all sites (weighted)")
    ax.set_title(f"{title} per round")
    ax.set_xlabel("round")
    ax.set_ylabel(title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if key != "loss":
        ax.set_ylim(-0.02, 1.02)
    if len(rounds) == 1:
        ax.set_xlim(rounds[0] - 1, rounds[0] + 1)
    ax.grid(alpha=0.3)
    if all(math.isnan(v) for name in run.sites + [None] for v in _series(run, key, name)):
        ax.text(0.5, 0.5, "no values reported", transform=ax.transAxes, ha="center",
                va="center", color="#666666")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small", frameon=False)
    return fig


def _rates_figure(run: _Run) -> Figure:
    fig = _figure(11.0, 3.6)
    axes = fig.subplots(1, 2, sharey=True)
    rounds = run.rounds
    for ax, key in zip(axes, ("sensitivity", "specificity")):
        for name in run.sites:
            ax.plot(rounds, _series(run, key, name), linewidth=1.3, label=f"site {name}",
                    **_site_style(run, name))
        ax.plot(rounds, _series(run, key, None), marker="s", markersize=5, linewidth=2.6,
                color="black", label="all sites (weighted)")
        ax.axhspan(-0.02, MIN_RATE, color="#ffebee", zorder=0)  # the weak zone of the flags
        ax.set_title(f"{key.capitalize()} per round")
        ax.set_xlabel("round")
        ax.set_ylim(-0.02, 1.02)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(rounds) == 1:
            ax.set_xlim(rounds[0] - 1, rounds[0] + 1)
        ax.grid(alpha=0.3)
        if all(math.isnan(v) for name in run.sites + [None] for v in _series(run, key, name)):
            ax.text(0.5, 0.5, "no values reported\n(withheld or not sent)", transform=ax.transAxes,
                    ha="center", va="center", color="#666666")
    axes[0].set_ylabel("rate")
    axes[1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small", frameon=False)
    return fig


def _roc(entry: dict[str, Any] | None) -> tuple[list[float], list[float]] | None:
    roc = (entry or {}).get("roc")
    if not isinstance(roc, dict):
        return None
    fpr, tpr = roc.get("fpr"), roc.get("tpr")
    if not isinstance(fpr, list) or not isinstance(tpr, list) or len(fpr) != len(tpr) or len(fpr) < 2:
        return None
    pairs = [(_num(x), _num(y)) for x, y in zip(fpr, tpr)]
    if any(x is None or y is None for x, y in pairs):
        return None
    return [x for x, _ in pairs], [y for _, y in pairs]  # type: ignore[misc]


def _roc_figure(run: _Run) -> Figure:
    fig = _figure(6.4, 5.4)
    ax = fig.subplots()
    last = run.records[-1]
    ax.plot([0, 1], [0, 1], color="#9e9e9e", linestyle=":", linewidth=1, label="chance")
    without = []
    for name in run.sites:
        entry = run.site(last, name) or {}
        curve = _roc(entry)
        if curve is None:
            without.append(name)
            continue
        label = f"site {name}: AUC {_fmt(entry.get('auc'))}"
        interval = _auc_ci(entry)
        if interval:
            label += f" [{interval[0]:.2f}, {interval[1]:.2f}]"
        style = _site_style(run, name)
        ax.plot(curve[0], curve[1], color=style["color"], linestyle=style["linestyle"],
                linewidth=1.8, label=label, drawstyle="default")
    positive = run.classes[1] if len(run.classes) > 1 else "class 1"
    ax.set_xlabel("1 − specificity (false positive rate)")
    ax.set_ylabel(f"sensitivity for {positive}")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.set_title(f"ROC per site, round {_count(last.get('round'))} (95 % CI of the AUC)")
    if without:
        ax.text(0.01, 0.98, f"no curve sent: {', '.join('site ' + n for n in without)}",
                transform=ax.transAxes, va="top", fontsize="small", color="#b71c1c")
    ax.legend(loc="lower right", fontsize="small", framealpha=0.9)
    return fig


def _confusion_figure(run: _Run) -> Figure:
    last = run.records[-1]
    tables = [(f"site {name}", confusion_matrix(run.site(last, name) or {})) for name in run.sites]
    tables = [(label, t) for label, t in tables if t]
    if len(tables) > 1 and len({len(t) for _, t in tables}) == 1:
        size = len(tables[0][1])
        total = [[sum(t[i][j] for _, t in tables) for j in range(size)] for i in range(size)]
        tables.append(("all sites (sum)", total))
    columns = min(4, len(tables))
    rows = math.ceil(len(tables) / columns)
    fig = _figure(2.9 * columns + 0.4, 2.7 * rows + 0.3)
    axes = fig.subplots(rows, columns, squeeze=False)
    classes = run.classes
    for k, ax in enumerate(axes.flat):
        if k >= len(tables):
            ax.set_visible(False)
            continue
        label, table = tables[k]
        n = len(table)
        # Colour by the share of each true class (row), so sites of any size compare.
        shares = [[v / sum(row) if sum(row) > 0 else 0.0 for v in row] for row in table]
        ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        for i in range(n):
            for j in range(n):
                value = table[i][j]
                text = f"{value:.0f}" if abs(value - round(value)) < 1e-9 else f"{value:.1f}"
                ax.text(j, i, text, ha="center", va="center",
                        color="white" if shares[i][j] > 0.6 else "black", fontsize="medium")
        names = [classes[i] if i < len(classes) else str(i) for i in range(n)]
        ax.set_xticks(range(n), names, fontsize="small")
        ax.set_yticks(range(n), names, fontsize="small", rotation=90, va="center")
        ax.set_xlabel("predicted", fontsize="small")
        ax.set_ylabel("true", fontsize="small")
        ax.set_title(label, fontsize="medium")
    fig.suptitle(f"Confusion matrices, round {_count(last.get('round'))} (counts; shade = share of the true class)",
                 fontsize="medium")
    return fig


def _epsilon_figure(run: _Run) -> Figure:
    fig = _figure(6.4, 3.4)
    ax = fig.subplots()
    without = []
    for name in run.sites:
        values = _series(run, "epsilon", name)
        if all(math.isnan(v) for v in values):
            without.append(name)
            continue
        ax.plot(run.rounds, values, linewidth=1.5, label=f"site {name}", **_site_style(run, name))
    ax.set_title("Privacy spent: ε each site reported after each round")
    ax.set_xlabel("round")
    ax.set_ylabel("ε")
    ax.set_ylim(bottom=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(run.rounds) == 1:
        ax.set_xlim(run.rounds[0] - 1, run.rounds[0] + 1)
    ax.grid(alpha=0.3)
    if without:
        ax.text(0.01, 0.97, f"no ε reported: {', '.join(without)}", transform=ax.transAxes,
                va="top", fontsize="small", color="#b71c1c")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small", frameon=False)
    return fig


def _participation_figure(run: _Run) -> Figure:
    keys = list(_PARTICIPATION)
    grid = [[keys.index(_category(run.site(r, name))) for r in run.records] for name in run.sites]
    rounds = run.rounds
    fig = _figure(min(12.0, max(6.0, 2.5 + 0.35 * len(rounds))), max(1.8, 1.0 + 0.38 * len(run.sites)))
    ax = fig.subplots()
    cmap = ListedColormap([_PARTICIPATION[k][1] for k in keys])
    ax.imshow(grid, cmap=cmap, vmin=-0.5, vmax=len(keys) - 0.5, aspect="auto",
              interpolation="nearest")
    if len(rounds) <= 40:
        for y, row in enumerate(grid):
            for x, cell in enumerate(row):
                ax.text(x, y, _PARTICIPATION[keys[cell]][2], ha="center", va="center",
                        fontsize="small", color="black" if keys[cell] == "absent" else "white")
    step = max(1, math.ceil(len(rounds) / 20))
    ax.set_xticks(range(0, len(rounds), step), [str(r) for r in rounds[::step]])
    ax.set_yticks(range(len(run.sites)), [f"site {s}" for s in run.sites])
    ax.set_xlabel("round")
    ax.set_title("Participation: what each site did in each round")
    ax.set_xticks([x - 0.5 for x in range(1, len(rounds))], minor=True)
    ax.set_yticks([y - 0.5 for y in range(1, len(run.sites))], minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    used = sorted({cell for row in grid for cell in row})
    handles = [Patch(facecolor=_PARTICIPATION[keys[i]][1], edgecolor="#999999",
                     label=_PARTICIPATION[keys[i]][0]) for i in used]
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5),
              fontsize="small", frameon=False)
    return fig


# -- the page ------------------------------------------------------------------------------

def _fmt(value: Any, digits: int = 3) -> str:
    number = _num(value)
    if number is None:
        return "–" if value is None or isinstance(value, (int, float)) else html.escape(str(value))
    return f"{number:.{digits}f}"


def _count(value: Any) -> str:
    number = _num(value)
    return "–" if number is None else str(int(number))


def _table(headers: list[str], rows: list[list[str]], css: str = "") -> str:
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = ""
    for row in rows:
        # A row whose first cell is bold is a total.
        attrs = ' class="total"' if row and row[0].startswith("<b>") else ""
        body += f"<tr{attrs}>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>"
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _flatten(prefix: str, value: Any, out: list[tuple[str, str]]) -> None:
    if isinstance(value, dict):
        for key in sorted(value):
            _flatten(f"{prefix}.{key}" if prefix else str(key), value[key], out)
    elif isinstance(value, list):
        out.append((prefix, ", ".join("–" if v is None else str(v) for v in value)))
    else:
        out.append((prefix, "–" if value is None else str(value)))


def _config_section(run: _Run) -> str:
    pairs: list[tuple[str, str]] = []
    _flatten("", run.config.get("federation", {}), pairs)
    rest = {k: v for k, v in run.config.items() if k != "federation"}
    if isinstance(rest.get("sites"), dict):
        rest["sites"] = sorted(str(v) for v in rest["sites"].values())  # names, never node IDs
    _flatten("", rest, pairs)
    rows = [[html.escape(k), html.escape(v)] for k, v in pairs]
    table = _table(["setting", "value"], rows, "config") if rows else f"<p>No {CONFIG_FILE}.</p>"
    return "<h2>Configuration</h2>" + table


def _auc_ci(entry: dict[str, Any]) -> tuple[float, float] | None:
    counts = class_counts(entry)
    if not counts or len(counts) != 2:
        return None
    return auc_interval(entry.get("auc"), counts[1], counts[0])


def _rate_ci(entry: dict[str, Any], key: str) -> tuple[float, float] | None:
    if key == "accuracy":
        return wilson_interval(entry.get("accuracy"), entry.get("num_examples"))
    counts = class_counts(entry)
    if not counts or len(counts) != 2:
        return None
    return wilson_interval(entry.get(key), counts[1] if key == "sensitivity" else counts[0])


def _with_ci(value: Any, interval: tuple[float, float] | None) -> str:
    text = _fmt(value)
    if interval is None or _num(value) is None:
        return text
    return f'{text}<br><span class="ci">{interval[0]:.2f}–{interval[1]:.2f}</span>'


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _file_time(path: Path) -> datetime | None:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, tz=timezone.utc)
    except OSError:
        return None


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def fedmed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fedmed")
    except PackageNotFoundError:
        return "unknown"


def _when_section(run: _Run) -> str:
    """When the run started and ended, its duration, and the fedmed versions involved.

    Times come from config.json's `started_at` and status.json's `finished_at`; runs
    written before those existed fall back on the files' modification times, and say so."""
    status = run.status or {}
    started = _parse_time(run.config.get("started_at"))
    finished = _parse_time(status.get("finished_at"))
    estimated = False
    if started is None:
        started = _file_time(run.run_dir / CONFIG_FILE)
        estimated = started is not None
    if finished is None:
        last_file = run.run_dir / (STATUS_FILE if run.status is not None else METRICS_FILE)
        finished = _file_time(last_file) if last_file.is_file() else None
        estimated = estimated or finished is not None
    parts = []
    if started is not None:
        parts.append(f"started {started.strftime('%Y-%m-%d %H:%M:%S')} UTC")
    if finished is not None and run.status is not None:
        parts.append(f"ended {finished.strftime('%Y-%m-%d %H:%M:%S')} UTC")
    elif finished is not None:
        parts.append(f"last written {finished.strftime('%Y-%m-%d %H:%M:%S')} UTC")
    if started is not None and finished is not None and finished >= started:
        parts.append(f"duration {_duration((finished - started).total_seconds())}")
    text = ", ".join(parts) if parts else "time not recorded"
    if estimated:
        text += " (from the run folder's file times)"
    ran_with = run.config.get("fedmed_version")
    version = fedmed_version()
    text += f"; run with fedmed {html.escape(str(ran_with))}" if ran_with else ""
    text += f"; report by fedmed {html.escape(version)}"
    return f'<p class="when">Run {text}.</p>'


def _status_section(run: _Run) -> str:
    status = run.status or {}
    outcome = str(status.get("status", "in progress or stopped (no status.json)"))
    done, planned = status.get("rounds_completed", len(run.records)), status.get(
        "rounds_planned", run.config.get("federation", {}).get("rounds"))
    flags = run.flags(run.records[-1]) if run.records else {}
    css = html.escape(outcome.split()[0])
    if flags and css == "completed":
        css = "completed flagged"
    parts = [f'<p class="status {css}">Run <b>{html.escape(outcome)}</b>'
             f" — {_count(done)} of {_count(planned)} round(s) completed"]
    if status.get("reason"):
        parts.append(f"; reason: {html.escape(str(status['reason']))}")
    if flags:
        where = [k for k in flags if k != "all sites"]
        parts.append(f'. <b class="flag">⚠ The final model is not one to trust'
                     + (f" at {len(where)} site(s): {html.escape(', '.join(where))}" if where else "")
                     + "</b> (see Model health)")
    parts.append("</p>")
    if run.bad_lines:
        parts.append(f'<p class="note">{run.bad_lines} unreadable line(s) of {METRICS_FILE} left out.</p>')
    return "".join(parts)


def _health_section(run: _Run) -> str:
    """Flags on the final round's model per site, and the rounds in which any was raised."""
    if not run.records:
        return ""
    last = run.records[-1]
    flags = run.flags(last)
    rule = ("A site is flagged when the model predicts one class for every image there, when "
            "its AUC is below 0.5 (the scores rank the classes the wrong way round), or when "
            "its sensitivity or specificity is below 0.5 (it misses most of a class).")
    if flags:
        items = "".join(f"<li><b>{html.escape(k if k == 'all sites' else 'site ' + k)}</b>: "
                        f"{html.escape('; '.join(v))}</li>" for k, v in flags.items())
        body = (f'<div class="flagbox"><p><b>⚠ Round {_count(last.get("round"))}: the model is '
                f"weak or one-sided here.</b> Do not use it for these sites' patients without "
                f"further training or checking.</p><ul>{items}</ul></div>")
    else:
        body = (f'<p class="ok">No flag on round {_count(last.get("round"))}: at every site that '
                "reported them, the model predicts both classes, ranks them the right way round "
                "and finds at least half of each.</p>")
    flagged_rounds = [_count(r.get("round")) for r in run.records if run.flags(r)]
    if flagged_rounds:
        body += (f'<p class="note">Rounds with a flag: {", ".join(flagged_rounds)} of '
                 f"{len(run.records)}.</p>")
    return "<h2>Model health</h2><p class=\"note\">" + rule + "</p>" + body


def _rounds_trained(run: _Run, name: str) -> int:
    return sum(1 for r in run.records if _category(run.site(r, name)) == "trained")


def _withheld(run: _Run, record: dict[str, Any], key: str) -> list[str]:
    """Sites that evaluated in `record` but sent no `key` (the small-cell rule)."""
    out = []
    for name in run.sites:
        entry = run.site(record, name) or {}
        if _num(entry.get("num_examples")) and _num(entry.get(key)) is None:
            out.append(name)
    return out


def _final_section(run: _Run) -> str:
    if not run.records:
        return "<h2>Final results</h2><p>No round completed: there are no results yet.</p>"
    last = run.records[-1]
    total = len(run.records)
    flags = run.flags(last)
    rows = []
    for name in run.sites:
        entry = run.site(last, name) or {}
        state = _PARTICIPATION[_category(run.site(last, name))][0]
        if entry.get("eval_status"):
            state += f" (evaluation: {entry['eval_status']})"
        if entry.get("reason"):
            state += f" — {entry['reason']}"
        flag = ('<span class="flag" title="' + html.escape("; ".join(flags[name])) + '">⚠ '
                + html.escape(flags[name][0].split(":")[0]) + "</span>") if name in flags else ""
        rows.append([html.escape(f"site {name}"), html.escape(state) + (f"<br>{flag}" if flag else ""),
                     f"{_rounds_trained(run, name)} / {total}",
                     _count(entry.get("num_train_examples")), _count(entry.get("num_examples")),
                     _fmt(entry.get("loss")),
                     _with_ci(entry.get("accuracy"), _rate_ci(entry, "accuracy")),
                     _fmt(entry.get("balanced_accuracy")),
                     _with_ci(entry.get("auc"), _auc_ci(entry)),
                     _with_ci(entry.get("sensitivity"), _rate_ci(entry, "sensitivity")),
                     _with_ci(entry.get("specificity"), _rate_ci(entry, "specificity")),
                     _fmt(entry.get("epsilon"), 2)])
    agg = last.get("aggregate") or {}
    agg_flag = ('<br><span class="flag">⚠ ' + html.escape(flags["all sites"][0].split(":")[0]) + "</span>"
                if "all sites" in flags else "")
    rows.append(["<b>all sites</b>", "weighted by validation images" + agg_flag, "", "",
                 _count(agg.get("num_examples")),
                 *(_fmt(agg.get(k)) for k in ("loss", "accuracy", "balanced_accuracy", "auc",
                                              "sensitivity", "specificity")),
                 _fmt((last.get("privacy") or {}).get("max_epsilon"), 2)])
    headers = ["site", "last round", "rounds trained", "train images", "val images", "loss",
               "accuracy", "balanced accuracy", "AUC", "sensitivity", "specificity", "ε"]
    notes = []
    for key in ("sensitivity", "specificity"):
        left_out = _withheld(run, last, key)
        if left_out and _num(agg.get(key)) is not None:
            notes.append(f'<p class="warn">The {key} of “all sites” leaves out '
                         f"{html.escape(', '.join('site ' + n for n in left_out))}, which withheld it "
                         "(fewer than 10 validation images of a class): it describes the other sites only.</p>")
    threshold = _num(agg.get("threshold"))
    if threshold is not None:
        notes.append(f'<p class="note">Sensitivity, specificity and the confusion matrices are at '
                     f"the operating threshold {threshold:.3f} on P({html.escape(run.classes[-1])}).</p>")
    worst = (f'<p class="note">Worst site: accuracy {_fmt(agg.get("worst_site_accuracy"))}, '
             f'AUC {_fmt(agg.get("worst_site_auc"))}. Under a value: its 95 % confidence interval '
             "(Wilson for rates, Hanley–McNeil for the AUC) where the site sent its class counts; it "
             "counts sampling error only, and with DP the site's numbers carry noise on top. A dash is "
             "a value a site did not report "
             "(a failed round, an AUC undefined on a one-class validation split, or sensitivity "
             "and specificity withheld because a validation class had fewer than 10 images). "
             "The ε of “all sites” is the largest any site reported.</p>")
    status = run.status or {}
    planned = _num(status.get("rounds_planned", (run.config.get("federation") or {}).get("rounds")))
    heading = f"Final results (round {_count(last.get('round'))})"
    if status.get("status") != "completed" and planned is not None and (_num(last.get("round")) or 0) < planned:
        heading = (f"Results of the last completed round ({_count(last.get('round'))} of "
                   f"{_count(planned)}: the run stopped early)")
    return (f"<h2>{heading}</h2>" + _table(headers, rows, "numbers") + "".join(notes) + worst)


def _rounds_section(run: _Run) -> str:
    if not run.records:
        return ""
    rows = []
    for record in run.records:
        sites = record.get("sites") or {}
        agg = record.get("aggregate") or {}
        trained = sum(1 for s in sites.values() if _category(s) == "trained")
        flags = run.flags(record)
        flag_text = ", ".join(f"{k if k == 'all sites' else 'site ' + k}: {v[0].split(':')[0]}"
                              for k, v in flags.items())
        rows.append([_count(record.get("round")), f"{trained} / {len(run.sites)}",
                     *(_fmt(agg.get(k)) for k in ("loss", "accuracy", "balanced_accuracy", "auc",
                                                  "sensitivity", "specificity", "worst_site_accuracy")),
                     _fmt((record.get("privacy") or {}).get("max_epsilon"), 2),
                     _fmt(record.get("seconds"), 1),
                     f'<span class="flag">{html.escape(flag_text)}</span>' if flag_text else ""])
    return "<h2>Rounds</h2>" + _table(
        ["round", "sites trained", "loss", "accuracy", "balanced accuracy", "AUC", "sensitivity",
         "specificity", "worst accuracy", "max ε", "seconds", "flags"],
        rows, "numbers")


def _last(run: _Run, name: str, key: str) -> Any:
    for record in reversed(run.records):
        value = (run.site(record, name) or {}).get(key)
        if value is not None:
            return value
    return None


def _privacy_section(run: _Run) -> str:
    no_dp = set()
    for record in run.records:
        no_dp.update(str(s) for s in (record.get("privacy") or {}).get("no_dp_sites") or [])
    rows, any_dp = [], False
    for name in run.sites:
        flag = _last(run, name, "dp")
        epsilon = _last(run, name, "epsilon")
        on = bool(flag) if flag is not None else (name not in no_dp and _num(epsilon) is not None)
        any_dp |= on
        dp = "on" if on else '<span class="off">off</span>'
        if not on and flag is None and name not in no_dp:
            dp += " (no ε reported)"
        rows.append([html.escape(f"site {name}"), dp, _fmt(epsilon, 2), _fmt_small(_last(run, name, "delta")),
                     _fmt(_last(run, name, "noise_multiplier"), 3)])
    intro = ("<p>Each site decides its own differential privacy and reports the ε it has "
             "spent; the coordinator only records it. ε is the last value each site "
             "reported (cumulative over its rounds), δ the failure probability it was "
             "computed at, the noise multiplier σ the Gaussian noise per clipped gradient.</p>")
    trained_any = any(_category(run.site(r, name)) == "trained" for r in run.records for name in run.sites)
    if not run.records:
        # No round finished: the folder records no update, so nothing can be said about noise.
        intro += "<p>No round completed: this run recorded no model update from any site.</p>"
    elif not trained_any:
        intro += "<p>No site trained in this run: no model update left any site.</p>"
    elif run.sites and not any_dp:
        intro += ('<p class="warn">No site reported differential privacy: model updates left '
                  "the sites without DP noise.</p>")
    elif no_dp or any(r[1].startswith("<span") for r in rows):
        intro += '<p class="warn">Some sites trained without differential privacy.</p>'
    return "<h2>Privacy</h2>" + intro + _table(
        ["site", "DP", "final ε", "δ", "noise multiplier σ"], rows, "numbers")


def _fmt_small(value: Any) -> str:
    number = _num(value)
    return "–" if number is None else f"{number:.3g}"


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}">'


_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       margin: 2em auto; max-width: 1100px; padding: 0 1.5em; color: #212121; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.7em; text-align: left; }
th { background: #f5f5f5; }
table.numbers td:not(:first-child):not(:nth-child(2)) { text-align: right; font-variant-numeric: tabular-nums; }
tr.total td { background: #fafafa; font-weight: 600; }
figure { margin: 0.8em 0; flex: 0 1 calc(50% - 0.75em); min-width: 420px; }
figure img { width: 100%; border: 1px solid #eee; }
figure.wide { flex-basis: 100%; }
figcaption { color: #616161; font-size: 0.9em; }
.note { color: #616161; font-size: 0.9em; } .warn { color: #b71c1c; } .off { color: #b71c1c; font-weight: 600; }
p.status { padding: 0.5em 0.8em; background: #e8f5e9; border-left: 4px solid #43a047; }
p.status.failed { background: #ffebee; border-left-color: #e53935; }
p.status.in { background: #fff8e1; border-left-color: #fb8c00; }
p.status.flagged { background: #fff3e0; border-left-color: #ef6c00; }
.flag { color: #bf360c; font-weight: 600; } .ci { color: #757575; font-size: 0.82em; white-space: nowrap; }
.flagbox { background: #fff3e0; border-left: 4px solid #ef6c00; padding: 0.2em 0.9em; }
.flagbox ul { margin-top: 0; } p.ok { color: #2e7d32; }
p.when { color: #424242; margin-top: 0; }
.plots { display: flex; flex-wrap: wrap; gap: 0 1.5em; align-items: flex-start; }
"""


def _page(run: _Run, plots: list[tuple[str, Path]]) -> str:
    name = html.escape(run.run_dir.resolve().name)
    figures = "".join(f"<figure{_WIDE if path.name in _WIDE_PLOTS else ''}>"
                      f"{_img(path)}<figcaption>{html.escape(title)} "
                      f"({html.escape(PLOTS_DIR + '/' + path.name)})</figcaption></figure>"
                      for title, path in plots)
    body = [
        f"<h1>fedmed run report: {name}</h1>",
        _when_section(run),
        '<p class="note">Aggregate numbers each site sent after evaluating the global model '
        "on its own held-out patients; no site data is in this report.</p>",
        _status_section(run),
        _health_section(run),
        _final_section(run),
        "<h2>Plots</h2>" + (f'<div class="plots">{figures}</div>' if figures
                            else "<p>No round completed: nothing to plot.</p>"),
        _privacy_section(run),
        _rounds_section(run),
        _config_section(run),
    ]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>fedmed report: {name}</title><style>{_CSS}</style></head>"
            f"<body>{''.join(body)}</body></html>\n")
