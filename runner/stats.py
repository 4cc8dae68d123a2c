"""On-device statistics of stacked (K, ...) tensors, one row per member: for each tensor a fixed
handful of row reductions over its K rows (no per-element Python, no per-member loop), small
tensors laid end to end and reduced together, and one copy to the host at the end.

What `params/` stores per tensor: numel, mean, std (population), L2 norm, min, max, frac_zero,
n_nonfinite, quantiles from an evenly strided sample, and a histogram with `bins` equal bins
between the finite min and max (min == max: one unit wide; torch.histc's binning). Non-finite
elements are counted in n_nonfinite and left out of every other statistic.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np
import torch

from .snapshot import QUANTILE_COLUMNS, QUANTILES

# Tensors up to this many elements per member are reduced together (one op for all of them:
# op overhead dominates there); bigger ones one by one (a reduction over their row is cheapest).
SMALL = 8192


@torch.no_grad()
def stacked_stats(tensors: Sequence[torch.Tensor], bins: int = 64, sample: int = 4096) -> Dict[str, np.ndarray]:
    """Statistics of each (K, ...) tensor's K rows: every value an array of shape (K, len(tensors))
    (hist_counts (K, n, bins), hist_edges (K, n, bins + 1))."""
    k = tensors[0].shape[0]
    sizes = [int(t[0].numel()) for t in tensors]
    device = tensors[0].device
    small = [i for i, n in enumerate(sizes) if n <= SMALL]
    parts: List[tuple] = []                                         # (indices, stats (K, r, C), hist (K, r, bins))
    if small:
        x = torch.cat([tensors[i].detach().reshape(k, -1).double() for i in small], dim=1)
        parts.append((small, *_reduce(x, [sizes[i] for i in small], bins, sample)))
    for i, n in enumerate(sizes):
        if n > SMALL:
            parts.append(([i], *_reduce(tensors[i].detach().reshape(k, -1).double(), [n], bins, sample)))
    order = [i for indices, _, _ in parts for i in indices]
    position = torch.tensor(np.argsort(order), device=device)
    stats = torch.cat([s for _, s, _ in parts], dim=1)[:, position].cpu().numpy()     # (K, n, 7 + Q)
    hist = torch.cat([h for _, _, h in parts], dim=1)[:, position].cpu().numpy().astype(np.int64)
    numel = np.array(sizes, dtype=np.int64)[None, :].repeat(k, 0)
    lo, hi = stats[..., 4], stats[..., 5]
    top = np.where(hi > lo, hi, lo + 1.0)
    out = {"numel": numel, "mean": stats[..., 1], "std": stats[..., 2], "norm": stats[..., 3], "min": lo, "max": hi,
           "frac_zero": stats[..., 6] / np.maximum(numel, 1), "n_nonfinite": numel - stats[..., 0].astype(np.int64)}
    for j, c in enumerate(QUANTILE_COLUMNS):
        out[c] = stats[..., 7 + j]
    out["hist_counts"] = hist
    out["hist_edges"] = lo[..., None] + (top - lo)[..., None] * np.linspace(0.0, 1.0, bins + 1)
    return out


def _reduce(x: torch.Tensor, sizes: List[int], bins: int, sample: int):
    """x (K, N): tensors of `sizes` laid end to end (float64) -> stats (K, r, 7 + Q) [n_finite,
    mean, std, norm, min, max, zeros, quantiles...] and histogram counts (K, r, bins)."""
    k, r, device = x.shape[0], len(sizes), x.device
    segment, picks, pad = _layout(tuple(sizes), sample, device)
    finite = torch.isfinite(x)
    clean = device.type == "cpu" and bool(finite.all())   # the usual case: no masking (a host read is free here)
    xf = x if clean else torch.where(finite, x, 0.0)
    if r == 1:
        def per_tensor(values):
            return values.sum(1, keepdim=True)
    else:
        def per_tensor(values):
            return torch.stack([p.sum(1) for p in values.split(sizes, 1)], dim=1)

    n_finite = per_tensor(finite) if not clean else torch.tensor(sizes, device=device).expand(k, r)
    count = n_finite.clamp(min=1).double()
    mean = per_tensor(xf) / count
    centered = x - (mean if r == 1 else mean.index_select(1, segment))   # index_select: ~3x x[:, idx] here
    var = per_tensor((centered if clean else torch.where(finite, centered, 0.0)).square()) / count
    norm = per_tensor(xf.square()).sqrt()
    low = x if clean else torch.where(finite, x, torch.inf)
    high = x if clean else torch.where(finite, x, -torch.inf)
    if r == 1:
        lo, hi = low.amin(1, keepdim=True), high.amax(1, keepdim=True)
    else:
        lo = torch.stack([p.amin(1) for p in low.split(sizes, 1)], dim=1)
        hi = torch.stack([p.amax(1) for p in high.split(sizes, 1)], dim=1)
    empty = n_finite == 0                                              # every element non-finite
    mean, var, norm, lo, hi = (torch.where(empty, torch.nan, v) for v in (mean, var, norm, lo, hi))
    zeros = per_tensor(x == 0).double()
    # Histogram: histc's binning within each tensor's [min, max], one bincount over (member, tensor, bin).
    width = torch.where(hi > lo, hi - lo, torch.ones_like(lo))
    if r > 1:
        lo_e, width_e = lo.index_select(1, segment), width.index_select(1, segment)
    else:
        lo_e, width_e = lo, width
    bin_ = ((x - lo_e) * bins / width_e).floor().clamp_(0, bins - 1)
    if not clean:
        bin_ = torch.where(finite, bin_, float(bins))                  # non-finite -> a dropped bin
    flat = bin_.long() + (torch.arange(k, device=device)[:, None] * r + segment[None, :]) * (bins + 1)
    hist = torch.bincount(flat.reshape(-1), minlength=k * r * (bins + 1)).reshape(k, r, bins + 1)[..., :bins]
    # Quantiles: exact on an evenly strided sample of each tensor (every element when it is smaller).
    picked = x.index_select(1, picks.reshape(-1)).view(k, *picks.shape)  # (K, r, S)
    mask = pad[None] if clean else pad[None] | ~finite.index_select(1, picks.reshape(-1)).view(k, *picks.shape)
    picked = torch.where(mask, torch.nan, picked)
    q = torch.nanquantile(picked, torch.tensor(QUANTILES, dtype=x.dtype, device=device), dim=2)  # (Q, K, r)
    stats = torch.stack([n_finite.double(), mean, var.sqrt(), norm, lo, hi, zeros, *q], dim=2)
    return stats, hist


_LAYOUTS: dict = {}


def _layout(sizes: tuple, sample: int, device):
    """Segment id of every column (N,), the strided sample's columns (r, S), its padding mask."""
    key = (sizes, sample, str(device))
    if key not in _LAYOUTS:
        sizes_t = torch.tensor(sizes, device=device)
        segment = torch.repeat_interleave(torch.arange(len(sizes), device=device), sizes_t)
        offsets = torch.cumsum(sizes_t, 0) - sizes_t
        counts = sizes_t.clamp(max=sample)                             # sample size per tensor
        width = int(counts.max()) if len(sizes) else 0
        j = torch.arange(width, device=device)[None, :]
        picks = offsets[:, None] + (j * sizes_t[:, None]) // counts.clamp(min=1)[:, None]
        pad = j >= counts[:, None]
        _LAYOUTS[key] = (segment, torch.where(pad, 0, picks), pad)
    return _LAYOUTS[key]
