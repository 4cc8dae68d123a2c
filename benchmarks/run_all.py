"""Every CPU benchmark in one command; prints a table of ratios against their targets and
writes benchmarks/results.json. Each ratio compares against a baseline measured in the same
run (the machines here are noisy). About 4-5 minutes on 2 cores.

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
        "epoch_time": bench("epoch_time.py", "--epochs", "3"),
        "snapshot_overhead": bench("snapshot_overhead.py", "--epochs", "3", "--repeats", "1" if quick else "2"),
        "startup": bench("startup.py"),
        "sweep_speedup": bench("sweep_speedup.py", "--epochs", "3" if quick else "15"),
        "report_time": bench("report_time.py", *(["--runs", "20", "--epochs", "10"] if quick else [])),
        "ensemble_speedup": bench("ensemble_speedup.py", "--epochs", "2" if quick else "3"),
    }
    so = results["snapshot_overhead"]["784-256-256-10"]
    rows = [
        ("seed preset epoch vs d2l-style DataLoader loop", f"{results['epoch_time']['speedup']}x faster", ">= 20x"),
        ("snapshot stats overhead (784-256-256-10)", f"{so['overhead_stats_pct']:+.1f}%", "<= 3%"),
        ("snapshot stats+tensors overhead (784-256-256-10)", f"{so['overhead_stats_tensors_pct']:+.1f}%", "<= 15%"),
        ("start-up vs bare import torch", f"{results['startup']['ratio']}x", "<= 2x"),
        ("8-job sweep, joblib vs sequential", f"{results['sweep_speedup']['speedup']}x", ">= 1.5x"),
        (f"report, {results['report_time']['runs']} runs x {results['report_time']['epochs']} epochs",
         f"{results['report_time']['report_s']} s", "well under 60 s"),
        ("16-job grid, ensemble vs sequential (CPU)", f"{results['ensemble_speedup']['speedup']}x", "(stretch)"),
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
