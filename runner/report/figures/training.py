"""Outcome figures: training curves, accuracy vs unique parameters, and final accuracy over the
grid of axis keys (group means with their 95% intervals and n; stopped runs marked)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .. import keys as K
from . import common as C


def curves(exp, out: Path) -> Optional[str]:
    m = exp.metrics
    if not len(m) and not C.stop_count(exp):
        return None
    fig, axes = C.subplots(1, 3, 14, 4.8)
    panels = [("train", "loss", "train loss (cross-entropy)", "top"), ("val", "loss", "val loss (cross-entropy)", "top"),
              ("val", "acc", "val accuracy", "bottom")]
    few_stops = C.stop_count(exp) <= 6
    for ax, (split, metric, title, edge) in zip(axes[0], panels):
        C.draw_groups(ax, exp, m[(m.split == split) & (m.metric == metric)], "value", edge=edge, stops=False,
                      log="auto" if metric == "loss" else False)
        # Stopped runs: named on the accuracy panel when there are few, marked on every panel.
        C.mark_stops(ax, exp, edge, annotate=few_stops and metric == "acc")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy (fraction)" if metric == "acc" else "loss (nats)")
        if metric == "acc":
            C.clamp_fraction(ax)
    C.legend(fig, exp)
    return C.save(fig, out, "curves")


def _final_points(exp):
    """Per group with a completed run: mean final val_acc and its interval half-width, n."""
    t = exp.groups_table
    return {i: (t.val_acc_mean[i], (t.val_acc_ci95_high[i] - t.val_acc_ci95_low[i]) / 2, int(t.n[i]))
            for i in t.index if not math.isnan(t.val_acc_mean[i])}


def sharing(exp, out: Path) -> Optional[str]:
    points = _final_points(exp)
    counts = {g.index: (exp.runs[g.runs[0]].info.get("params") or {}) for g in exp.groups}
    drawn = [i for i in points if counts[i].get("unique")]
    if len({counts[g.index].get("unique") for g in exp.groups} - {None}) < 2:
        return None  # one parameter count: the grid figure already shows the accuracies
    from matplotlib.lines import Line2D

    fig, axes = C.subplots(1, 1, 8.5, 5.6)
    ax = axes[0][0]
    for i in drawn:
        g = exp.groups[i]
        mean, h, n = points[i]
        tied = counts[i]["unique"] < counts[i].get("total", 0)
        ax.errorbar(counts[i]["unique"], mean, yerr=None if math.isnan(h) else h, color=g.color, capsize=3,
                    marker="^" if tied else "o", ms=8, mec="black", mew=0.6, ls="", zorder=3 if g.highlighted else 2)
    stopped = [g for g in exp.groups if g.index not in points and counts[g.index].get("unique")]
    for g in stopped:  # no completed run: a marker on the bottom edge at its parameter count
        ax.plot([counts[g.index]["unique"]], [0.03], transform=ax.get_xaxis_transform(), ls="", clip_on=False,
                marker="X", ms=9, mfc=g.color, mec="black")
    xs = [counts[i]["unique"] for i in drawn] + [counts[g.index]["unique"] for g in stopped]
    if min(xs) > 0 and max(xs) / min(xs) > 10:  # widths 8 to 128: a log axis keeps the small ones apart
        ax.set_xscale("log")
        ax.set_xlim(min(xs) / 1.5, max(xs) * 1.5)
    else:
        pad = (max(xs) - min(xs)) * 0.15
        ax.set_xlim(min(xs) - pad, max(xs) + pad)
    C.clamp_fraction(ax)
    ax.set_xlabel("unique parameters (a tied tensor counted once)")
    ax.set_ylabel("final val accuracy (fraction); bars: 95% interval")
    ax.set_title("Sharing: accuracy vs unique parameter count (group means)")
    extra = [Line2D([], [], marker="^", color="gray", ls="", label="tied (unique < total)"),
             Line2D([], [], marker="o", color="gray", ls="", label="untied")]
    if stopped:
        extra.append(Line2D([], [], marker="X", color="gray", mec="black", ls="",
                            label="no completed run (bottom edge)"))
    C.legend(fig, exp, extra, stops=False, bands=False)
    return C.save(fig, out, "sharing", epoch_x=False)


def _axis_values(exp, key: str) -> List:
    return sorted({g.values[key] for g in exp.groups}, key=K.value_order)


def _stop_text(exp, g) -> str:
    """A group without a completed run: 'diverged\ne1 s1' for one run, else '2 diverged\n1 failed'."""
    others = exp.others(g)
    if len(others) == 1:
        return others[0].stop_note().replace(" e", "\ne", 1)
    return C.others_short(exp, g).replace(", ", "\n")


def _others_tag(exp, g) -> str:
    """A group with completed runs and others: '+4 div, 1 inc' (short, it sits in a cell)."""
    return "+" + C.others_short(exp, g).replace("diverged", "div").replace("incomplete", "inc").replace(
        "failed", "fail")


def grid(exp, out: Path) -> Optional[str]:
    """Final val accuracy over the axis keys: bars or a line for one key, heatmaps for two or more
    (the two keys with most values as axes, one panel per combination of the others)."""
    if not exp.axes or not exp.groups:
        return None
    points = _final_points(exp)
    if len(exp.axes) == 1:
        return _grid_1d(exp, out, points)
    return _grid_2d(exp, out, points)


def _grid_1d(exp, out: Path, points) -> str:
    """One axis key: each group's mean with its 95% interval as a point and whisker (no bars: the
    axis is cut to the data, and a bar's length would then mislead), labelled with mean, ± and n."""
    key = exp.axes[0]
    xs = _axis_values(exp, key)
    by_value = {g.values[key]: g for g in exp.groups}
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
    fig, axes = C.subplots(1, 1, max(7.0, 1.1 * len(xs) + 2), 5.0)
    ax = axes[0][0]
    pos = dict(zip(xs, xs if numeric else range(len(xs))))
    lows, highs = [], []
    for x in xs:
        g = by_value[x]
        if g.index in points:
            mean, h, n = points[g.index]
            err = None if math.isnan(h) else h
            colour = g.color if g.highlighted else "tab:blue"
            ax.errorbar([pos[x]], [mean], yerr=err, color=colour, marker="o", ms=7, capsize=5, lw=1.5, ls="")
            lows.append(mean - (err or 0))
            highs.append(mean + (err or 0))
            text = f"{mean:.3f}" + (f"\n±{h:.3f}" if err else "") + f"\nn={n}"
            if exp.others(g):
                text += "\n" + _others_tag(exp, g)
            # Beside the point, not above the whisker: a whisker may run past the clamped axis.
            ax.annotate(text, (pos[x], mean), xytext=(9, 0), textcoords="offset points", ha="left",
                        va="center", fontsize=8)
        elif exp.others(g):  # nothing completed: mark it on the bottom edge, say what happened
            ax.plot([pos[x]], [0.04], transform=ax.get_xaxis_transform(), marker="X", ms=11, mfc="tab:red",
                    mec="black", ls="", clip_on=False, zorder=4)
            ax.annotate(_stop_text(exp, g), (pos[x], 0.04), xycoords=ax.get_xaxis_transform(), xytext=(0, 10),
                        textcoords="offset points", ha="center", va="bottom", fontsize=8, color="tab:red")
    done = [x for x in xs if by_value[x].index in points]
    if numeric:
        ax.plot(done, [points[by_value[x].index][0] for x in done], color="tab:blue", alpha=0.4, zorder=1)
        if min(xs) > 0 and max(xs) / min(xs) >= 100:
            ax.set_xscale("log")
    else:
        ax.set_xticks(list(pos.values()), [K.format_value(x) for x in xs])
        ax.set_xlim(-0.6, len(xs) - 0.4)
    if lows:
        # Room above for the labels, below for the markers of groups that did not complete.
        lo, hi = min(lows), max(highs)
        span = max(hi - lo, 0.02)
        ax.set_ylim(lo - 0.3 * span, hi + 0.45 * span)
        C.clamp_fraction(ax)
    ax.set_xlabel(K.column_name(key))
    ax.set_ylabel("final val accuracy (fraction)")
    ax.set_title(f"Final val accuracy vs {K.column_name(key)}: group mean, 95% interval, n completed runs")
    return C.save(fig, out, "grid", epoch_x=False)


def _grid_2d(exp, out: Path, points) -> str:
    from matplotlib.patches import Rectangle

    count = {k: len(_axis_values(exp, k)) for k in exp.axes}
    kx, ky = sorted(exp.axes, key=lambda k: -count[k])[:2]
    rest = [k for k in exp.axes if k not in (kx, ky)]
    xs, ys = _axis_values(exp, kx), _axis_values(exp, ky)
    facets: Dict[str, list] = {}
    for g in exp.groups:
        facets.setdefault(K.label(g.values, rest) or "all groups", []).append(g)
    names = list(facets)
    shown = names[:12]
    cell_w, cell_h = 0.85, 0.62
    pw, ph = max(3.2, cell_w * len(xs) + 1.6), max(2.6, cell_h * len(ys) + 1.4)
    ncols = max(1, min(len(shown), int(16 // pw)))
    nrows = math.ceil(len(shown) / ncols)
    fig, axes = C.subplots(nrows, ncols, pw * ncols + 1.2, ph * nrows + 0.9)
    vals = [v[0] for v in points.values()]
    vmin, vmax = (min(vals), max(vals)) if vals else (0, 1)
    if vmax - vmin < 1e-9:
        vmin, vmax = vmin - 0.01, vmax + 0.01
    im = None
    font = 8 if max(len(xs), len(ys)) <= 6 else 7
    for k, name in enumerate(shown):
        ax = axes[k // ncols][k % ncols]
        grid_vals = np.full((len(ys), len(xs)), np.nan)
        cells = {(ys.index(g.values[ky]), xs.index(g.values[kx])): g for g in facets[name]}
        for (i, j), g in cells.items():
            if g.index in points:
                grid_vals[i, j] = points[g.index][0]
        im = ax.imshow(grid_vals, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto", origin="lower")
        for (i, j), g in cells.items():
            if g.index in points:
                mean, h, n = points[g.index]
                text = f"{mean:.3f}\n" + (f"±{h:.3f} " if not math.isnan(h) else "") + f"n={n}"
                if exp.others(g):
                    text += "\n" + _others_tag(exp, g)
                dark = (mean - vmin) / (vmax - vmin) < 0.55
                ax.text(j, i, text, ha="center", va="center", fontsize=font, color="white" if dark else "black")
            else:  # no completed run: a hatched cell saying what happened (never a blank cell)
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fc="#f4d6d6", ec="tab:red", hatch="//", lw=1))
                ax.text(j, i, _stop_text(exp, g), ha="center", va="center", fontsize=font, color="darkred")
        ax.set_xticks(range(len(xs)), [K.format_value(x) for x in xs])
        ax.set_yticks(range(len(ys)), [K.format_value(y) for y in ys])
        ax.set_xlabel(K.column_name(kx))
        ax.set_ylabel(K.column_name(ky))
        ax.grid(False)
        ax.set_title(name if len(names) > 1 else "")
    C.hide_unused(axes, len(shown))
    fig.colorbar(im, ax=[a for row in axes for a in row if a.get_visible()], label="final val accuracy (group mean)",
                 shrink=0.9)
    note = f" (first {len(shown)} of {len(names)} panels)" if len(names) > len(shown) else ""
    tag = "; +k div / fail / inc: runs that diverged, failed, are incomplete" if any(exp.others(g) for g in exp.groups) else ""
    C.suptitle(fig, "Final val accuracy over the grid: group mean, ±95% interval half-width, n completed runs" + tag + note)
    return C.save(fig, out, "grid", epoch_x=False)
