"""What recording costs, CPU, measured in the same run (modes interleaved, median epochs):
epoch time with snapshots off, statistics only, statistics + full tensors, and statistics +
tensors without the diagnostics (update rows, step_var), for the seed preset and a
784-256-256-10 MLP; the on-disk size per epoch; and the checkpoint written every epoch (state
copied to the host, torch.save, atomic write) for the seed preset and a 784-1024x3 MLP, against
their epoch times.

    python benchmarks/snapshot_overhead.py [--epochs 4] [--repeats 2]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from common import dir_size, make_cfg

MODES = {"off": ["snapshot.enabled=false"], "stats": ["snapshot.tensors=false"], "stats+tensors": []}
MODELS = {"seed preset": ["experiment=seed_sharing"],
          "784-256-256-10": ["model.hidden=[256,256]", "sharing=none"]}
CHECKPOINT_MODELS = {"seed preset": (["experiment=seed_sharing"], None),
                     "784-1024x3-10": (["model.hidden=[1024,1024,1024]", "sharing=none", "optim.momentum=0.9"], 20000)}


def checkpoint_ms(overrides, repeats: int = 5) -> float:
    """Milliseconds to write one epoch's checkpoint of a run of this config (as the engine does)."""
    import torch

    from runner import checkpoint
    from runner.batched import Members
    from runner.engine import build
    from runner.optim import Optimizer

    cfg = make_cfg("device=cpu", *overrides)
    torch.manual_seed(0)
    model, tie_map = build(cfg)
    members = Members([model], tie_map, "cpu", [0])
    optimizer = Optimizer(members.leaves, [cfg.optim], "cpu")
    for p in members.leaves:               # one step, so the momentum buffers exist
        p.grad = torch.ones_like(p)
    optimizer.step()
    generator = torch.Generator().manual_seed(0)
    times = []
    with tempfile.TemporaryDirectory() as d:
        for _ in range(repeats):
            t = time.perf_counter()
            state = {"epoch": 1, "params": [p[0].detach().cpu().clone() for p in members.params],
                     "buffers": {}, "optim": optimizer.member_state(0), "batch_rng": generator.get_state(),
                     "dropout_rng": members.dropout_generators[0].get_state(), "cuda_rng": None, "limit": 2.3,
                     "previous": None, "info": "{}"}
            checkpoint.save(Path(d), state)
            times.append(time.perf_counter() - t)
        size = (Path(d) / checkpoint.NAME).stat().st_size
    return min(times) * 1000, size


def diagnostics_ms(overrides, steps: int, repeats: int = 200):
    """The diagnostics' own work, timed directly (a whole-epoch difference drowns in this machine's
    noise): per step, the squared gradient norms; per snapshot, the update rows and step_var.
    Returns milliseconds per epoch."""
    import torch
    import torch.nn.functional as F

    from runner.batched import Members
    from runner.engine import build
    from runner.recorder import Recorder

    out = {}
    for diagnostics in (False, True, False, True):
        cfg = make_cfg("device=cpu", *overrides, f"snapshot.diagnostics={str(diagnostics).lower()}",
                       "snapshot.tensors=false")
        torch.manual_seed(0)
        model, tie_map = build(cfg)
        members = Members([model], tie_map, "cpu", [0])
        x, y = torch.randn(256, 1, 28, 28), torch.randint(0, 10, (256,))
        recorder = Recorder(members, cfg.snapshot, x[:64], [])
        members.capturing = True
        F.cross_entropy(members.forward(x, [(0, 1)]), y).backward()
        members.gather_sites()
        recorder.accumulate()
        t = time.thread_time()
        for _ in range(repeats):
            recorder.accumulate()
        per_step = (time.thread_time() - t) / repeats
        with tempfile.TemporaryDirectory() as d:
            recorder.snapshot(0, 0, [Path(d)], [0])
            t = time.thread_time()
            for _ in range(5):
                recorder.snapshot(1, steps, [Path(d)], [0])      # statistics only: the writes are not run
            per_snapshot = (time.thread_time() - t) / 5
        out.setdefault(diagnostics, []).append(per_step * steps + per_snapshot)
    return (min(out[True]) - min(out[False])) * 1000


def main() -> dict:
    from runner.engine import run

    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    results = {}
    for model, model_over in MODELS.items():
        times = {m: [] for m in MODES}
        sizes = {}
        for _ in range(a.repeats):
            for mode, mode_over in MODES.items():
                with tempfile.TemporaryDirectory() as d:
                    info = run(make_cfg("device=cpu", f"trainer.epochs={a.epochs}", *model_over, *mode_over),
                               Path(d) / "r")
                    times[mode] += info["epoch_times_s"][1:]
                    sizes[mode] = dir_size(Path(d) / "r") / (a.epochs + 1)
        med = {m: statistics.median(t) for m, t in times.items()}
        pct = {m: round(100 * (med[m] / med["off"] - 1), 1) for m in MODES if m != "off"}
        steps = -(-60000 // 256)
        diagnostics = round(100 * diagnostics_ms(model_over, steps) / 1000 / med["stats+tensors"], 2)
        results[model] = {"s_per_epoch": {m: round(v, 4) for m, v in med.items()},
                          "overhead_stats_pct": pct["stats"], "overhead_stats_tensors_pct": pct["stats+tensors"],
                          "diagnostics_pct": diagnostics,
                          "bytes_per_epoch": {m: int(v) for m, v in sizes.items() if m in ("stats", "stats+tensors")}}
        print(f"{model}: off {med['off']:.3f} s/epoch, stats {med['stats']:.3f} ({pct['stats']:+.1f}%), "
              f"stats+tensors {med['stats+tensors']:.3f} ({pct['stats+tensors']:+.1f}%), of which diagnostics "
              f"{diagnostics:+.1f}% (target < 3%); disk/epoch: stats {sizes['stats'] / 1e3:.0f} kB, "
              f"stats+tensors {sizes['stats+tensors'] / 1e3:.0f} kB", flush=True)
    results["checkpoint"] = {}
    for model, (over, limit) in CHECKPOINT_MODELS.items():
        ms, size = checkpoint_ms(over)
        extra = [f"data.limit={limit}"] if limit else []
        with tempfile.TemporaryDirectory() as d:
            info = run(make_cfg("device=cpu", "trainer.epochs=2", "snapshot.enabled=false", *over, *extra),
                       Path(d) / "r")
        epoch = info["epoch_times_s"][-1] * (60000 / limit if limit else 1)   # a full-data epoch
        results["checkpoint"][model] = {"ms": round(ms, 2), "bytes": size, "epoch_s": round(epoch, 3),
                                        "pct_of_epoch": round(100 * ms / 1000 / epoch, 2)}
        print(f"checkpoint, {model}: {ms:.1f} ms and {size / 1e6:.2f} MB per epoch = "
              f"{100 * ms / 1000 / epoch:.2f}% of a {epoch:.2f} s epoch"
              f"{f' (full-data epoch from {limit} examples x {60000 // limit})' if limit else ''}", flush=True)
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
