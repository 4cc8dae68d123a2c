"""Loading: find run directories, read their run.json, and read the statistics tables of all
runs in one scan per table.

A finished run (completed, diverged, failed) has one compacted copy of each statistics table,
`compact/<table>.parquet` (see `snapshot.compact_run`); a killed or running run has only its
per-epoch folders. The loader lists, per run, the compact file where there is one and the epoch
files otherwise, and reads each table's list in one pyarrow dataset scan that tags every batch
with the file it came from, so the run is a column (`run`, the run's index) and figures use
`groupby` instead of one filter per run. 1000 runs x 20 epochs are then ~3000 files instead of
~60,000. A compact file whose epochs differ from the per-epoch folder (stale: written before the
run continued) is ignored and that run re-read from its epoch files.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .. import snapshot
from . import keys as K
from .stats import groups_table

STATUS_LABEL = {"running": "incomplete"}
COMPLETED = "completed"
FINISHED = ("completed", "diverged", "failed")  # statuses of runs that get a compact copy
# What the report reads of each table (never the histograms or full tensors in bulk).
COLUMNS = {
    "metrics": ["epoch", "split", "metric", "value"],
    "params": ["epoch", "name", "kind", "site", "mean", "std", "norm", "cos_grad", "step_var"],
    "activations": ["epoch", "layer", "var", "frac_dead"],
}
# Folders inside a run directory that never hold other runs: not walked when looking for runs.
RUN_SUBFOLDERS = {*snapshot.TABLES, "compact", "report"}


@dataclass
class Run:
    index: int
    path: Path
    info: dict
    flat: Dict[str, object]
    label: str = ""
    group: int = -1

    @property
    def status(self) -> str:
        s = self.info.get("status", "unknown")
        return STATUS_LABEL.get(s, s)

    @property
    def completed(self) -> bool:
        return self.status == COMPLETED

    @property
    def run_id(self) -> str:
        return str(self.info.get("run_id") or self.path.name)

    @property
    def tied(self) -> bool:
        p = self.info.get("params") or {}
        return (p.get("unique") or 0) < (p.get("total") or 0)

    def final(self, key: str) -> Optional[float]:
        v = (self.info.get("final") or {}).get(key)
        return float(v) if isinstance(v, (int, float)) else None

    @property
    def stopped_at(self) -> Optional[dict]:
        """For a run that did not complete: {"epoch", "step"} where it stopped (step may be None).
        A diverged run names its epoch and step in run.json `diverged` (older runs only in its
        `detail` text); a failed or killed run stopped in the epoch after its last completed one."""
        if self.completed:
            return None
        d = self.info.get("diverged") or {}
        epoch, step = d.get("epoch"), d.get("step")
        if step is None and isinstance(d.get("detail"), str):
            m = re.search(r"step (\d+)", d["detail"])
            step = int(m.group(1)) if m else None
        if epoch is None:
            epoch = int(self.info.get("epochs_completed") or 0) + 1
        return {"epoch": int(epoch), "step": step}

    def stop_note(self) -> str:
        """'diverged e1 s3', 'failed e2', 'incomplete e4': what happened, compactly."""
        at = self.stopped_at
        if at is None:
            return ""
        return f"{self.status} e{at['epoch']}" + (f" s{at['step']}" if at["step"] is not None else "")


@dataclass
class Group:
    """Runs whose configs differ only in `seed`."""
    index: int
    values: Dict[str, object]   # every varying key but seed -> this group's value
    label: str                  # the axis keys' values
    runs: List[int]             # indices into Experiment.runs
    color: tuple = (0.5, 0.5, 0.5, 1.0)
    highlighted: bool = True    # drawn in colour (all groups when few; best/worst when many)
    rank: str = ""              # "best 1" / "worst 2" when only some groups are highlighted


@dataclass
class Experiment:
    runs: List[Run]
    groups: List[Group]
    varying: List[str]          # varying config keys, seed included
    group_keys: List[str]       # varying keys but seed: the groups table's key columns
    axes: List[str]             # group_keys without option-brought keys: labels, heatmap axes, comparisons
    metrics: object = None      # DataFrame: run, epoch, split, metric, value
    params: object = None       # DataFrame: run + COLUMNS["params"]
    activations: object = None  # DataFrame: run + COLUMNS["activations"]
    runs_frame: object = None   # DataFrame, one row per run: run, group, status, completed, finals, batch_size
    groups_table: object = None  # stats.groups_table(), row i = group i (set by load)
    compact_used: Dict[str, int] = field(default_factory=dict)

    def done(self, group: Group) -> List[Run]:
        return [self.runs[i] for i in group.runs if self.runs[i].completed]

    def others(self, group: Group) -> List[Run]:
        return [self.runs[i] for i in group.runs if not self.runs[i].completed]


# ----------------------------------------------------------------------------- finding runs

def find_runs(paths: Sequence[str | os.PathLike]) -> List[Path]:
    """Run directories (holding run.json) at or under each path, in path order; each once."""
    found: List[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(p)
        for top, dirs, files in os.walk(p):
            if "run.json" in files:
                found.append(Path(top))
                dirs[:] = [d for d in dirs if d not in RUN_SUBFOLDERS]
            dirs.sort()
    seen, out = set(), []
    for f in found:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


def _read_info(path: Path) -> dict:
    try:
        return snapshot.read_run(path)
    except (OSError, ValueError) as e:
        return {"status": "unreadable", "error": f"run.json: {e}", "config": {}}


def _read_runs(paths: Sequence[str | os.PathLike]) -> List[Run]:
    return [Run(i, p, info, K.flatten(info.get("config") or {}))
            for i, p in enumerate(find_runs(paths)) for info in [_read_info(p)]]


def load_runs(paths: Sequence[str | os.PathLike]) -> List[Run]:
    """The runs under `paths` from their run.json alone, labelled and grouped (no tables read)."""
    return _design(_read_runs(paths)).runs


def _design(runs: List[Run]) -> Experiment:
    # Runs without a config (unreadable run.json) would make every key look varying: left out here.
    flats = [r.flat for r in runs if r.flat] or [{}]
    varying = K.varying_keys(flats)
    group_keys = [k for k in varying if k != K.SEED]
    axes = K.axis_keys(flats, group_keys)
    index: Dict[tuple, Group] = {}
    for r in runs:
        key = K.group_key(r.flat, group_keys)
        if key not in index:
            index[key] = Group(0, {k: r.flat.get(k) for k in group_keys}, K.label(r.flat, axes), [])
        index[key].runs.append(r.index)
    # Groups in the order of their axis values (lr 0.01 before 0.1), so legends and tables read in order.
    groups = sorted(index.values(), key=lambda g: [K.value_order(g.values[k]) for k in axes + group_keys])
    for i, g in enumerate(groups):
        g.index = i
        for j in g.runs:
            runs[j].group = i
    seeded = K.SEED in varying
    for r in runs:
        parts = [p for p in (K.label(r.flat, axes), f"seed={r.flat.get(K.SEED)}" if seeded else "") if p]
        r.label = ", ".join(parts) or r.run_id
    for g in groups:
        if not g.label:
            g.label = runs[g.runs[0]].run_id if len(g.runs) == 1 else "all runs"
    return Experiment(runs, groups, varying, group_keys, axes)


# ----------------------------------------------------------------------------- tables

def _scan(table: str, files: List[str], owners: List[int]):
    """Rows of `files` (one table's schema) as a DataFrame with a `run` column from `owners`."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    columns = COLUMNS[table]
    schema = snapshot.SCHEMAS[table]
    if not files:
        df = schema.empty_table().select(columns).to_pandas()
        df.insert(0, "run", np.zeros(0, np.int32))
        return df
    dataset = ds.dataset(files, schema=schema, format="parquet")
    owner_of = {os.path.normpath(f): o for f, o in zip(files, owners)}
    batches, run_ids = [], []
    # One scan over every file; each batch comes tagged with its fragment (file), hence its run.
    for tagged in dataset.scanner(columns=columns, batch_size=1 << 16).scan_batches():
        rb = tagged.record_batch
        if rb.num_rows:
            batches.append(rb)
            run_ids.append(np.full(rb.num_rows, owner_of[os.path.normpath(tagged.fragment.path)], np.int32))
    if not batches:
        return _scan(table, [], [])
    df = pa.Table.from_batches(batches).to_pandas()
    df.insert(0, "run", np.concatenate(run_ids))
    return df


def read_tables(exp: Experiment) -> None:
    """Fill exp.metrics / params / activations from every run, one scan per table."""
    import pandas as pd

    for table in snapshot.COMPACT_TABLES:
        files, owners, compacted = [], [], []
        for r in exp.runs:
            compact = snapshot.compact_file(r.path, table)
            if r.info.get("status") in FINISHED and compact.is_file():
                files.append(str(compact))
                owners.append(r.index)
                compacted.append(r.index)
            else:
                for f in snapshot.epoch_files(r.path, table):
                    files.append(str(f))
                    owners.append(r.index)
        df = _scan(table, files, owners)
        stale = _stale_compacts(exp, table, df, compacted)
        if stale:
            again = [(str(f), i) for i in stale for f in snapshot.epoch_files(exp.runs[i].path, table)]
            df = pd.concat([df[~df.run.isin(stale)], _scan(table, [f for f, _ in again], [i for _, i in again])],
                           ignore_index=True)
        exp.compact_used[table] = len(compacted) - len(stale)
        setattr(exp, table, df)


def _stale_compacts(exp: Experiment, table: str, df, compacted: List[int]) -> List[int]:
    """Compacted runs whose compact file does not hold exactly the epochs of their epoch files."""
    if not compacted:
        return []
    sub = df[df.run.isin(compacted)]
    in_compact = sub.groupby("run").epoch.unique().to_dict() if len(sub) else {}
    return [i for i in compacted
            if sorted(int(e) for e in in_compact.get(i, [])) != _epochs(exp.runs[i].path, table)]


def _epochs(run_dir: Path, table: str) -> List[int]:
    return [snapshot.epoch_of(f) for f in snapshot.epoch_files(run_dir, table)]


def _runs_frame(exp: Experiment):
    import pandas as pd

    return pd.DataFrame({
        "run": [r.index for r in exp.runs], "group": [r.group for r in exp.runs],
        "status": [r.status for r in exp.runs], "completed": [r.completed for r in exp.runs],
        **{m: [r.final(m) for r in exp.runs] for m in ("val_acc", "val_loss", "train_loss")},
        "batch_size": [r.flat.get("data.batch_size") for r in exp.runs],
        "steps_per_epoch": [r.info.get("steps_per_epoch") for r in exp.runs],
    })


def load(paths: Sequence[str | os.PathLike]) -> Experiment:
    """run.json of every run under `paths`, the design (keys, groups) and the statistics tables."""
    runs = _read_runs(paths)
    exp = _design(runs)
    if runs:
        read_tables(exp)
    exp.runs_frame = _runs_frame(exp)
    exp.groups_table = groups_table(exp)
    return exp


def read_histograms(run: Run, epochs: Sequence[int]):
    """The stored weight histograms (kind=value) of one run at `epochs`: epoch, name, counts, edges."""
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    columns = ["epoch", "name", "hist_counts", "hist_edges"]
    wanted = (ds.field("kind") == "value") & ds.field("epoch").isin(list(epochs))
    compact = snapshot.compact_file(run.path, "params")
    if run.info.get("status") in FINISHED and compact.is_file():
        t = pq.read_table(compact, columns=columns, filters=wanted, schema=snapshot.SCHEMAS["params"])
        stored = set(_epochs(run.path, "params"))
        if sorted(set(t.column("epoch").to_pylist())) == sorted(e for e in epochs if e in stored):
            return t.to_pandas()
    return snapshot.read_table(run.path, "params", columns, wanted)
