"""Initializers, applied after tying so a tied tensor is initialized once, as one tensor.

Every named init sets the weights as named and the biases to zero; `default` keeps
PyTorch's own initialization (Kaiming-uniform weights, uniform biases).
"""
from __future__ import annotations

import fnmatch
from typing import List, Tuple

import torch
from torch import nn

from .config import UserError


def _init_linear(m: nn.Linear, name: str, std: float = 0.01, value: float = 1.0) -> None:
    w = m.weight
    if name == "default":
        m.reset_parameters()
        return
    if name == "normal":
        nn.init.normal_(w, mean=0.0, std=std)
    elif name == "constant":
        nn.init.constant_(w, value)
    elif name == "xavier":
        nn.init.xavier_uniform_(w)
    elif name == "kaiming":
        nn.init.kaiming_normal_(w, nonlinearity="relu")
    elif name == "d2l_custom":
        # U(5,10) w.p. 1/4, 0 w.p. 1/2, U(-10,-5) w.p. 1/4: uniform on [-10, 10], then zero |w| < 5.
        nn.init.uniform_(w, -10.0, 10.0)
        w.mul_(w.abs() >= 5)
    else:
        raise ValueError(name)
    if m.bias is not None:
        nn.init.zeros_(m.bias)


def linear_layers(model: nn.Module) -> List[Tuple[str, nn.Linear]]:
    """(path, module) of every Linear layer in forward order, aliases of tied modules included."""
    return [(p, m) for p, m in model.named_modules(remove_duplicate=False) if isinstance(m, nn.Linear)]


def _rule_matches(model: nn.Module, pattern: str, path: str) -> bool:
    if pattern == "first":
        return path == model.hidden_linears[0]
    if pattern == "last":
        return path == model.head
    return fnmatch.fnmatchcase(path, pattern)


@torch.no_grad()
def initialize(model: nn.Module, init_cfg) -> None:
    """Apply the `init` config to every Linear layer; a tied tensor is initialized once."""
    layers = linear_layers(model)
    if init_cfg.name == "default":
        return
    done = set()
    if init_cfg.name != "per_layer":
        for _, m in layers:
            if id(m.weight) not in done:
                _init_linear(m, init_cfg.name, init_cfg.std, init_cfg.value)
                done.add(id(m.weight))
        return
    rules = list(init_cfg.rules)
    paths = [p for p, _ in layers]
    for k, rule in enumerate(rules):
        if not any(_rule_matches(model, rule.module, p) for p in paths):
            raise UserError(f"init.rules[{k}].module={rule.module!r} matches no Linear layer; use first, last, "
                            f"a glob, or one of: {', '.join(paths)}")
    # The first matching rule decides for a layer; layers no rule matches keep PyTorch's init.
    for path, m in layers:
        for rule in rules:
            if _rule_matches(model, rule.module, path):
                if id(m.weight) not in done:
                    _init_linear(m, rule.init, rule.std, rule.value)
                    done.add(id(m.weight))
                break
