"""The report: built from runs produced by real (tiny) training, including a diverged, a
failed and a killed run, and two seeds of a tied/untied pair; every figure present, every <img> a
real PNG, strings escaped, groups and comparisons from the real runs."""
import importlib
import json
import os
import re
import shutil

import pandas as pd
import pytest

from runner import report, snapshot
from runner.engine import run

EVIL = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def runs_tree(tmp_path_factory, data_root):
    from hydra import compose, initialize_config_dir
    from conftest import CONF

    root = tmp_path_factory.mktemp("tree")

    def cfg(*o):
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            return compose(config_name="config", overrides=[f"data.root={data_root}", "trainer.progress=false",
                                                            "device=cpu", "data.batch_size=64", "trainer.epochs=3",
                                                            *o])
    run(cfg("sharing=all_hidden", "optim.lr=0.1"), root / "tied_lr0.1")
    run(cfg("sharing=none", "optim.lr=0.1"), root / "untied_lr0.1")
    run(cfg("sharing=all_hidden", "optim.lr=0.1", "seed=1"), root / "tied_lr0.1_seed1")
    run(cfg("sharing=none", "optim.lr=0.1", "seed=1"), root / "untied_lr0.1_seed1")
    run(cfg("sharing=all_hidden", "optim.lr=0.05"), root / "tied_lr0.05")
    run(cfg("sharing=none", "optim.lr=10000"), root / "diverged")
    for d in root.iterdir():  # what the engine does when a run ends (all of these ended)
        snapshot.compact_run(d)
    # killed: a completed run cut back to what a SIGKILL after epoch 1 leaves (its copied compact/
    # still holds 3 epochs: run.json says running, so the report must read the epoch files)
    shutil.copytree(root / "untied_lr0.1", root / EVIL)
    info = json.loads((root / EVIL / "run.json").read_text())
    info.update(status="running", epochs_completed=1, run_id=EVIL)
    info["config"]["optim"]["lr"] = 0.2
    (root / EVIL / "run.json").write_text(json.dumps(info))
    for table in ("metrics", "params", "tensors", "activations"):
        for f in (root / EVIL / table).glob("epoch-000[23].parquet"):
            f.unlink()
    # failed before any epoch
    (root / "failed").mkdir()
    (root / "failed" / "run.json").write_text(json.dumps(
        {"status": "failed", "error": "OSError: No space left on device", "config": info["config"],
         "epochs_completed": 0, "run_id": "failed"}))
    return root


@pytest.fixture(scope="module")
def built(runs_tree, tmp_path_factory):
    """The report of the whole tree, built once: (report.html text, output folder)."""
    out = tmp_path_factory.mktemp("rep")
    return report.build_report([runs_tree], out).read_text(), out


def test_report_has_every_figure_and_statuses(built):
    text, out = built
    imgs = re.findall(r'<img src="([^"]+)"', text)
    assert sorted(imgs) == sorted(f"{k}.png" for k in
                                  ("curves", "sharing", "grid", "param_evolution", "grads", "histograms", "activations",
                                   "update_ratio", "site_cosine", "noise_scale"))  # the engine's diagnostics too
    for img in imgs:
        data = (out / img).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    table = pd.read_csv(out / "runs.csv")
    assert len(table) == 8 == len(pd.read_parquet(out / "runs.parquet"))
    assert sorted(table.status) == ["completed"] * 5 + ["diverged", "failed", "incomplete"]
    runs_section = text[text.index("<h2>Runs</h2>"):text.index("</details>", text.index("<h2>Runs</h2>"))]
    assert runs_section.count("<tr>") == 1 + 8
    assert "through net.7" not in text  # site legends live in the PNG, the HTML notes what they mean
    assert "call site" in text


def test_report_groups_and_comparisons_from_real_runs(built):
    text, out = built
    groups = pd.read_csv(out / "groups.csv")
    assert list(groups.columns[:4]) == ["optim.lr", "sharing", "n", "n_other"]
    pair = groups[(groups["optim.lr"] == 0.1)].set_index("sharing")
    assert pair.loc["all_hidden", "n"] == 2 and pair.loc["none", "n"] == 2
    runs = pd.read_csv(out / "runs.csv")
    seeds = runs[(runs["optim.lr"] == 0.1) & (runs.sharing == "all_hidden")].val_acc
    assert pair.loc["all_hidden", "val_acc_mean"] == pytest.approx(seeds.mean())
    assert pair.loc["all_hidden", "val_acc_std"] == pytest.approx(seeds.std(ddof=1))
    assert groups[groups["optim.lr"] == 10000].n_other.tolist() == [1]   # the diverged run
    comparisons = pd.read_csv(out / "comparisons.csv")
    cell = comparisons[(comparisons.key == "sharing") & (comparisons["optim.lr"] == 0.1)].iloc[0]
    assert cell.n_pairs == 2 and cell.reference == "none" and cell.value == "all_hidden"
    assert cell.sentence in text


def test_killed_run_is_read_from_its_epoch_files(runs_tree):
    exp = importlib.import_module("runner.report.load").load([runs_tree])
    killed = next(r for r in exp.runs if r.status == "incomplete")
    assert (killed.path / "compact" / "metrics.parquet").is_file()  # stale copy, must be ignored
    assert sorted(exp.metrics[exp.metrics.run == killed.index].epoch.unique()) == [1]
    assert sorted(exp.params[exp.params.run == killed.index].epoch.unique()) == [0, 1]
    # Compact files read for the finished runs that have rows (the diverged run's metrics: an empty
    # file, no epoch finished, read from its folder).
    assert exp.compact_used == {"metrics": 5, "params": 6, "activations": 6}


def test_report_escapes_names(built):
    text, _ = built
    assert EVIL not in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in text


def test_labels_are_the_differing_config_values(runs_tree):
    runs = report.load_runs([runs_tree / "tied_lr0.1", runs_tree / "untied_lr0.1"])
    assert sorted(r.label for r in runs) == ["sharing=all_hidden", "sharing=none"]
    assert report.varying_keys(runs) == ["sharing.name"]


def test_report_cli_single_run_default_out(runs_tree, tmp_path):
    from conftest import run_cli
    target = tmp_path / "one"
    shutil.copytree(runs_tree / "tied_lr0.1", target)
    r = run_cli("-m", "runner.report", str(target))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith(str(target / "report" / "report.html"))
    assert (target / "report" / "curves.png").is_file()
    r = run_cli("-m", "runner.report", str(tmp_path / "nothing_here"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_report_usage_mistake_is_one_line(capsys):
    from runner.report.cli import main
    with pytest.raises(SystemExit) as e:
        main([])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("paramlab: error: the following arguments")


@pytest.mark.parametrize("out", ["a_file", "a_file/report", "/proc/paramlab"])
def test_report_out_that_cannot_be_a_folder(out, runs_tree, tmp_path, capsys):
    """--out naming a file, or a place where no folder can be made: one line, exit 2, nothing written."""
    from runner.report.cli import main
    if out.startswith("/proc") and not os.path.isdir("/proc/self"):
        pytest.skip("no /proc")
    (tmp_path / "a_file").write_text("mine")
    out = out if out.startswith("/") else str(tmp_path / out)
    with pytest.raises(SystemExit) as e:
        main([str(runs_tree / "tied_lr0.1"), "--out", out])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith(f"paramlab: error: --out {out}: cannot write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"] and (tmp_path / "a_file").read_text() == "mine"


def test_report_imports_no_torch(runs_tree, tmp_path):
    from conftest import run_cli
    code = ("import sys, runner.report as r; r.build_report([sys.argv[1]], sys.argv[2]); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    r = run_cli("-c", code, str(runs_tree), str(tmp_path / "x"))
    assert r.returncode == 0, r.stderr
