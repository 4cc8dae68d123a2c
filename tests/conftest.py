"""Shared fixtures: tiny FashionMNIST look-alikes in the real idx format, and the real
config tree composed with Hydra's compose API and shrunk for tests."""
from __future__ import annotations

import os
import subprocess
import textwrap
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


def stamps(folder: Path) -> dict:
    """Every file and folder under `folder` (itself included) with its modification time: what "left
    as it is" compares."""
    return {p: p.stat().st_mtime_ns for p in [folder, *folder.rglob("*")]}


def run_cli(*args: str, cwd=None, timeout: float = 120, env_extra=None) -> subprocess.CompletedProcess:
    # The repo root on the path as a plain entry: Hydra then finds hydra_plugins/ however the
    # package was installed (an editable install's import hook hides namespace portions).
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.update(env_extra or {})
    return subprocess.run([sys.executable, *args], cwd=cwd or ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


# User models (model=custom), written to the current directory as mymodels.py by `user_models`.
MODELS = textwrap.dedent('''
    import torch
    from torch import nn


    class Gain(nn.Module):                       # a layer paramlab does not know (batched with vmap)
        def __init__(self, n):
            super().__init__()
            self.gain = nn.Parameter(torch.ones(n))

        def forward(self, x):
            return x * self.gain


    class Net(nn.Module):
        def __init__(self, width=16):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)
            self.norm = nn.BatchNorm2d(2)
            self.act = nn.ReLU()                 # one object after every layer: act, act#2, ...
            self.fc1 = nn.Linear(2 * 28 * 28, width)
            self.fc2 = nn.Linear(width, width)
            self.fc3 = nn.Linear(width, width)
            self.gain = Gain(width)
            self.head = nn.Linear(width, 10)

        def forward(self, x):
            x = self.act(self.norm(self.conv(x))).flatten(1)
            x = self.act(self.fc1(x))
            x = self.act(self.fc2(x))
            x = self.act(self.fc3(x))
            return self.head(self.gain(x))


    class Gains(nn.Module):                      # two of an unknown layer, for sharing.groups=[[g1,g2]]
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(784, 8)
            self.g1, self.g2 = Gain(8), Gain(8)
            self.out = nn.Linear(8, 10)

        def forward(self, x):
            return self.out(torch.tanh(self.g2(torch.tanh(self.g1(self.inp(x.flatten(1)))))))


    class Shared(nn.Module):                     # the seed's pattern: one Linear object at two paths
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(784, 8)
            shared = nn.Linear(8, 8)
            self.a, self.b = shared, shared
            self.out = nn.Linear(8, 10)

        def forward(self, x):
            return self.out(torch.relu(self.b(torch.relu(self.a(torch.relu(self.inp(x.flatten(1))))))))


    class Twice(nn.Module):                      # one Linear object called twice from one path
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(784, 8)
            self.fc = nn.Linear(8, 8)
            self.out = nn.Linear(8, 10)

        def forward(self, x):
            return self.out(self.fc(self.fc(self.inp(x.flatten(1)))))


    class Swap(nn.Module):                       # every other training forward calls its dropouts b, c as c, b
        def __init__(self, dropout=(0.2, 0.2, 0.2)):
            super().__init__()
            self.fc = nn.Linear(784, 16)
            self.a, self.b, self.c = (nn.Dropout(float(p)) for p in dropout)
            self.head = nn.Linear(16, 10)
            self.calls = 0

        def forward(self, x):
            h = torch.relu(self.fc(x.flatten(1)))
            self.calls += self.training
            for dropout in (self.a, self.b, self.c) if self.calls % 2 else (self.a, self.c, self.b):
                h = dropout(h)
            return self.head(h)


    class BatchSoftmax(nn.Module):               # a softmax over the batch: each member's own rows
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(784, 10)
            self.over_batch = nn.Softmax(dim=0)

        def forward(self, x):
            h = self.fc(x.flatten(1))
            return h * self.over_batch(h)


    class NoActivationModules(nn.Module):        # activations called as functions: no activation rows
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(784, 16), nn.Linear(16, 10)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x.flatten(1))))


    def wrong_shape():
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 7))
''')


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    (tmp_path / "mymodels.py").write_text(MODELS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("mymodels", None)
