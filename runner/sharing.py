"""Parameter tying and tie awareness.

`tie(model, sharing_cfg)` makes the modules each group names hold the *same* Parameter
objects (writing through one alias changes the other: the seed's identity check) and
returns a `TieMap`. The modules themselves stay distinct objects, one per position, so every
call site of a shared tensor is a module path of its own and can be told apart.

`named_parameters()` lists a shared tensor once, under its canonical name (the first path),
and autograd sums every use into its `.grad`. The engine (runner.batched) splits that sum back
into the part that flowed through each call site: while capturing, each call site reads its tied
tensors as leaves of its own sharing their storage (`Members.site_leaves`), and after the backward
`Members.gather_sites()` adds each site's gradient to its per-site sum and sets the tensor's
`.grad` to their total, added in autograd's own order, so capturing changes no result. Only tied
tensors get site leaves (an untied parameter's single site *is* its `.grad`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Tuple

from torch import nn

from .config import UserError


@dataclass
class ParamInfo:
    canonical: str                 # name in named_parameters()
    aliases: List[str]             # every name in named_parameters(remove_duplicate=False)
    call_sites: List[str]          # module path of the module that uses it, one per alias
    shape: Tuple[int, ...]
    numel: int

    @property
    def tied(self) -> bool:
        return len(self.aliases) > 1


@dataclass
class TieMap:
    params: List[ParamInfo] = field(default_factory=list)

    @property
    def unique(self) -> int:
        return sum(p.numel for p in self.params)

    @property
    def total(self) -> int:
        return sum(p.numel * len(p.aliases) for p in self.params)

    def tie_groups(self) -> List[dict]:
        """The tied parameters, as run.json records them."""
        return [{"canonical": p.canonical, "aliases": p.aliases, "call_sites": p.call_sites,
                 "shape": list(p.shape), "numel": p.numel} for p in self.params if p.tied]


def build_tie_map(model: nn.Module) -> TieMap:
    """Group every parameter path by the tensor it points to."""
    seen: Dict[int, ParamInfo] = {}
    order: List[ParamInfo] = []
    for name, p in model.named_parameters(remove_duplicate=False):
        site = name.rsplit(".", 1)[0] if "." in name else ""
        info = seen.get(id(p))
        if info is None:
            info = ParamInfo(name, [], [], tuple(p.shape), p.numel())
            seen[id(p)] = info
            order.append(info)
        info.aliases.append(name)
        info.call_sites.append(site)
    return TieMap(order)


def resolve_groups(model: nn.Module, sharing_cfg) -> List[List[str]]:
    """The lists of module (or parameter) paths to tie, from the `sharing` config (validated)."""
    if sharing_cfg.name == "none":
        return []
    if sharing_cfg.name == "all_hidden":
        paths = getattr(model, "hidden_layers", None)
        if paths is None:
            raise UserError("sharing=all_hidden needs a model that names its hidden layers (a `hidden_layers` list "
                            "of module paths); tie this model's layers with sharing=groups instead")
        paths = list(paths)
        key = "model.channels" if isinstance(model.get_submodule(paths[0]), nn.Conv2d) else "model.hidden"
        shapes = [[tuple(p.shape) for p in model.get_submodule(path).parameters()] for path in paths]
        widths = [_width(model.get_submodule(p)) for p in paths]
        if len(paths) < 3:
            raise UserError(f"sharing=all_hidden ties hidden layers 2..n, so {key} needs at least 3 widths; "
                            f"got {widths}")
        if any(s != shapes[1] for s in shapes[2:]):
            raise UserError(f"sharing=all_hidden needs equal hidden widths (it reuses one layer for layers 2..n); "
                            f"got {key}={widths}, e.g. use {key}=[{widths[1]},{widths[1]},{widths[1]}]")
        return [paths[1:]]
    return [list(map(str, g)) for g in sharing_cfg.groups]


def _width(module: nn.Module):
    return getattr(module, "out_features", None) or getattr(module, "out_channels", None)


def _with_params(model: nn.Module) -> List[str]:
    return [n for n, m in model.named_modules() if n and any(True for _ in m.parameters(recurse=False))]


def _resolve(model: nn.Module, path: str):
    """("module", module) or ("param", (owner module, leaf name)) for a sharing.groups entry."""
    try:
        if path:
            return "module", model.get_submodule(path)
    except AttributeError:
        pass
    owner_path, _, leaf = path.rpartition(".")
    try:
        owner = model.get_submodule(owner_path) if owner_path else model
        if isinstance(owner._parameters.get(leaf), nn.Parameter):
            return "param", (owner, leaf)
    except AttributeError:
        pass
    raise UserError(f"sharing.groups: no module or parameter {path!r} in this model; modules with parameters: "
                    + ", ".join(_with_params(model)))


def tie(model: nn.Module, sharing_cfg) -> TieMap:
    """Tie what the sharing config names; return the model's TieMap.

    A group of module paths (any module type: Linear, Conv2d, norms, a user's module) makes the
    later modules hold the first one's Parameter objects, which needs identical parameter names
    and shapes; a group of parameter paths (`conv2.weight`) ties just those tensors."""
    groups = resolve_groups(model, sharing_cfg)
    used: Dict[str, int] = {}
    for k, group in enumerate(groups):
        if len(group) < 2:
            raise UserError(f"sharing.groups[{k}]={group} names fewer than 2 paths; a tie group needs 2 or more")
        for path in group:
            if path in used and used[path] == k:
                raise UserError(f"sharing.groups[{k}]={group} names {path!r} twice; name each path once")
            if path in used:
                raise UserError(f"sharing.groups: {path!r} appears in more than one group; merge those groups into one")
            used[path] = k
        resolved = [_resolve(model, path) for path in group]
        kinds = {kind for kind, _ in resolved}
        if len(kinds) > 1:
            raise UserError(f"sharing.groups[{k}]={group} mixes module and parameter paths; tie modules with modules "
                            "(e.g. [conv2,conv3]) or parameters with parameters (e.g. [conv2.weight,conv3.weight])")
        if kinds == {"param"}:
            (src_owner, src_leaf) = resolved[0][1]
            source = src_owner._parameters[src_leaf]
            for path, (_, (owner, leaf)) in zip(group[1:], resolved[1:]):
                if tuple(owner._parameters[leaf].shape) != tuple(source.shape):
                    raise UserError(f"sharing.groups: cannot tie {group[0]} {list(source.shape)} with {path} "
                                    f"{list(owner._parameters[leaf].shape)}: shapes differ")
                setattr(owner, leaf, source)
            continue
        source = resolved[0][1]
        src_params = dict(source.named_parameters())
        if not src_params:
            raise UserError(f"sharing.groups: module {group[0]!r} has no parameters to share")
        for path, (_, target) in zip(group[1:], resolved[1:]):
            dst_params = dict(target.named_parameters())
            src_shapes = {n: tuple(p.shape) for n, p in src_params.items()}
            dst_shapes = {n: tuple(p.shape) for n, p in dst_params.items()}
            if src_shapes != dst_shapes:
                raise UserError(f"sharing.groups: cannot tie {group[0]} {_shapes(src_shapes)} with {path} "
                                f"{_shapes(dst_shapes)}: parameter shapes differ")
            for name, p in src_params.items():
                owner, _, leaf = name.rpartition(".")
                setattr(target.get_submodule(owner) if owner else target, leaf, p)
    return build_tie_map(model)


def _shapes(shapes: Dict[str, tuple]) -> str:
    return "(" + ", ".join(f"{n} {list(s)}" for n, s in shapes.items()) + ")"
