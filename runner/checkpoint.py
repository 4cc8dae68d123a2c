"""The checkpoint that lets a killed run continue after its last completed epoch.

One file per run directory, `checkpoint.pt`, replaced atomically after each epoch's tables are
written and before run.json counts that epoch (so run.json never claims an epoch whose tables
and checkpoint are not on disk). It holds only tensors, numbers, strings, lists and dicts, and
is read with `torch.load(weights_only=True)`: no pickled code runs on load.
"""
from __future__ import annotations

import io
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import torch

from . import snapshot

NAME = "checkpoint.pt"
FORMAT = 1


def save(run_dir: Path, state: dict) -> None:
    prepare(run_dir, state)()


def prepare(run_dir: Path, state: dict) -> Callable[[], None]:
    """`state` serialized now; returns the function that writes it atomically."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    return partial(snapshot.write_bytes, Path(run_dir) / NAME, buffer.getvalue())


def load(run_dir: Path) -> Optional[dict]:
    """The run's checkpoint, or None if it has none (killed before its first epoch ended)."""
    path = Path(run_dir) / NAME
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state if state.get("format") == FORMAT else None


def remove(run_dir: Path) -> None:
    (Path(run_dir) / NAME).unlink(missing_ok=True)
