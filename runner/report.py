"""`python -m runner.report PATH... [--out DIR] [--table]`: an HTML report with comparison plots.

Reads only `run.json` and the Parquet stats tables (never the full tensors, never torch), so
it works on runs copied to another machine. PATH may be a run directory, a sweep directory or
any tree (searched recursively for run.json). Writes `report.html`, one PNG per figure and
`runs.csv` / `runs.parquet` (one row per run) into the output folder, and prints the path of
`report.html` (with `--table`, also prints the runs table).
"""
from __future__ import annotations

import argparse
import html
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .snapshot import read_table

# Config keys that never distinguish runs in labels.
IGNORED_KEYS = ("data.root", "trainer.progress", "sweep.resume", "data.eval_batch_size")
STATUS_LABEL = {"running": "incomplete"}
PARAM_COLUMNS = ["epoch", "name", "kind", "site", "mean", "std", "norm"]


@dataclass
class Run:
    path: Path
    info: dict
    metrics: "object" = None        # DataFrame epoch, split, metric, value
    params: "object" = None         # DataFrame PARAM_COLUMNS
    activations: "object" = None
    label: str = ""
    color: tuple = (0, 0, 0)
    flat: Dict[str, object] = field(default_factory=dict)

    @property
    def status(self) -> str:
        s = self.info.get("status", "unknown")
        return STATUS_LABEL.get(s, s)

    @property
    def tied(self) -> bool:
        p = self.info.get("params") or {}
        return p.get("unique", 0) < p.get("total", 0)

    def final(self, key: str) -> Optional[float]:
        return (self.info.get("final") or {}).get(key)


# ----------------------------------------------------------------------------- loading

def find_runs(paths: Sequence[str | Path]) -> List[Path]:
    found: List[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(p)
        if (p / "run.json").is_file():
            found.append(p)
        else:
            found += sorted(f.parent for f in p.rglob("run.json"))
    seen, out = set(), []
    for f in found:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


def _flatten(d: dict, prefix: str = "") -> Dict[str, object]:
    out: Dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, list) else v
    return out


def load_runs(paths: Sequence[str | Path]) -> List[Run]:
    runs = []
    for p in find_runs(paths):
        try:
            info = json.loads((p / "run.json").read_text())
        except (OSError, ValueError) as e:
            info = {"status": "unreadable", "error": f"run.json: {e}", "config": {}}
        run = Run(p, info)
        run.metrics = read_table(p, "metrics", ["epoch", "split", "metric", "value"])
        run.params = read_table(p, "params", PARAM_COLUMNS)
        run.activations = read_table(p, "activations", ["epoch", "layer", "var", "frac_dead"])
        run.flat = _flatten(info.get("config") or {})
        runs.append(run)
    label_runs(runs)
    return runs


def varying_keys(runs: Sequence[Run]) -> List[str]:
    keys = sorted({k for r in runs for k in r.flat} - set(IGNORED_KEYS))
    return [k for k in keys if len({json.dumps(r.flat.get(k), sort_keys=True) for r in runs}) > 1]


def _short(key: str) -> str:
    """sharing.name -> sharing, model.hidden stays."""
    return key[:-5] if key.endswith(".name") else key


def label_runs(runs: List[Run]) -> None:
    import matplotlib

    keys = varying_keys(runs)
    cmap = matplotlib.colormaps["tab10" if len(runs) <= 10 else "tab20"]
    for i, r in enumerate(runs):
        parts = [f"{_short(k)}={r.flat.get(k)}" for k in keys]
        r.label = ", ".join(parts) if parts else r.info.get("run_id", r.path.name)
        r.color = cmap(i % cmap.N)


# ----------------------------------------------------------------------------- figures

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 100, "font.size": 9, "axes.grid": True, "grid.alpha": 0.3,
                         "axes.spines.top": False, "axes.spines.right": False,
                         "axes.formatter.useoffset": False})
    return plt


def _legend(fig, runs: Sequence[Run], extra: Sequence = ()) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=r.color, lw=2, label=_ellipsize(r.label)) for r in runs] + list(extra)
    if len(handles) > 24:
        handles = handles[:24] + [Line2D([], [], color="none", label=f"... {len(handles) - 24} more")]
    longest = max(len(h.get_label()) for h in handles)
    fits = int(fig.get_figwidth() * 100 // (longest * 6.4 + 60))  # legend columns that fit the width (8 pt)
    ncol = max(1, min(4, len(handles), fits))
    rows = math.ceil(len(handles) / ncol)
    fig.legend(handles=handles, loc="lower center", ncol=ncol, frameon=False, fontsize=8,
               bbox_to_anchor=(0.5, 0.0))
    _layout(fig, bottom_in=0.22 * rows + 0.75)


def _layout(fig, bottom_in: float = 0.6, top_in: float = 0.6) -> None:
    """Fixed margins in inches (tight_layout costs a full extra draw per figure)."""
    h, w = fig.get_figheight(), fig.get_figwidth()
    fig.subplots_adjust(left=min(0.2, 0.9 / w), right=1 - min(0.1, 0.25 / w), bottom=min(0.5, bottom_in / h), top=1 - top_in / h,
                        hspace=min(0.9, 0.75 / max(h / max(len(fig.axes), 1), 0.3) + 0.35), wspace=0.28)


def _ellipsize(s: str, n: int = 70) -> str:
    return s if len(s) <= n else s[: n - 1] + "\u2026"


def _save(fig, out: Path, name: str) -> str:
    from matplotlib.ticker import MaxNLocator

    for ax in fig.axes:  # epochs are whole numbers
        if ax.get_xlabel().startswith("epoch"):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    path = out / f"{name}.png"
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.name


def fig_curves(runs: List[Run], out: Path) -> Optional[str]:
    if not any(len(r.metrics) for r in runs):
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.6))
    panels = [("train", "loss", "train loss (cross-entropy)"), ("val", "loss", "val loss (cross-entropy)"),
              ("val", "acc", "val accuracy")]
    for ax, (split, metric, title) in zip(axes, panels):
        for r in runs:
            m = r.metrics[(r.metrics.split == split) & (r.metrics.metric == metric)].sort_values("epoch")
            if len(m):
                ax.plot(m.epoch, m.value, color=r.color, marker="o" if len(m) < 3 else None, ms=3,
                        ls="--" if r.status != "completed" else "-")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy (fraction)" if metric == "acc" else "loss (nats)")
    _legend(fig, runs)
    return _save(fig, out, "curves")


def fig_sharing(runs: List[Run], out: Path) -> Optional[str]:
    pts = [r for r in runs if r.final("val_acc") is not None and r.info.get("params")]
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in pts:
        ax.scatter(r.info["params"]["unique"], r.final("val_acc"), color=r.color, s=70,
                   marker="^" if r.tied else "o", edgecolor="black", linewidth=0.6, zorder=3)
    from matplotlib.lines import Line2D

    extra = [Line2D([], [], marker="^", color="gray", ls="", label="tied (unique < total)"),
             Line2D([], [], marker="o", color="gray", ls="", label="untied")]
    ax.set_xlabel("unique parameters (a tied tensor counted once)")
    ax.set_ylabel("final val accuracy (fraction)")
    ax.set_title("Sharing: accuracy vs unique parameter count")
    if len({r.info["params"]["unique"] for r in pts}) > 1:
        lo, hi = min(r.info["params"]["unique"] for r in pts), max(r.info["params"]["unique"] for r in pts)
        pad = (hi - lo) * 0.15
        ax.set_xlim(lo - pad, hi + pad)
    _legend(fig, pts, extra)
    return _save(fig, out, "sharing")


def _natural(name: str):
    """net.10.weight after net.4.bias; weight before bias within a module."""
    module, _, leaf = name.rpartition(".")
    return ([int(t) if t.isdigit() else t for t in re.split(r"(\d+)", module)], leaf != "weight", leaf)


def _param_names(runs: List[Run], max_params: int = 16) -> List[str]:
    names = {n for r in runs if len(r.params) for n in r.params.name.unique()}
    return sorted(names, key=_natural)[:max_params]


def _aliases(runs: List[Run]) -> Dict[str, List[str]]:
    out: Dict[str, List[str]] = {}
    for r in runs:
        for g in r.info.get("tie_groups") or []:
            out.setdefault(g["canonical"], [])
            for a in g["aliases"]:
                if a not in out[g["canonical"]]:
                    out[g["canonical"]].append(a)
    return out


def _param_title(name: str, aliases: Dict[str, List[str]]) -> str:
    others = [a for a in aliases.get(name, []) if a != name]
    return f"{name}  (tied: = {', '.join(others)})" if others else name


def fig_param_evolution(runs: List[Run], out: Path) -> Optional[str]:
    names = _param_names(runs)
    if not names:
        return None
    aliases = _aliases(runs)
    plt = _plt()
    fig, axes = plt.subplots(len(names), 3, figsize=(14, 2.3 * len(names) + 1.2), squeeze=False)
    for row, name in enumerate(names):
        for col, stat in enumerate(("mean", "std", "norm")):
            ax = axes[row][col]
            for r in runs:
                v = r.params[(r.params.name == name) & (r.params.kind == "value")].sort_values("epoch")
                if len(v):
                    ax.plot(v.epoch, v[stat], color=r.color, marker="o" if len(v) < 4 else None, ms=3)
            ax.set_title(f"{_param_title(name, aliases)}: {stat}", fontsize=8.5)
            if row == len(names) - 1:
                ax.set_xlabel("epoch (0 = after init)")
    fig.suptitle("Parameter values per epoch (mean, std, L2 norm)", y=0.995)
    _legend(fig, runs)
    return _save(fig, out, "param_evolution")


def fig_grads(runs: List[Run], out: Path) -> Optional[str]:
    """Per-parameter mean-gradient norm vs epoch; for tied parameters the per-call-site norms too."""
    names = _param_names(runs)
    has_grads = any(len(r.params) and (r.params.kind == "grad").any() for r in runs)
    if not names or not has_grads:
        return None
    aliases = _aliases(runs)
    plt = _plt()
    from matplotlib.lines import Line2D

    ncol = 3
    nrow = math.ceil(len(names) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(14, 3.0 * nrow + 1.4), squeeze=False)
    site_styles = ["--", ":", "-.", (0, (1, 1)), (0, (5, 1))]
    any_sites = False
    for k, name in enumerate(names):
        ax = axes[k // ncol][k % ncol]
        for r in runs:
            g = r.params[(r.params.name == name) & (r.params.kind == "grad")].sort_values("epoch")
            if not len(g):
                continue
            ax.plot(g.epoch, g.norm.clip(lower=1e-30), color=r.color, lw=2)
            if name in aliases:
                s = r.params[(r.params.name == name) & (r.params.kind == "grad_site")]
                if s.site.nunique() > 1:
                    any_sites = True
                    for j, (site, sg) in enumerate(sorted(s.groupby("site"), key=lambda t: t[0])):
                        sg = sg.sort_values("epoch")
                        ax.plot(sg.epoch, sg.norm.clip(lower=1e-30), color=r.color, lw=1.2,
                                ls=site_styles[j % len(site_styles)], alpha=0.9)
        ax.set_yscale("log")
        ax.set_title(_param_title(name, aliases), fontsize=8.5)
        ax.set_xlabel("epoch")
        ax.set_ylabel("L2 norm of mean gradient")
        if name in aliases:
            sites = sorted({s for r in runs for s in r.params[(r.params.name == name) &
                                                               (r.params.kind == "grad_site")].site.dropna()})
            ax.legend(handles=[Line2D([], [], color="k", lw=2, label="total (.grad)")] +
                      [Line2D([], [], color="k", lw=1.2, ls=site_styles[j % len(site_styles)],
                              label=f"through {s}") for j, s in enumerate(sites)], fontsize=7, loc="best")
    for k in range(len(names), nrow * ncol):
        axes[k // ncol][k % ncol].set_visible(False)
    title = "Gradient norms per epoch (log scale)"
    if any_sites:
        title += "; tied parameters: solid = total, dashed/dotted = each call site's share"
    fig.suptitle(title, y=0.995)
    _legend(fig, runs)
    return _save(fig, out, "grads")


def fig_histograms(runs: List[Run], out: Path, max_runs: int = 4) -> Optional[str]:
    """Weight histograms at epoch 0 vs the last epoch, per weight tensor, for up to 4 runs."""
    shown = [r for r in runs if len(r.params)][:max_runs]
    if not shown:
        return None
    import pyarrow.dataset as ds

    names = [n for n in _param_names(shown) if n.endswith("weight")]
    if not names:
        return None
    plt = _plt()
    fig, axes = plt.subplots(len(names), len(shown), figsize=(3.8 * len(shown) + 1, 2.2 * len(names) + 1.2),
                             squeeze=False)
    for col, r in enumerate(shown):
        last = int(r.params.epoch.max())
        h = read_table(r.path, "params", ["epoch", "name", "hist_counts", "hist_edges"],
                       (ds.field("kind") == "value") & ds.field("epoch").isin([0, last]))
        aliases = {a: g["canonical"] for g in r.info.get("tie_groups") or [] for a in g["aliases"]}
        for row, name in enumerate(names):
            ax = axes[row][col]
            if not (h.name == name).any():
                ax.text(0.5, 0.5, f"tied: same tensor as {aliases[name]}" if name in aliases else "not in this run",
                        ha="center", va="center", transform=ax.transAxes, color="gray")
                ax.set_xticks([])
                ax.set_yticks([])
            for epoch, color, label in ((0, "tab:gray", "epoch 0 (init)"), (last, r.color, f"epoch {last}")):
                sel = h[(h.name == name) & (h.epoch == epoch)]
                if len(sel):
                    counts = np.asarray(sel.iloc[0].hist_counts, dtype=float)
                    edges = np.asarray(sel.iloc[0].hist_edges, dtype=float)
                    ax.stairs(counts / max(counts.sum(), 1), edges, fill=epoch == 0, alpha=0.45 if epoch == 0 else 1,
                              color=color, label=label, lw=1.5)
            ax.set_title(f"{name}" + (f"\n{_ellipsize(r.label, 45)}" if row == 0 else ""), fontsize=8)
            if row == 0:
                ax.legend(fontsize=7)
            if row == len(names) - 1:
                ax.set_xlabel("weight value")
            if col == 0:
                ax.set_ylabel("share of weights")
    note = f" (first {max_runs} of {len(runs)} runs)" if len(runs) > max_runs else ""
    fig.suptitle("Weight distributions: init vs last epoch" + note, y=0.995)
    _layout(fig, bottom_in=0.6, top_in=0.75)
    return _save(fig, out, "histograms")


def fig_activations(runs: List[Run], out: Path) -> Optional[str]:
    layers: List[str] = []
    for r in runs:
        for layer in r.activations.layer.unique() if len(r.activations) else []:
            if layer not in layers:
                layers.append(layer)
    if not layers:
        return None
    layers = layers[:8]
    plt = _plt()
    fig, axes = plt.subplots(len(layers), 2, figsize=(12, 2.4 * len(layers) + 1.2), squeeze=False)
    for row, layer in enumerate(layers):
        for col, (stat, title) in enumerate((("var", "activation variance (seed's formula)"),
                                             ("frac_dead", "dead units (zero on every held-out example)"))):
            ax = axes[row][col]
            for r in runs:
                a = r.activations[r.activations.layer == layer].sort_values("epoch")
                if len(a):
                    ax.plot(a.epoch, a[stat], color=r.color, marker="o" if len(a) < 4 else None, ms=3)
            ax.set_title(f"{layer}: {title}", fontsize=8.5)
            if stat == "frac_dead":
                ax.set_ylim(-0.03, 1.03)
                ax.set_ylabel("fraction of units")
            if row == len(layers) - 1:
                ax.set_xlabel("epoch (0 = after init)")
    fig.suptitle("Hidden-layer activations on a fixed held-out batch", y=0.995)
    _legend(fig, runs)
    return _save(fig, out, "activations")


def _axis_value(v):
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def fig_grid(runs: List[Run], out: Path) -> Optional[str]:
    """Final val accuracy over the swept hyperparameters: heatmap(s) for 2+ keys, a line for 1."""
    done = [r for r in runs if r.final("val_acc") is not None]
    keys = varying_keys(done)
    if not done or not keys:
        return None
    plt = _plt()
    if len(keys) == 1:
        k = keys[0]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        xs = sorted({_axis_value(r.flat.get(k)) for r in done}, key=lambda v: (isinstance(v, str), v))
        ys = [np.mean([r.final("val_acc") for r in done if _axis_value(r.flat.get(k)) == x]) for x in xs]
        numeric = all(isinstance(x, (int, float)) for x in xs)
        if numeric:
            ax.plot(xs, ys, marker="o")
            if min(xs) > 0 and max(xs) / min(xs) >= 100:
                ax.set_xscale("log")
        else:  # categories: bars, value on top
            bars = ax.bar(range(len(xs)), ys, color="tab:blue", width=0.6)
            ax.bar_label(bars, labels=[f"{y:.4f}" for y in ys], fontsize=9)
            ax.set_xticks(range(len(xs)), [str(x) for x in xs])
            ax.set_ylim(min(ys) - 0.1 * (max(ys) - min(ys) + 0.01), max(ys) + 0.15 * (max(ys) - min(ys) + 0.01))
        ax.set_xlabel(_short(k))
        ax.set_ylabel("final val accuracy (fraction)")
        ax.set_title(f"Final val accuracy vs {_short(k)}")
        _layout(fig)
        return _save(fig, out, "grid")
    # Two axes: the keys with the most distinct values; facets over the others' combinations.
    by_count = sorted(keys, key=lambda k: -len({json.dumps(r.flat.get(k)) for r in done}))
    kx, ky = by_count[0], by_count[1]
    rest = [k for k in keys if k not in (kx, ky)]
    facets: Dict[str, List[Run]] = {}
    for r in done:
        facets.setdefault(", ".join(f"{_short(k)}={r.flat.get(k)}" for k in rest) or "all runs", []).append(r)
    facet_items = sorted(facets.items())[:6]
    fig, axes = plt.subplots(1, len(facet_items), figsize=(5.2 * len(facet_items) + 1, 4.6), squeeze=False)
    xs = sorted({_axis_value(r.flat.get(kx)) for r in done}, key=lambda v: (isinstance(v, str), v))
    ys = sorted({_axis_value(r.flat.get(ky)) for r in done}, key=lambda v: (isinstance(v, str), v))
    for ax, (title, group) in zip(axes[0], facet_items):
        grid = np.full((len(ys), len(xs)), np.nan)
        for i, yv in enumerate(ys):
            for j, xv in enumerate(xs):
                vals = [r.final("val_acc") for r in group
                        if _axis_value(r.flat.get(kx)) == xv and _axis_value(r.flat.get(ky)) == yv]
                if vals:
                    grid[i, j] = np.mean(vals)
        im = ax.imshow(grid, cmap="viridis", vmin=np.nanmin([r.final("val_acc") for r in done]),
                       vmax=np.nanmax([r.final("val_acc") for r in done]), aspect="auto", origin="lower")
        for i in range(len(ys)):
            for j in range(len(xs)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", fontsize=9,
                            color="white" if grid[i, j] < np.nanmean(grid) else "black")
        ax.set_xticks(range(len(xs)), [str(x) for x in xs])
        ax.set_yticks(range(len(ys)), [str(y) for y in ys])
        ax.set_xlabel(_short(kx))
        ax.set_ylabel(_short(ky))
        ax.grid(False)
        ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), label="final val accuracy")
    fig.suptitle("Final val accuracy over the grid", y=0.99)
    return _save(fig, out, "grid")


# ----------------------------------------------------------------------------- table + html

def runs_table(runs: List[Run]):
    import pandas as pd

    keys = varying_keys(runs)
    rows = []
    for r in runs:
        p = r.info.get("params") or {}
        row = {"run": str(r.path), "run_id": r.info.get("run_id", r.path.name),
               "overrides": " ".join(r.info.get("overrides") or []), "status": r.status}
        row.update({_short(k): r.flat.get(k) for k in keys})
        row.update({"epochs_completed": r.info.get("epochs_completed"), "epochs": r.info.get("epochs"),
                    "unique_params": p.get("unique"), "total_params": p.get("total"),
                    "train_loss": r.final("train_loss"), "val_loss": r.final("val_loss"),
                    "val_acc": r.final("val_acc"), "wall_time_s": r.info.get("wall_time_s"),
                    "device": r.info.get("device"), "error": r.info.get("error")})
        rows.append(row)
    df = pd.DataFrame(rows)
    for c in df.columns:  # mixed-type columns (e.g. a swept list) as text, so Parquet can store them
        if df[c].dtype == object:
            df[c] = df[c].map(lambda v: v if v is None or isinstance(v, str) else json.dumps(v))
    return df


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1400px;color:#222;padding:0 16px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:17px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
p.note{color:#555;font-size:13px;margin-top:2px}
table{border-collapse:collapse;font-size:12px;width:100%} th,td{border:1px solid #ddd;padding:4px 6px;text-align:left;vertical-align:top}
th{background:#f3f3f3;cursor:pointer;position:sticky;top:0} th:hover{background:#e6e6e6}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.status-completed{color:#1a7f37;font-weight:600}.status-diverged{color:#b35900;font-weight:600}
.status-failed{color:#c62828;font-weight:600}.status-incomplete{color:#6f42c1;font-weight:600}
img{max-width:100%;border:1px solid #eee;margin-top:6px}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:5px}
code{background:#f5f5f5;padding:1px 4px;border-radius:3px}
"""
SORT_JS = """
document.querySelectorAll('table.sortable th').forEach(function(th, i){
  th.addEventListener('click', function(){
    var tb = th.closest('table').tBodies[0], rows = Array.from(tb.rows), asc = th.dataset.asc !== '1';
    rows.sort(function(a, b){
      var x = a.cells[i].dataset.v, y = b.cells[i].dataset.v, nx = parseFloat(x), ny = parseFloat(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return asc ? c : -c;});
    rows.forEach(function(r){ tb.appendChild(r); });
    th.closest('tr').querySelectorAll('th').forEach(function(h){ h.dataset.asc = ''; });
    th.dataset.asc = asc ? '1' : '';
  });
});
"""
FIGURES = [
    ("curves", "Training curves", "Train and validation loss, validation accuracy; dashed lines: runs that did not complete."),
    ("sharing", "Sharing: accuracy vs unique parameters", "Triangles: runs with tied layers (unique < total parameters)."),
    ("grid", "Hyperparameter grid", "Final validation accuracy over the values that differ between runs."),
    ("param_evolution", "Parameter evolution", "Mean, std and L2 norm of every parameter tensor per epoch; epoch 0 is right after init. Tied tensors are stored once, under their canonical name."),
    ("grads", "Gradient evolution", "L2 norm of each parameter's mean gradient over the epoch's steps. For tied parameters, each call site's share of the gradient (they add up to the total)."),
    ("histograms", "Weight distributions", "Stored 64-bin histograms at init and at the last epoch."),
    ("activations", "Activations", "Per hidden layer, on a fixed batch of held-out images."),
]


def write_html(runs: List[Run], figures: Dict[str, str], out: Path, table) -> Path:
    esc = html.escape
    keys = [_short(k) for k in varying_keys(runs)]
    cols = ["run_id"] + keys + ["status", "epochs_completed", "unique_params", "total_params",
                                "train_loss", "val_loss", "val_acc", "wall_time_s", "error"]
    head = "".join(f"<th>{esc(c.replace('_', ' '))}</th>" for c in cols)
    body = []
    for r, (_, row) in zip(runs, table.iterrows()):
        cells = []
        for c in cols:
            v = row.get(c)
            if c in keys and isinstance(v, float):
                text = f"{v:g}"                       # config values as written: 0.1, not 0.1000
            elif c == "wall_time_s" and isinstance(v, float):
                text = f"{v:.1f}"
            else:
                text = _fmt(v)
            if c == "run_id":
                swatch = "#%02x%02x%02x" % tuple(int(255 * x) for x in r.color[:3])
                cell = (f'<td data-v="{esc(text)}"><span class="swatch" style="background:{swatch}"></span>'
                        f'{esc(text)}</td>')
            elif c == "status":
                cell = f'<td data-v="{esc(text)}" class="status-{esc(text)}">{esc(text)}</td>'
            else:
                num = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                cell = f'<td data-v="{esc(text)}"{" class=num" if num else ""}>{esc(text)}</td>'
            cells.append(cell)
        body.append("<tr>" + "".join(cells) + "</tr>")
    counts: Dict[str, int] = {}
    for r in runs:
        counts[r.status] = counts.get(r.status, 0) + 1
    sections = []
    for key, title, note in FIGURES:
        if key in figures:
            sections.append(f"<h2>{esc(title)}</h2><p class=note>{esc(note)}</p>"
                            f'<img src="{esc(figures[key])}" alt="{esc(title)}">')
    varying = ", ".join(f"<code>{esc(k)}</code>" for k in keys) or "none (one configuration)"
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>paramlab report</title><style>{CSS}</style></head>
<body>
<h1>paramlab report</h1>
<p class=note>{len(runs)} runs ({esc(', '.join(f'{v} {k}' for k, v in sorted(counts.items())))}); varying: {varying}.
Runs are labelled by the config values that differ between them.</p>
<h2>Runs</h2><p class=note>Click a column header to sort. <em>incomplete</em>: run.json still says running (killed, or still going).</p>
<table class=sortable><thead><tr>{head}</tr></thead><tbody>
{chr(10).join(body)}
</tbody></table>
{chr(10).join(sections)}
<script>{SORT_JS}</script>
</body></html>
"""
    path = out / "report.html"
    path.write_text(doc, encoding="utf-8")
    return path


def build_report(paths: Sequence[str | Path], out: Optional[str | Path] = None) -> Path:
    runs = load_runs(paths)
    if not runs:
        raise FileNotFoundError(f"no run directories (with run.json) under {', '.join(map(str, paths))}")
    out = Path(out) if out else (Path(paths[0]) / "report" if len(paths) == 1 else Path("outputs") / "report")
    out.mkdir(parents=True, exist_ok=True)
    figures = {}
    for key, fn in (("curves", fig_curves), ("sharing", fig_sharing), ("grid", fig_grid),
                    ("param_evolution", fig_param_evolution), ("grads", fig_grads),
                    ("histograms", fig_histograms), ("activations", fig_activations)):
        name = fn(runs, out)
        if name:
            figures[key] = name
    table = runs_table(runs)
    table.to_csv(out / "runs.csv", index=False)
    table.to_parquet(out / "runs.parquet", index=False)
    return write_html(runs, figures, out, table)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m runner.report",
                                     description="HTML report for paramlab run or sweep directories.")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="run dir, sweep dir, or a tree such as outputs/")
    parser.add_argument("--out", help="output folder (default: PATH/report for one PATH, else outputs/report)")
    parser.add_argument("--table", action="store_true", help="also print the one-row-per-run table")
    args = parser.parse_args(argv)
    try:
        path = build_report(args.paths, args.out)
    except FileNotFoundError as e:
        print(f"paramlab: error: {e.args[0] if e.args else e}: not found (give a run or sweep directory)"
              if not isinstance(e.args[0] if e.args else None, str) else f"paramlab: error: {e.args[0]}",
              file=sys.stderr)
        sys.exit(2)
    if args.table:
        import pandas as pd

        with pd.option_context("display.max_rows", 500, "display.max_columns", 50, "display.width", 200):
            print(pd.read_csv(path.parent / "runs.csv").drop(columns=["run"]).to_string(index=False))
    print(path)


if __name__ == "__main__":
    main()
