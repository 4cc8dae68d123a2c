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
        rows = [(n, "value", None, p) for n, p in zip(self.names, self.params)]
        site_rows = []
        if with_grads:
            scale = 1.0 / max(steps, 1)
            grads = torch._foreach_mul(self.grad_sums, scale)  # mean over the epoch's steps
            rows += [(n, "grad", None, g) for n, g in zip(self.names, grads)]
            for info, g in zip(self.tie_map.params, grads):
                if info.tied:
                    site_rows += [(info.canonical, "grad_site", site, self.sites.sums[(info.canonical, site)] * scale)
                                  for site in info.call_sites]
                else:  # one call site: its contribution is the whole gradient
                    site_rows.append((info.canonical, "grad_site", info.call_sites[0], g))
        # Statistics of values, grads and tied sites in one batched call; an untied site row
        # reuses its grad's statistics (same tensor), and its tensor is not stored twice.
        tied = {p.canonical for p in self.tie_map.params if p.tied}
        stat_rows = list(rows)
        grad_pos = {r[0]: i for i, r in enumerate(rows) if r[1] == "grad"}
        index = list(range(len(rows)))
        for r in site_rows:
            if r[0] in tied:
                index.append(len(stat_rows))
                stat_rows.append(r)
            else:
                index.append(grad_pos[r[0]])
        stats = snapshot.tensor_stats([r[3] for r in stat_rows], self.cfg.hist_bins, self.cfg.quantile_sample)
        all_rows = rows + site_rows
        cols = {"epoch": [epoch] * len(all_rows), "name": [r[0] for r in all_rows],
                "kind": [r[1] for r in all_rows], "site": [r[2] for r in all_rows],
                "shape": [list(r[3].shape) for r in all_rows]}
        for key, values in stats.items():
            picked = values[index]
            cols[key] = [list(v) for v in picked] if picked.ndim == 2 else picked
        snapshot.write_table(self.run_dir, "params", epoch, cols)
        if self.cfg.tensors:
            snapshot.write_table(self.run_dir, "tensors", epoch,
                                 snapshot.tensors_columns(epoch, stat_rows))
        self._activations(epoch)

    def _activations(self, epoch: int) -> None:
        """The seed's stat_activation_variance, per hidden layer, on the fixed held-out batch."""
        outputs: List[torch.Tensor] = []
        handles = [self.model.get_submodule(path).register_forward_hook(lambda m, i, o: outputs.append(o))
                   for path in self.model.hidden_outputs]
        was_training = self.model.training
        self.model.eval()
        try:
            self.model(self.activation_x)
        finally:
            self.model.train(was_training)
            for h in handles:
                h.remove()
        stats = []
        for a in outputs:  # a: (B, units)
            a = a.flatten(1).double()
            zero = a == 0
            stats.append(torch.stack([
                a.mean(),
                ((a - a.mean(0, keepdim=True)) ** 2).mean(),   # the seed's activation variance
                zero.all(0).double().mean(),                     # units zero for every example
                zero.double().mean()]))
        host = torch.stack(stats).cpu().numpy() if stats else None
        layers = list(self.model.hidden_outputs)
        snapshot.write_table(self.run_dir, "activations", epoch, {
            "epoch": [epoch] * len(layers), "layer": layers,
            "units": [int(o.flatten(1).shape[1]) for o in outputs],
            "examples": [int(self.activation_x.shape[0])] * len(layers),
            "mean": host[:, 0], "var": host[:, 1], "frac_dead": host[:, 2], "frac_zero": host[:, 3]})
