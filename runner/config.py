"""Config schema (dataclasses registered in Hydra's ConfigStore) and validation.

The dataclasses are the schema: Hydra merges every YAML under `conf/` into them, so an
unknown key or a value of the wrong type fails at compose time. `validate()` then checks
what a type cannot express (lr > 0, 0 <= dropout < 1, ...) and raises `UserError` with one
line that names the key and what is allowed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, List, Optional

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

MODELS = ("mlp", "nest_mlp", "rgnet", "lenet", "cnn", "custom")
ACTIVATIONS = ("relu", "tanh", "gelu", "sigmoid")
SHARINGS = ("none", "all_hidden", "groups")
INITS = ("default", "normal", "constant", "xavier", "kaiming", "d2l_custom", "per_layer")
RULE_INITS = tuple(i for i in INITS if i != "per_layer")
OPTIMS = ("sgd", "adam")
DEVICES = ("auto", "cpu", "cuda")  # and cuda:N


class UserError(Exception):
    """A mistake in the user's config or command: printed as one line, exit code 2."""


def one_line(e: BaseException) -> str:
    """An exception as one line: `Type: first line of its message` (an OSError: its strerror and file)."""
    if isinstance(e, KeyboardInterrupt):
        return "interrupted (KeyboardInterrupt)"
    if isinstance(e, OSError) and e.strerror:
        where = f" ({e.filename})" if e.filename else ""
        return f"{type(e).__name__}: {e.strerror}{where}"
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".strip()


@dataclass
class ModelConfig:
    name: str = "mlp"
    # Hidden widths (mlp, nest_mlp, rgnet); null for models that take none.
    hidden: Optional[List[int]] = field(default_factory=lambda: [8, 8, 8])
    # Conv widths of model=cnn; null elsewhere.
    channels: Optional[List[int]] = None
    # One float for every hidden layer, or one per hidden layer (a list). `Any` because
    # OmegaConf has no Union type; validate() checks it.
    dropout: Any = 0.0
    activation: Optional[str] = "relu"
    # model=custom: the import path of a callable returning an nn.Module; every further key
    # under `model` (added with ++model.KEY=VALUE) is one of its keyword arguments.
    _target_: Optional[str] = None


@dataclass
class SharingConfig:
    name: str = "none"
    # For name=groups: lists of module paths whose parameters become one set of tensors.
    groups: List[List[str]] = field(default_factory=list)


@dataclass
class InitRule:
    # fnmatch glob over Linear module paths (e.g. "net.1", "block2.*"), or "first" / "last".
    module: str = MISSING
    init: str = MISSING
    std: float = 0.01
    value: float = 1.0


@dataclass
class InitConfig:
    name: str = "default"
    std: float = 0.01      # normal
    value: float = 1.0     # constant
    rules: List[InitRule] = field(default_factory=list)  # per_layer


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.0       # sgd only
    weight_decay: float = 0.0


@dataclass
class DataConfig:
    root: str = "data"
    batch_size: int = 256
    limit: Optional[int] = None
    eval_batch_size: int = 10000


@dataclass
class TrainerConfig:
    epochs: int = 10
    diverge_factor: float = 1000.0
    progress: bool = True
    # CUDA: record the training step of all members once as a CUDA graph and replay it (eager
    # steps if recording fails). Ignored on the CPU.
    compile: bool = True


@dataclass
class SnapshotConfig:
    enabled: bool = True          # false: no params/, tensors/, activations/ (metrics only)
    tensors: bool = True
    diagnostics: bool = True      # update rows and step_var (false: neither; cos_grad stays)
    every: int = 1
    hist_bins: int = 64
    quantile_sample: int = 4096   # elements per tensor the quantiles are estimated from
    activation_batch: int = 512   # fixed held-out examples for activation statistics


@dataclass
class SweepConfig:
    # Path of an earlier sweep directory to resume (its completed jobs are skipped).
    resume: Optional[str] = None


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    sharing: SharingConfig = field(default_factory=SharingConfig)
    init: InitConfig = field(default_factory=InitConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    snapshot: SnapshotConfig = field(default_factory=SnapshotConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    seed: int = 0
    device: str = "auto"


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="paramlab_schema", node=Config)


def _choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise UserError(f"{key}={value!r} is not allowed; choose one of: {', '.join(allowed)}")


def _number(key: str, value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise UserError(f"{key}={value!r} must be {what}")
    return float(value)


# Built-in models: the config key holding their widths, and what their dropout applies to.
WIDTH_KEY = {"mlp": "hidden", "nest_mlp": "hidden", "rgnet": "hidden", "cnn": "channels"}
DROPOUT_SLOTS = {"mlp": "one per hidden layer", "cnn": "one per conv layer 2..n"}


def dropout_slots(model: Any) -> int:
    """How many dropout layers a built-in model has (0 for those without dropout)."""
    if model.name == "mlp":
        return len(model.hidden)
    if model.name == "cnn":
        return len(model.channels) - 1
    return 0


def dropout_list(model: Any) -> List[float]:
    """model.dropout as one float per dropout layer of a built-in model (validated)."""
    n = dropout_slots(model)
    raw = 0.0 if model.dropout is None else model.dropout
    is_list = isinstance(raw, (list, tuple, ListConfig))
    values = list(raw) if is_list else [raw] * max(n, 1)
    for v in values:
        p = _number("model.dropout", v, "a number in [0, 1) or a list of them, one per dropout layer")
        if not 0.0 <= p < 1.0:
            raise UserError(f"model.dropout={v!r} is outside [0, 1); use e.g. model.dropout=0.5")
    if n == 0:
        if any(float(v) for v in values):
            raise UserError(f"model.dropout is only supported by model=mlp and model=cnn (model={model.name} has "
                            "no dropout layers); set model.dropout=0")
        return []
    if is_list and len(values) != n:
        raise UserError(f"model.dropout has {len(values)} values but model={model.name} has {n} dropout layers "
                        f"({DROPOUT_SLOTS[model.name]}); give one float or one per dropout layer")
    return [float(v) for v in values]


def model_kwargs(model: Any) -> dict:
    """model=custom: the keyword arguments of model._target_ (every key under `model` but name and
    _target_ that is set, i.e. not null)."""
    plain = OmegaConf.to_container(model, resolve=True) if isinstance(model, DictConfig) else dict(model)
    return {k: v for k, v in plain.items() if k not in ("name", "_target_") and v is not None}


def _validate_model(m: Any) -> None:
    _choice("model", m.name, MODELS)
    if m.name == "custom":
        if not m.get("_target_"):
            raise UserError("model=custom needs model._target_=PKG.MODULE.NAME (an importable callable returning "
                            "an nn.Module), e.g. model._target_=mymodels.Net")
        return  # its arguments are checked when it is built
    _choice("model.activation", m.activation, ACTIVATIONS)
    key = WIDTH_KEY.get(m.name)
    if key:
        widths = m.get(key)
        if widths is not None and not isinstance(widths, (list, tuple, ListConfig)):
            raise UserError(f"model.{key}={widths} must be a list of widths, e.g. model.{key}=[8,8,8]")
        if not widths:
            example = "model.channels=[16,16,16]" if key == "channels" else "model.hidden=[8,8,8]"
            raise UserError(f"model.{key} is empty; give at least one width, e.g. {example}")
        for w in widths:
            if isinstance(w, bool) or not isinstance(w, int):
                raise UserError(f"model.{key} has {OmegaConf.to_container(w) if OmegaConf.is_config(w) else w!r}; "
                                f"every width must be a whole number, e.g. model.{key}=[8,8,8]")
            if w < 1:
                raise UserError(f"model.{key}={list(widths)} has width {w}; every width must be >= 1")
    dropout_list(m)
    if m.name == "nest_mlp" and len(m.hidden) != 2:
        raise UserError(f"model=nest_mlp has exactly 2 hidden layers (net.0, net.2); got model.hidden={list(m.hidden)}")


def without_hydra(cfg: DictConfig) -> DictConfig:
    """The config as a task sees it: Hydra's own `hydra` node left out."""
    return OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])


def plain_config(cfg: DictConfig) -> dict:
    """The resolved config as plain Python (what run.json records), Hydra's node left out. Node by
    node from the config itself: through without_hydra's copy it cost ~1.5 ms, and a grid's
    launcher and engine ask ~3 times per job."""
    plain = {}
    for key in cfg:
        if key == "hydra":
            continue
        node = cfg._get_node(key)
        plain[key] = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else cfg[key]
    return plain


def check_schema(cfg: DictConfig) -> None:
    """Unknown keys (Hydra lets `+key=value` add them) and wrong types, as one-line errors."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        # Without Hydra's node first (a copy, ~1.5 ms): a value interpolating into it is refused here,
        # as the engine, which gets the config without that node, could not resolve it.
        plain = plain_config(without_hydra(cfg) if "hydra" in cfg else cfg)
        model = plain.get("model")
        if isinstance(model, dict) and model.get("name") == "custom":  # further keys: the model's arguments
            plain["model"] = {k: v for k, v in model.items() if k in ModelConfig.__dataclass_fields__}
        shape = _shape(plain)
        if shape not in _PASSED:
            OmegaConf.merge(_schema(), plain)
            _PASSED.add(shape)
    except OmegaConfBaseException as e:
        raise UserError(describe_omegaconf_error(e)) from None


# What passed the schema check, by _shape: the jobs of a grid differ in numbers of one type (lr,
# dropout, seed), which pass or fail the check alike, so one check serves them all (~5 ms a job).
_PASSED: set = set()


def _shape(node: Any):
    """A config's keys and, per leaf, its value's type, and the value itself where the check depends
    on it (strings: "5" converts to an int field, "abc" does not)."""
    if isinstance(node, dict):
        return tuple((k, _shape(v)) for k, v in node.items())
    if isinstance(node, list):
        return ("[]",) + tuple(_shape(v) for v in node)
    return (type(node).__name__, node) if isinstance(node, str) else type(node).__name__


_SCHEMA: list = []


def _schema() -> DictConfig:
    """The structured Config, made once (~4 ms each time; merge copies it, so one serves all)."""
    if not _SCHEMA:
        _SCHEMA.append(OmegaConf.structured(Config))
    return _SCHEMA[0]


def describe_omegaconf_error(e: Exception, key: Optional[str] = None) -> str:
    """One line for an OmegaConf validation/key error, naming the full key (`key` where the error
    holds none, e.g. an element of the list an override gave)."""
    key = key or getattr(e, "full_key", None) or ""
    msg = str(getattr(e, "msg", None) or e).splitlines()[0].strip()
    if type(e).__name__ == "ConfigKeyError" or "not in" in msg:
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        node = OmegaConf.structured(Config)
        if parent:
            node = OmegaConf.select(node, parent)
        allowed = ", ".join(node.keys()) if isinstance(node, DictConfig) else ""
        if not allowed:       # e.g. hydra.launcher.n_jobs with the basic launcher: no list to offer
            return f"{key or msg}: unknown config key; {parent or 'the config'} has no such setting here"
        return f"{key or msg}: unknown config key; allowed keys{' in ' + parent if parent else ''}: {allowed}"
    import re

    m = re.match(r"Value '(.*)' of type '\w+' could not be converted to (\w+)", msg)
    if m and key:
        return f"{key}={m.group(1)!r} has the wrong type; expected {m.group(2).lower()}"
    if key and "is not a ListConfig" in msg:
        example = LIST_EXAMPLES.get(key)
        return f"{key}: {msg.rstrip('.')}; give a list" + (f", e.g. {key}={example}" if example else "")
    if key:
        return f"{key}: {msg}"
    return msg


LIST_EXAMPLES = {"model.hidden": "[8,8,8]", "model.channels": "[16,16,16]", "model.dropout": "[0.1,0.2,0.2]",
                 "sharing.groups": "[[net.4,net.7]]", "init.rules": "[{module: first, init: xavier}]"}


def validate(cfg: Any) -> None:
    """Value checks a dataclass type cannot express. Raises UserError (one line)."""
    _validate_model(cfg.model)

    _choice("sharing", cfg.sharing.name, SHARINGS)
    if cfg.sharing.name == "groups" and len(cfg.sharing.groups) == 0:
        raise UserError("sharing=groups needs sharing.groups, e.g. 'sharing.groups=[[net.4,net.7]]'")
    if cfg.sharing.name != "groups" and len(cfg.sharing.groups) > 0:
        raise UserError(f"sharing.groups is only used with sharing=groups (sharing={cfg.sharing.name})")

    i = cfg.init
    _choice("init", i.name, INITS)
    if i.name == "normal" and not _number("init.std", i.std, "a positive number") > 0:
        raise UserError(f"init.std={i.std!r} must be > 0")
    if i.name == "per_layer":
        if len(i.rules) == 0:
            raise UserError("init=per_layer needs init.rules, e.g. [{module: first, init: xavier}]")
        for k, rule in enumerate(i.rules):
            _choice(f"init.rules[{k}].init", rule.init, RULE_INITS)

    o = cfg.optim
    _choice("optim", o.name, OPTIMS)
    if not _number("optim.lr", o.lr, "a number > 0") > 0 or math.isinf(o.lr):
        raise UserError(f"optim.lr={o.lr!r} must be a finite number > 0, e.g. optim.lr=0.1")
    if o.momentum < 0:
        raise UserError(f"optim.momentum={o.momentum!r} must be >= 0")
    if o.weight_decay < 0:
        raise UserError(f"optim.weight_decay={o.weight_decay!r} must be >= 0")

    d = cfg.data
    if d.batch_size < 1:
        raise UserError(f"data.batch_size={d.batch_size} must be >= 1, e.g. data.batch_size=256")
    if d.eval_batch_size < 1:
        raise UserError(f"data.eval_batch_size={d.eval_batch_size} must be >= 1")
    if d.limit is not None and d.limit < 1:
        raise UserError(f"data.limit={d.limit} must be >= 1, or null for the whole training set")

    t = cfg.trainer
    if t.epochs < 1:
        raise UserError(f"trainer.epochs={t.epochs} must be >= 1")
    if not _number("trainer.diverge_factor", t.diverge_factor, "a number > 1") > 1:
        raise UserError(f"trainer.diverge_factor={t.diverge_factor!r} must be > 1 (default 1000)")

    s = cfg.snapshot
    if s.every < 1:
        raise UserError(f"snapshot.every={s.every} must be an integer >= 1 (the last epoch is always snapshotted)")
    if s.hist_bins < 1:
        raise UserError(f"snapshot.hist_bins={s.hist_bins} must be >= 1")
    if s.quantile_sample < 1:
        raise UserError(f"snapshot.quantile_sample={s.quantile_sample} must be >= 1")
    if s.activation_batch < 1:
        raise UserError(f"snapshot.activation_batch={s.activation_batch} must be >= 1")

    if not (cfg.device in DEVICES or re_device(cfg.device)):
        raise UserError(f"device={cfg.device!r} is not allowed; choose one of: auto, cpu, cuda, cuda:N")


def re_device(name: str) -> bool:
    import re

    return bool(re.fullmatch(r"cuda:\d+", str(name)))
