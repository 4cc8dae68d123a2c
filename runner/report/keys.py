"""What distinguishes runs: flattened configs, the keys that vary, which of them are *axes*, and
the partition of runs into groups that differ only in `seed`.

- varying keys: config keys (dotted, `model.dropout`) whose values differ between runs, except
  bookkeeping keys (IGNORED_KEYS) that never change what a run computes.
- option-brought keys: a key under a config group (`init.rules`) that varies only because a group
  option brings it: within each value of that group's `name` it is constant. `init=per_layer`
  brings `init.rules`, so the rules are not a second axis of an init comparison, nor a label term.
- axes: the varying keys other than `seed` and the option-brought keys. Labels, heatmap axes and
  comparisons use the axes.
- groups: runs whose configs differ only in `seed` (grouped by every varying key but `seed`).
"""
from __future__ import annotations

import json
import math
from typing import Dict, Iterable, List, Optional, Sequence

# Config keys that never distinguish runs (paths, progress bars, evaluation chunking).
IGNORED_KEYS = ("data.root", "trainer.progress", "sweep.resume", "data.eval_batch_size")
SEED = "seed"
# Option names that are paramlab's baselines: the reference of a comparison when present.
BASELINE_VALUES = ("none", "default")


def flatten(config: dict, prefix: str = "") -> Dict[str, object]:
    """{'optim': {'lr': 0.1}} -> {'optim.lr': 0.1}; lists become JSON text (hashable, as in runs.csv)."""
    out: Dict[str, object] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, list) else v
    return out


def token(v) -> str:
    """A value's identity when comparing configs (a missing key reads as null)."""
    return json.dumps(v, sort_keys=True)


def column_name(key: str) -> str:
    """The column / label name of a key: a group option `sharing.name` reads `sharing` (as typed on
    the command line); every other key keeps its dotted name."""
    return key[:-5] if key.endswith(".name") else key


def format_value(v) -> str:
    """A config value as a user would type it: 0.1, none, [8, 8, 8], null, true."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)  # floats as Python writes them: 0.1, 0.0, 1e-05


def value_order(v):
    """Sort key: numbers by value, then text; JSON lists by their parsed items (width 8 before 32)."""
    if isinstance(v, bool):
        return (1, str(v), ())
    if isinstance(v, (int, float)):
        return (0, "", (float(v),))
    if isinstance(v, str) and v.startswith("["):
        try:
            items = json.loads(v)
            return (0, "", tuple(float(x) if isinstance(x, (int, float)) else math.inf for x in items))
        except (ValueError, TypeError):
            pass
    return (1, "" if v is None else str(v), ())


def varying_keys(flats: Sequence[Dict[str, object]]) -> List[str]:
    keys = sorted({k for f in flats for k in f} - set(IGNORED_KEYS))
    return [k for k in keys if len({token(f.get(k)) for f in flats}) > 1]


def _option_key(key: str, present: set) -> str | None:
    """The `name` key of the innermost config group above `key` (init.rules -> init.name)."""
    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        name_key = ".".join(parts[:i]) + ".name"
        if name_key != key and name_key in present:
            return name_key
    return None


def option_brought_keys(flats: Sequence[Dict[str, object]], keys: Iterable[str]) -> List[str]:
    """Keys that are a function of their group's `name` among these runs (see the module doc)."""
    present = {k for f in flats for k in f}
    out = []
    for key in keys:
        name_key = _option_key(key, present)
        if name_key is None:
            continue
        seen: Dict[str, str] = {}
        if all(seen.setdefault(token(f.get(name_key)), token(f.get(key))) == token(f.get(key)) for f in flats):
            out.append(key)
    return out


def axis_keys(flats: Sequence[Dict[str, object]], keys: Optional[Sequence[str]] = None) -> List[str]:
    """The varying keys but seed (`keys`, when the caller has them) less those an option brings."""
    keys = [k for k in varying_keys(flats) if k != SEED] if keys is None else list(keys)
    brought = set(option_brought_keys(flats, keys))
    return [k for k in keys if k not in brought]


def group_key(flat: Dict[str, object], keys: Sequence[str]) -> tuple:
    return tuple(token(flat.get(k)) for k in keys)


def reference_value(values: Sequence[object]):
    """The value other values of a key are compared against: an option named `none` or `default`
    (paramlab's baselines) when present, else the smallest number / first text in value order."""
    for base in BASELINE_VALUES:
        if base in values:
            return base
    return sorted(values, key=value_order)[0]


def term(key: str, value) -> str:
    """`optim.lr=0.1`: a config key and a value as labels, tables and sentences show them."""
    return f"{column_name(key)}={format_value(value)}"


def label(flat: Dict[str, object], keys: Sequence[str]) -> str:
    return ", ".join(term(k, flat.get(k)) for k in keys)
