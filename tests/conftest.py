"""Shared fixtures: tiny FashionMNIST look-alikes in the real idx format, and the real
config tree composed with Hydra's compose API and shrunk for tests."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from runner.config import register_configs
from runner.data import make_synthetic
from runner.paths import register_resolvers

ROOT = Path(__file__).resolve().parent.parent
CONF = str(ROOT / "conf")
register_resolvers()
register_configs()


@pytest.fixture(autouse=True)
def _no_sweep_env(monkeypatch):
    """guard() sets these for Hydra's job resolvers; in-process tests must not leak them."""
    for name in ("PARAMLAB_SWEEP_DIR", "PARAMLAB_SWEEP_KEYS", "PARAMLAB_MASTER_PID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("fmnist")
    make_synthetic(root, n_train=600, n_test=120)
    return str(root)


@pytest.fixture
def make_cfg(data_root):
    """make_cfg(*overrides) -> the real composed config, on synthetic data, shrunk."""
    def _make(*overrides: str, shrink: bool = True):
        base = [f"data.root={data_root}", "trainer.progress=false", "device=cpu"]
        if shrink:
            base += ["trainer.epochs=2", "data.batch_size=64"]
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            return compose(config_name="config", overrides=base + list(overrides))
    return _make


def run_cli(*args: str, cwd=None, timeout: float = 120, env_extra=None) -> subprocess.CompletedProcess:
    # The repo root on the path as a plain entry: Hydra then finds hydra_plugins/ however the
    # package was installed (an editable install's import hook hides namespace portions).
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.update(env_extra or {})
    return subprocess.run([sys.executable, *args], cwd=cwd or ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)
