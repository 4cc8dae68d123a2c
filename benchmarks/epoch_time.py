"""Seconds per epoch, seed preset, full FashionMNIST, CPU: paramlab's loop (in-memory tensors,
full snapshots on) vs a d2l-style loop (torchvision dataset + DataLoader, 4 workers, batch 256),
measured in the same run. Prints both and the ratio.

    python benchmarks/epoch_time.py [--d2l-epochs 1] [--epochs 3]
"""
from __future__ import annotations

import argparse
import json
import time

from common import ROOT, epoch_seconds


def d2l_style_epoch_seconds(epochs: int = 1, workers: int = 4) -> float:
    """The seed notebook's way: torchvision FashionMNIST with ToTensor, a DataLoader with worker
    processes, the tied PlotParameterMLP, SGD lr 0.1."""
    import torch
    import torchvision
    from torch import nn
    from torchvision import transforms

    torch.manual_seed(0)
    ds = torchvision.datasets.FashionMNIST(str(ROOT / "data"), train=True, download=False,
                                           transform=transforms.ToTensor())
    loader = torch.utils.data.DataLoader(ds, batch_size=256, shuffle=True, num_workers=workers)
    shared = nn.Linear(8, 8)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 8), nn.ReLU(), shared, nn.ReLU(), nn.Dropout(0),
                        shared, nn.ReLU(), nn.Dropout(0), nn.Linear(8, 10))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    times = []
    for _ in range(epochs):
        t = time.perf_counter()
        for x, y in loader:
            loss = nn.functional.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--d2l-epochs", type=int, default=1)
    a = p.parse_args()
    ours = epoch_seconds("experiment=seed_sharing", "device=cpu", epochs=a.epochs)
    theirs = d2l_style_epoch_seconds(a.d2l_epochs)
    result = {"paramlab_s_per_epoch": round(ours, 4), "d2l_style_s_per_epoch": round(theirs, 4),
              "speedup": round(theirs / ours, 1)}
    print(f"seed preset, CPU: paramlab {ours:.3f} s/epoch (full snapshots), d2l-style DataLoader "
          f"{theirs:.3f} s/epoch -> paramlab {theirs / ours:.1f}x faster")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
