"""Installing without the checkout: a wheel installed elsewhere gives working commands from any
directory (the config tree, the presets and the ensemble launcher plugin travel inside it)."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The project built as a wheel and installed (without dependencies: the venv has them) into
    a folder of its own; commands then run with only that folder on PYTHONPATH."""
    wheels, target = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("site")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                        str(wheels), str(ROOT)], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                        *map(str, wheels.glob("*.whl"))], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    return target


def _run(installed, cwd, *args):
    env = dict(os.environ, PYTHONPATH=str(installed), PYTHONUNBUFFERED="1")
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=240, env=env)


def test_wheel_runs_from_anywhere(installed, tmp_path, data_root):
    where = _run(installed, tmp_path, sys.executable, "-c", "import runner; print(runner.__file__)")
    assert where.stdout.strip().startswith(str(installed)), where.stdout  # not the checkout
    common = [f"data.root={data_root}", "data.limit=300", "trainer.epochs=1", "trainer.progress=false", "device=cpu"]
    r = _run(installed, tmp_path, sys.executable, "-m", "runner.train", "experiment=seed_sharing", *common,
             "hydra.run.dir=one")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "one" / "run.json").read_text())["params"] == {"unique": 6442, "total": 6514}
    r = _run(installed, tmp_path, str(installed / "bin" / "paramlab-train"), "-m", "optim.lr=0.05,0.1", *common,
             "hydra.sweep.dir=grid")
    assert r.returncode == 0, r.stderr
    assert "paramlab: 2 jobs as 1 ensemble (2)" in r.stdout  # the launcher plugin came with the wheel
    assert json.loads((tmp_path / "grid" / "optim.lr=0.1" / "run.json").read_text())["ensemble"]["size"] == 2
    r = _run(installed, tmp_path, str(installed / "bin" / "paramlab-inspect"), "model=cnn", "sharing=all_hidden")
    assert r.returncode == 0 and "unique parameters: 2650" in r.stdout, r.stderr
    r = _run(installed, tmp_path, str(installed / "bin" / "paramlab-report"), "grid")
    assert r.returncode == 0 and (tmp_path / "grid" / "report" / "report.html").is_file(), r.stderr


def test_cpu_torch_choice(monkeypatch):
    """`make install`'s choice of torch (tools/cpu_torch.py): without a GPU the newest `+cpu`
    build inside pyproject.toml's range; with a GPU, PARAMLAB_TORCH=default, or no such build
    offered, nothing (pip's default build)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cpu_torch", ROOT / "tools" / "cpu_torch.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.torch_range() == ">=2.11,<=2.14.1"
    offered = ["2.15.0+cpu", "2.15.0", "2.14.1", "2.13.0+cpu", "2.12.0+cpu", "2.13.0", "2.10.0+cpu", "garbage"]
    monkeypatch.setattr(tool, "offered_versions", lambda: offered)
    monkeypatch.setattr(tool, "has_nvidia_gpu", lambda: False)
    monkeypatch.delenv("PARAMLAB_TORCH", raising=False)
    assert tool.cpu_requirement() == "torch==2.13.0+cpu"
    monkeypatch.setenv("PARAMLAB_TORCH", "default")
    assert tool.cpu_requirement() == ""
    monkeypatch.delenv("PARAMLAB_TORCH")
    monkeypatch.setattr(tool, "has_nvidia_gpu", lambda: True)
    assert tool.cpu_requirement() == ""
    monkeypatch.setattr(tool, "has_nvidia_gpu", lambda: False)
    monkeypatch.setattr(tool, "offered_versions", lambda: ["2.14.1", "2.13.0"])
    assert tool.cpu_requirement() == ""
