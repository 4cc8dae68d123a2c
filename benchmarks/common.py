"""Helpers shared by the benchmarks: compose the real config, time epochs of run()."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402

from runner.config import register_configs  # noqa: E402
from runner.paths import register_resolvers  # noqa: E402

register_resolvers()
register_configs()


def make_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=["trainer.progress=false", *overrides])


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def time_sweep(overrides, sweep_dir: Path) -> float:
    """Wall seconds of one `python -m runner.train -m ...` command (its start-up included)."""
    import subprocess
    import time

    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "runner.train", "-m", *overrides, "trainer.progress=false",
                        f"hydra.sweep.dir={sweep_dir}"], cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(r.stderr)
    return time.perf_counter() - t
