"""Architectures beyond MLPs: LeNet, the tied CNN, a user's own model; ties for any module type
or single parameters; per-call-site gradients for every module type through one mechanism."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from runner import snapshot
from runner.batched import Members
from runner.engine import build, run, run_members
from runner.sharing import build_tie_map

from conftest import run_cli


def test_parameter_counts(make_cfg):
    assert build(make_cfg("model=lenet"))[1].unique == 61706
    _, untied = build(make_cfg("model=cnn"))
    assert (untied.unique, untied.total) == (4970, 4970)
    model, tied = build(make_cfg("model=cnn", "sharing=all_hidden"))
    assert (tied.unique, tied.total) == (2650, 4970)
    assert [g["aliases"] for g in tied.tie_groups()] == [["conv2.weight", "conv3.weight"], ["conv2.bias", "conv3.bias"]]
    with torch.no_grad():
        model.conv2.weight[0, 0, 0, 0] = 100.0
    assert model.conv3.weight[0, 0, 0, 0].item() == 100.0  # one tensor, not an equal copy
    assert model.conv2 is not model.conv3                  # two call sites


@pytest.mark.parametrize("overrides, widest", [(["model=mlp", "model.hidden=[8,8]"], 784), (["model=cnn"], 16 * 28 * 28),
                                               (["model=lenet"], 6 * 28 * 28)])
def test_widest_output_sets_evaluation_chunks_whatever_k(make_cfg, overrides, widest):
    """The probe measures the most floats a module's output holds per row, the same for a run
    alone and three members (evaluation's chunks follow it, and must not depend on K)."""
    from runner.batched import check_batchable
    for k in (1, 3):
        built = [build(make_cfg(*overrides, f"seed={i}")) for i in range(k)]
        members = Members([m for m, _ in built], built[0][1], "cpu", list(range(k)))
        check_batchable(members)
        assert members.widest == widest


def test_widest_output_counts_floats_per_example_whatever_the_layout(make_cfg):
    """A module whose output is not batch-first ((features, batch) here) counts its floats per
    example like any other, the same for K = 1 and 3 (it once counted per first-dimension row)."""
    from torch import nn

    class Columns(nn.Module):
        def forward(self, x):
            return x.t()

    class Rows(nn.Module):
        def forward(self, x):
            return x.t()

    def model():
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 4), Columns(), Rows(), nn.Linear(4, 10))

    for k in (1, 3):
        members = Members([model() for _ in range(k)], build_tie_map(model()), "cpu", list(range(k)))
        assert members.widest == 784
    wide = nn.Sequential(nn.Flatten(), nn.Linear(784, 2000), Columns(), Rows(), nn.Linear(2000, 10))
    assert Members([wide], build_tie_map(wide), "cpu", [0]).widest == 2000

    class Steps(nn.Module):                 # (100 steps, batch, 16): 1600 floats an example, 32 a first-dim row
        def forward(self, x):
            return x.unsqueeze(0).repeat(100, 1, 1)

    class Last(nn.Module):
        def forward(self, x):
            return x[-1]

    timed = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), Steps(), Last(), nn.Linear(16, 10))
    assert Members([timed], build_tie_map(timed), "cpu", [0]).widest == 1600


def test_parameter_level_tie(make_cfg):
    model, tie_map = build(make_cfg("model=cnn", "sharing=groups", "sharing.groups=[[conv2.weight,conv3.weight]]"))
    assert model.conv2.weight is model.conv3.weight and model.conv2.bias is not model.conv3.bias
    assert tie_map.unique == 4970 - 16 * 16 * 9
    assert tie_map.tie_groups() == [{"canonical": "conv2.weight", "aliases": ["conv2.weight", "conv3.weight"],
                                     "call_sites": ["conv2", "conv3"], "shape": [16, 16, 3, 3], "numel": 2304}]


def test_per_site_grads_of_a_conv_tied_three_times_float64(make_cfg):
    """conv2..conv4 hold one kernel (3 call sites). Each site's captured gradient equals the
    gradient of its own untied copy of the kernel in an independent float64 model; they sum to
    .grad; and the captured forward equals the untied one."""
    torch.manual_seed(0)
    tied, tie_map = build(make_cfg("model=cnn", "model.channels=[4,4,4,4]", "sharing=all_hidden"))
    twin, _ = build(make_cfg("model=cnn", "model.channels=[4,4,4,4]"))
    tied.double()
    twin.double()
    with torch.no_grad():
        for name, p in twin.named_parameters():
            p.copy_(dict(tied.named_parameters(remove_duplicate=False))[name])
    members = Members([tied], tie_map, "cpu", [0])
    members.capturing = True
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 1, 28, 28, generator=g, dtype=torch.float64), torch.randint(0, 10, (16,), generator=g)
    torch.nn.functional.cross_entropy(members.forward(x, [(0, 1)]), y).backward()
    members.gather_sites()
    torch.nn.functional.cross_entropy(twin(x), y).backward()
    grad = dict(zip(members.names, (p.grad for p in members.leaves)))
    for leaf in ("weight", "bias"):
        sites = [members.site_sums[(f"conv2.{leaf}", f"conv{i}")] for i in (2, 3, 4)]
        for i, site in zip((2, 3, 4), sites):
            torch.testing.assert_close(site, getattr(twin, f"conv{i}").get_parameter(leaf).grad, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(sites[0] + sites[1] + sites[2], grad[f"conv2.{leaf}"], rtol=1e-12, atol=1e-14)
    with torch.no_grad():
        assert torch.equal(members.forward(x, [(0, 1)]), twin(x))


def test_capture_changes_no_result_tied_cnn(make_cfg, tmp_path):
    over = ("model=cnn", "model.channels=[4,4,4,4]", "sharing=all_hidden", "data.limit=300", "model.dropout=0.2")
    a = run(make_cfg(*over), tmp_path / "a")
    b = run(make_cfg(*over, "snapshot.enabled=false"), tmp_path / "b")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a" / "metrics"), pd.read_parquet(tmp_path / "b" / "metrics"),
                                  check_exact=True)
    assert a["final"] == b["final"]
    p = snapshot.read_params(tmp_path / "a")
    sites = p[(p.kind == "grad_site") & (p.epoch == 2)]
    assert sorted(sites[sites.name == "conv2.weight"].site) == ["conv2", "conv3", "conv4"]
    assert set(sites.name) == {n for n in p.name.unique()}  # every parameter has its site rows
    acts = snapshot.read_activations(tmp_path / "a")
    assert list(acts[acts.epoch == 0].layer) == ["act1", "act2", "act3", "act4"]


def test_lenet_trains_and_per_layer_matches_convs(make_cfg, tmp_path):
    torch.manual_seed(0)
    model, _ = build(make_cfg("model=lenet", "init=per_layer"))
    assert torch.all(model.net[11].weight == 42) and torch.all(model.net[11].bias == 0)  # last: head
    w = model.net[0].weight                                                           # first: conv
    bound = (6 / (1 * 25 + 6 * 25)) ** 0.5
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound and torch.all(model.net[0].bias == 0)
    info = run(make_cfg("model=lenet", "data.limit=300", "trainer.epochs=1"), tmp_path / "lenet")
    assert info["status"] == "completed" and info["params"] == {"unique": 61706, "total": 61706}


def test_custom_model_with_ties_sites_and_vmap_layer(user_models, make_cfg, tmp_path):
    over = ("model=custom", "model._target_=mymodels.Net", "++model.width=12", "sharing=groups",
            "sharing.groups=[[fc2,fc3]]", "data.limit=300")
    info = run(make_cfg(*over), tmp_path / "r")
    assert info["status"] == "completed"
    assert info["tie_groups"][0]["call_sites"] == ["fc2", "fc3"]
    p = snapshot.read_params(tmp_path / "r")
    last = p[p.epoch == 2]
    assert sorted(last[(last.kind == "grad_site") & (last.name == "fc2.weight")].site) == ["fc2", "fc3"]
    assert "gain.gain" in set(last.name) and "norm.weight" in set(last.name)
    tensors = {(t["name"], t["kind"], t["site"]): t["array"] for t in snapshot.read_tensors(tmp_path / "r", epoch=2)}
    np.testing.assert_allclose(tensors[("fc2.weight", "grad_site", "fc2")] + tensors[("fc2.weight", "grad_site", "fc3")],
                               tensors[("fc2.weight", "grad", None)], rtol=1e-5, atol=1e-8)
    acts = snapshot.read_activations(tmp_path / "r")
    assert list(acts[acts.epoch == 0].layer) == ["act", "act#2", "act#3", "act#4"]


def test_tied_unknown_layer_sites_under_vmap(user_models, make_cfg, tmp_path):
    """A layer type paramlab does not know, tied at two call sites (vmap over functional_call):
    its site gradients add up to its .grad, capturing changes no result, and an ensemble's
    members hold the sites their runs alone do."""
    over = ("model=custom", "model._target_=mymodels.Gains", "sharing=groups", "sharing.groups=[[g1,g2]]",
            "data.limit=200", "init=normal")
    a = run(make_cfg(*over), tmp_path / "a")
    b = run(make_cfg(*over, "snapshot.enabled=false"), tmp_path / "b")
    assert a["final"] == b["final"]
    t = {(x["name"], x["kind"], x["site"]): x["array"] for x in snapshot.read_tensors(tmp_path / "a", epoch=2)}
    one, two = t[("g1.gain", "grad_site", "g1")], t[("g1.gain", "grad_site", "g2")]
    assert not np.allclose(one, two)
    np.testing.assert_allclose(one + two, t[("g1.gain", "grad", None)], rtol=1e-5, atol=1e-8)
    result = run_members([make_cfg(*over, "optim.lr=0.05"), make_cfg(*over)],
                         [tmp_path / "e0", tmp_path / "e1"], ensemble=True)
    assert result.infos[1]["ensemble"]["size"] == 2
    e = {(x["name"], x["kind"], x["site"]): x["array"] for x in snapshot.read_tensors(tmp_path / "e1", epoch=2)}
    for key in (("g1.gain", "grad_site", "g1"), ("g1.gain", "grad_site", "g2"), ("g1.gain", "value", None)):
        np.testing.assert_allclose(e[key], t[key], rtol=1e-4, atol=1e-6)   # vmap: equal up to rounding


def test_reused_module_object_is_two_call_sites(user_models, make_cfg, tmp_path):
    model, tie_map = build(make_cfg("model=custom", "model._target_=mymodels.Shared"))
    assert tie_map.tie_groups()[0]["call_sites"] == ["a", "b"]
    members = Members([model], tie_map, "cpu", [0])
    members.capturing = True
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    torch.nn.functional.cross_entropy(members.forward(x, [(0, 1)]), y).backward()
    members.gather_sites()
    a, b = members.site_sums[("a.weight", "a")], members.site_sums[("a.weight", "b")]
    assert not torch.equal(a, b)  # its two calls are told apart (by order)
    torch.testing.assert_close(a + b, members.leaf_by_name["a.weight"].grad)


@pytest.mark.parametrize("overrides, message", [
    (["model=custom"], "model=custom needs model._target_=PKG.MODULE.NAME"),
    (["model=custom", "model._target_=nomodule.Net"], "model._target_='nomodule.Net': cannot import nomodule"),
    (["model=custom", "model._target_=mymodels.Nope"], "module mymodels has no attribute 'Nope'"),
    (["model=custom", "model._target_=mymodels.wrong_shape"],
     "the model maps a (2, 1, 28, 28) batch to shape (2, 7); it must return (B, 10) logits"),
    (["model=custom", "model._target_=mymodels.Net", "++model.depth=3"],
     "model._target_=mymodels.Net: got an unexpected keyword argument 'depth'"),
    (["model=custom", "model._target_=mymodels.Twice"],
     "module fc (Linear) is called more than 1 time(s) per forward"),
    (["model=custom", "model._target_=mymodels.Net", "sharing=all_hidden"],
     "sharing=all_hidden needs a model that names its hidden layers"),
    (["model=cnn", "sharing=groups", "sharing.groups=[[conv2,conv3.weight]]"], "mixes module and parameter paths"),
    (["model=cnn", "sharing=groups", "sharing.groups=[[conv1.weight,conv2.weight]]"],
     "cannot tie conv1.weight [16, 1, 3, 3] with conv2.weight [16, 16, 3, 3]: shapes differ"),
    (["model=cnn", "sharing=all_hidden", "model.channels=[8,16,16]"],
     "sharing=all_hidden needs equal hidden widths (it reuses one layer for layers 2..n); got model.channels=[8, 16, 16]"),
    (["model=lenet", "model.dropout=0.2"], "model.dropout is only supported by model=mlp and model=cnn"),
])
def test_architecture_user_errors(user_models, data_root, capsys, overrides, message):
    from runner.cli import guard
    with pytest.raises(SystemExit) as e:
        guard("train", [f"data.root={data_root}", *overrides])
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert err.count("\n") == 1 and err.startswith("paramlab: error: ") and message in err, err
    assert not (user_models / "outputs").exists()


def test_custom_model_from_the_current_directory_cli(user_models, data_root):
    """The commands import the user's module from the folder they run in (as Hydra users expect)."""
    common = ["model=custom", "model._target_=mymodels.Net", "++model.width=8", f"data.root={data_root}",
              "data.limit=200", "trainer.epochs=1", "trainer.progress=false", "device=cpu"]
    r = run_cli("-m", "runner.inspect", *common, cwd=user_models)
    assert r.returncode == 0, r.stderr
    assert "gain.gain" in r.stdout and "unique parameters: 12818" in r.stdout
    r = run_cli("-m", "runner.train", "-m", *common, "optim.lr=0.05,0.1", "hydra.sweep.dir=sweep", cwd=user_models)
    assert r.returncode == 0, r.stderr
    assert "paramlab: 2 jobs as 1 ensemble (2)" in r.stdout
    info = json.loads((user_models / "sweep" / "optim.lr=0.1" / "run.json").read_text())
    assert info["status"] == "completed" and info["ensemble"]["size"] == 2


def test_dropouts_called_in_varying_order_alone_and_together(user_models, make_cfg, tmp_path):
    """A model whose forward calls its dropout modules in another order every other step: an
    ensemble member (one thread, masks drawn ahead where its calls keep to the last forward's)
    equals its run alone, for members with dropout in every layer, in some (a module with all
    rates 0 is not called: such a member sees other calls alone than together) and in none."""
    import torch

    drops = ["[0.3,0.0,0.3]", "[0.3,0.3,0.3]", "[0.0,0.0,0.0]", "[0.0,0.2,0.0]"]
    cfgs = [make_cfg("model=custom", "model._target_=mymodels.Swap", f"model.dropout={d}", "data.limit=300")
            for d in drops]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        together = run_members(cfgs, [tmp_path / f"e{i}" for i in range(len(cfgs))], ensemble=True).infos
    finally:
        torch.set_num_threads(threads)
    for i, cfg in enumerate(cfgs):
        alone = run(cfg, tmp_path / f"a{i}")
        assert together[i]["final"] == alone["final"], drops[i]
        t = {(x["name"], x["kind"]): x["array"] for x in snapshot.read_tensors(tmp_path / f"a{i}", epoch=2)}
        for x in snapshot.read_tensors(tmp_path / f"e{i}", epoch=2):
            assert np.array_equal(x["array"], t[(x["name"], x["kind"])]), (drops[i], x["name"], x["kind"])


def test_function_over_the_batch_stays_in_each_members_rows(user_models, make_cfg, tmp_path):
    """nn.Softmax(dim=0) normalises over the batch: in an ensemble, over each member's own rows."""
    over = ("model=custom", "model._target_=mymodels.BatchSoftmax", "data.limit=200")
    cfgs = [make_cfg(*over, "optim.lr=0.05"), make_cfg(*over, "optim.lr=0.1", "seed=1")]
    result = run_members(cfgs, [tmp_path / "e0", tmp_path / "e1"], ensemble=True)
    for i, cfg in enumerate(cfgs):
        assert result.infos[i]["final"] == run(cfg, tmp_path / f"a{i}")["final"]


def test_a_model_without_activation_modules_still_has_its_activation_files(user_models, make_cfg, tmp_path):
    """activations/ holds one file per snapshot epoch, without rows, so the folder reads whole."""
    from runner.report import build_report
    info = run(make_cfg("model=custom", "model._target_=mymodels.NoActivationModules", "data.limit=200"),
               tmp_path / "r")
    assert info["status"] == "completed"
    assert [p.name for p in snapshot.epoch_files(tmp_path / "r", "activations")] == [
        "epoch-0000.parquet", "epoch-0001.parquet", "epoch-0002.parquet"]
    acts = pd.read_parquet(tmp_path / "r" / "activations")
    assert acts.empty and {"epoch", "layer", "units", "mean", "var", "frac_dead"} <= set(acts.columns)
    assert build_report([tmp_path / "r"], tmp_path / "report").is_file()
