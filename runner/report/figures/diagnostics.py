"""Training diagnostics from the `params/` diagnostics (CONTRACT "params/ columns"); each figure
is skipped when its rows or columns are absent (runs recorded before the engine wrote them).

- update/weight ratio: `update` rows (value(e) - value(previous snapshot epoch)) over the value's
  norm at the previous snapshot epoch, per optimizer step: divided by the steps between the two
  snapshots (run.json `steps_per_epoch`), so ~1e-3, the usual healthy scale of one SGD step, is
  the guide line. Steps that do not all point one way make this a lower bound of the typical
  step's ratio. Runs without `steps_per_epoch` show the ratio over the whole interval.
- call-site cosine: `cos_grad` of each call site of a tied tensor (cosine between that site's
  mean gradient and the tensor's); sites pulling apart show as cosines far below 1.
- gradient noise scale B_simple = batch_size * step_var / ||grad||^2 (McCandlish et al. 2018,
  "An Empirical Model of Large-Batch Training"), per layer (its tensors' step_var and squared
  norms summed) and for all parameters together. Batches much smaller than B_simple waste
  little; much larger ones buy little.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from . import common as C

GUIDE_RATIO = 1e-3
ALL = "all parameters"


def update_ratios(params, steps_per_epoch=None):
    """run, name, epoch, ratio: update.norm(e) / value.norm(previous snapshot epoch) per tensor,
    divided by the optimizer steps in between when steps_per_epoch[run] is known."""
    updates = params[(params.kind == "update") & params.norm.notna()]
    values = params[params.kind == "value"][["run", "name", "epoch", "norm"]].sort_values(["run", "name", "epoch"])
    # The previous snapshot epoch and its norm: value rows are at snapshot epochs, one per tensor.
    values["prev_norm"] = values.groupby(["run", "name"]).norm.shift(1)
    values["prev_epoch"] = values.groupby(["run", "name"]).epoch.shift(1)
    ratio = updates[["run", "name", "epoch", "norm"]].merge(
        values[["run", "name", "epoch", "prev_norm", "prev_epoch"]], on=["run", "name", "epoch"], how="left")
    ratio["ratio"] = ratio["norm"] / ratio["prev_norm"]
    if steps_per_epoch is not None:
        steps = np.asarray(steps_per_epoch, dtype=float)[ratio.run.to_numpy()] * (ratio.epoch - ratio.prev_epoch)
        ratio["ratio"] = np.where(np.isfinite(steps) & (steps > 0), ratio["ratio"] / steps, ratio["ratio"])
    return ratio[np.isfinite(ratio["ratio"]) & (ratio["ratio"] > 0)][["run", "name", "epoch", "ratio"]]


def update_ratio(exp, out: Path) -> Optional[str]:
    ratio = update_ratios(exp.params, exp.runs_frame.steps_per_epoch.astype(float).to_numpy())
    names = C.param_names(ratio.name.unique())
    if not names:
        return None
    aliases = C.tied_aliases(exp)
    fig, cells = C.panels(names, 2.9)
    for ax, name in cells:
        C.draw_groups(ax, exp, ratio[ratio.name == name], "ratio", log=True)
        ax.axhline(GUIDE_RATIO, color="black", ls=":", lw=1)
        ax.set_title(C.param_title(name, aliases), fontsize=8.5)
        ax.set_xlabel("epoch")
        ax.set_ylabel("|update| / |weights| per step")
    from matplotlib.lines import Line2D

    C.suptitle(fig, "Update-to-weight ratio per optimizer step: change since the previous snapshot over the weights' "
                 "norm then, over the steps in between (log; group geometric means)")
    C.legend(fig, exp, [Line2D([], [], color="black", ls=":", label="1e-3 guide")])
    return C.save(fig, out, "update_ratio")


def site_cosine(exp, out: Path) -> Optional[str]:
    rows = C.tied_site_rows(exp.params)
    rows = rows[rows.cos_grad.notna()]
    tied = C.tied_sites(C.tied_site_rows(rows))   # tied among the rows that have a cosine
    if not tied:
        return None
    from matplotlib.lines import Line2D

    names = C.param_names(tied)
    aliases = C.tied_aliases(exp)
    fig, cells = C.panels(names, 3.0)
    for ax, name in cells:
        styles = ["-"] + C.SITE_STYLES
        for j, site in enumerate(tied[name]):
            C.draw_groups(ax, exp, rows[(rows.name == name) & (rows.site == site)], "cos_grad", log=False,
                          ls=styles[j % len(styles)], stops=j == 0, lw=1.5)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_ylim(-1.05, 1.05)
        ax.legend(handles=[Line2D([], [], color="k", ls=styles[j % len(styles)], label=f"site {s}")
                           for j, s in enumerate(tied[name])], fontsize=7, loc="lower left")
        ax.set_title(C.param_title(name, aliases), fontsize=8.5)
        ax.set_xlabel("epoch")
        ax.set_ylabel("cos(site's mean grad, total grad)")
    C.suptitle(fig, "Tied tensors: cosine between each call site's mean gradient and the tensor's gradient")
    C.legend(fig, exp, only={exp.runs[i].group for i in rows.run.unique()})
    return C.save(fig, out, "site_cosine")


def noise_scales(params, batch_size):
    """run, epoch, layer, noise_scale: B_simple per layer (a module's tensors summed) and for
    "all parameters"; batch_size[run] is each run's data.batch_size."""
    import pandas as pd

    g = params[(params.kind == "grad") & params.step_var.notna() & params.norm.notna()]
    g = g[["run", "epoch", "name", "step_var", "norm"]]
    if not len(g):
        return pd.DataFrame(columns=["run", "epoch", "layer", "noise_scale"])
    g = g.assign(layer=g.name.str.rpartition(".")[0], sq=g["norm"] ** 2)
    per_layer = g.groupby(["run", "epoch", "layer"], as_index=False)[["step_var", "sq"]].sum()
    whole = g.groupby(["run", "epoch"], as_index=False)[["step_var", "sq"]].sum().assign(layer=ALL)
    b = pd.concat([per_layer, whole], ignore_index=True)
    b["noise_scale"] = np.asarray(batch_size, dtype=float)[b.run.to_numpy()] * b.step_var / b.sq
    return b[np.isfinite(b.noise_scale) & (b.noise_scale > 0)][["run", "epoch", "layer", "noise_scale"]]


def noise_scale(exp, out: Path) -> Optional[str]:
    batch = exp.runs_frame.batch_size.astype(float).to_numpy()
    b = noise_scales(exp.params, batch)
    if not len(b):
        return None
    layers = sorted(set(b.layer) - {ALL}, key=C.natural)[:11] + [ALL]
    fig, cells = C.panels(layers, 2.9)
    batches = sorted({int(x) for x in batch if np.isfinite(x)})
    for ax, layer in cells:
        C.draw_groups(ax, exp, b[b.layer == layer], "noise_scale", log=True)
        for bs in batches[:3]:
            ax.axhline(bs, color="black", ls=":", lw=0.8)
        ax.set_title(layer if layer == ALL else f"layer {layer}", fontsize=8.5)
        ax.set_xlabel("epoch")
        ax.set_ylabel("B_simple (examples)")
    from matplotlib.lines import Line2D

    C.suptitle(fig, "Gradient noise scale B_simple = batch size x step variance / |mean grad|^2 (log; group geometric means)")
    C.legend(fig, exp, [Line2D([], [], color="black", ls=":", label="the batch size")])
    return C.save(fig, out, "noise_scale")
