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
    from runner.engine import run

    with tempfile.TemporaryDirectory() as d:
        info = run(make_cfg("device=cuda", f"trainer.epochs={epochs}", *overrides), Path(d) / "r")
    return min(info["epoch_times_s"][1:]), info


def ensemble_graphs(epochs: int = 3) -> dict:
    """Seed-preset ensembles as CUDA graphs: 16 and 64 members (seeds x lrs), statistics snapshots;
    per run-epoch time, and 16 members against the same jobs one after another (eager, one model)."""
    import tempfile

    from runner.engine import run, run_members

    out = {}
    for k in (16, 64):
        cfgs = [make_cfg("device=cuda", "experiment=seed_sharing", f"trainer.epochs={epochs}", "trainer.compile=true",
                         "snapshot.tensors=false", f"seed={i // 4}", f"optim.lr={(0.02, 0.05, 0.1, 0.2)[i % 4]}")
                for i in range(k)]
        with tempfile.TemporaryDirectory() as d:
            infos = run_members(cfgs, [Path(d) / str(i) for i in range(k)], ensemble=True).infos
        epoch = min(infos[0]["epoch_times_s"][1:])
        out[f"{k}_members"] = {"s_per_epoch": round(epoch, 4), "ms_per_run_epoch": round(1000 * epoch / k, 2)}
        print(f"ensemble of {k}, CUDA graph, stats snapshots: {epoch * 1000:.1f} ms/epoch = "
              f"{1000 * epoch / k:.2f} ms per run-epoch (target <= 3 ms at 64)", flush=True)
    alone = []
    for cfg in cfgs[:16]:
        with tempfile.TemporaryDirectory() as d:
            info = run(make_cfg("device=cuda", "experiment=seed_sharing", f"trainer.epochs={epochs}",
                                "snapshot.tensors=false", f"seed={cfg.seed}", f"optim.lr={cfg.optim.lr}"),
                       Path(d) / "r")
        alone.append(min(info["epoch_times_s"][1:]))
    ratio = sum(alone) / out["16_members"]["s_per_epoch"]
    out["16_vs_one_after_another"] = round(ratio, 1)
    print(f"16 jobs one after another (eager): {sum(alone) * 1000:.0f} ms per epoch summed; as one graphed "
          f"ensemble: {ratio:.1f}x faster (target >= 10x)", flush=True)
    return out


def main() -> dict:
    import torch

    out = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    for label, over in {"seed preset, snapshots off": ["experiment=seed_sharing", "snapshot.enabled=false"],
                        "seed preset, stats": ["experiment=seed_sharing", "snapshot.tensors=false"],
                        "seed preset, stats+tensors": ["experiment=seed_sharing"],
                        "seed preset, CUDA graph, snapshots off": ["experiment=seed_sharing", "snapshot.enabled=false",
                                                                   "trainer.compile=true"],
                        "seed preset, CUDA graph, stats+tensors": ["experiment=seed_sharing", "trainer.compile=true"],
                        "784-1024x3-10, snapshots off": ["model.hidden=[1024,1024,1024]", "snapshot.enabled=false"],
                        "784-1024x3-10, stats+tensors": ["model.hidden=[1024,1024,1024]"],
                        "784-1024x3-10, CUDA graph, snapshots off": ["model.hidden=[1024,1024,1024]",
                                                                     "snapshot.enabled=false", "trainer.compile=true"],
                        "784-1024x3-10, CUDA graph, stats+tensors": ["model.hidden=[1024,1024,1024]",
                                                                     "trainer.compile=true"],
                        "784-1024x3-10, CUDA graph, TF32, snapshots off": [
                            "model.hidden=[1024,1024,1024]", "snapshot.enabled=false", "trainer.compile=true"],
                        }.items():
        torch.backends.cuda.matmul.allow_tf32 = "TF32" in label
        t, info = epoch_min(*over)
        out[label] = {"s_per_epoch": round(t, 4), "val_acc": info["final"]["val_acc"]}
        print(f"{label}: {t * 1000:.1f} ms/epoch (val_acc {info['final']['val_acc']:.4f})", flush=True)
    # fp32 FLOPs per epoch of the 1024 MLP: 3 matmuls per layer (fwd, dX, dW) x 2 FLOP x 60000 examples.
    params = 784 * 1024 + 2 * 1024 * 1024 + 1024 * 10
    flop = 6 * params * 60000
    out["mlp1024_flop_per_epoch"] = flop
    floor_ms = flop / 67e12 * 1000  # H100/H200 fp32 (non-tensor-core) peak, about 67 TFLOP/s
    out["mlp1024_fp32_floor_ms"] = round(floor_ms, 1)
    best = out["784-1024x3-10, CUDA graph, snapshots off"]["s_per_epoch"] * 1000
    print(f"784-1024x3-10 fp32 FLOP floor ~{floor_ms:.1f} ms/epoch; CUDA graph {best:.1f} ms = {best / floor_ms:.1f}x it")
    import subprocess
    import sys

    out["ensembles"] = ensemble_graphs()
    r = subprocess.run([sys.executable, str(Path(__file__).parent / "ensemble_speedup.py"), "--device", "cuda",
                        "--epochs", "3"], capture_output=True, text=True)
    print(r.stdout.strip().splitlines()[0] if r.returncode == 0 else r.stderr[-1500:])
    if r.returncode == 0:
        out["lr_dropout_grid_18_jobs"] = json.loads(r.stdout.strip().splitlines()[-1])
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
