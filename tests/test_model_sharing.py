"""Models, parameter counts, tying (identity, aliases, call sites) and tied gradients."""
import pytest
import torch

from runner.config import UserError
from runner.batched import Members
from runner.sharing import build_tie_map
from runner.engine import build


def test_seed_preset_counts(make_cfg):
    _, tied = build(make_cfg("experiment=seed_sharing"))
    assert (tied.unique, tied.total) == (6442, 6514)
    _, untied = build(make_cfg("experiment=seed_sharing", "sharing=none"))
    assert (untied.unique, untied.total) == (6514, 6514)
    assert untied.tie_groups() == []


def test_tie_groups_record_aliases_and_call_sites(make_cfg):
    _, tie_map = build(make_cfg("experiment=seed_sharing"))
    assert tie_map.tie_groups() == [
        {"canonical": "net.4.weight", "aliases": ["net.4.weight", "net.7.weight"],
         "call_sites": ["net.4", "net.7"], "shape": [8, 8], "numel": 64},
        {"canonical": "net.4.bias", "aliases": ["net.4.bias", "net.7.bias"],
         "call_sites": ["net.4", "net.7"], "shape": [8], "numel": 8}]


def test_tied_identity_the_seed_check(make_cfg):
    model, _ = build(make_cfg("sharing=all_hidden"))
    net = model.net
    assert net[4].weight is net[7].weight and net[4].bias is net[7].bias
    assert net[1].weight is not net[4].weight
    with torch.no_grad():
        net[4].weight[0, 0] = 100
    assert net[7].weight[0, 0].item() == 100  # the same tensor, not an equal copy
    names = [n for n, _ in model.named_parameters()]
    assert "net.7.weight" not in names and "net.4.weight" in names
    all_names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    assert "net.7.weight" in all_names


def test_nest_mlp_names_as_in_seed(make_cfg):
    model, tie_map = build(make_cfg("model=nest_mlp"))
    assert [n for n, _ in model.net.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert tie_map.unique == 784 * 64 + 64 + 64 * 32 + 32 + 32 * 10 + 10


def test_rgnet_nested_blocks(make_cfg):
    model, tie_map = build(make_cfg("model=rgnet"))
    names = [n for n, _ in model.named_parameters()]
    assert names[:2] == ["block2.0.0.weight", "block2.0.0.bias"]
    assert len(model.block2) == 4
    assert tie_map.unique == 784 * 4 + 4 + 3 * (4 * 4 + 4) + 4 * 10 + 10
    _, tied = build(make_cfg("model=rgnet", "sharing=all_hidden"))
    assert tied.total - tied.unique == 2 * (4 * 4 + 4)


def test_groups_sharing_ties_named_blocks(make_cfg):
    model, tie_map = build(make_cfg("model=rgnet", "sharing=groups", "sharing.groups=[[block2.1,block2.3]]"))
    assert model.block2[1][0].weight is model.block2[3][0].weight
    assert [g["aliases"] for g in tie_map.tie_groups()] == [
        ["block2.1.0.weight", "block2.3.0.weight"], ["block2.1.0.bias", "block2.3.0.bias"]]


@pytest.mark.parametrize("overrides, message", [
    (("sharing=all_hidden", "model.hidden=[16,8,8]"),
     "sharing=all_hidden needs equal hidden widths (it reuses one layer for layers 2..n); "
     "got model.hidden=[16, 8, 8], e.g. use model.hidden=[8,8,8]"),
    (("sharing=groups", "sharing.groups=[[net.1,net.4]]"),
     "sharing.groups: cannot tie net.1 (weight [8, 784], bias [8]) with net.4 (weight [8, 8], bias [8]): "
     "parameter shapes differ"),
    (("sharing=groups", "sharing.groups=[[net.4,net.99]]"),
     "sharing.groups: no module or parameter 'net.99' in this model; modules with parameters: net.1, net.4, "
     "net.7, net.10"),
])
def test_sharing_errors(make_cfg, overrides, message):
    with pytest.raises(UserError) as e:
        build(make_cfg(*overrides))
    assert str(e.value) == message


def _batch(seed=0, n=32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_tied_grads_add_up_and_sites_match_untied_twin(make_cfg):
    """The per-site gradients of the tied model equal the per-layer gradients of an untied twin
    holding copies of the same weights; their sum is the tied .grad."""
    torch.manual_seed(0)
    tied, tie_map = build(make_cfg("sharing=all_hidden"))
    twin, _ = build(make_cfg("sharing=none"))
    with torch.no_grad():
        for name, p in twin.named_parameters():
            p.copy_(dict(tied.named_parameters(remove_duplicate=False))[name])
    members = Members([tied], tie_map, "cpu", [0])
    members.capturing = True
    x, y = _batch()
    torch.nn.functional.cross_entropy(members.forward(x, [(0, 1)]), y).backward()
    members.gather_sites()
    torch.nn.functional.cross_entropy(twin(x), y).backward()
    grads = {n: p.grad for n, p in zip(members.names, members.leaves)}
    for leaf in ("weight", "bias"):
        g4 = twin.net[4].get_parameter(leaf).grad
        g7 = twin.net[7].get_parameter(leaf).grad
        torch.testing.assert_close(members.site_sums[(f"net.4.{leaf}", "net.4")], g4)
        torch.testing.assert_close(members.site_sums[(f"net.4.{leaf}", "net.7")], g7)
        torch.testing.assert_close(grads[f"net.4.{leaf}"], g4 + g7)
    # Untied layers: identical gradients, and the taps changed no result.
    torch.testing.assert_close(grads["net.1.weight"], twin.net[1].weight.grad)
    with torch.no_grad():
        torch.testing.assert_close(members.forward(x, [(0, 1)]), twin(x))


@pytest.mark.parametrize("k", [1, 3])
def test_capture_gives_tied_grads_bit_for_bit(make_cfg, k):
    """A Linear tied at four call sites: with capture on, each tied tensor's .grad is exactly the
    one autograd gives without capture (its sites' parts added last call first, as autograd adds
    them; another order differs in the last bits of some elements)."""
    torch.manual_seed(0)
    templates, tie_map = zip(*[build(make_cfg("model.hidden=[32,32,32,32,32]", "sharing=all_hidden"))
                               for _ in range(k)])
    members = Members(list(templates), tie_map[0], "cpu", list(range(k)))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(k * 64, 1, 28, 28, generator=g), torch.randint(0, 10, (k * 64,), generator=g)
    grads = []
    for capturing in (False, True):
        members.capturing = capturing
        for p in members.leaves:
            p.grad = None
        torch.nn.functional.cross_entropy(members.forward(x, [(i, i + 1) for i in range(k)]), y).backward()
        if capturing:
            members.gather_sites()
        grads.append([p.grad.clone() for p in members.leaves])
    assert tie_map[0].tie_groups()[0]["call_sites"] == ["net.4", "net.7", "net.10", "net.13"]
    for name, off, on in zip(members.names, *grads):
        assert torch.equal(off, on), name
    total = sum(members.site_sums[("net.4.weight", s)] for s in ("net.4", "net.7", "net.10", "net.13"))
    torch.testing.assert_close(total, members.leaf_by_name["net.4.weight"].grad)


def test_build_tie_map_sees_module_level_ties():
    shared = torch.nn.Linear(4, 4)
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), shared, torch.nn.ReLU(), shared)
    tm = build_tie_map(net)
    assert (tm.unique, tm.total) == (40, 60)
    assert tm.tie_groups()[0]["aliases"] == ["2.weight", "4.weight"]


def test_inspect_command_counts_and_writes_nothing(tmp_path):
    from conftest import run_cli
    r = run_cli("-m", "runner.inspect", "experiment=seed_sharing", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "unique parameters: 6442" in r.stdout and "total parameters:  6514" in r.stdout
    assert "net.4.weight, net.7.weight" in r.stdout and "net.4, net.7" in r.stdout
    r = run_cli("-m", "runner.inspect", "experiment=lr_dropout_grid", cwd=tmp_path)  # a grid preset: no sweep
    assert r.returncode == 0 and "unique parameters: 6514" in r.stdout
    r = run_cli("-m", "runner.inspect", "-m", "optim.lr=0.1,0.2", cwd=tmp_path)   # -m would train: refused
    assert r.returncode == 2 and "takes no -m" in r.stderr and r.stderr.count("\n") == 1
    r = run_cli("-m", "runner.inspect", "hydra.mode=MULTIRUN", "optim.lr=0.1,0.2", cwd=tmp_path)
    assert r.returncode == 2 and "optim.lr=0.1,0.2 gives several values; give one" in r.stderr
    assert list(tmp_path.iterdir()) == []
