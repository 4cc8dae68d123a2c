"""The models: plain nn.Modules whose shapes are all known from the config (no lazy layers),
so tying and initialization see real tensors.

Each model tells the rest of paramlab two things about its layout:
- `hidden_linears`: module paths of the hidden Linear layers, in forward order (what
  `sharing=all_hidden` ties and `init.rules` `first`/`last` refer to, with the head);
- `hidden_outputs`: module paths whose outputs are the hidden activations (for activation stats).
"""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn

IN_FEATURES = 28 * 28
N_CLASSES = 10
_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid}


class MLP(nn.Module):
    """The seed's PlotParameterMLP without the tying: Flatten, then (Linear, act, Dropout) per
    hidden width, then a Linear head. With hidden [8,8,8] the Linear layers sit at net.1,
    net.4, net.7 and the head at net.10."""

    def __init__(self, hidden: Sequence[int], dropout: Sequence[float], activation: str = "relu"):
        super().__init__()
        layers: List[nn.Module] = [nn.Flatten()]
        width = IN_FEATURES
        for h, p in zip(hidden, dropout):
            layers += [nn.Linear(width, h), _ACTIVATIONS[activation](), nn.Dropout(p)]
            width = h
        layers.append(nn.Linear(width, N_CLASSES))
        self.net = nn.Sequential(*layers)
        self.hidden_linears = [f"net.{1 + 3 * i}" for i in range(len(hidden))]
        self.hidden_outputs = [f"net.{2 + 3 * i}" for i in range(len(hidden))]
        self.head = f"net.{len(layers) - 1}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 1, 28, 28) -> (B, 10)
        return self.net(x)


class NestMLP(nn.Module):
    """The seed's NestMLP: `net` = Linear 64, ReLU, Linear 32, ReLU; `linear` to the classes.
    `model.net.named_parameters()` gives 0.weight, 0.bias, 2.weight, 2.bias as in the seed."""

    def __init__(self, hidden: Sequence[int] = (64, 32), activation: str = "relu"):
        super().__init__()
        act = _ACTIVATIONS[activation]
        self.net = nn.Sequential(nn.Linear(IN_FEATURES, hidden[0]), act(),
                                 nn.Linear(hidden[0], hidden[1]), act())
        self.linear = nn.Linear(hidden[1], N_CLASSES)
        self.hidden_linears = ["net.0", "net.2"]
        self.hidden_outputs = ["net.1", "net.3"]
        self.head = "linear"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.net(x.flatten(1)))


class RGNet(nn.Module):
    """The seed's nested blocks: `block2` holds one `block1` (Linear + act) per hidden width
    (the seed's four blocks of width 4 by default), then `head` to the classes. Parameter
    names nest: block2.0.0.weight is block 0's Linear weight."""

    def __init__(self, hidden: Sequence[int] = (4, 4, 4, 4), activation: str = "relu"):
        super().__init__()
        blocks = []
        width = IN_FEATURES
        for h in hidden:
            blocks.append(nn.Sequential(nn.Linear(width, h), _ACTIVATIONS[activation]()))
            width = h
        self.block2 = nn.Sequential(*blocks)
        self.head_linear = nn.Linear(width, N_CLASSES)
        self.hidden_linears = [f"block2.{i}.0" for i in range(len(hidden))]
        self.hidden_outputs = [f"block2.{i}.1" for i in range(len(hidden))]
        self.head = "head_linear"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_linear(self.block2(x.flatten(1)))


def build_model(model_cfg) -> nn.Module:
    """Build the model the `model` config group names (validated config)."""
    from .config import dropout_list

    name = model_cfg.name
    hidden = [int(h) for h in model_cfg.hidden]
    if name == "mlp":
        return MLP(hidden, dropout_list(model_cfg), model_cfg.activation)
    if name == "nest_mlp":
        return NestMLP(hidden, model_cfg.activation)
    if name == "rgnet":
        return RGNet(hidden, model_cfg.activation)
    raise ValueError(name)  # validate() rejects other names first
