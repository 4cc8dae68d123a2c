"""paramlab's SGD / Adam (lean imports) give torch.optim's results."""
import pytest
import torch

from runner.optim import SGD, Adam


def _train(make_opt, steps=5):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    opt = make_opt(list(net.parameters()))
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return [p.detach().clone() for p in net.parameters()]


@pytest.mark.parametrize("momentum, wd", [(0.0, 0.0), (0.9, 0.0), (0.9, 1e-2), (0.0, 1e-2)])
def test_sgd_matches_torch(momentum, wd):
    ours = _train(lambda p: SGD(p, lr=0.1, momentum=momentum, weight_decay=wd))
    ref = _train(lambda p: torch.optim.SGD(p, lr=0.1, momentum=momentum, weight_decay=wd, foreach=True))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


@pytest.mark.parametrize("wd", [0.0, 1e-2])
def test_adam_matches_torch(wd):
    ours = _train(lambda p: Adam(p, lr=1e-2, weight_decay=wd))
    ref = _train(lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=wd, foreach=True))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
