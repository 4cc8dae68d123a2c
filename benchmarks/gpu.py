"""GPU epoch times (device=cuda, full FashionMNIST in GPU memory): seed preset with snapshots
off / stats / stats+tensors, and a 784-1024x3-10 MLP, against its fp32 FLOP estimate.

    python benchmarks/gpu.py
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from common import make_cfg


def epoch_min(*overrides, epochs=4):
    from runner.train import run

    with tempfile.TemporaryDirectory() as d:
        info = run(make_cfg("device=cuda", f"trainer.epochs={epochs}", *overrides), Path(d) / "r")
    return min(info["epoch_times_s"][1:]), info


def main() -> dict:
    import torch

    out = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    for label, over in {"seed preset, snapshots off": ["experiment=seed_sharing", "snapshot.enabled=false"],
                        "seed preset, stats": ["experiment=seed_sharing", "snapshot.tensors=false"],
                        "seed preset, stats+tensors": ["experiment=seed_sharing"],
                        "784-1024x3-10, snapshots off": ["model.hidden=[1024,1024,1024]", "snapshot.enabled=false"],
                        "784-1024x3-10, stats+tensors": ["model.hidden=[1024,1024,1024]"]}.items():
        t, info = epoch_min(*over)
        out[label] = {"s_per_epoch": round(t, 4), "val_acc": info["final"]["val_acc"]}
        print(f"{label}: {t * 1000:.1f} ms/epoch (val_acc {info['final']['val_acc']:.4f})", flush=True)
    # fp32 FLOPs per epoch of the 1024 MLP: 3 matmuls per layer (fwd, dX, dW) x 2 FLOP x 60000 examples.
    params = 784 * 1024 + 2 * 1024 * 1024 + 1024 * 10
    flop = 6 * params * 60000
    out["mlp1024_flop_per_epoch"] = flop
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
