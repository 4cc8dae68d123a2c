"""Seconds per epoch, CPU, full snapshots on: paramlab against the honest baseline, a lean
hand-written in-memory loop for the same model doing the same epoch (train loss and accuracy,
validation; benchmarks/lean.py), measured interleaved in the same run, for the seed preset, the
tied CNN (experiment=cnn_sharing) and LeNet (experiment=lenet); the seed preset also against a
d2l-style loop (a torchvision-style dataset + DataLoader). Also the cost of per-call-site capture for
the tied CNN (a training step with and without it).

    python benchmarks/epoch_time.py [--epochs 3] [--repeats 2] [--limit 20000]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from common import ROOT, make_cfg
from lean import lean_epoch_seconds, load

MODELS = {
    "seed preset (MLP [8,8,8], tied)": ["experiment=seed_sharing"],
    "tied CNN [16,16,16]": ["experiment=cnn_sharing"],
    "LeNet": ["experiment=lenet"],
}


def lean_model(name: str):
    """The same architecture as a plain nn.Module, tied the seed notebook's way (one module object
    at two positions)."""
    from runner.model import CNN, LeNet
    from torch import nn

    if name.startswith("seed"):
        from lean import seed_model

        return seed_model()
    if name.startswith("tied CNN"):
        model = CNN([16, 16, 16], [0.0, 0.0], "relu")
        model.conv3 = model.conv2
        return model
    model = LeNet("sigmoid")
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(m.weight)
    return model


LEAN_SETTINGS = {"seed preset (MLP [8,8,8], tied)": dict(lr=0.1), "tied CNN [16,16,16]": dict(lr=0.1, momentum=0.9),
                 "LeNet": dict(lr=0.9)}


def capture_cost(overrides, steps: int = 30) -> dict:
    """Microseconds per training step of the tied CNN with and without per-call-site capture."""
    import torch
    import torch.nn.functional as F

    from runner.batched import Members
    from runner.engine import build

    cfg = make_cfg(*overrides)
    torch.manual_seed(0)
    model, tie_map = build(cfg)
    members = Members([model], tie_map, "cpu", [0])
    x, y = torch.randn(256, 1, 28, 28), torch.randint(0, 10, (256,))

    def step():
        F.cross_entropy(members.forward(x, [(0, 1)]), y).backward()
        if members.capturing:
            members.gather_sites()
        for p in members.leaves:
            p.grad = None

    out = {}
    for capturing in (False, True, False, True):
        members.capturing = capturing
        step()
        t = time.perf_counter()
        for _ in range(steps):
            step()
        out.setdefault(capturing, []).append((time.perf_counter() - t) / steps * 1e6)
    off, on = min(out[False]), min(out[True])
    return {"step_us_off": round(off), "step_us_capture": round(on), "capture_pct": round(100 * (on / off - 1), 1)}


class _TorchvisionStyleFashionMNIST:
    """What torchvision's FashionMNIST(transform=ToTensor()) does per example, inlined (paramlab no
    longer depends on torchvision; a CPU-only torch has no build of it here): the uint8 image as a
    PIL image, then ToTensor's conversion of a mode-'L' image (a copy, HWC -> CHW, / 255)."""

    def __init__(self, raw: Path) -> None:
        from runner.data import FILES, read_idx

        import torch

        self.data = torch.from_numpy(read_idx(raw / FILES["train_images"]))
        self.targets = torch.from_numpy(read_idx(raw / FILES["train_labels"]).astype("int64"))

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        import numpy as np
        import torch
        from PIL import Image

        img, target = self.data[i], int(self.targets[i])                      # FashionMNIST.__getitem__
        img = Image.fromarray(img.numpy())                                        # (mode "L": 2-d uint8)
        x = torch.from_numpy(np.array(img, np.uint8, copy=True)).view(28, 28, 1)  # ToTensor()
        return x.permute(2, 0, 1).contiguous().to(torch.float32).div(255), target


def d2l_style_epoch_seconds(epochs: int = 1, workers: int = 4) -> float:
    """The seed notebook's way: torchvision's FashionMNIST with ToTensor (as above), a DataLoader
    with worker processes, the tied PlotParameterMLP, torch.optim.SGD lr 0.1."""
    import torch
    from torch import nn

    from runner.data import locate

    torch.manual_seed(0)
    ds = _TorchvisionStyleFashionMNIST(locate(ROOT / "data", download=False))
    loader = torch.utils.data.DataLoader(ds, batch_size=256, shuffle=True, num_workers=workers)
    shared = nn.Linear(8, 8)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 8), nn.ReLU(), shared, nn.ReLU(), shared, nn.ReLU(),
                        nn.Linear(8, 10))
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
    from runner.engine import run

    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--limit", type=int, default=20000, help="training examples for the CNN and LeNet (time)")
    p.add_argument("--d2l-epochs", type=int, default=1)
    a = p.parse_args()
    results = {}
    for name, overrides in MODELS.items():
        limit = [] if name.startswith("seed") else [f"data.limit={a.limit}"]
        dataset = load()
        if limit:
            from runner.data import load as load_data

            dataset = load_data(str(ROOT / "data"), a.limit, "cpu")
        ours, lean = [], []
        for _ in range(a.repeats):  # interleaved: the machine's speed drifts
            with tempfile.TemporaryDirectory() as d:
                info = run(make_cfg("device=cpu", f"trainer.epochs={a.epochs}", *overrides, *limit), Path(d) / "r")
            ours += info["epoch_times_s"][1:]
            lean += lean_epoch_seconds(lambda: lean_model(name), epochs=a.epochs, dataset=dataset,
                                       **LEAN_SETTINGS[name])[1:]
        o, b = statistics.median(ours), statistics.median(lean)
        results[name] = {"paramlab_s_per_epoch": round(o, 4), "lean_s_per_epoch": round(b, 4),
                         "ratio": round(o / b, 3), "examples": a.limit if limit else 60000}
        print(f"{name}: paramlab (full snapshots) {o:.3f} s/epoch, lean loop {b:.3f} s/epoch -> {o / b:.2f}x "
              f"(target <= 1.15x){'' if not limit else f'; {a.limit} examples'}", flush=True)
    results["capture"] = capture_cost(MODELS["tied CNN [16,16,16]"])
    print(f"tied CNN: a training step {results['capture']['step_us_off']} us, with per-call-site capture "
          f"{results['capture']['step_us_capture']} us ({results['capture']['capture_pct']:+.1f}%)", flush=True)
    d2l = d2l_style_epoch_seconds(a.d2l_epochs)
    seed = results["seed preset (MLP [8,8,8], tied)"]["paramlab_s_per_epoch"]
    results["d2l_style_s_per_epoch"] = round(d2l, 3)
    results["speedup_vs_d2l"] = round(d2l / seed, 1)
    print(f"seed preset vs a d2l-style DataLoader loop ({d2l:.2f} s/epoch): paramlab {d2l / seed:.1f}x faster")
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
