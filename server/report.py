"""`fedmed report`: plots and one self-contained HTML page for a run folder.

Reads only what the run folder holds (config.json, metrics.jsonl, status.json: aggregate
numbers the sites chose to send) and writes

  RUN_DIR/plots/accuracy.png, auc.png, loss.png   aggregate and per-site, per round
  RUN_DIR/plots/epsilon.png                       each site's reported ε, when any site sent one
  RUN_DIR/plots/participation.png                 which sites trained, failed, ran out of budget
  RUN_DIR/report.html                             config, plots (embedded), final table, privacy

The page embeds its plots, so it can be mailed or archived on its own. Missing values
(a failed site, an AUC undefined on a one-class split, a run without DP) are shown as
gaps and dashes, never as zeros.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from dataclasses import dataclass
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

__all__ = ["write_report"]

# The names `fedmed.server.outputs` writes; not imported from there, as that module loads
# Flower, which reading a finished run does not need.
CONFIG_FILE, METRICS_FILE, STATUS_FILE = "config.json", "metrics.jsonl", "status.json"
REPORT_FILE = "report.html"
PLOTS_DIR = "plots"

PLOTTED_METRICS = (("accuracy", "Accuracy"), ("auc", "ROC AUC"), ("loss", "Validation loss"))
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
        if any(_num(s.get("epsilon")) is not None
               for r in run.records for s in (r.get("sites") or {}).values()):
            plots.append(("Privacy spent (ε) per site",
                          _save(_epsilon_figure(run), plots_dir / "epsilon.png")))
        plots.append(("Participation per round",
                      _save(_participation_figure(run), plots_dir / "participation.png")))
    page = run.run_dir / REPORT_FILE
    tmp = page.with_suffix(".html.tmp")
    tmp.write_text(_page(run, plots), encoding="utf-8")
    os.replace(tmp, page)
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
    # A simulation lists its sites' names; a deployment maps node IDs to enrolled names.
    listed = config.get("sites") or []
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


def _num(value: Any) -> float | None:
    """A finite number, or None for null, NaN, missing and non-numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


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
    # Sites by name: a deployment's config.json keys them by node ID.
    _flatten("", {k: (run.sites if k == "sites" else v) for k, v in run.config.items() if k != "federation"}, pairs)
    rows = [[html.escape(k), html.escape(v)] for k, v in pairs]
    table = _table(["setting", "value"], rows, "config") if rows else f"<p>No {CONFIG_FILE}.</p>"
    return "<h2>Configuration</h2>" + table


def _status_section(run: _Run) -> str:
    status = run.status or {}
    outcome = str(status.get("status", "in progress or stopped (no status.json)"))
    done, planned = status.get("rounds_completed", len(run.records)), status.get(
        "rounds_planned", run.config.get("federation", {}).get("rounds"))
    parts = [f'<p class="status {html.escape(outcome.split()[0])}">Run <b>{html.escape(outcome)}</b>'
             f" — {_count(done)} of {_count(planned)} round(s) completed"]
    if status.get("reason"):
        parts.append(f"; reason: {html.escape(str(status['reason']))}")
    parts.append("</p>")
    if run.bad_lines:
        parts.append(f'<p class="note">{run.bad_lines} unreadable line(s) of {METRICS_FILE} left out.</p>')
    return "".join(parts)


def _rounds_trained(run: _Run, name: str) -> int:
    return sum(1 for r in run.records if _category(run.site(r, name)) == "trained")


def _final_section(run: _Run) -> str:
    if not run.records:
        return "<h2>Final results</h2><p>No round completed: there are no results yet.</p>"
    last = run.records[-1]
    total = len(run.records)
    rows = []
    for name in run.sites:
        entry = run.site(last, name) or {}
        state = _PARTICIPATION[_category(run.site(last, name))][0]
        if entry.get("eval_status"):
            state += f" (evaluation: {entry['eval_status']})"
        if entry.get("reason"):
            state += f" — {entry['reason']}"
        rows.append([html.escape(f"site {name}"), html.escape(state),
                     f"{_rounds_trained(run, name)} / {total}",
                     _count(entry.get("num_train_examples")), _count(entry.get("num_examples")),
                     *(_fmt(entry.get(k)) for k in ("loss", "accuracy", "auc", "sensitivity", "specificity")),
                     _fmt(entry.get("epsilon"), 2)])
    agg = last.get("aggregate") or {}
    rows.append(["<b>all sites</b>", "weighted by validation images", "", "",
                 _count(agg.get("num_examples")),
                 *(_fmt(agg.get(k)) for k in ("loss", "accuracy", "auc", "sensitivity", "specificity")),
                 _fmt((last.get("privacy") or {}).get("max_epsilon"), 2)])
    headers = ["site", "last round", "rounds trained", "train images", "val images", "loss",
               "accuracy", "AUC", "sensitivity", "specificity", "ε"]
    worst = (f'<p class="note">Worst site: accuracy {_fmt(agg.get("worst_site_accuracy"))}, '
             f'AUC {_fmt(agg.get("worst_site_auc"))}. A dash is a value a site did not report '
             "(a failed round, an AUC undefined on a one-class validation split, or sensitivity "
             "and specificity withheld because a validation class had fewer than 10 images). "
             "The ε of “all sites” is the largest any site reported.</p>")
    return (f"<h2>Final results (round {_count(last.get('round'))})</h2>"
            + _table(headers, rows, "numbers") + worst)


def _rounds_section(run: _Run) -> str:
    if not run.records:
        return ""
    rows = []
    for record in run.records:
        sites = record.get("sites") or {}
        agg = record.get("aggregate") or {}
        trained = sum(1 for s in sites.values() if _category(s) == "trained")
        rows.append([_count(record.get("round")), f"{trained} / {len(run.sites)}",
                     *(_fmt(agg.get(k)) for k in ("loss", "accuracy", "auc", "worst_site_accuracy")),
                     _fmt((record.get("privacy") or {}).get("max_epsilon"), 2),
                     _fmt(record.get("seconds"), 1)])
    return "<h2>Rounds</h2>" + _table(
        ["round", "sites trained", "loss", "accuracy", "AUC", "worst accuracy", "max ε", "seconds"],
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
    if run.sites and not any_dp:
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
figcaption { color: #616161; font-size: 0.9em; }
.note { color: #616161; font-size: 0.9em; } .warn { color: #b71c1c; } .off { color: #b71c1c; font-weight: 600; }
p.status { padding: 0.5em 0.8em; background: #e8f5e9; border-left: 4px solid #43a047; }
p.status.failed { background: #ffebee; border-left-color: #e53935; }
p.status.in { background: #fff8e1; border-left-color: #fb8c00; }
.plots { display: flex; flex-wrap: wrap; gap: 0 1.5em; align-items: flex-start; }
"""


def _page(run: _Run, plots: list[tuple[str, Path]]) -> str:
    name = html.escape(run.run_dir.resolve().name)
    figures = "".join(f"<figure>{_img(path)}<figcaption>{html.escape(title)} "
                      f"({html.escape(PLOTS_DIR + '/' + path.name)})</figcaption></figure>"
                      for title, path in plots)
    body = [
        f"<h1>fedmed run report: {name}</h1>",
        '<p class="note">Aggregate numbers each site sent after evaluating the global model '
        "on its own held-out patients; no site data is in this report.</p>",
        _status_section(run),
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
