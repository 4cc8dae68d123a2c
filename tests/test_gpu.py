"""GPU path (runs only where CUDA is available): same results as the CPU path for a short
full-batch run, per-call-site gradients summing on the device, last tensors exact."""
import numpy as np
import pandas as pd
import pytest
import torch

from runner import snapshot
from runner.engine import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


def test_gpu_matches_cpu_full_batch(make_cfg, tmp_path):
    # One full-batch step per epoch: the permutation (CPU vs CUDA generator) does not matter.
    over = ("sharing=all_hidden", "trainer.epochs=3", "data.batch_size=600", "model.hidden=[16,16,16]")
    cpu_info, _ = train(make_cfg(*over), tmp_path / "cpu")
    gpu_info, model = train(make_cfg(*over, "device=cuda"), tmp_path / "gpu")
    assert gpu_info["device"].startswith("cuda") and gpu_info["status"] == "completed"
    for k in ("train_loss", "val_loss", "val_acc"):
        assert gpu_info["final"][k] == pytest.approx(cpu_info["final"][k], rel=2e-3, abs=2e-3)
    pc = snapshot.read_params(tmp_path / "cpu").set_index(["epoch", "name", "kind", "site"])
    pg = snapshot.read_params(tmp_path / "gpu").set_index(["epoch", "name", "kind", "site"])
    assert list(pc.index) == list(pg.index)
    np.testing.assert_allclose(pg["norm"].to_numpy(), pc["norm"].to_numpy(), rtol=5e-3, atol=1e-6)
    tensors = snapshot.read_tensors(tmp_path / "gpu", epoch=3)
    for name in ("net.4.weight", "net.4.bias"):
        grad = next(t["array"] for t in tensors if t["name"] == name and t["kind"] == "grad")
        sites = [t["array"] for t in tensors if t["name"] == name and t["kind"] == "grad_site"]
        np.testing.assert_allclose(sum(sites), grad, rtol=1e-5, atol=1e-7)
    values = {t["name"]: t["array"] for t in tensors if t["kind"] == "value"}
    for name, p in model.named_parameters():
        assert np.array_equal(values[name], p.detach().cpu().numpy())


def test_gpu_minibatch_run_and_divergence(make_cfg, tmp_path):
    info, _ = train(make_cfg("device=cuda", "trainer.epochs=2"), tmp_path / "a")
    assert info["status"] == "completed" and len(pd.read_parquet(tmp_path / "a" / "metrics")) == 8
    info, _ = train(make_cfg("device=cuda", "trainer.compile=false", "optim.lr=10000", "trainer.epochs=3"),
                    tmp_path / "d")
    assert info["status"] == "diverged"     # eager steps (the graphed case: test_cuda_graph_step_matches_eager)


def test_cuda_graph_step_matches_eager(make_cfg, tmp_path, capsys):
    over = ("sharing=all_hidden", "trainer.epochs=3", "data.batch_size=64", "model.hidden=[16,16,16]")
    eager, _ = train(make_cfg(*over, "device=cuda", "trainer.compile=false"), tmp_path / "eager")
    graph, model = train(make_cfg(*over, "device=cuda"), tmp_path / "graph")     # graphs: the default
    said = capsys.readouterr()
    assert "CUDA graph recording failed" not in said.out + said.err
    assert graph["status"] == "completed"
    for k in ("train_loss", "val_loss", "val_acc", "train_acc"):
        assert graph["final"][k] == pytest.approx(eager["final"][k], rel=1e-4, abs=1e-5)
    pe = snapshot.read_params(tmp_path / "eager").set_index(["epoch", "name", "kind", "site"])
    pg = snapshot.read_params(tmp_path / "graph").set_index(["epoch", "name", "kind", "site"])
    np.testing.assert_allclose(pg["norm"].to_numpy(), pe["norm"].to_numpy(), rtol=1e-3, atol=1e-7)
    tensors = snapshot.read_tensors(tmp_path / "graph", epoch=3)
    grad = next(t["array"] for t in tensors if t["name"] == "net.4.weight" and t["kind"] == "grad")
    sites = [t["array"] for t in tensors if t["name"] == "net.4.weight" and t["kind"] == "grad_site"]
    np.testing.assert_allclose(sum(sites), grad, rtol=1e-5, atol=1e-7)
    values = {t["name"]: t["array"] for t in tensors if t["kind"] == "value"}
    for name, p in model.named_parameters():
        assert np.array_equal(values[name], p.detach().cpu().numpy())
    d, _ = train(make_cfg("device=cuda", "trainer.compile=true", "optim.lr=10000", "trainer.epochs=3"), tmp_path / "d")
    assert d["status"] == "diverged"


def test_ensemble_on_gpu_matches_separate_runs(make_cfg, tmp_path):
    """Up to float rounding on a GPU (its kernels are not K-invariant); dropout masks are drawn by
    one device generator for all members, so the grid here has none."""
    from runner.engine import run_members
    over = [("optim.lr=0.05", "seed=0"), ("optim.lr=0.1", "seed=0"), ("optim.lr=0.1", "seed=1")]
    cfgs = [make_cfg("device=cuda", "sharing=all_hidden", "trainer.epochs=2", *o) for o in over]
    infos = run_members(cfgs, [tmp_path / f"e{i}" for i in range(3)], [list(o) for o in over], ensemble=True).infos
    assert [i["status"] for i in infos] == ["completed"] * 3
    for i, cfg in enumerate(cfgs):
        alone, _ = train(cfg, tmp_path / f"a{i}")
        for k in ("train_loss", "val_loss", "val_acc"):
            assert infos[i]["final"][k] == pytest.approx(alone["final"][k], rel=1e-3, abs=1e-3)


GRAPH_ENSEMBLES = {
    # Two seed groups (the step gathers rows by group); evaluation and snapshots between epochs
    # switch the grouping, and the graph's replays must still read the right index tensor.
    "sgd, two seed groups": (["sharing=all_hidden"],
                             [("optim.lr=0.05", "seed=0"), ("optim.lr=0.1", "seed=0"), ("optim.lr=0.1", "seed=1")]),
    # Adam's step count lives on the device, so its step is recorded in the graph too.
    "adam": (["optim=adam"], [("optim.lr=0.01", "seed=0"), ("optim.lr=0.003", "seed=1", "optim.weight_decay=0.01")]),
}


@pytest.mark.parametrize("case", GRAPH_ENSEMBLES)
def test_ensemble_cuda_graph_matches_eager(case, make_cfg, tmp_path):
    """Three epochs of an ensemble: the graph replays give what eager steps give."""
    from runner.engine import run_members
    common, over = GRAPH_ENSEMBLES[case]
    results = {}
    for mode in ("false", "true"):
        cfgs = [make_cfg("device=cuda", *common, "trainer.epochs=3", "data.batch_size=64",
                         f"trainer.compile={mode}", *o) for o in over]
        results[mode] = run_members(cfgs, [tmp_path / mode / str(i) for i in range(len(over))], ensemble=True).infos
    for m in range(len(over)):
        assert results["true"][m]["status"] == "completed"
        for k in ("train_loss", "val_loss", "val_acc"):
            assert results["true"][m]["final"][k] == pytest.approx(results["false"][m]["final"][k], rel=1e-4, abs=1e-5)


HOST_SYNC_MODEL = '''
import torch
from torch import nn


class Net(nn.Module):
    """Reads a value back to the host in its forward: a CUDA graph cannot record that."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.drop = nn.Linear(784, 16), nn.Linear(16, 10), nn.Dropout(0.1)

    def forward(self, x):
        h = self.drop(torch.relu(self.fc1(x.flatten(1))))
        if float(h.detach().mean()) < -1.0:      # never true; the read is the point
            h = h * 0
        return self.fc2(h)
'''


def test_graph_recording_failure_falls_back_to_eager(make_cfg, tmp_path, monkeypatch, capsys):
    """The default (trainer.compile=true) with a model that syncs with the host (and draws dropout
    masks, which a recording that failed midway would leave broken): one line says the recording
    failed, the run completes with eager steps and equals a run with compile=false (the probe that
    finds the host read draws no masks)."""
    import sys

    from runner.engine import run
    (tmp_path / "syncmodels.py").write_text(HOST_SYNC_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        over = ("device=cuda", "model=custom", "model._target_=syncmodels.Net", "trainer.epochs=2",
                "data.batch_size=64")
        default = run(make_cfg(*over), tmp_path / "default")
        said = capsys.readouterr()
        assert "CUDA graph recording failed" in said.out + said.err
        eager = run(make_cfg(*over, "trainer.compile=false"), tmp_path / "eager")
    finally:
        sys.modules.pop("syncmodels", None)
    assert default["status"] == eager["status"] == "completed"
    for k in ("train_loss", "val_loss", "val_acc"):
        assert default["final"][k] == pytest.approx(eager["final"][k], rel=1e-4, abs=1e-5)


ARCHITECTURES = {
    # Every model family as a graphed ensemble (two members: seeds, learning rates, weight decay):
    # grouped convolutions and pooling, nested blocks, a batch norm, layers only vmap batches, ties.
    "tied cnn, adam": (["experiment=cnn_sharing", "optim=adam", "model.channels=[4,4,4]"],
                       [("optim.lr=0.01", "seed=0"), ("optim.lr=0.003", "seed=1", "optim.weight_decay=0.01")]),
    "lenet": (["experiment=lenet"], [("optim.lr=0.9", "seed=0"), ("optim.lr=0.5", "seed=1")]),
    "nest_mlp": (["model=nest_mlp"], [("optim.lr=0.1", "seed=0"), ("optim.lr=0.05", "seed=1")]),
    "tied rgnet": (["model=rgnet", "sharing=all_hidden"], [("optim.lr=0.1", "seed=0"), ("optim.lr=0.05", "seed=0")]),
    "custom: batch norm, vmap layer, tie": (["model=custom", "model._target_=mymodels.Net", "++model.width=12",
                                             "sharing=groups", "sharing.groups=[[fc2,fc3]]"],
                                            [("optim.lr=0.05", "seed=0"), ("optim.lr=0.02", "seed=1")]),
    "custom: tied layer only vmap batches": (["model=custom", "model._target_=mymodels.Gains", "sharing=groups",
                                              "sharing.groups=[[g1,g2]]", "init=normal"],
                                             [("optim.lr=0.1", "seed=0"), ("optim.lr=0.05", "seed=1")]),
    # Dropout masks drawn inside the graph: each replay must draw new ones, as eager steps do.
    "mlp with dropout": (["model.dropout=0.3", "model.hidden=[16,16]"],
                         [("optim.lr=0.1", "seed=0"), ("optim.lr=0.05", "seed=1")]),
}


@pytest.mark.parametrize("case", ARCHITECTURES)
def test_every_architecture_as_a_graphed_ensemble(case, user_models, make_cfg, tmp_path):
    """Graph replays give what eager steps give, for every model family, and the per-call-site
    gradients recorded inside the graph add up to each tied tensor's gradient."""
    from runner.engine import run_members
    common, over = ARCHITECTURES[case]
    results = {}
    for mode in ("false", "true"):
        cfgs = [make_cfg("device=cuda", *common, "trainer.epochs=3", f"trainer.compile={mode}", *o) for o in over]
        results[mode] = run_members(cfgs, [tmp_path / mode / str(i) for i in range(len(over))], ensemble=True).infos
    for m in range(len(over)):
        assert results["true"][m]["status"] == results["false"][m]["status"] == "completed"
        for k in ("train_loss", "val_loss", "val_acc"):
            assert results["true"][m]["final"][k] == pytest.approx(results["false"][m]["final"][k], rel=1e-4, abs=1e-5)
    tensors = snapshot.read_tensors(tmp_path / "true" / "1", epoch=3)
    sites = {}
    for t in tensors:
        if t["kind"] == "grad_site":
            sites.setdefault(t["name"], []).append(t["array"])
    grads = {t["name"]: t["array"] for t in tensors if t["kind"] == "grad"}
    assert sites or "sharing" not in " ".join(common)   # a model with ties records its sites
    for name, arrays in sites.items():
        np.testing.assert_allclose(sum(arrays), grads[name], rtol=1e-4, atol=1e-6)
