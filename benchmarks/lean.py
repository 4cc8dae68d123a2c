"""The honest baseline: a lean hand-written in-memory training loop, as a careful user writes
it without paramlab (dataset as tensors, a seeded permutation per epoch, nn.Module forward,
torch.optim-style SGD (momentum optional) via foreach, the epoch's train loss and accuracy as d2l's loop keeps them,
validation every epoch), no snapshots, no other bookkeeping.

    lean_epoch_seconds(make_model, epochs=3, lr=0.1, batch_size=256) -> list of seconds per epoch
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, List

ROOT = Path(__file__).resolve().parent.parent


def load(root: str = str(ROOT / "data"), device: str = "cpu"):
    from runner.data import load as load_data

    return load_data(root, None, device)


def lean_epoch_seconds(make_model: Callable, epochs: int = 3, lr: float = 0.1, batch_size: int = 256,
                       dataset=None, seed: int = 0, momentum: float = 0.0) -> List[float]:
    import torch
    import torch.nn.functional as F

    ds = dataset or load()
    torch.manual_seed(seed)
    model = make_model().to(ds.train_x.device)
    params = list(model.parameters())
    gen = torch.Generator(device=ds.train_x.device).manual_seed(seed)
    n = ds.train_x.shape[0]
    times, buffers = [], None
    for _ in range(epochs):
        t = time.perf_counter()
        model.train()
        perm = torch.randperm(n, generator=gen, device=ds.train_x.device)
        loss_sum, correct = 0.0, torch.zeros((), dtype=torch.int64, device=ds.train_x.device)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            y = ds.train_y[idx]
            logits = model(ds.train_x[idx])
            loss = F.cross_entropy(logits, y)
            loss_sum += loss.item() * y.shape[0]
            correct += (logits.argmax(1) == y).sum()
            for p in params:
                p.grad = None
            loss.backward()
            with torch.no_grad():
                grads = [p.grad for p in params]
                if momentum:
                    if buffers is None:
                        buffers = [g.clone() for g in grads]
                    else:
                        torch._foreach_mul_(buffers, momentum)
                        torch._foreach_add_(buffers, grads)
                    grads = buffers
                torch._foreach_add_(params, grads, alpha=-lr)
        model.eval()
        with torch.no_grad():  # validate every epoch, as a user's loop does
            logits = torch.cat([model(ds.test_x[i:i + 2500]) for i in range(0, ds.test_x.shape[0], 2500)])
            float(F.cross_entropy(logits, ds.test_y))
            float((logits.argmax(1) == ds.test_y).float().mean())
        times.append(time.perf_counter() - t)
    return times


def seed_model():
    """The seed notebook's tied PlotParameterMLP: hidden [8,8,8], layers 2..3 one shared Linear."""
    from torch import nn

    shared = nn.Linear(8, 8)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 8), nn.ReLU(), shared, nn.ReLU(), shared, nn.ReLU(),
                         nn.Linear(8, 10))
