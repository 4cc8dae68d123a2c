"""Initializers are applied after tying and have the right distributions."""
import pytest
import torch

from runner.config import UserError
from runner.engine import build


def _weights(model):
    return {n: p.detach() for n, p in model.named_parameters() if n.endswith("weight")}


def test_d2l_custom_distribution(make_cfg):
    torch.manual_seed(0)
    model, _ = build(make_cfg("init=d2l_custom", "model.hidden=[256,256]"))
    w = model.net[1].weight.detach()
    zero = (w == 0).float().mean().item()
    assert 0.48 < zero < 0.52
    nz = w[w != 0].abs()
    assert nz.min() >= 5 and nz.max() <= 10
    pos = (w > 0).float().mean().item()
    assert 0.23 < pos < 0.27
    assert torch.all(model.net[1].bias == 0)


def test_normal_and_constant(make_cfg):
    torch.manual_seed(0)
    model, _ = build(make_cfg("init=normal", "model.hidden=[128]"))
    w = model.net[1].weight.detach()
    assert abs(w.std().item() - 0.01) < 0.0005 and abs(w.mean().item()) < 0.0005
    assert torch.all(model.net[1].bias == 0)
    model, _ = build(make_cfg("init=constant", "init.value=0.5"))
    for w in _weights(model).values():
        assert torch.all(w == 0.5)


def test_xavier_and_kaiming_scales(make_cfg):
    torch.manual_seed(0)
    model, _ = build(make_cfg("init=xavier", "model.hidden=[256,256]"))
    w = model.net[4].weight.detach()
    bound = (6 / (256 + 256)) ** 0.5
    assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
    model, _ = build(make_cfg("init=kaiming", "model.hidden=[256,256]"))
    w = model.net[4].weight.detach()
    assert abs(w.std().item() - (2 / 256) ** 0.5) < 0.005


def test_per_layer_first_xavier_last_42(make_cfg):
    torch.manual_seed(0)
    model, _ = build(make_cfg("init=per_layer"))
    assert torch.all(model.net[10].weight == 42) and torch.all(model.net[10].bias == 0)
    w1 = model.net[1].weight.detach()
    bound = (6 / (784 + 8)) ** 0.5                  # xavier's; PyTorch's default bound is 1/sqrt(784), 2.4x smaller
    assert 0.95 * bound < w1.abs().max() <= bound
    assert abs(w1.std().item() - bound / 3 ** 0.5) < 0.05 * bound  # uniform on [-bound, bound]
    assert torch.all(model.net[1].bias == 0)
    default = model.net[4].weight.detach()          # no rule for it: PyTorch's default, not touched
    assert default.abs().max() <= 1 / 8 ** 0.5 and not torch.all(model.net[4].bias == 0)


def test_init_after_tying_one_tensor(make_cfg):
    torch.manual_seed(0)
    model, _ = build(make_cfg("init=normal", "sharing=all_hidden"))
    assert model.net[4].weight is model.net[7].weight
    assert torch.equal(model.net[4].weight, model.net[7].weight)


def test_per_layer_rule_matching_nothing(make_cfg):
    with pytest.raises(UserError) as e:
        build(make_cfg("init=per_layer", "init.rules=[{module: net.99, init: xavier}]"))
    assert str(e.value) == ("init.rules[0].module='net.99' matches no layer; use first, last, a glob, "
                            "or one of: net.1, net.4, net.7, net.10")
