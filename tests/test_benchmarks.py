"""Benchmarks are not run in CI; this checks that they start (import, and a tiny report_time)."""
import importlib
import json

import pytest

from conftest import ROOT, run_cli

BENCH = ROOT / "benchmarks"


@pytest.mark.parametrize("name", ["epoch_time", "snapshot_overhead", "startup", "sweep_speedup", "report_time",
                                  "ensemble_speedup",
                                  "gpu", "run_all"])
def test_benchmark_imports(name, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    module = importlib.import_module(name)
    assert callable(module.main)


def test_report_time_runs_small(tmp_path):
    r = run_cli(str(BENCH / "report_time.py"), "--runs", "3", "--epochs", "2")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["runs"] == 3 and result["report_s"] > 0
