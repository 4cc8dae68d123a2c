"""What every figure shares: matplotlib set-up, group colours, the one helper that draws group
means with their 95% bands (plus the runs that did not complete), stop markers, the legend of
groups, and saving.

Series are *groups* (runs differing only in seed), not runs: a group's completed runs give a mean
line and, when there are two or more, a band (the 95% Student-t interval of the mean at each x).
Runs that diverged, failed or were killed are drawn on their own, dashed, and marked where they
stopped (x at the epoch, on the axis edge: their value there is off scale or unknown), so none
is silently missing. With many groups, the best and worst few (by mean final val accuracy) are
drawn in colour and the rest as thin gray lines without bands.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from ..stats import ci_half_width

MAX_COLOURED = 10            # up to this many groups: every group in its own colour
N_BEST, N_WORST = 3, 3       # beyond it: the best and worst groups in colour, the rest gray
GRAY = (0.62, 0.62, 0.62, 1.0)
STOP_MARKERS = {"diverged": "X", "failed": "s", "incomplete": "o", "unreadable": "D", "unknown": "D"}
SITE_STYLES = ["--", ":", "-.", (0, (1, 1)), (0, (5, 1))]   # one line style per call site
BEST_COLOURS = ("tab:blue", "tab:green", "tab:cyan")
WORST_COLOURS = ("tab:red", "tab:orange", "tab:purple")


def plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    pyplot.rcParams.update({"figure.dpi": 100, "font.size": 9, "axes.grid": True, "grid.alpha": 0.3,
                            "axes.spines.top": False, "axes.spines.right": False,
                            "axes.formatter.useoffset": False, "axes.titlesize": 9,
                            "figure.constrained_layout.h_pad": 0.06, "figure.constrained_layout.w_pad": 0.06})
    return pyplot


def subplots(nrows: int, ncols: int, width: float, height: float, **kw):
    """A figure with constrained layout, so that no label, title or legend is clipped."""
    return plt().subplots(nrows, ncols, figsize=(width, height), squeeze=False, layout="constrained", **kw)


def suptitle(fig, text: str) -> None:
    """A figure title wrapped to the figure's width (a long title is otherwise cut at both ends)."""
    import textwrap

    fig.suptitle("\n".join(textwrap.wrap(text, max(30, int(fig.get_figwidth() * 100 / 9)))))


def clamp_fraction(ax) -> None:
    """Accuracy axes stay within [0, 1] (with a margin): an interval reaching past them (few seeds,
    wide t) is cut at the edge instead of squeezing the data into a corner."""
    lo, hi = ax.get_ylim()
    ax.set_ylim(max(lo, -0.03), min(hi, 1.03))


# ----------------------------------------------------------------------------- colours

def assign_colours(exp) -> None:
    """Colour each group; with more than MAX_COLOURED groups highlight only the best and worst by
    mean final val accuracy (groups without a completed run stay gray)."""
    import matplotlib
    from matplotlib.colors import to_rgba

    groups = exp.groups
    if len(groups) <= MAX_COLOURED:
        cmap = matplotlib.colormaps["tab10"]
        for g in groups:
            g.color, g.highlighted, g.rank = cmap(g.index % 10), True, ""
        return
    means = exp.groups_table["val_acc_mean"]
    ranked = [i for i in means.sort_values(ascending=False).index if not math.isnan(means[i])]
    best, worst = ranked[:N_BEST], ranked[N_BEST:][-N_WORST:][::-1]
    for g in groups:
        g.color, g.highlighted, g.rank = GRAY, False, ""
    for j, i in enumerate(best):
        groups[i].color, groups[i].highlighted, groups[i].rank = to_rgba(BEST_COLOURS[j]), True, f"best {j + 1}"
    for j, i in enumerate(worst):
        groups[i].color, groups[i].highlighted, groups[i].rank = to_rgba(WORST_COLOURS[j]), True, f"worst {j + 1}"


def group_legend_label(exp, g) -> str:
    """'sharing=none, optim.lr=0.1 (n=5)'; non-completed runs named with where they stopped."""
    done, others = exp.done(g), exp.others(g)
    text = (f"{g.rank}: " if g.rank else "") + g.label
    if len(done) >= 2:
        text += f" (n={len(done)})"
    if len(others) == 1:
        text += f" [{others[0].stop_note()}]"
    elif others:
        text += f" [{others_short(exp, g)}]"
    return ellipsize(text, 110)


def others_short(exp, g) -> str:
    """'4 diverged, 1 incomplete': the group's runs that did not complete, counted by status."""
    counts: Dict[str, int] = {}
    for r in exp.others(g):
        counts[r.status] = counts.get(r.status, 0) + 1
    return ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))


def ellipsize(s: str, n: int = 70) -> str:
    return s if len(s) <= n else s[: n - 1] + "\u2026"


# ----------------------------------------------------------------------------- group means + bands

def summarize(exp, df, column: str, x: str = "epoch", log: bool = False):
    """Per group and x, over the group's completed runs: mean, the 95% interval (lo, hi) and n.
    log=True aggregates log10 of the positive values (geometric mean and its interval), which is
    what a log-scale axis shows. Returns (summary, others): `others` are the rows of the runs
    that did not complete (drawn one by one)."""
    frame = exp.runs_frame
    df = df[["run", x, column]].dropna()
    completed = frame.completed.to_numpy()[df.run.to_numpy()]
    done, others = df[completed], df[~completed]
    vals = done[column]
    if log:
        keep = vals > 0
        done, vals = done[keep], np.log10(vals[keep])
    grouped = vals.groupby([frame.group.to_numpy()[done.run.to_numpy()], done[x].to_numpy()])
    s = grouped.agg(["mean", "std", "count"])
    s.index.names = ["group", x]
    s = s.reset_index()
    h = ci_half_width(s["std"].to_numpy(), s["count"].to_numpy()) if len(s) else np.zeros(0)
    s["lo"], s["hi"] = s["mean"] - h, s["mean"] + h
    if log:
        for c in ("mean", "lo", "hi"):
            s[c] = 10.0 ** s[c]
    return s, others


def wants_log(values) -> bool:
    """A log axis for a non-negative quantity whose positive values span more than 3 decades
    (one run's exploding variance would otherwise flatten every other line)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    pos = v[v > 0]
    return bool(len(pos)) and not (v < 0).any() and pos.max() / pos.min() > 1e3


def draw_groups(ax, exp, df, column: str, x: str = "epoch", log="auto", ls="-",
                stops: bool = True, edge: str = "bottom", background: bool = True, lw: float = 1.8,
                band: bool = True) -> None:
    """The one way figures draw a quantity over epochs: per group its mean line (band when n >= 2),
    gray thin lines for non-highlighted groups, dashed lines (and dots) for runs that did not
    complete, and (stops=True) a marker on the axis edge where each of those stopped.
    log: True, False, or "auto" (see wants_log)."""
    from matplotlib.collections import LineCollection

    if log == "auto":
        log = wants_log(df[column])
    summary, others = summarize(exp, df, column, x, log)
    gray_lines = []
    for gi, s in summary.groupby("group", sort=False):
        g = exp.groups[gi]
        xs, ys = s[x].to_numpy(), s["mean"].to_numpy()
        if not g.highlighted:
            if background:
                gray_lines.append(np.column_stack([xs, ys]))
            continue
        ax.plot(xs, ys, color=g.color, ls=ls, lw=lw, marker="o" if len(xs) < 4 else None, ms=3.5, zorder=3)
        banded = s["count"].to_numpy() >= 2
        if band and banded.any():
            ax.fill_between(xs, s["lo"].to_numpy(), s["hi"].to_numpy(), where=banded, color=g.color, alpha=0.2,
                            lw=0, zorder=2, interpolate=False)
    if gray_lines:
        ax.add_collection(LineCollection(gray_lines, colors=[GRAY], linewidths=0.7, alpha=0.6, zorder=1,
                                         linestyles=ls))
        ax.autoscale_view()
    if len(others):
        lines, colours = [], []
        for run, o in others.groupby("run", sort=False):
            g = exp.groups[exp.runs[run].group]
            if not g.highlighted:  # many groups: only the coloured groups' stopped runs get lines
                continue
            o = o.sort_values(x)
            if log:
                o = o[o[column] > 0]
            lines.append(np.column_stack([o[x].to_numpy(), o[column].to_numpy()]))
            colours.append(g.color)
        if lines:
            ax.add_collection(LineCollection(lines, colors=colours, linewidths=1.0, linestyles="--", zorder=2))
            # Dots too: a run that stopped after epoch 0 has a single point, which no line shows.
            points = np.concatenate(lines)
            ax.scatter(points[:, 0], points[:, 1], s=9, zorder=3, linewidths=0,
                       c=np.repeat(np.asarray(colours), [len(line) for line in lines], axis=0))
            ax.autoscale_view()
    if log:
        ax.set_yscale("log")
    if stops:
        mark_stops(ax, exp, edge)


def mark_stops(ax, exp, edge: str = "bottom", annotate: bool = False) -> None:
    """A marker on the axis edge (x: the epoch) for every run that did not complete; with
    annotate=True also its label, epoch and step."""
    from matplotlib.transforms import offset_copy

    y = 0.03 if edge == "bottom" else 0.97
    placed: Dict[int, int] = {}
    for r in exp.runs:
        at = r.stopped_at
        if at is None:
            continue
        g = exp.groups[r.group]
        k = placed.get(at["epoch"], 0)
        placed[at["epoch"]] = k + 1
        # Markers at the same epoch stacked inwards from the edge (7 points apart, up to 6 high),
        # not on top of each other; x stays exactly at the epoch.
        up = 7 * (k % 6) * (1 if edge == "bottom" else -1)
        shift = offset_copy(ax.get_xaxis_transform(), fig=ax.figure, x=0, y=up, units="points")
        ax.plot([at["epoch"]], [y], transform=shift, ls="", clip_on=False, zorder=5,
                marker=STOP_MARKERS.get(r.status, "D"), ms=8, mfc=g.color, mec="black", mew=0.8)
        if annotate:
            ax.annotate(f"{ellipsize(r.label, 40)}: {r.stop_note()}", (at["epoch"], y),
                        xycoords=ax.get_xaxis_transform(), xytext=(10, up + (12 + 4 * k) * (1 if edge == "bottom" else -1)),
                        textcoords="offset points", fontsize=7.5, color="black", va="center",
                        bbox=dict(boxstyle="round,pad=0.15", fc="white", ec=g.color, alpha=0.85))
    lo, hi = ax.get_xlim()
    ends = [r.stopped_at["epoch"] for r in exp.runs if r.stopped_at]
    if ends and max(ends) + 0.3 > hi:
        ax.set_xlim(lo, max(ends) + 0.3)


def stop_count(exp) -> int:
    return sum(1 for r in exp.runs if r.stopped_at)


# ----------------------------------------------------------------------------- legend, saving

def legend(fig, exp, extra: Sequence = (), max_entries: int = 24, stops: bool = True, bands: bool = True,
           only=None) -> None:
    """Below the axes: highlighted groups (those in `only`, when given), '... other groups' in gray,
    the stop markers in use, extras."""
    from matplotlib.lines import Line2D

    # Ranked groups (many groups: best 1..3, worst 1..3) in rank order, the others in group order.
    shown = sorted((g for g in exp.groups if g.highlighted and (only is None or g.index in only)),
                   key=lambda g: (g.rank, g.index))
    handles = [Line2D([], [], color=g.color, lw=2, label=group_legend_label(exp, g)) for g in shown]
    if len(handles) > max_entries:
        handles = handles[:max_entries] + [Line2D([], [], color="none", label=f"... {len(handles) - max_entries} more")]
    hidden = sum(1 for g in exp.groups if not g.highlighted and (only is None or g.index in only))
    if hidden:
        handles.append(Line2D([], [], color=GRAY, lw=1, label=f"{hidden} other groups (gray)"))
    if bands and any(len(g.runs) > 1 for g in shown):
        handles.append(_band_handle())
    statuses = sorted({r.status for r in exp.runs if r.stopped_at}) if stops else []
    for s in statuses:
        handles.append(Line2D([], [], color="gray", ls="--", marker=STOP_MARKERS.get(s, "D"), mfc="white",
                              mec="black", label=f"{s} run (marker: the epoch it stopped)"))
    handles += list(extra)
    longest = max(len(h.get_label()) for h in handles)
    ncol = max(1, min(4, len(handles), int(fig.get_figwidth() * 100 // (longest * 5.8 + 50))))
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol, frameon=False, fontsize=8)


def _band_handle():
    from matplotlib.patches import Patch

    return Patch(color="gray", alpha=0.3, label="band: 95% interval of the group mean (n >= 2 seeds)")


def save(fig, out: Path, name: str, epoch_x: bool = True) -> str:
    """Write the PNG; epoch_x: every panel's x axis is epochs (whole-number ticks)."""
    from matplotlib.ticker import MaxNLocator

    if epoch_x:
        for ax in fig.axes:
            if ax.get_visible() and ax.get_xscale() == "linear" and ax.get_label() != "<colorbar>":
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    path = Path(out) / f"{name}.png"
    fig.savefig(path, dpi=100)
    plt().close(fig)
    return path.name


# ----------------------------------------------------------------------------- parameter names

def natural(name: str):
    """Sort key for parameter and layer paths: numbers by value (net.4 before net.10, conv2 before
    conv10), weight before bias under one module."""
    rank = {"weight": "\x00", "bias": "\x01"}
    return [[(0, int(t)) if t.isdigit() else (1, rank.get(t, t)) for t in re.split(r"(\d+)", part) if t]
            for part in name.split(".")]


def param_names(names: Sequence[str], limit: int = 16) -> List[str]:
    return sorted(set(names), key=natural)[:limit]


def tied_aliases(exp) -> Dict[str, List[str]]:
    """canonical name -> every path of that tensor, over all runs' tie groups."""
    out: Dict[str, List[str]] = {}
    for r in exp.runs:
        for g in r.info.get("tie_groups") or []:
            paths = out.setdefault(g["canonical"], [])
            paths += [a for a in g.get("aliases", []) if a not in paths]
    return out


def param_title(name: str, aliases: Dict[str, List[str]]) -> str:
    others = [a for a in aliases.get(name, []) if a != name]
    return f"{name}  (tied: = {', '.join(others)})" if others else name


def tied_site_rows(params):
    """grad_site rows of tensors that are tied *in that run* (more than one call site); a run where
    the same name is untied (its one site equals the whole gradient) is left out."""
    rows = params[params.kind == "grad_site"]
    return rows[rows.groupby(["run", "name"]).site.transform("nunique").to_numpy() > 1]


def tied_sites(site_rows) -> Dict[str, List[str]]:
    """name -> its call sites over the runs where it is tied (`site_rows`: tied_site_rows())."""
    sites = site_rows.groupby("name").site.unique()
    return {n: sorted(s for s in v if s is not None) for n, v in sites.items()}


def panels(items, panel_height: float, width: float = 14, ncols: int = 3):
    """One panel per item on a grid of `ncols` columns, cells left over hidden:
    (figure, [(axes, item), ...])."""
    nrow = max(1, math.ceil(len(items) / ncols))
    fig, axes = subplots(nrow, min(ncols, max(len(items), 1)), width, panel_height * nrow + 1.8)
    hide_unused(axes, len(items))
    return fig, list(zip([ax for row in axes for ax in row], items))


def hide_unused(axes, used: int) -> None:
    flat = [ax for row in axes for ax in row]
    for ax in flat[used:]:
        ax.set_visible(False)
