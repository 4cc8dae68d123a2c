"""The loss and the predictions of K members at once, from member-major logits (K*B, C).

On the CPU both work on a class-major copy (C, K, B') of the logits, B' = B padded to CE_PAD:
F.cross_entropy's row-wise kernel handles 10 classes one row at a time (measured on 2 cores,
forward and backward of 9 x 256 rows, one thread: 390 us; class-major: 100 us), and a member's
numbers do not depend on how many others share the call (a run alone is K = 1), so a member of an
ensemble equals its run alone bit for bit. On a GPU F.cross_entropy (no bit-equality claimed
there; one kernel, no copy).
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

# Each member's columns are padded to a multiple of this many: PyTorch's CPU kernels over a
# leading dimension (log_softmax, and the elementwise ops of the backward) compute whole SIMD
# vectors of columns and then a scalar tail that rounds differently, so no member's column may
# ever fall in a tail (64 >= the float lanes of any CPU's vectors).
CE_PAD = 64


def _columns(logits: torch.Tensor, k: int, b: int) -> torch.Tensor:
    """(K*B, C) member-major logits -> a (C, K, B') class-major copy, B' = B padded with zeros."""
    c = logits.shape[1]
    padded = -(-b // CE_PAD) * CE_PAD
    rows = logits.view(k, b, c).permute(2, 0, 1)                                  # (C, K, B) view
    return rows.contiguous() if padded == b else F.pad(rows, (0, padded - b))


def _log_softmax(columns: torch.Tensor) -> torch.Tensor:
    c, k, padded = columns.shape
    return torch.log_softmax(columns.view(c, k * padded), 0).view(c, k, padded)


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each example's cross-entropy for K members, without gradients (evaluation): logits (K*B, C)
    member-major, y (K, B) -> (K, B)."""
    k, b = y.shape
    if logits.is_cuda:
        return F.cross_entropy(logits, y.reshape(-1), reduction="none").view(k, b)
    return -_log_softmax(_columns(logits, k, b)).gather(0, y.reshape(1, k, b)).view(k, b)


def predictions(logits: torch.Tensor) -> torch.Tensor:
    """Each row's class: the first maximal logit (NaN counts as maximal), as argmax(1) gives it;
    from max(1), which on 10 classes runs ~2.5x faster here (the same indices, checked with ties,
    NaN and inf)."""
    return logits.max(1).indices


def member_losses(logits: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Training: (each member's mean cross-entropy (K,), with gradients; each example's predicted
    class (K, B), without) from logits (K*B, C) member-major and y (K, B)."""
    if logits.is_cuda:
        k, b = y.shape
        return F.cross_entropy(logits, y.reshape(-1), reduction="none").view(k, b).mean(1), \
            predictions(logits.detach()).view(k, b)
    return _MemberLoss.apply(logits, y)


class _MemberLoss(torch.autograd.Function):
    """The CPU training loss as one autograd node: written as plain autograd ops (permute, copy,
    log_softmax, gather, neg, mean) it took ~10 nodes, and ~15 us a step more on the seed preset
    (measured, 2 threads: 55-62 -> 46-47 us forward and backward of 256 x 10). The forward gives
    the bits of those ops (mean = sum / B; negation is exact); the backward is log_softmax's,
    d = softmax x g / B, minus g / B at each example's class, elementwise over whole padded columns.
    The predictions come from the class-major copy: max over its first dimension is vectorised
    across examples (~3.7 us for 256 rows; max(1) over 10-wide rows ~10 us) and gives the first
    maximal index, as argmax does."""

    @staticmethod
    def forward(ctx, logits, y):
        k, b = y.shape
        columns = _columns(logits.detach(), k, b)
        log_p = _log_softmax(columns)
        target = y.reshape(1, k, b)
        losses = log_p.gather(0, target).view(k, b).sum(1).div_(-b)
        predicted = columns.max(0).indices[:, :b]                                   # (K, B)
        ctx.save_for_backward(log_p, target)
        ctx.mark_non_differentiable(predicted)
        return losses, predicted

    @staticmethod
    def backward(ctx, g, _):
        log_p, target = ctx.saved_tensors
        c, k, padded = log_p.shape
        b = target.shape[2]
        share = (g / b).view(1, k, 1)
        d = torch.exp(log_p).mul_(share)                                          # (C, K, B')
        # The examples' columns compact (C, K, B), so that the logits' gradient is always the same
        # (1, K*B)-strided view whatever K and B: the layers below sum it in an order that
        # depends on its layout (a run alone and an ensemble must see the same one).
        used = d if padded == b else d[:, :, :b].contiguous()
        used.scatter_add_(0, target, share.neg().expand(1, k, b))
        return used.view(c, k * b).t(), None
