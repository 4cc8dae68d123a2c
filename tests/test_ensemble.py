"""Ensemble mode (hydra/launcher=ensemble): a grid trained as one batched model writes the same
run directories as separate runs, with the same results (same seeds), up to float rounding."""
import json

import numpy as np
import pandas as pd

from runner import snapshot
from runner.sweep import job_runs
from runner.train import run

from conftest import run_cli


def test_ensemble_equals_separate_runs(tmp_path, data_root, make_cfg):
    common = [f"data.root={data_root}", "trainer.epochs=2", "data.batch_size=64", "trainer.progress=false",
              "device=cpu"]
    r = run_cli("-m", "runner.train", "-m", "hydra/launcher=ensemble", "optim.lr=0.02,0.05", "model.dropout=0,0.3",
                "sharing=none,all_hidden", "optim.momentum=0.5", *common, f"hydra.sweep.dir={tmp_path / 'ens'}",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("paramlab: ensemble of 4") == 2  # tied and untied jobs form separate groups
    runs = job_runs(tmp_path / "ens")
    assert len(runs) == 8 and {j["status"] for j in runs} == {"completed"}
    for job in runs:
        overrides = [o for o in job["overrides"] if not o.startswith(("data.root", "trainer.progress", "device"))]
        alone = run(make_cfg(*overrides), tmp_path / "alone" / job["_dir"])
        ens_dir = tmp_path / "ens" / job["_dir"]
        assert job["params"] == alone["params"] and job["tie_groups"] == alone["tie_groups"]
        a, b = pd.read_parquet(ens_dir / "metrics"), pd.read_parquet(tmp_path / "alone" / job["_dir"] / "metrics")
        np.testing.assert_allclose(a.value, b.value, rtol=1e-5, atol=1e-6)
        ta = {(t["epoch"], t["name"], t["kind"], t["site"]): t["array"] for t in snapshot.read_tensors(ens_dir)}
        tb = {(t["epoch"], t["name"], t["kind"], t["site"]): t["array"]
              for t in snapshot.read_tensors(tmp_path / "alone" / job["_dir"])}
        assert sorted(ta) == sorted(tb)
        for key in ta:
            np.testing.assert_allclose(ta[key], tb[key], rtol=1e-4, atol=1e-6, err_msg=str(key))
        acts_a, acts_b = snapshot.read_activations(ens_dir), snapshot.read_activations(tmp_path / "alone" / job["_dir"])
        np.testing.assert_allclose(acts_a["var"], acts_b["var"], rtol=1e-4)
        info = json.loads((ens_dir / "run.json").read_text())
        assert info["ensemble"]["size"] == 4


def test_ensemble_isolates_a_diverging_member_and_runs_others_alone(tmp_path, data_root):
    r = run_cli("-m", "runner.train", "-m", "hydra/launcher=ensemble", "optim.lr=0.1,10000", "optim=sgd,adam",
                f"data.root={data_root}", "trainer.epochs=2", "trainer.progress=false", "device=cpu",
                f"hydra.sweep.dir={tmp_path / 'e'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("paramlab: ensemble of 2") == 1  # the SGD pair; Adam jobs run alone
    statuses = {j["_dir"]: j["status"] for j in job_runs(tmp_path / "e")}
    assert statuses["optim.lr=0.1,optim=sgd"] == "completed" and statuses["optim.lr=10000,optim=sgd"] == "diverged"
    assert statuses["optim.lr=0.1,optim=adam"] == "completed" and "optim.lr=10000,optim=adam" in statuses
    good = json.loads((tmp_path / "e" / "optim.lr=0.1,optim=sgd" / "run.json").read_text())
    assert good["epochs_completed"] == 2 and np.isfinite(good["final"]["train_loss"])
