"""What a run records at a snapshot epoch, for all K members at once: parameter values, mean
gradients, per-call-site gradients, updates since the previous snapshot, diagnostics and
activation statistics; turned into each member's `params/`, `tensors/`, `activations/` rows.

The loop calls `reset()` at the start of a snapshot epoch, `accumulate()` after every backward
(before the optimizer step and the next zero_grad; it also gathers the call sites' gradients)
and `snapshot(epoch, steps, ...)` at its end.
Statistics are computed for the stacked (K, ...) tensors in batched ops (runner.stats) and
copied to the host once per snapshot.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import pyarrow as pa
import torch

from . import snapshot
from .batched import Members, one_thread
from .stats import stacked_stats


class Recorder:
    def __init__(self, members: Members, snap_cfg, activation_x: torch.Tensor, layers: Sequence[str]):
        self.members = members
        self.cfg = snap_cfg
        self.diagnostics = bool(snap_cfg.diagnostics)   # read every step: not through the config object
        self.activation_x = activation_x          # fixed held-out batch shared by all members, (B, 1, 28, 28)
        self.layers = list(layers)
        # Sums over the epoch's steps, shaped like the leaves the optimizer steps.
        self.grad_sums = [torch.zeros_like(p) for p in members.leaves]
        # Sums of each step's elementwise squared gradients (one foreach op per step, for a single run
        # and an ensemble alike): step_var = their sum / steps - ||mean g||^2 per member and tensor.
        self.square_sums = [torch.zeros_like(p) for p in members.leaves] if self.diagnostics else None
        self.previous: Optional[List[torch.Tensor]] = None   # values at the previous snapshot epoch
        self.previous_epoch = -1

    # ---------------------------------------------------------------- per step
    def accumulate(self) -> None:
        """After the backward: tied tensors' call sites gathered (Members.gather_sites), and this
        step's .grad (and its elementwise square) added to the epoch's sums: two foreach ops."""
        grads = self.members.gather_sites(self.grad_sums, self.members.leaves)
        if self.diagnostics:
            torch._foreach_addcmul_(self.square_sums, grads, grads)

    def reset(self) -> None:
        torch._foreach_zero_(self.grad_sums)
        if self.square_sums is not None:
            torch._foreach_zero_(self.square_sums)
        if self.members.site_sums:
            torch._foreach_zero_(list(self.members.site_sums.values()))

    # ---------------------------------------------------------------- per snapshot epoch
    def snapshot(self, epoch: int, steps: int, run_dirs: Sequence[Path], active: Sequence[int]) -> Dict[int, Callable]:
        """_snapshot on one thread on the CPU: a reduction PyTorch splits between threads (a row of
        32768 values or more) adds in another order than one thread, and where it splits depends
        on how many members' rows the call holds; on one thread each row adds in one order, so a
        member's statistics are its run alone's, bit for bit (seen: 1-ulp differences in std and
        norm of a 784x128 layer's rows)."""
        with one_thread(self.members.device.type == "cpu"):
            return self._snapshot(epoch, steps, run_dirs, active)

    @torch.no_grad()
    def _snapshot(self, epoch: int, steps: int, run_dirs: Sequence[Path], active: Sequence[int]) -> Dict[int, Callable]:
        """The statistics of `epoch` for all members (0 = right after init: values only), and per
        member in `active` a function that encodes its `params/` (+ `tensors/`) and `activations/`
        files from host copies and returns the function that writes them (engine._Writer runs
        each where it costs training least).
        `steps`: optimizer steps since reset(), counted by the loop (a replayed CUDA graph runs no
        Python)."""
        m = self.members
        k = m.k
        values = [p.detach() for p in m.params]
        rows = [(n, "value", None, v) for n, v in zip(m.names, values)]   # (name, kind, site, (K, ...))
        stat_of = list(range(len(rows)))              # row -> index of its statistics (untied sites reuse)
        extra = {}                                    # row index -> (K,) cos_grad or step_var
        if steps:
            grads = [g.view(v.shape) for g, v in zip(torch._foreach_div(self.grad_sums, float(steps)), values)]
            first_grad = len(rows)
            for i, (n, g) in enumerate(zip(m.names, grads)):
                if self.diagnostics:
                    # mean over steps of ||g_step - mean||^2 = sum ||g_step||^2 / steps - ||mean||^2
                    squares = self.square_sums[i].double().reshape(k, -1).sum(1)
                    step_var = (squares / steps - g.double().reshape(k, -1).square().sum(1)).clamp(min=0)
                    extra[len(rows)] = ("step_var", step_var)
                rows.append((n, "grad", None, g))
                stat_of.append(len(stat_of))
            for i, info in enumerate(m.tie_map.params):
                g = grads[i]
                for site in info.call_sites:
                    if info.tied:
                        s = m.site_sums[(info.canonical, site)].view(g.shape) / steps
                        extra[len(rows)] = ("cos_grad", _cosine(s, g))
                        rows.append((info.canonical, "grad_site", site, s))
                        stat_of.append(len(stat_of))
                    else:  # one call site: its share is the whole gradient (same statistics, not stored twice)
                        extra[len(rows)] = ("cos_grad", torch.ones(k, dtype=torch.float64, device=g.device))
                        rows.append((info.canonical, "grad_site", site, g))
                        stat_of.append(stat_of[first_grad + i])
            if self.previous is not None and self.diagnostics:
                for n, v, prev in zip(m.names, values, self.previous):
                    rows.append((n, "update", None, v - prev))
                    stat_of.append(len(stat_of))
        unique = sorted(set(stat_of))
        position = {r: j for j, r in enumerate(unique)}
        stats = stacked_stats([rows[r][3] for r in unique], self.cfg.hist_bins, self.cfg.quantile_sample)
        picks = [position[s] for s in stat_of]
        extras = {r: v.double().cpu().numpy() for r, (_, v) in extra.items()}
        stored = [r for r in unique if rows[r][1] in ("value", "grad", "grad_site")]   # full tensors
        flat = torch.cat([rows[r][3].reshape(k, -1).float() for r in stored], 1).cpu().numpy() \
            if self.cfg.tensors else None
        outputs = activation_outputs(m, self.activation_x, self.layers)
        # A model with no activation modules still gets its activations/ file (no rows, its columns).
        act = activation_stats(m, outputs) if outputs else np.zeros((k, 0, 4))
        layers = [(name, tuple(o.shape)) for name, o in outputs.items()]      # (K, B, units)
        rows = [(r[0], r[1], r[2], tuple(r[3].shape[1:])) for r in rows]        # host-side: no tensors
        kinds = {r: kind for r, (kind, _) in extra.items()}
        self.previous = [v.clone() for v in values]
        self.previous_epoch = epoch
        return {member: partial(_prepare, Path(run_dirs[member]), epoch, member, rows, stats, picks, kinds, extras,
                                [rows[r] for r in stored], flat, layers, act) for member in active}


def _prepare(run_dir: Path, epoch: int, member: int, rows, stats, picks, kinds, extras, stored, flat, layers,
             act) -> Callable[[], None]:
    """One member's params/ (+ tensors/) and activations/ files of one epoch, encoded now; returns
    the function that writes them."""
    cols = {"epoch": [epoch] * len(rows), "name": [r[0] for r in rows], "kind": [r[1] for r in rows],
            "site": [r[2] for r in rows], "shape": [list(r[3]) for r in rows]}
    for key, column in stats.items():
        cols[key] = column[member][picks]            # (rows,) or (rows, bins) for the list columns
    for key in ("cos_grad", "step_var"):
        cols[key] = [float(extras[r][member]) if kinds.get(r) == key else None for r in range(len(rows))]
    writes = [snapshot.prepare_table(run_dir, "params", epoch, cols)]
    if flat is not None:
        writes.append(snapshot.prepare_table(run_dir, "tensors", epoch, tensors_columns(epoch, stored, flat[member])))
    writes.append(prepare_activations(run_dir, epoch, layers, act[member]))

    def write() -> None:
        for one in writes:
            one()

    return write


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per member cosine between two (K, ...) tensors (NaN where either is zero)."""
    a, b = a.reshape(a.shape[0], -1).double(), b.reshape(b.shape[0], -1).double()
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def tensors_columns(epoch: int, rows: Sequence[tuple], flat: np.ndarray) -> dict:
    """Columns of the `tensors` table: rows (name, kind, site, shape) and one member's values of
    all of them end to end (float32), as one list array without per-element Python."""
    sizes = [int(np.prod(r[3], dtype=np.int64)) for r in rows]
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(sizes, out=offsets[1:])
    values = snapshot.list_array(offsets, flat, pa.float32())
    return {"epoch": [epoch] * len(rows), "name": [r[0] for r in rows], "kind": [r[1] for r in rows],
            "site": [r[2] for r in rows], "shape": [list(r[3]) for r in rows], "values": values}


def activation_outputs(members: Members, x: torch.Tensor, layers: Sequence[str]) -> dict:
    """Each hidden layer's output for the fixed batch x (shared by all members), in eval mode,
    without grad, as (K, B, features). A module reused at several paths is told apart by call
    order; one called more often than it has paths (one ReLU object used after every layer)
    gives `path`, `path#2`, ... for its calls."""
    if not layers:
        return {}
    model = members.model
    by_object: dict = {}
    for path in layers:
        module = model.get_submodule(path)
        by_object.setdefault(id(module), (module, []))[1].append(path)
    outputs: dict = {}

    def hook_for(paths: List[str]):
        calls = [0]

        def hook(module, inputs, output):
            k = calls[0]
            calls[0] += 1
            name = paths[k] if k < len(paths) else f"{paths[-1]}#{k + 1}"
            # Row-major per member (a feature-major Linear output is not): the statistics' sums then
            # add in one order whatever K, so a member's equal its run alone's bit for bit.
            outputs[name] = members.member_view(output).flatten(2).contiguous()

        return hook

    handles = [module.register_forward_hook(hook_for(paths)) for module, paths in by_object.values()]
    was_training = model.training
    members.train(False)
    try:
        with torch.no_grad():
            members.forward(x, [(0, members.k)])
    finally:
        members.train(was_training)
        for h in handles:
            h.remove()
    return outputs  # in call order; a module called more often than it has paths: path#2, path#3, ...


def activation_stats(members: Members, outputs: dict) -> np.ndarray:
    """(K, layers, 4): mean, the seed's stat_activation_variance, frac_dead (units zero for every
    example) and frac_zero of each hidden layer output (K, B, units)."""
    rows = []
    for a in outputs.values():
        a = a.double()
        zero = a == 0
        rows.append(torch.stack([
            a.mean((1, 2)),
            (a - a.mean(1, keepdim=True)).square().mean((1, 2)),   # the seed's activation variance
            zero.all(1).double().mean(1),                            # units zero for every example
            zero.double().mean((1, 2))], dim=1))
    return torch.stack(rows, dim=1).cpu().numpy()


def prepare_activations(run_dir: Path, epoch: int, layers, act: np.ndarray) -> Callable[[], None]:
    """One member's `activations/` file: `layers` (name, (K, B, units)), `act` its (layers, 4) statistics."""
    shapes = [shape for _, shape in layers]
    return snapshot.prepare_table(run_dir, "activations", epoch, {
        "epoch": [epoch] * len(shapes), "layer": [name for name, _ in layers],
        "units": [int(s[2]) for s in shapes], "examples": [int(s[1]) for s in shapes],
        "mean": act[:, 0], "var": act[:, 1], "frac_dead": act[:, 2], "frac_zero": act[:, 3]})
