"""`python -m runner.report PATH... [--out DIR] [--table]`: build_report() and the command line."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..paths import why_not_creatable
from . import stats
from .figures import draw_all
from .html import write_html
from .load import load


def default_out(paths: Sequence[str | os.PathLike]) -> Path:
    return Path(paths[0]) / "report" if len(paths) == 1 else Path("outputs") / "report"


def build_report(paths: Sequence[str | os.PathLike], out: Optional[str | os.PathLike] = None) -> Path:
    """Load every run under `paths`, write the tables (runs, groups, comparisons: CSV + Parquet),
    the figures and report.html into `out`; returns the path of report.html."""
    exp = load(paths)
    if not exp.runs:
        raise FileNotFoundError(f"no run directories (with run.json) under {', '.join(map(str, paths))}")
    out = Path(out) if out else default_out(paths)
    out.mkdir(parents=True, exist_ok=True)
    runs = stats.runs_table(exp)
    groups = exp.groups_table
    comparisons = stats.comparisons_table(exp)
    stats.save(runs, out, "runs")
    stats.save(groups, out, "groups")
    stats.save(comparisons, out, "comparisons")
    figures = draw_all(exp, out)
    return write_html(exp, figures, out, runs, groups, comparisons)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:   # one line, as every paramlab mistake (argparse: usage + error)
        _fail(f"{message}; usage: {self.prog} PATH... [--out DIR] [--table]")


def _fail(message: str) -> None:
    print(f"paramlab: error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv: Optional[Sequence[str]] = None) -> None:
    prog = "paramlab-report" if Path(sys.argv[0]).name == "paramlab-report" else "python -m runner.report"
    parser = _Parser(prog=prog, description="HTML report for paramlab run or sweep directories.")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="run dir, sweep dir, or a tree such as outputs/")
    parser.add_argument("--out", help="output folder (default: PATH/report for one PATH, else outputs/report)")
    parser.add_argument("--table", action="store_true", help="also print the runs and groups tables")
    args = parser.parse_args(argv)
    out = args.out if args.out else str(default_out(args.paths))
    reason = why_not_creatable(out)
    if reason:
        _fail(f"--out {out}: cannot write the report there, {reason}; give another folder")
    try:
        path = build_report(args.paths, args.out)
    except FileNotFoundError as e:
        what = e.args[0] if e.args else e           # our message, or the path not found
        _fail(what if isinstance(what, str) and len(e.args) == 1 else
              f"{e.filename or what}: not found (give a run or sweep directory)")
    if args.table:
        import pandas as pd

        with pd.option_context("display.max_rows", 500, "display.max_columns", 50, "display.width", 200):
            print(pd.read_csv(path.parent / "runs.csv").drop(columns=["run"]).to_string(index=False))
            print()
            print(pd.read_csv(path.parent / "groups.csv").to_string(index=False))
    print(path)
