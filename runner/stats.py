"""On-device statistics of many stacked (K, ...) tensors at once: all of them laid end to end
as one (K, N) float64 matrix with a segment id per column, then a fixed handful of segment
reductions (index_add, scatter_reduce, one bincount, one nanquantile), so the number of ops does
not grow with the number of tensors or members; one copy to the host at the end.

What `params/` stores per tensor: numel, mean, std (population), L2 norm, min, max, frac_zero,
n_nonfinite, quantiles from an evenly strided sample, and a histogram with `bins` equal bins
between the finite min and max (min == max: one unit wide; torch.histc's binning). Non-finite
elements are counted in n_nonfinite and left out of every other statistic.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np
import torch

from .snapshot import QUANTILE_COLUMNS, QUANTILES

_LAYOUTS: Dict[tuple, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _layout(sizes: Tuple[int, ...], sample: int, device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Segment id of every column (N,), the strided sample's columns (R, S) (-1: padding), and
    its padding mask; cached per list of tensor sizes."""
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


@torch.no_grad()
def stacked_stats(tensors: Sequence[torch.Tensor], bins: int = 64, sample: int = 4096) -> Dict[str, np.ndarray]:
    """Statistics of each (K, ...) tensor's K rows: every value an array of shape (K, len(tensors))
    (hist_counts (K, n, bins), hist_edges (K, n, bins + 1))."""
    k, r = tensors[0].shape[0], len(tensors)
    sizes = tuple(int(t[0].numel()) for t in tensors)
    device = tensors[0].device
    segment, picks, pad = _layout(sizes, sample, device)
    x = torch.cat([t.detach().reshape(k, -1).double() for t in tensors], dim=1)      # (K, N)
    finite = torch.isfinite(x)
    xf = torch.where(finite, x, 0.0)

    def per_tensor(values: torch.Tensor) -> torch.Tensor:               # (K, N) -> (K, R) segment sums
        return torch.zeros(k, r, dtype=values.dtype, device=device).index_add_(1, segment, values)

    n_finite = per_tensor(finite.double())
    count = n_finite.clamp(min=1)
    mean = per_tensor(xf) / count
    var = per_tensor(torch.where(finite, x - mean[:, segment], 0.0).square()) / count
    norm = per_tensor(xf.square()).sqrt()
    index = segment.expand(k, -1)
    lo = torch.full((k, r), torch.inf, dtype=x.dtype, device=device).scatter_reduce_(
        1, index, torch.where(finite, x, torch.inf), reduce="amin")
    hi = torch.full((k, r), -torch.inf, dtype=x.dtype, device=device).scatter_reduce_(
        1, index, torch.where(finite, x, -torch.inf), reduce="amax")
    empty = n_finite == 0                                               # every element non-finite
    mean, var, norm, lo, hi = (torch.where(empty, torch.nan, v) for v in (mean, var, norm, lo, hi))
    zeros = per_tensor((x == 0).double())
    # Histogram: histc's binning within each tensor's [min, max], one bincount over (member, tensor, bin).
    width = torch.where(hi > lo, hi - lo, torch.ones_like(lo))
    bin_ = ((x - lo[:, segment]) * bins / width[:, segment]).floor().clamp_(0, bins - 1)
    bin_ = torch.where(finite, bin_, float(bins)).long()                 # non-finite -> a dropped bin
    flat = (torch.arange(k, device=device)[:, None] * r + segment[None, :]) * (bins + 1) + bin_
    counts = torch.bincount(flat.reshape(-1), minlength=k * r * (bins + 1)).reshape(k, r, bins + 1)[..., :bins]
    # Quantiles: exact on an evenly strided sample of each tensor (every element when it is smaller).
    picked = x[:, picks]                                                # (K, R, S)
    picked = torch.where(pad[None] | ~finite[:, picks], torch.nan, picked)
    q = torch.nanquantile(picked, torch.tensor(QUANTILES, dtype=x.dtype, device=device), dim=2)  # (Q, K, R)
    host = torch.stack([n_finite, mean, var.sqrt(), norm, lo, hi, zeros, *q], dim=2).cpu().numpy()  # (K, R, 7+Q)
    hist = counts.cpu().numpy().astype(np.int64)
    numel = np.array(sizes, dtype=np.int64)[None, :].repeat(k, 0)
    lo_h, hi_h = host[..., 4], host[..., 5]
    top = np.where(hi_h > lo_h, hi_h, lo_h + 1.0)
    out = {"numel": numel, "mean": host[..., 1], "std": host[..., 2], "norm": host[..., 3], "min": lo_h, "max": hi_h,
           "frac_zero": host[..., 6] / np.maximum(numel, 1), "n_nonfinite": numel - host[..., 0].astype(np.int64)}
    for j, c in enumerate(QUANTILE_COLUMNS):
        out[c] = host[..., 7 + j]
    out["hist_counts"] = hist
    out["hist_edges"] = lo_h[..., None] + (top - lo_h)[..., None] * np.linspace(0.0, 1.0, bins + 1)
    return out
