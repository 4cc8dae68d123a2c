"""Start-up cost: a 1-epoch `python -m runner.train` process (seed preset, full data, CPU)
minus that epoch's own time, against `python -c "import torch"`, in the same run (best of 3).

    python benchmarks/startup.py
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> dict:
    torch_s, startup_s = [], []
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], check=True)
        torch_s.append(time.perf_counter() - t)
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "runner.train", "experiment=seed_sharing", "trainer.epochs=1",
                            "trainer.progress=false", "device=cpu", f"hydra.run.dir={d}/r"],
                           cwd=ROOT, check=True, capture_output=True)
            total = time.perf_counter() - t
            epoch = json.loads((Path(d) / "r" / "run.json").read_text())["epoch_times_s"][0]
        startup_s.append(total - epoch)
    result = {"import_torch_s": round(min(torch_s), 2), "startup_s": round(min(startup_s), 2),
              "ratio": round(min(startup_s) / min(torch_s), 2)}
    print(f"start-up (1-epoch run minus its epoch): {min(startup_s):.2f} s; bare `import torch`: "
          f"{min(torch_s):.2f} s -> {result['ratio']:.2f}x (target <= 2x)")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
