"""paramlab's optimizer (stacked members, per-member hyperparameters, lean imports) gives
torch.optim's results: each member equals torch.optim run alone with that member's settings."""
import pytest
import torch
from omegaconf import OmegaConf

from runner.optim import Optimizer


def _net():
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))


def _loss(params, x, y):
    w1, b1, w2, b2 = params
    return torch.nn.functional.cross_entropy(torch.relu(x @ w1.t() + b1) @ w2.t() + b2, y)


def _reference(make_opt, seed, steps):
    torch.manual_seed(seed)
    net = _net()
    opt = make_opt(list(net.parameters()))
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        _loss(list(net.parameters()), x, y).backward()
        opt.step()
    return [p.detach().clone() for p in net.parameters()]


def _ours(name, settings, steps):
    """All members at once: member k starts from seed k's init and sees seed k's data."""
    k = len(settings)
    inits, data = [], []
    for seed in range(k):
        torch.manual_seed(seed)
        inits.append([p.detach() for p in _net().parameters()])
        data.append((torch.randn(16, 6), torch.randint(0, 3, (16,))))
    if k == 1:
        params = [t.clone().requires_grad_() for t in inits[0]]
    else:
        params = [torch.stack([m[i] for m in inits]).requires_grad_() for i in range(4)]
    opt = Optimizer(params, [OmegaConf.create({"name": name, **s}) for s in settings], "cpu")
    for _ in range(steps):
        opt.zero_grad()
        members = [params] if k == 1 else [[p[m] for p in params] for m in range(k)]
        sum(_loss(ps, *data[m]) for m, ps in enumerate(members)).backward()
        opt.step()
    return [[p.detach() for p in params]] if k == 1 else [[p[m].detach() for p in params] for m in range(k)]


SGD = [{"lr": 0.1, "momentum": 0.0, "weight_decay": 0.0}, {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.0},
       {"lr": 0.2, "momentum": 0.9, "weight_decay": 1e-2}, {"lr": 0.1, "momentum": 0.0, "weight_decay": 1e-2}]


@pytest.mark.parametrize("settings", [SGD[:1], SGD[1:2], SGD[2:3], SGD[3:], SGD], ids=["1", "2", "3", "4", "all"])
def test_sgd_members_match_torch(settings):
    ours = _ours("sgd", settings, steps=5)
    for seed, (s, got) in enumerate(zip(settings, ours)):
        ref = _reference(lambda p: torch.optim.SGD(p, foreach=True, **s), seed, 5)
        for a, b in zip(got, ref):
            assert torch.equal(a, b)  # the same bits


ADAM = [{"lr": 1e-2, "weight_decay": 0.0}, {"lr": 3e-3, "weight_decay": 1e-2}, {"lr": 1e-3, "weight_decay": 0.0}]


@pytest.mark.parametrize("settings", [ADAM[:1], ADAM], ids=["1", "all"])
def test_adam_members_match_torch(settings):
    ours = _ours("adam", settings, steps=5)
    for seed, (s, got) in enumerate(zip(settings, ours)):
        ref = _reference(lambda p: torch.optim.Adam(p, foreach=True, **s), seed, 5)
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_frozen_member_does_not_move():
    params = [torch.ones(3, 4, requires_grad=True)]
    opt = Optimizer(params, [OmegaConf.create({"name": "sgd", "lr": 0.1, "momentum": 0.9})] * 3, "cpu")
    opt.freeze(1)
    for _ in range(3):
        opt.zero_grad()
        (params[0] * torch.arange(1.0, 5.0)).sum().backward()
        opt.step()
    assert torch.equal(params[0][1], torch.ones(4)) and not torch.equal(params[0][0], torch.ones(4))


def test_adam_step_count_on_the_device_matches_the_host_path():
    """A GPU keeps Adam's step count on the device (so a step can be a CUDA graph); the same
    code on the CPU gives torch.optim's results up to float32 rounding of the bias corrections."""
    results = []
    for on_device in (False, True):
        torch.manual_seed(0)
        p = torch.randn(3, 5, requires_grad=True)
        opt = Optimizer([p], [OmegaConf.create({"name": "adam", "lr": 0.01, "weight_decay": 0.0})] * 3, "cpu",
                        on_device_step=on_device)
        for step in range(4):
            opt.zero_grad()
            (p * torch.arange(15.0).view(3, 5) * (step + 1)).sum().backward()
            opt.step()
        results.append(p.detach().clone())
        assert opt.member_state(0)["t"] == 4
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-6)
