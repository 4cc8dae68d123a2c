"""User mistakes: one line on stderr naming the key and what is allowed, exit code 2, no
traceback, nothing created. Most cases go through the same `guard()` the commands call
(in-process, fast); a few run the real commands."""
import json
import os

import pytest

from runner import data
from runner.cli import guard

from conftest import run_cli

CASES = [
    (["sharing=foo"], "sharing=foo: no such option; choose one of: all_hidden, groups, none"),
    (["optim=rmsprop"], "optim=rmsprop: no such option; choose one of: adam, sgd"),
    (["experiment=nope"], "experiment=nope: no such option; choose one of: "),
    (["model.foo=1"], "model.foo: unknown config key; allowed keys in model: name, hidden, channels, dropout, "
                      "activation, _target_"),
    (["+foo=1"], "foo: unknown config key; allowed keys: model, sharing, init, optim, data, trainer, snapshot, "
                 "sweep, seed, device"),
    (["optim.lr=abc"], "optim.lr='abc' has the wrong type; expected float"),
    (["trainer.epochs=1.5"], "trainer.epochs='1.5' has the wrong type; expected integer"),
    (["optim.lr=0"], "optim.lr=0.0 must be a finite number > 0, e.g. optim.lr=0.1"),
    (["optim.lr=-0.1"], "optim.lr=-0.1 must be a finite number > 0, e.g. optim.lr=0.1"),
    (["model.dropout=1.0"], "model.dropout=1.0 is outside [0, 1); use e.g. model.dropout=0.5"),
    (["model.dropout=-0.1"], "model.dropout=-0.1 is outside [0, 1); use e.g. model.dropout=0.5"),
    (["model.dropout=[0.1,0.2]"], "model.dropout has 2 values but model=mlp has 3 dropout layers (one per hidden "
                                  "layer); give one float or one per dropout layer"),
    (["model.hidden=[]"], "model.hidden is empty; give at least one width, e.g. model.hidden=[8,8,8]"),
    (["model.hidden=[8,0,8]"], "model.hidden=[8, 0, 8] has width 0; every width must be >= 1"),
    (["model.hidden=[[net.4,net.7]]"], "model.hidden has ['net.4', 'net.7']; every width must be a whole number, "
     "e.g. model.hidden=[8,8,8]"),
    (["model.hidden=8"], "model.hidden: Invalid value assigned: int is not a ListConfig, list or tuple; give a list, "
     "e.g. model.hidden=[8,8,8]"),
    (["model.activation=swish"], "model.activation='swish' is not allowed; choose one of: relu, tanh, gelu, sigmoid"),
    (["trainer.epochs=0"], "trainer.epochs=0 must be >= 1"),
    (["data.batch_size=0"], "data.batch_size=0 must be >= 1, e.g. data.batch_size=256"),
    (["data.limit=0"], "data.limit=0 must be >= 1, or null for the whole training set"),
    (["data.limit=601"], "data.limit=601 is larger than the training set (600 examples); use 1..600, or null for all"),
    (["snapshot.every=0"], "snapshot.every=0 must be an integer >= 1 (the last epoch is always snapshotted)"),
    (["sharing=groups", "sharing.groups=[[net.4,net.5x]]"],
     "sharing.groups: no module or parameter 'net.5x' in this model; modules with parameters: net.1, net.4, net.7, "
     "net.10"),
    (["sharing=groups", "sharing.groups=[[net.1,net.4]]"],
     "sharing.groups: cannot tie net.1 (weight [8, 784], bias [8]) with net.4 (weight [8, 8], bias [8]): "
     "parameter shapes differ"),
    (["sharing=all_hidden", "model.hidden=[8,16,16]"],
     "sharing=all_hidden needs equal hidden widths (it reuses one layer for layers 2..n); got "
     "model.hidden=[8, 16, 16], e.g. use model.hidden=[16,16,16]"),
    (["init=per_layer", "init.rules=[{module: head, init: xavier}]"],
     "init.rules[0].module='head' matches no layer; use first, last, a glob, or one of: "
     "net.1, net.4, net.7, net.10"),
    # A sweep without -m: a preset that sets hydra.mode=MULTIRUN does not make it one when the
    # preset is itself swept (Hydra reads the mode leaving sweeps out): guard() says so, not Hydra later.
    (["experiment=lr_dropout_grid,seed_sharing"], "experiment=lr_dropout_grid,seed_sharing gives several values, which "
     "only a grid runs: give one value (a grid: python -m runner.train -m ...)"),
    (["optim.lr=0.1,0.2"], "optim.lr=0.1,0.2 gives several values, which only a grid runs: give one value (a grid: "
     "python -m runner.train -m ...)"),
    (["-m", "optim.lr=0.1,0.2", "--cfg", "job"], "--cfg shows one thing and cannot be combined with -m; drop one of them"),
    (["-m", "optim.lr=0.1,-1"], "optim.lr=-1.0 must be a finite number > 0, e.g. optim.lr=0.1 [job: data.root={root} optim.lr=-1]"),
    (["hydra.run.dir="], "hydra.run.dir is empty; give a directory, e.g. hydra.run.dir=outputs/my_run"),
    (["model.hidden=[8,8"], "model.hidden=[8,8: cannot read it (no viable alternative at input '[8,8'); check its "
     "brackets, quotes and commas, and quote a value holding '=' or ',' (e.g. 'hydra.run.dir=\"a=1,b\"')"),
    (["sharing=groups", "sharing.groups=[net.4,net.7]"], "sharing.groups=[net.4,net.7]: Invalid value assigned: str is "
     "not a ListConfig, list or tuple; give a list, e.g. sharing.groups=[[net.4,net.7]]"),
    (["sharing=groups", "sharing.groups=[[net.4,net.4]]"],
     "sharing.groups[0]=['net.4', 'net.4'] names 'net.4' twice; name each path once"),
    (["-m", "hydra/launcher=basic", "hydra.launcher.n_jobs=1"],
     "hydra.launcher.n_jobs: unknown config key; hydra.launcher has no such setting here"),
    (["-m", "hydra.launcher.max_members=0"], "hydra.launcher.max_members=0 is not allowed; use a whole number >= 1 "
     "(members per ensemble)"),
    (["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=0"], "hydra.launcher.n_jobs=0 is not allowed; use a whole "
     "number >= 1, or -1 for every core (-2: all but one)"),
    (["-m", "hydra.sweeper.max_batch_size=0"], "hydra.sweeper.max_batch_size=0 is not allowed; use a whole number >= 1, "
     "or null for all jobs at once"),
    (["-m", "model=glob(zz*)"], "model=glob(zz*): this sweep has no values, so the grid has no jobs; give the key one "
     "value or more"),
    (["-m", "seed=range(0,0)"], "seed=range(0,0): this sweep has no values, so the grid has no jobs; give the key one "
     "value or more"),
]


@pytest.mark.parametrize("args, message", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_user_errors_one_line(args, message, data_root, capsys, monkeypatch):
    monkeypatch.setenv("PARAMLAB_NO_DOWNLOAD", "1")
    with pytest.raises(SystemExit) as e:
        guard("train", [f"data.root={data_root}", *args])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err == f"paramlab: error: {message.replace('{root}', data_root)}\n" or (
        message.endswith(": ") and err.startswith(f"paramlab: error: {message}"))


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_device_cuda_without_gpu(data_root, capsys, device):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit):
        guard("train", [f"data.root={data_root}", f"device={device}"])
    assert capsys.readouterr().err == (f"paramlab: error: device={device} but no CUDA GPU is available here; "
                                       "use device=auto or device=cpu\n")


def test_device_name_checked(data_root, capsys):
    with pytest.raises(SystemExit):
        guard("train", [f"data.root={data_root}", "device=gpu0"])
    assert capsys.readouterr().err == ("paramlab: error: device='gpu0' is not allowed; choose one of: auto, cpu, "
                                       "cuda, cuda:N\n")


def test_missing_dataset_names_the_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PARAMLAB_NO_DOWNLOAD", "1")
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "none")
    with pytest.raises(SystemExit):
        guard("train", [f"data.root={tmp_path}/empty"])
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "FashionMNIST not found in data.root=" in err
    assert "get it with: apt-get update && apt-get install -y dataset-fashion-mnist" in err


def test_resume_path_not_a_sweep(data_root, tmp_path, capsys):
    with pytest.raises(SystemExit):
        guard("train", ["-m", f"data.root={data_root}", f"sweep.resume={tmp_path}"])
    assert "is not a sweep directory (no readable sweep.json in it)" in capsys.readouterr().err


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="no /proc")
@pytest.mark.parametrize("key", ["hydra.run.dir", "hydra.sweep.dir"])
def test_a_directory_that_cannot_be_made_is_a_user_error(key, data_root, capsys):
    """Permissions do not tell (root, /proc, a read-only mount): a probe folder is tried."""
    with pytest.raises(SystemExit) as e:
        guard("train", [f"data.root={data_root}", f"{key}=/proc/paramlab/run"] + (["-m"] if "sweep" in key else []))
    assert e.value.code == 2
    assert capsys.readouterr().err.startswith(f"paramlab: error: {key}=/proc/paramlab/run: cannot create it, no folder can be "
                                              "made in /proc (")


def test_cli_errors_exit_2_no_traceback_nothing_created(tmp_path, data_root):
    """The real command: exit code 2, one stderr line, no directory created, an existing run
    directory left untouched."""
    existing = tmp_path / "old_run"
    existing.mkdir()
    (existing / "run.json").write_text(json.dumps({"status": "completed"}))
    before = sorted(os.listdir(existing))
    for args in (["sharing=foo"], ["optim.lr=-1", f"hydra.run.dir={existing}"],
                 ["-m", "model.dropout=0,1.5"]):
        r = run_cli("-m", "runner.train", f"data.root={data_root}", *args, cwd=tmp_path,
                    env_extra={"PARAMLAB_NO_DOWNLOAD": "1"})
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.startswith("paramlab: error: ")
    assert not (tmp_path / "outputs").exists()
    assert sorted(os.listdir(existing)) == before
    assert json.loads((existing / "run.json").read_text()) == {"status": "completed"}


@pytest.mark.parametrize("args", [["sharing=groups", "sharing.groups=[[net.1,net.4]]"], ["data.limit=100000"],
                                  ["model.hidden=[8,8]", "init=per_layer", "init.rules=[{module: head, init: xavier}]"],
                                  ["-m", "optim.lr=0.1,-1"], ["-m", "data.limit=100,100000"]])   # a later job's mistake
def test_a_mistake_writes_no_dataset_copy(args, data_root, tmp_path, capsys, monkeypatch):
    """The set lies only compressed (as the Debian package has it): a command with a mistake ends
    before decompressing it into data.root; without any copy of the set it leaves no folder there."""
    import gzip
    debian = tmp_path / "debian"
    debian.mkdir()
    for name in data.FILES.values():
        with open(data.raw_dir(data_root) / name, "rb") as src, gzip.open(debian / f"{name}.gz", "wb") as dst:
            dst.write(src.read())
    monkeypatch.setattr(data, "DEBIAN_DIR", debian)
    monkeypatch.setenv("PARAMLAB_NO_DOWNLOAD", "1")
    root = tmp_path / "new" / "data"
    with pytest.raises(SystemExit) as e:
        guard("train", [f"data.root={root}", *args])
    assert e.value.code == 2 and capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "new").exists()
    from runner.engine import preload_data       # what a grid's workers do while the checks run
    preload_data(str(root), None, "cpu")
    assert not (tmp_path / "new").exists()
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "none")          # no copy anywhere, no download
    monkeypatch.setattr(data, "MIRROR", (tmp_path / "no_mirror").as_uri() + "/")
    monkeypatch.delenv("PARAMLAB_NO_DOWNLOAD")
    with pytest.raises(SystemExit):
        guard("train", [f"data.root={root}"])
    assert "FashionMNIST not found" in capsys.readouterr().err and not (tmp_path / "new").exists()


def test_a_folder_that_is_not_a_runs_is_refused(data_root, tmp_path, capsys):
    """A run.json that is not JSON, or a sweep's own folder: refused, nothing overwritten."""
    garbage = tmp_path / "g"
    garbage.mkdir()
    (garbage / "run.json").write_text("garbage")
    sweep = tmp_path / "s"
    sweep.mkdir()
    (sweep / "sweep.json").write_text("{}")
    listed, folder = tmp_path / "l", tmp_path / "f"
    listed.mkdir()
    (listed / "run.json").write_text("[]")
    (folder / "run.json").mkdir(parents=True)
    not_a_run = "holds a run.json that is not a paramlab run's"
    for run_dir, said in ((garbage, not_a_run), (listed, not_a_run), (folder, not_a_run), (sweep, "is a sweep's directory")):
        with pytest.raises(SystemExit) as e:
            guard("train", [f"data.root={data_root}", f"hydra.run.dir={run_dir}"])
        assert e.value.code == 2 and said in capsys.readouterr().err
    assert (garbage / "run.json").read_text() == "garbage" and sorted(p.name for p in sweep.iterdir()) == ["sweep.json"]
