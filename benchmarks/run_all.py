"""Every CPU benchmark in one command; prints a table of ratios against their targets and
writes benchmarks/results.json. Each ratio compares against a baseline measured in the same
run (the machines here are noisy). About 5 minutes on 2 cores (writing the 1000-run report
tree is about 1 of them, the grid's three alternating pairs of commands about 2); --quick (fewer
epochs and runs, one pair of a 2-epoch grid whose ratio start-up dominates): about 1.5.

    python benchmarks/run_all.py [--quick]
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def bench(script: str, *args: str) -> dict:
    r = subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True, text=True, cwd=HERE.parent)
    if r.returncode != 0:
        raise SystemExit(f"{script} failed:\n{r.stderr[-2000:]}")
    print(r.stdout.strip().splitlines()[0] if "snapshot" not in script else "\n".join(r.stdout.strip().splitlines()[:-1]),
          flush=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    quick = "--quick" in sys.argv
    t = time.perf_counter()
    results = {
        "epoch_time": bench("epoch_time.py", "--epochs", "3", "--repeats", "1" if quick else "2"),
        "snapshot_overhead": bench("snapshot_overhead.py", "--epochs", "3", "--repeats", "1" if quick else "2"),
        "startup": bench("startup.py"),
        "sweep_speedup": bench("sweep_speedup.py", "--epochs", "3" if quick else "15"),
        "report_time": bench("report_time.py", *(["--runs", "20", "--epochs", "10"] if quick else [])),
        "ensemble_speedup": bench("ensemble_speedup.py", "--epochs", "2" if quick else "10",
                                  "--repeats", "1" if quick else "3"),
    }
    et, so = results["epoch_time"], results["snapshot_overhead"]
    big = results["report_time"].get("large", results["report_time"])
    rows = [(f"{name}, full snapshots, vs a lean loop", f"{et[name]['ratio']}x", "<= 1.15x")
            for name in ("seed preset (MLP [8,8,8], tied)", "tied CNN [16,16,16]", "LeNet")]
    rows += [
        ("tied CNN step, per-call-site capture", f"{et['capture']['capture_pct']:+.1f}%", "(cost)"),
        ("seed preset vs d2l-style DataLoader loop", f"{et['speedup_vs_d2l']}x faster", ">= 20x"),
        ("diagnostics (update, step_var), 784-256-256-10", f"{so['784-256-256-10']['diagnostics_pct']:+.1f}%", "< 3%"),
        ("diagnostics (update, step_var), seed preset", f"{so['seed preset']['diagnostics_pct']:+.1f}%", "< 3%"),
        ("checkpoint per epoch, 784-1024x3-10", f"{so['checkpoint']['784-1024x3-10']['pct_of_epoch']}%", "(cost)"),
        ("start-up vs bare import torch", f"{results['startup']['ratio']}x", "<= 2x"),
        ("8-job sweep, joblib vs sequential", f"{results['sweep_speedup']['speedup']}x", ">= 1.5x"),
        (f"report, {big['runs']} runs x {big['epochs']} epochs", f"{big['report_s']} s, {big['peak_rss_mb']:.0f} MB",
         "< 30 s, < 3 GB at 1000 x 20"),
        ("lr_dropout_grid (18 jobs), ensemble vs basic launcher", f"{results['ensemble_speedup']['speedup']}x",
         ">= 4x"),
    ]
    print()
    print(f"{'measure':52} {'result':>14}   target")
    for name, value, target in rows:
        print(f"{name:52} {value:>14}   {target}")
    results["total_s"] = round(time.perf_counter() - t, 1)
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {HERE / 'results.json'} ({results['total_s']} s)")


if __name__ == "__main__":
    main()
