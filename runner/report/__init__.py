"""The report: run.json + Parquet statistics tables -> groups, comparisons, figures, report.html.

    python -m runner.report PATH... [--out DIR] [--table]

Reads only `run.json` and the statistics tables (never the full tensors, never torch), so it
works on runs copied to another machine. PATH may be a run directory, a sweep directory or any
tree (searched for run.json). Writes into the output folder `report.html`, one PNG per figure,
and `runs`, `groups`, `comparisons` as CSV and Parquet; prints the path of report.html.

One thing per module: `load` (finding runs, reading tables in one scan), `keys` (what varies,
axes, groups), `stats` (tables and Student-t intervals), `figures/` (matplotlib), `html`, `cli`.
"""
from .cli import build_report, main
from .keys import varying_keys as _varying_keys
from .load import Run, load_runs


def varying_keys(runs):
    """The config keys whose values differ between `runs` (Run objects)."""
    return _varying_keys([r.flat for r in runs])


__all__ = ["build_report", "main", "load_runs", "varying_keys", "Run"]
