"""What a run records each epoch: parameter values, mean gradients, per-call-site gradients,
activation statistics; turned into rows of the `params/`, `tensors/`, `activations/` tables.

The training loop calls `accumulate()` after every backward (before the optimizer step and
before the next zero_grad) and `snapshot(epoch, ...)` at the end of a snapshot epoch.
"""
from __future__ import annotations

from pathlib import Path
from typing import List

import torch
from torch import nn

from . import snapshot
from .sharing import SiteGradients, TieMap


class Recorder:
    def __init__(self, model: nn.Module, tie_map: TieMap, snap_cfg, run_dir: Path, activation_x: torch.Tensor):
        self.model = model
        self.tie_map = tie_map
        self.cfg = snap_cfg
        self.run_dir = Path(run_dir)
        self.activation_x = activation_x  # fixed held-out batch, (B, 1, 28, 28)
        named = dict(model.named_parameters())
        self.names = [p.canonical for p in tie_map.params]
        self.params = [named[n] for n in self.names]
        self.grad_sums = [torch.zeros_like(p) for p in self.params]
        self.sites = SiteGradients(model, tie_map)

    # ---------------------------------------------------------------- per step
    def accumulate(self) -> None:
        """Add this step's .grad of every parameter to the epoch's sums (one foreach op)."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        torch._foreach_add_(self.grad_sums, grads)

    def reset(self) -> None:
        torch._foreach_zero_(self.grad_sums)
        self.sites.reset()

    def close(self) -> None:
        self.sites.remove()

    # ---------------------------------------------------------------- per epoch
    @torch.no_grad()
    def snapshot(self, epoch: int, with_grads: bool, steps: int = 1) -> None:
        """Write params/ (+ tensors/) and activations/ for `epoch` (0 = right after init);
        `steps`: optimizer steps since reset(), to turn the gradient sums into means. (Counted by
        the loop, not here: a replayed CUDA graph runs no Python.)"""
        grads = sites = None
        if with_grads:
            scale = 1.0 / max(steps, 1)
            grads = torch._foreach_mul(self.grad_sums, scale)  # mean over the epoch's steps
            sites = {key: s * scale for key, s in self.sites.sums.items()}
        write_param_snapshot(self.run_dir, epoch, self.cfg, self.tie_map, self.params, grads, sites)
        outputs = hidden_outputs(self.model, self.activation_x)
        write_activation_stats(self.run_dir, epoch, list(self.model.hidden_outputs), outputs)


def write_param_snapshot(run_dir: Path, epoch: int, snap_cfg, tie_map: TieMap, values, grads=None,
                         site_grads=None) -> None:
    """The `params/` (and `tensors/`) file of one epoch. `values` and `grads` are aligned with
    `tie_map.params`; `site_grads[(canonical, site)]` holds each tied parameter's per-site mean."""
    names = [p.canonical for p in tie_map.params]
    rows = [(n, "value", None, v) for n, v in zip(names, values)]
    site_rows = []
    if grads is not None:
        rows += [(n, "grad", None, g) for n, g in zip(names, grads)]
        for info, g in zip(tie_map.params, grads):
            if info.tied:
                site_rows += [(info.canonical, "grad_site", site, site_grads[(info.canonical, site)])
                              for site in info.call_sites]
            else:  # one call site: its contribution is the whole gradient
                site_rows.append((info.canonical, "grad_site", info.call_sites[0], g))
    # Statistics of values, grads and tied sites in one batched call; an untied site row
    # reuses its grad's statistics (same tensor), and its tensor is not stored twice.
    tied = {p.canonical for p in tie_map.params if p.tied}
    stat_rows = list(rows)
    grad_pos = {r[0]: i for i, r in enumerate(rows) if r[1] == "grad"}
    index = list(range(len(rows)))
    for r in site_rows:
        if r[0] in tied:
            index.append(len(stat_rows))
            stat_rows.append(r)
        else:
            index.append(grad_pos[r[0]])
    stats = snapshot.tensor_stats([r[3] for r in stat_rows], snap_cfg.hist_bins, snap_cfg.quantile_sample)
    all_rows = rows + site_rows
    cols = {"epoch": [epoch] * len(all_rows), "name": [r[0] for r in all_rows],
            "kind": [r[1] for r in all_rows], "site": [r[2] for r in all_rows],
            "shape": [list(r[3].shape) for r in all_rows]}
    for key, column in stats.items():
        picked = column[index]
        cols[key] = [list(v) for v in picked] if picked.ndim == 2 else picked
    cols["cos_grad"] = cols["step_var"] = [None] * len(all_rows)
    snapshot.write_table(run_dir, "params", epoch, cols)
    if snap_cfg.tensors:
        snapshot.write_table(run_dir, "tensors", epoch, snapshot.tensors_columns(epoch, stat_rows))


def hidden_outputs(model: nn.Module, x: torch.Tensor) -> List[torch.Tensor]:
    """Each hidden layer's output (model.hidden_outputs) for `x`, in eval mode, without grad."""
    outputs: List[torch.Tensor] = []
    handles = [model.get_submodule(path).register_forward_hook(lambda m, i, o: outputs.append(o))
               for path in model.hidden_outputs]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return outputs


def write_activation_stats(run_dir: Path, epoch: int, layers: List[str], outputs: List[torch.Tensor]) -> None:
    """The seed's stat_activation_variance and dead units, per hidden layer output (B, units)."""
    stats = []
    for a in outputs:
        a = a.flatten(1).double()
        zero = a == 0
        stats.append(torch.stack([
            a.mean(),
            ((a - a.mean(0, keepdim=True)) ** 2).mean(),   # the seed's activation variance
            zero.all(0).double().mean(),                     # units zero for every example
            zero.double().mean()]))
    host = torch.stack(stats).cpu().numpy()
    snapshot.write_table(run_dir, "activations", epoch, {
        "epoch": [epoch] * len(layers), "layer": layers,
        "units": [int(o.flatten(1).shape[1]) for o in outputs],
        "examples": [int(outputs[0].shape[0])] * len(layers),
        "mean": host[:, 0], "var": host[:, 1], "frac_dead": host[:, 2], "frac_zero": host[:, 3]})
