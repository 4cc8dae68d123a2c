"""GPU benchmarks (device=cuda, full FashionMNIST in GPU memory), in sections, each printed as it
ends and added to a JSON file, so a section that fails or runs out of time loses only itself:

- ensembles: seed-preset ensembles of 16 and 64 members (4 learning rates x seeds) with
  statistics snapshots, as one CUDA graph per step: ms per run-epoch (target <= 3 ms at 64 on an
  H100), with snapshots off too; and the 16 jobs one after another, eager and graphed, as
  separate runs (per-epoch times summed; target: the ensemble >= 10x faster than eager);
- singles: one run of the seed preset and of a 784-1024x3-10 MLP, eager (`trainer.compile=false`)
  and graphed (the default), snapshots
  off / statistics / statistics + tensors, against the 1024 MLP's fp32 FLOP estimate;
- grid: the whole `lr_dropout_grid` command (18 jobs), ensemble launcher vs basic launcher.

    python benchmarks/gpu.py [ensembles] [singles] [grid] [--out results_gpu.json] [--epochs 3] [--only "A|B"]
"""
from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

from common import make_cfg

LRS = (0.02, 0.05, 0.1, 0.2)
ONLY: list = []   # --only "A|B": the cases whose label holds A or B


def seed_cfg(i: int, epochs: int, *over: str):
    return make_cfg("device=cuda", "experiment=seed_sharing", f"trainer.epochs={epochs}", f"seed={i // 4}",
                    f"optim.lr={LRS[i % 4]}", *over)


def epoch_s(info: dict) -> float:
    """The median epoch after the first (the first one warms up and records the graph; each later
    one also waits for the files of the one before)."""
    return statistics.median(info["epoch_times_s"][1:])


def ensemble(k: int, epochs: int, *over: str) -> dict:
    from runner.engine import run_members

    cfgs = [seed_cfg(i, epochs, *over) for i in range(k)]
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        infos = run_members(cfgs, [Path(d) / str(i) for i in range(k)], ensemble=True).infos
        wall = time.perf_counter() - t
    assert all(i["status"] == "completed" for i in infos), [i["status"] for i in infos]
    e = epoch_s(infos[0])
    return {"members": k, "s_per_epoch": round(e, 4), "ms_per_run_epoch": round(1000 * e / k, 2),
            "wall_s": round(wall, 2), "val_acc_m0": round(infos[0]["final"]["val_acc"], 4),
            "epoch_times_m0": infos[0]["epoch_times_s"]}


def alone(k: int, epochs: int, *over: str) -> dict:
    from runner.engine import run

    times, t = [], time.perf_counter()
    for i in range(k):
        with tempfile.TemporaryDirectory() as d:
            times.append(epoch_s(run(seed_cfg(i, epochs, *over), Path(d) / "r")))
    return {"jobs": k, "s_per_epoch_summed": round(sum(times), 4), "wall_s": round(time.perf_counter() - t, 2)}


def ensembles(epochs: int, out: dict) -> None:
    cases = {
        "64 members, graph, stats": (64, "trainer.compile=true", "snapshot.tensors=false"),
        "64 members, graph, snapshots off": (64, "trainer.compile=true", "snapshot.enabled=false"),
        "16 members, graph, stats": (16, "trainer.compile=true", "snapshot.tensors=false"),
        "64 members, eager, stats": (64, "trainer.compile=false", "snapshot.tensors=false"),
        "16 jobs alone, eager, stats": (-16, "trainer.compile=false", "snapshot.tensors=false"),
        "16 jobs alone, graph, stats": (-16, "trainer.compile=true", "snapshot.tensors=false"),
    }
    for label, (k, *over) in cases.items():
        if ONLY and not any(o in label for o in ONLY):
            continue
        try:
            r = ensemble(k, epochs, *over) if k > 0 else alone(-k, epochs, *over)
        except Exception:
            r = {"error": traceback.format_exc()[-3000:]}
        out[label] = r
        print(f"{label}: {json.dumps(r)}", flush=True)
    ens, seq = out.get("16 members, graph, stats", {}), out.get("16 jobs alone, eager, stats", {})
    if "s_per_epoch" in ens and "s_per_epoch_summed" in seq:
        out["16: alone eager / ensemble graph"] = round(seq["s_per_epoch_summed"] / ens["s_per_epoch"], 1)
        print(f"16 jobs: ensemble as one graph {out['16: alone eager / ensemble graph']}x faster than one after "
              "another, eager (target >= 10x)", flush=True)
    seq = out.get("16 jobs alone, graph, stats", {})
    if "s_per_epoch" in ens and "s_per_epoch_summed" in seq:
        out["16: alone graph / ensemble graph"] = round(seq["s_per_epoch_summed"] / ens["s_per_epoch"], 1)


def singles(epochs: int, out: dict) -> None:
    import torch

    from runner.engine import run

    mlp = ["model.hidden=[1024,1024,1024]"]
    eager = ["trainer.compile=false"]
    cases = {"seed preset, eager, snapshots off": ["experiment=seed_sharing", "snapshot.enabled=false"] + eager,
             "seed preset, eager, stats+tensors": ["experiment=seed_sharing"] + eager,
             "seed preset, graph, snapshots off": ["experiment=seed_sharing", "snapshot.enabled=false",
                                                   "trainer.compile=true"],
             "seed preset, graph, stats+tensors": ["experiment=seed_sharing", "trainer.compile=true"],
             "784-1024x3-10, eager, snapshots off": mlp + ["snapshot.enabled=false"] + eager,
             "784-1024x3-10, graph, snapshots off": mlp + ["snapshot.enabled=false", "trainer.compile=true"],
             "784-1024x3-10, graph, stats": mlp + ["snapshot.tensors=false", "trainer.compile=true"],
             "784-1024x3-10, graph, TF32, snapshots off": mlp + ["snapshot.enabled=false", "trainer.compile=true"]}
    for label, over in cases.items():
        if ONLY and not any(o in label for o in ONLY):
            continue
        torch.backends.cuda.matmul.allow_tf32 = "TF32" in label
        try:
            with tempfile.TemporaryDirectory() as d:
                info = run(make_cfg("device=cuda", f"trainer.epochs={epochs}", *over), Path(d) / "r")
            r = {"s_per_epoch": round(epoch_s(info), 4), "val_acc": round(info["final"]["val_acc"], 4)}
        except Exception:
            r = {"error": traceback.format_exc()[-3000:]}
        out[label] = r
        print(f"{label}: {json.dumps(r)}", flush=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    flop = 6 * (784 * 1024 + 2 * 1024 * 1024 + 1024 * 10) * 60000   # fwd + 2 backward matmuls per layer
    out["mlp1024_fp32_floor_ms"] = round(flop / 67e12 * 1000, 1)      # ~67 TFLOP/s fp32 on an H100/H200


def grid(epochs: int, out: dict) -> None:
    import subprocess

    for extra in ([], ["--eager"]):
        r = subprocess.run([sys.executable, str(Path(__file__).parent / "ensemble_speedup.py"), "--device", "cuda",
                            "--epochs", str(epochs), *extra], capture_output=True, text=True)
        key = "lr_dropout_grid_18_jobs" + ("_eager" if extra else "_graph")
        out[key] = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else {"error": r.stderr[-3000:]}
        print(f"{key}: {json.dumps(out[key])}", flush=True)


def main() -> dict:
    import torch

    args = sys.argv[1:]
    path = Path(args[args.index("--out") + 1]) if "--out" in args else Path(__file__).parent / "results_gpu.json"
    epochs = int(args[args.index("--epochs") + 1]) if "--epochs" in args else 3
    ONLY[:] = args[args.index("--only") + 1].split("|") if "--only" in args else []
    sections = [a for a in args if a in ("ensembles", "singles", "grid")] or ["ensembles", "singles", "grid"]
    results = json.loads(path.read_text()) if path.is_file() else {}
    gpu = torch.cuda.get_device_name(0)                       # one entry per card and day
    key = f"{(gpu.split() + [gpu])[1].lower()}_{time.strftime('%Y-%m-%d')}"
    out = results.setdefault(key, {})
    out.update(gpu=gpu, torch=torch.__version__)
    for name in sections:
        part = out.setdefault(name, {})
        globals()[name](epochs, part)
        path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
