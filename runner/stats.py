"""On-device statistics of stacked (K, ...) tensors, one row per member, in a fixed handful of
batched ops per tensor (no per-element Python, no per-member loop) and one copy to the host.

What `params/` stores per tensor: numel, mean, std (population), L2 norm, min, max, frac_zero,
n_nonfinite, quantiles from an evenly strided sample, and a histogram with `bins` equal bins
between the finite min and max (min == max: one unit wide). Non-finite elements are counted in
n_nonfinite and left out of every other statistic.
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import torch

from .snapshot import QUANTILE_COLUMNS, QUANTILES


def stacked_stats(tensors: Sequence[torch.Tensor], bins: int = 64, sample: int = 4096) -> Dict[str, np.ndarray]:
    """Statistics of each (K, ...) tensor's K rows: every value an array of shape (K, len(tensors))
    (hist_counts (K, n, bins), hist_edges (K, n, bins + 1))."""
    rows = [_one(t, bins, sample) for t in tensors]
    host = torch.stack([r[0] for r in rows], dim=1).cpu().numpy()        # (K, n, 8 + len(Q))
    hist = torch.stack([r[1] for r in rows], dim=1).cpu().numpy().astype(np.int64)  # (K, n, bins)
    numel = np.array([t[0].numel() for t in tensors], dtype=np.int64)[None, :].repeat(host.shape[0], 0)
    n_finite = host[..., 0]
    lo, hi = host[..., 4], host[..., 5]
    top = np.where(hi > lo, hi, lo + 1.0)
    out = {"numel": numel, "mean": host[..., 1], "std": host[..., 2], "norm": host[..., 3], "min": lo, "max": hi,
           "frac_zero": host[..., 6] / np.maximum(numel, 1),
           "n_nonfinite": numel - n_finite.astype(np.int64)}
    for j, c in enumerate(QUANTILE_COLUMNS):
        out[c] = host[..., 8 + j]
    out["hist_counts"] = hist
    out["hist_edges"] = lo[..., None] + (top - lo)[..., None] * np.linspace(0.0, 1.0, bins + 1)
    return out


def _one(t: torch.Tensor, bins: int, sample: int):
    """(K, 8 + len(QUANTILES)) float64 stats and (K, bins) histogram counts of one stacked tensor."""
    k = t.shape[0]
    x = t.detach().reshape(k, -1).double()
    n = x.shape[1]
    finite = torch.isfinite(x)
    n_finite = finite.sum(1)
    xf = torch.where(finite, x, 0.0)
    count = n_finite.clamp(min=1).double()
    mean = xf.sum(1) / count
    var = torch.where(finite, x - mean[:, None], 0.0).square().sum(1) / count
    norm = xf.square().sum(1).sqrt()
    lo = torch.where(finite, x, torch.inf).amin(1)
    hi = torch.where(finite, x, -torch.inf).amax(1)
    empty = n_finite == 0                                              # every element non-finite
    mean, var, norm, lo, hi = (torch.where(empty, torch.nan, v) for v in (mean, var, norm, lo, hi))
    zeros = (x == 0).sum(1).double()
    # Histogram: torch.histc's binning, per member row, as one bincount over (member, bin) indices.
    width = torch.where(hi > lo, hi - lo, torch.ones_like(lo))
    index = ((x - lo[:, None]) * bins / width[:, None]).floor().clamp_(0, bins - 1)
    index = torch.where(finite, index, float(bins)).long()            # non-finite -> a dropped bin
    index += torch.arange(k, device=x.device)[:, None] * (bins + 1)
    counts = torch.bincount(index.reshape(-1), minlength=k * (bins + 1)).reshape(k, bins + 1)[:, :bins]
    # Quantiles: exact on an evenly strided sample (every element when the tensor is smaller).
    picks = (torch.arange(min(sample, n), device=x.device) * n) // min(sample, n)
    picked = torch.where(finite[:, picks], x[:, picks], torch.nan)
    q = torch.nanquantile(picked, torch.tensor(QUANTILES, dtype=torch.float64, device=x.device), dim=1).t()
    stats = torch.cat([torch.stack([n_finite.double(), mean, var.sqrt(), norm, lo, hi, zeros,
                                    torch.zeros_like(mean)], dim=1), q], dim=1)
    return stats, counts
