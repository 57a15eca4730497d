"""fedmed's benchmarks in one command.

    python -m benchmarks all                 # full size: writes docs/benchmarks.md (+ plots)
    python -m benchmarks all --smoke         # a few minutes, into a temporary folder
    python -m benchmarks all --smoke --write # ... and into docs/ after all
    python -m benchmarks utility scale       # some sections; the others are kept from OUT
    python -m benchmarks report --out DIR    # rewrite the report from DIR/benchmarks/results.json

Run it from the repository root: Opacus installs a top-level package that is also called
`benchmarks`, and only the current directory coming first on `sys.path` (as `python -m`
puts it) makes this one win.

Sections: utility (real-data accuracy, federated and DP), drift (the no-DP gap at the
hard seed, remedy by remedy, in a plain loop), dp (DP-SGD step cost), overhead
(round overhead, simulation and deployment, bytes per round), scale (3/10/30 sites), data
(DICOM decode throughput), speed (fedmed's deployment against Flower's simulation on one
task in one sitting: round time, start-up, memory, request rates). A section that fails is reported as failed and the others
still run; the exit code is then 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

from benchmarks import machine, report  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
SECTIONS = ("utility", "drift", "dp", "overhead", "scale", "data", "speed")
RESULTS = Path(report.PLOTS) / "results.json"


def _section_runner(name: str, work: Path, smoke: bool, results: dict[str, Any]) -> Callable[[], dict]:
    # Imported on use: each section pulls in torch, Flower or pydicom as it needs them.
    if name == "utility":
        from benchmarks import utility
        return lambda: utility.run(work / "utility", smoke)
    if name == "drift":
        from benchmarks import client_drift
        return lambda: client_drift.run(smoke)
    if name == "dp":
        from benchmarks import privacy_cost
        return lambda: privacy_cost.run(smoke)
    if name == "overhead":
        from benchmarks import overhead
        return lambda: overhead.run(work / "overhead", smoke, results["sections"].get("utility"))
    if name == "scale":
        from benchmarks import scale
        return lambda: scale.run(work / "scale", smoke)
    if name == "speed":
        from benchmarks import deployment_speed
        return lambda: deployment_speed.run(work / "speed", smoke)
    from benchmarks import data_throughput
    return lambda: data_throughput.run(work / "data", smoke)


def _load(path: Path, smoke: bool) -> dict[str, Any] | None:
    """Earlier results in OUT, if they were measured at the same size."""
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return previous if previous.get("smoke") == smoke else None


def _save(results: dict[str, Any], path: Path, work: Path) -> None:
    """Write the results; this machine's folders (a failed run's log may quote them) are
    replaced by placeholders, since the full-size file is committed with the docs."""
    text = json.dumps(results, indent=1, default=float, allow_nan=True)
    for folder, placeholder in ((work, "<work>"), (REPO, "<repo>"), (Path.home(), "~")):
        text = text.replace(str(folder.resolve()), placeholder).replace(str(folder), placeholder)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("sections", nargs="+", choices=("all", "report", *SECTIONS), metavar="SECTION",
                   help="all, report, or any of: " + ", ".join(SECTIONS))
    p.add_argument("--smoke", action="store_true", help="the CI size: every path, tiny data, a few minutes")
    p.add_argument("--write", action="store_true", help="with --smoke: write into docs/ anyway")
    p.add_argument("--out", type=Path, help="where benchmarks.md, benchmarks-headline.md and benchmarks/ "
                   "go (default: docs/; with --smoke, a new temporary folder)")
    p.add_argument("--work", type=Path, help="keep the runs' folders here (default: a temporary folder, "
                   "removed at the end)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.out is not None:
        out = args.out
    elif args.smoke and not args.write:
        out = Path(tempfile.mkdtemp(prefix="fedmed-benchmarks-"))
    else:
        out = DOCS
    results_path = out / RESULTS

    if args.sections == ["report"]:
        results = json.loads(results_path.read_text())
        written = report.write(results, out)
        print(f"wrote {written['doc']}")
        return 0

    chosen = SECTIONS if "all" in args.sections else tuple(s for s in SECTIONS if s in args.sections)
    results = (_load(results_path, args.smoke) if chosen != SECTIONS else None) or {"sections": {}, "timing": {}}
    # The command as the report quotes it: without --out/--work, whose folders are this
    # machine's business.
    command = " ".join(["python -m benchmarks", *args.sections] + ["--smoke"] * args.smoke + ["--write"] * args.write)
    results.update(machine=machine.describe(), smoke=args.smoke, command=command)
    work = args.work or Path(tempfile.mkdtemp(prefix="fedmed-benchmark-runs-"))
    started = time.perf_counter()
    failed = []
    try:
        for name in chosen:
            print(f"== {name} ({time.perf_counter() - started:.0f} s so far)", file=sys.stderr, flush=True)
            t0, load0 = time.perf_counter(), os.getloadavg()[0]
            try:
                section = _section_runner(name, work, args.smoke, results)()
            except Exception as exc:  # noqa: BLE001 -- one failed section must not lose the others
                traceback.print_exc()
                section = {"error": f"{type(exc).__name__}: {exc}", "rows": []}
                failed.append(name)
            results["sections"][name] = section
            # Each section's own date: a later run of some sections keeps the others' figures.
            results["timing"][name] = {"seconds": time.perf_counter() - t0, "load_start": load0,
                                       "load_end": os.getloadavg()[0],
                                       "finished_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
            _save(results, results_path, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    results["total_seconds"] = time.perf_counter() - started
    _save(results, results_path, work)
    written = report.write(results, out)
    print(f"wrote {written['doc']} and {written['headline']} in {results['total_seconds']:.0f} s"
          + (f"; FAILED sections: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
