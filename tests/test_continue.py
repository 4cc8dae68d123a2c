"""Continuing killed runs: the same command continues after the last completed epoch, from the
checkpoint written with that epoch's tables, and ends bit-identical to a run never killed."""
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from runner import snapshot
from runner.sweep import job_runs

from conftest import ROOT, run_cli, stamps

# Dies (as if SIGKILLed) while writing one file of one epoch: that epoch's files before it exist
# only under temp names (snapshot.durable_together renames them together at the end), its
# checkpoint and run.json not at all.
KILL_AT = """
import os, sys
from runner import snapshot, checkpoint
target = os.environ["KILL_AT"]          # e.g. "params/3" or "checkpoint/3"
real_table, real_save = snapshot.prepare_table, checkpoint.prepare
def die():
    os._exit(137)
def table(run_dir, name, epoch, columns):    # the file's encoding done, it dies as the file is written
    write = real_table(run_dir, name, epoch, columns)
    return die if target == f"{name}/{epoch}" else write
def save(run_dir, state):
    write = real_save(run_dir, state)
    return die if target == f"checkpoint/{state['epoch']}" else write
snapshot.prepare_table, checkpoint.prepare = table, save
from runner.cli import main
sys.argv = ["runner.train"] + sys.argv[1:]
main()
"""


def _same(a, b):
    """Two run directories hold the same results, bit for bit."""
    for table in ("metrics", "activations"):
        pd.testing.assert_frame_equal(pd.read_parquet(a / table), pd.read_parquet(b / table), check_exact=True)
    pa, pb = snapshot.read_params(a), snapshot.read_params(b)
    pd.testing.assert_frame_equal(pa, pb, check_exact=True)
    ta = {(t["epoch"], t["name"], t["kind"], t["site"]): t["array"] for t in snapshot.read_tensors(a)}
    tb = {(t["epoch"], t["name"], t["kind"], t["site"]): t["array"] for t in snapshot.read_tensors(b)}
    assert sorted(ta) == sorted(tb) and all(np.array_equal(ta[k], tb[k]) for k in ta)
    ia, ib = (json.loads((d / "run.json").read_text()) for d in (a, b))
    assert ia["final"] == ib["final"] and ia["status"] == ib["status"] == "completed"


COMMON = ["trainer.epochs=5", "sharing=all_hidden", "model.dropout=0.2", "optim.momentum=0.9", "snapshot.every=2",
          "data.batch_size=64", "trainer.progress=false", "device=cpu"]


@pytest.fixture(scope="module")
def never_killed(tmp_path_factory, data_root):
    run_dir = tmp_path_factory.mktemp("whole") / "r"
    r = run_cli("-m", "runner.train", f"data.root={data_root}", *COMMON, f"hydra.run.dir={run_dir}")
    assert r.returncode == 0, r.stderr
    return run_dir


# A kill inside a table write of a snapshot-less epoch, and inside the checkpoint write that follows
# a snapshot epoch's tables (those tables are temp files, written again when the run continues).
@pytest.mark.parametrize("kill_at", ["metrics/3", "checkpoint/4"])
def test_killed_run_continues_bit_identical(tmp_path, data_root, kill_at, never_killed):
    args = ["-m", "runner.train", f"data.root={data_root}", *COMMON]
    r = run_cli("-c", KILL_AT, *args[2:], f"hydra.run.dir={tmp_path / 'k'}", cwd=tmp_path,
                env_extra={"KILL_AT": kill_at})
    assert r.returncode == 137
    killed = json.loads((tmp_path / "k" / "run.json").read_text())
    done = int(kill_at.split("/")[1]) - 1
    assert killed["status"] == "running" and killed["epochs_completed"] == done
    continuations = [done]
    if kill_at.startswith("metrics"):   # a continuation killed before it completes an epoch counts too
        r = run_cli("-c", KILL_AT, *args[2:], f"hydra.run.dir={tmp_path / 'k'}", cwd=tmp_path,
                    env_extra={"KILL_AT": kill_at})
        assert r.returncode == 137 and "resuming" in r.stdout
        continuations.append(done)
    stale = tmp_path / "k" / ".run.json.tmp-1"          # as a kill in the rename window leaves one
    stale.write_text("{")
    r = run_cli(*args, f"hydra.run.dir={tmp_path / 'k'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"paramlab: resuming {tmp_path / 'k'} after epoch {done} of 5" in r.stdout
    info = json.loads((tmp_path / "k" / "run.json").read_text())
    assert [e["from_epoch"] for e in info["resumed"]] == continuations and len(info["epoch_times_s"]) == 5
    assert not (tmp_path / "k" / "checkpoint.pt").exists()  # a completed run is never continued: no need
    assert not stale.exists() and not list((tmp_path / "k").glob(".*.tmp-*"))
    _same(tmp_path / "k", never_killed)


def test_sigkill_at_a_random_moment_then_continue(tmp_path, data_root):
    run_dir = tmp_path / "r"
    cmd = [sys.executable, "-m", "runner.train", f"data.root={data_root}", *COMMON[1:], "trainer.epochs=30",
           f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 90
    while not (run_dir / "metrics" / "epoch-0004.parquet").exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.01)
    time.sleep(0.137)  # somewhere inside a later epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0 and "resuming" in r.stdout, r.stderr
    r = subprocess.run(cmd[:-1] + [f"hydra.run.dir={tmp_path / 'whole'}"], cwd=ROOT, capture_output=True, text=True,
                       timeout=240)
    assert r.returncode == 0, r.stderr
    _same(run_dir, tmp_path / "whole")


def test_completed_run_is_left_alone_and_other_config_refused(tmp_path, data_root):
    args = ["-m", "runner.train", f"data.root={data_root}", "trainer.epochs=1", "trainer.progress=false",
            "device=cpu", f"hydra.run.dir={tmp_path / 'r'}"]
    assert run_cli(*args, cwd=tmp_path).returncode == 0
    before = stamps(tmp_path / "r")                 # Hydra's .hydra/ record included
    assert (tmp_path / "r" / ".hydra" / "config.yaml").is_file()
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 0 and "already completed" in r.stdout
    assert "paramlab: completed" not in r.stdout and "paramlab: start" not in r.stdout, r.stdout  # one line says
    # it was left as it is
    assert stamps(tmp_path / "r") == before
    r = run_cli(*args, "trainer.compile=false", cwd=tmp_path)   # a key that does not change results
    assert r.returncode == 0 and "already completed" in r.stdout, r.stderr
    r = run_cli(*args, "optim.lr=0.3", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert (f"hydra.run.dir={tmp_path / 'r'} holds a run with another config (optim.lr: 0.1 there, 0.3 here); "
            f"continue it with its own config, give this run another directory, or delete {tmp_path / 'r'} to "
            "start over") in r.stderr
    assert stamps(tmp_path / "r") == before


def test_killed_ensemble_sweep_resumes_bit_identical(tmp_path, data_root):
    """An ensemble sweep killed while its members were writing epoch 3: `-m sweep.resume=DIR`
    alone continues every member after its last completed epoch."""
    grid = ["-m", "optim.lr=0.05,0.1", "seed=0,1", f"data.root={data_root}", *COMMON]
    r = run_cli("-c", KILL_AT, *grid, f"hydra.sweep.dir={tmp_path / 's'}", "hydra/launcher=ensemble",
                "hydra.launcher.n_jobs=1", cwd=tmp_path, env_extra={"KILL_AT": "params/4"})
    assert r.returncode == 137
    record = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert record["n_jobs"] == 4 and "optim.lr=0.05,0.1" in record["overrides"]
    r = run_cli("-m", "runner.train", "-m", f"sweep.resume={tmp_path / 's'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("resuming") == 4
    r = run_cli("-m", "runner.train", *grid, f"hydra.sweep.dir={tmp_path / 'whole'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for job in job_runs(tmp_path / "s"):
        assert job["status"] == "completed" and job["ensemble"]["size"] == 4
        _same(tmp_path / "s" / job["_dir"], tmp_path / "whole" / job["_dir"])


def test_killing_the_command_stops_its_workers_and_the_sweep_continues(tmp_path, data_root):
    """Two ensembles train side by side in worker processes; SIGKILL to the command (not to its
    workers) must not leave them training and holding the run directories: the same command,
    started right away, continues the sweep."""
    sweep = tmp_path / "s"
    cmd = [sys.executable, "-m", "runner.train", "-m", "sharing=none,all_hidden", "optim.lr=0.05,0.1",
           f"data.root={data_root}", "trainer.epochs=200", "trainer.progress=false", "device=cpu",
           "snapshot.tensors=false", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list(sweep.glob("*/metrics/epoch-0002.parquet"))) < 4:
        assert proc.poll() is None and time.time() < deadline, "the sweep did not get going"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(1.5)  # the workers notice within 0.2 s
    # The same command again (no lock held by an orphan): it continues every job from its checkpoint.
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while proc.poll() is None and time.time() < deadline and \
            sum(1 for j in job_runs(sweep) if j.get("resumed")) < 4:
        time.sleep(0.1)
    proc.kill()
    out, err = proc.communicate()
    assert "being written by another paramlab command" not in err, err
    assert sum(1 for j in job_runs(sweep) if j.get("resumed")) == 4


def test_completed_run_missing_a_compact_copy_gets_it_again(make_cfg, tmp_path):
    """A kill after run.json said `completed` but before the run's compact copies were all written
    (they follow it) leaves the run completed without them: the next command, which leaves the
    run as it is, writes the missing ones (and touches nothing else)."""
    from runner.engine import run

    cfg = make_cfg("trainer.epochs=1")
    run(cfg, tmp_path / "r")
    compact = snapshot.compact_file(tmp_path / "r", "params")
    whole = pd.read_parquet(compact)
    compact.unlink()
    others = {p: p.stat().st_mtime_ns for p in (tmp_path / "r").rglob("*") if p.is_file() and p.name != ".paramlab.lock"}
    info = run(cfg, tmp_path / "r")
    assert info["status"] == "completed"
    assert compact.is_file() and pd.read_parquet(compact).equals(whole)
    assert {p: p.stat().st_mtime_ns for p in others} == others


def test_a_run_recorded_on_one_gpu_continues_on_another(make_cfg, tmp_path):
    """A sweep gives parallel jobs cuda:0, cuda:1, ... (recorded in run.json): the same command
    run again (device=auto or cuda) must continue them, not call them another config; another
    kind of device (a GPU run continued on the CPU) stays another config."""
    from omegaconf import OmegaConf

    from runner.config import UserError
    from runner.engine import check_run_dir

    cfg = make_cfg("trainer.epochs=1")
    run_dir = tmp_path / "r"
    (run_dir).mkdir()
    recorded = json.loads(json.dumps({"config": OmegaConf.to_container(cfg, resolve=True), "status": "running"}))
    recorded["config"].pop("hydra", None)

    def check(there: str, here: str) -> None:
        recorded["config"]["device"] = there
        (run_dir / "run.json").write_text(json.dumps(recorded))
        OmegaConf.update(cfg, "device", here, merge=False)
        check_run_dir(cfg, run_dir)

    check("cpu", "cpu")
    check("cuda:1", "cuda")
    check("cuda:0", "cuda:1")
    import torch

    gpu = torch.cuda.is_available()
    check("cuda:1" if gpu else "cpu", "auto")     # auto: whatever this machine resolves it to
    for there, here in (("cuda:1", "cpu"), ("cpu" if gpu else "cuda:1", "auto")):
        with pytest.raises(UserError, match="another config"):
            check(there, here)
    recorded["config"]["optim"]["lr"] = 0.3   # a difference beside the device is still one
    with pytest.raises(UserError, match="optim.lr"):
        check("cuda:1", "cuda")


def test_run_failed_in_its_first_epoch_has_empty_metrics_then_continues_clean(make_cfg, tmp_path, monkeypatch):
    """A run that fails before its first epoch ends leaves metrics/ readable (one empty file,
    epoch-0000); continued, it holds the epochs' files only (the empty one goes), as a run never
    failed does."""
    import runner.engine as engine

    cfg = make_cfg("trainer.epochs=2")

    def broken(*args, **kwargs):
        raise RuntimeError("evaluation broke")

    monkeypatch.setattr(engine, "evaluate", broken)
    with pytest.raises(RuntimeError):
        engine.run(cfg, tmp_path / "r")
    assert json.loads((tmp_path / "r" / "run.json").read_text())["status"] == "failed"
    metrics = pd.read_parquet(tmp_path / "r" / "metrics")
    assert list(metrics.columns) == ["epoch", "split", "metric", "value"] and len(metrics) == 0
    monkeypatch.undo()
    info = engine.run(cfg, tmp_path / "r")
    assert info["status"] == "completed"
    assert [p.name for p in snapshot.epoch_files(tmp_path / "r", "metrics")] == ["epoch-0001.parquet", "epoch-0002.parquet"]
    assert sorted(pd.read_parquet(tmp_path / "r" / "metrics").epoch.unique()) == [1, 2]
