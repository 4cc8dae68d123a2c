"""What happens inside: parameter statistics, gradient norms (per call site for tied tensors),
weight histograms of a few runs, hidden-layer activations. Group means with bands throughout."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import List, Optional

import numpy as np

from ..load import read_histograms
from . import common as C



def param_evolution(exp, out: Path) -> Optional[str]:
    values = exp.params[exp.params.kind == "value"]
    names = C.param_names(values.name.unique())
    if not names:
        return None
    aliases = C.tied_aliases(exp)
    by_name = dict(tuple(values[values.name.isin(names)].groupby("name")))
    fig, axes = C.subplots(len(names), 3, 14, 2.3 * len(names) + 1.6)
    for row, name in enumerate(names):
        for col, stat in enumerate(("mean", "std", "norm")):
            ax = axes[row][col]
            C.draw_groups(ax, exp, by_name[name], stat, lw=1.5)
            ax.set_title(f"{C.param_title(name, aliases)}: {stat}", fontsize=8.5)
            if row == len(names) - 1:
                ax.set_xlabel("epoch (0 = after init)")
    C.suptitle(fig, "Parameter values per epoch (mean, std, L2 norm)")
    C.legend(fig, exp)
    return C.save(fig, out, "param_evolution")


def grads(exp, out: Path) -> Optional[str]:
    """Per parameter the L2 norm of its mean gradient; for tied tensors each call site's share too."""
    p = exp.params
    g = p[p.kind == "grad"]
    names = C.param_names(g.name.unique())
    if not names:
        return None
    from matplotlib.lines import Line2D

    aliases = C.tied_aliases(exp)
    site_rows = C.tied_site_rows(p)
    tied = C.tied_sites(site_rows)
    fig, cells = C.panels(names, 3.0)
    for ax, name in cells:
        C.draw_groups(ax, exp, g[g.name == name], "norm", log=True)
        if name in tied:
            for j, site in enumerate(tied[name]):  # sites only for the coloured groups
                C.draw_groups(ax, exp, site_rows[(site_rows.name == name) & (site_rows.site == site)], "norm",
                              log=True, ls=C.SITE_STYLES[j % len(C.SITE_STYLES)], stops=False, background=False, lw=1.1,
                              band=False)
            ax.legend(handles=[Line2D([], [], color="k", lw=2, label="total (.grad)")] +
                      [Line2D([], [], color="k", lw=1.1, ls=C.SITE_STYLES[j % len(C.SITE_STYLES)], label=f"through {s}")
                       for j, s in enumerate(tied[name])], fontsize=7, loc="best")
        ax.set_title(C.param_title(name, aliases), fontsize=8.5)
        ax.set_xlabel("epoch")
        ax.set_ylabel("L2 norm of mean gradient")
    title = "Gradient norms per epoch (log scale; group geometric means)"
    if tied:
        title += "; tied parameters: solid = total, dashed/dotted = each call site's share"
    C.suptitle(fig, title)
    C.legend(fig, exp)
    return C.save(fig, out, "grads")


def histogram_runs(exp, limit: int = 4) -> List:
    """A few runs to show histograms of: the first completed run of each coloured group (best
    groups first when only some are coloured; groups without a completed run last)."""
    def rank(g):  # "best 2" -> 2: best 1, worst 1, best 2, worst 2, ...; unranked groups in order
        return int(g.rank.split()[1]) if g.rank else 0

    order = sorted(exp.groups, key=lambda g: (not g.highlighted, not exp.done(g), rank(g), g.rank, g.index))
    picked = []
    for g in order:
        runs = exp.done(g) or [exp.runs[i] for i in g.runs]
        if runs:
            picked.append(runs[0])
        if len(picked) == limit:
            break
    have = set(exp.params.run.unique())
    return [r for r in picked if r.index in have]


def histograms(exp, out: Path, limit: int = 4) -> Optional[str]:
    """Weight histograms at init and at the last epoch, per weight tensor, for a few runs."""
    shown = histogram_runs(exp, limit)
    values = exp.params[exp.params.kind == "value"]
    names = [n for n in C.param_names(values[values.run.isin([r.index for r in shown])].name.unique())
             if n.endswith("weight")]
    if not shown or not names:
        return None
    last_epoch = values.groupby("run").epoch.max()
    fig, axes = C.subplots(len(names), len(shown), 3.8 * len(shown) + 1, 2.2 * len(names) + 1.4)
    for col, r in enumerate(shown):
        last = int(last_epoch[r.index])
        h = read_histograms(r, sorted({0, last}))
        aliases = {a: g["canonical"] for g in r.info.get("tie_groups") or [] for a in g["aliases"]}
        colour = exp.groups[r.group].color
        for row, name in enumerate(names):
            ax = axes[row][col]
            if not (h.name == name).any():
                ax.text(0.5, 0.5, f"tied: same tensor as {aliases[name]}" if name in aliases else "not in this run",
                        ha="center", va="center", transform=ax.transAxes, color="gray")
                ax.set_xticks([])
                ax.set_yticks([])
            for epoch, c, label in [(0, "tab:gray", "epoch 0 (init)")] + ([(last, colour, f"epoch {last}")] if last else []):
                sel = h[(h.name == name) & (h.epoch == epoch)]
                if len(sel) and sel.iloc[0].hist_counts is not None:
                    counts = np.asarray(sel.iloc[0].hist_counts, dtype=float)
                    edges = np.asarray(sel.iloc[0].hist_edges, dtype=float)
                    ax.stairs(counts / max(counts.sum(), 1), edges, fill=epoch == 0, alpha=0.45 if epoch == 0 else 1,
                              color=c, label=label, lw=1.5)
            title = name
            if row == 0:  # which run: its group's rank, its label (wrapped, never cut), how it ended
                g = exp.groups[r.group]
                about = (f"{g.rank}: " if g.rank else "") + r.label + (f" [{r.stop_note()}]" if r.stop_note() else "")
                title += "\n" + "\n".join(textwrap.wrap(about, 48))
            ax.set_title(title, fontsize=8)
            if row == 0 and len(ax.get_legend_handles_labels()[0]):
                ax.legend(fontsize=7)
            if row == len(names) - 1:
                ax.set_xlabel("weight value")
            if col == 0:
                ax.set_ylabel("share of weights")
    note = f" ({len(shown)} of {len(exp.runs)} runs)" if len(exp.runs) > len(shown) else ""
    C.suptitle(fig, "Weight distributions: init vs last epoch" + note)
    return C.save(fig, out, "histograms", epoch_x=False)


def activations(exp, out: Path) -> Optional[str]:
    a = exp.activations
    layers = sorted(a.layer.unique(), key=C.natural)[:8] if len(a) else []
    if not layers:
        return None
    fig, axes = C.subplots(len(layers), 2, 12, 2.4 * len(layers) + 1.6)
    for row, layer in enumerate(layers):
        rows = a[a.layer == layer]
        for col, (stat, title) in enumerate((("var", "activation variance (seed's formula)"),
                                             ("frac_dead", "dead units (zero on every held-out example)"))):
            ax = axes[row][col]
            C.draw_groups(ax, exp, rows, stat, lw=1.5, log="auto" if stat == "var" else False)
            ax.set_title(f"{layer}: {title}", fontsize=8.5)
            if stat == "frac_dead":
                ax.set_ylim(-0.03, 1.03)
                ax.set_ylabel("fraction of units")
            if row == len(layers) - 1:
                ax.set_xlabel("epoch (0 = after init)")
    C.suptitle(fig, "Hidden-layer activations on a fixed held-out batch")
    C.legend(fig, exp)
    return C.save(fig, out, "activations")
