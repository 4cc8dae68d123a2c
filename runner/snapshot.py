"""Run-directory storage: atomic one-file-per-epoch Parquet tables, run.json, and readers.

Layout of a run directory (see the README for every column):
    run.json                      status, config, counts, tie groups, final metrics, timings
    metrics/epoch-0001.parquet    epoch, split, metric, value
    params/epoch-0000.parquet     one row per tensor per kind: value | grad | grad_site, + stats
    tensors/epoch-0000.parquet    full tensors (values list<float32> + shape)
    activations/epoch-0000.parquet  per hidden layer: mean, var, frac_dead, ...

Every file is written to a temporary name starting with "." (readers skip those), fsynced,
renamed into place, and the directory fsynced: a killed run leaves only whole files. An epoch's
files reach the disk together (`durable_together`): two syncs of the file system for all of them.

This module imports no torch at import time: the report reads runs through it.
"""
from __future__ import annotations

import json
import os
import sys
import threading
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

TABLES = ("metrics", "params", "tensors", "activations")
# Statistics tables that a finished run also keeps as one file each, `compact/<table>.parquet`
# (the full tensors are never compacted: the report does not read them).
COMPACT_TABLES = ("metrics", "params", "activations")
QUANTILES = (0.01, 0.25, 0.5, 0.75, 0.99)
QUANTILE_COLUMNS = tuple(f"q{int(round(q * 100)):02d}" for q in QUANTILES)

SCHEMAS: Dict[str, pa.Schema] = {
    "metrics": pa.schema([
        ("epoch", pa.int32()), ("split", pa.string()), ("metric", pa.string()), ("value", pa.float64())]),
    "params": pa.schema([
        ("epoch", pa.int32()), ("name", pa.string()), ("kind", pa.string()), ("site", pa.string()),
        ("shape", pa.list_(pa.int64())), ("numel", pa.int64()),
        ("mean", pa.float64()), ("std", pa.float64()), ("norm", pa.float64()),
        ("min", pa.float64()), ("max", pa.float64()), ("frac_zero", pa.float64()), ("n_nonfinite", pa.int64()),
        # Diagnostics, null where they do not apply: cosine between a call site's mean gradient and
        # the parameter's (grad_site rows); mean over the epoch's steps of ||g_step - grad||^2 (grad rows).
        ("cos_grad", pa.float64()), ("step_var", pa.float64()),
        *[(c, pa.float64()) for c in QUANTILE_COLUMNS],
        ("hist_counts", pa.list_(pa.int64())), ("hist_edges", pa.list_(pa.float64()))]),
    "tensors": pa.schema([
        ("epoch", pa.int32()), ("name", pa.string()), ("kind", pa.string()), ("site", pa.string()),
        ("shape", pa.list_(pa.int64())), ("values", pa.list_(pa.float32()))]),
    "activations": pa.schema([
        ("epoch", pa.int32()), ("layer", pa.string()), ("units", pa.int64()), ("examples", pa.int64()),
        ("mean", pa.float64()), ("var", pa.float64()), ("frac_dead", pa.float64()), ("frac_zero", pa.float64())]),
}


# --------------------------------------------------------------------------- atomic files

def _fsync(path: Path) -> None:
    """fsync of a file or folder by its path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, write) -> None:
    """Write through `write(fileobj)` to a hidden temp name, then `_place` it (inside
    `durable_together`: the temp name only, the rest at the block's end)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    group = getattr(_GROUP, "files", None)
    try:
        with open(tmp, "wb") as f:
            write(f)
        if group is not None:
            group.append((tmp, path))
            return
        _place(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _place(tmp: Path, path: Path) -> None:
    """A written temp file into place, durably: fsync, rename, fsync of the folder."""
    _fsync(tmp)
    os.replace(tmp, path)
    _fsync(path.parent)


_GROUP = threading.local()      # .files: [(temp, path)], .after: [callables] of this thread's durable_together


@contextmanager
def durable_together(folder: Path):
    """The files written in this block (by this thread: write_bytes, prepare_table's and
    prepare_json's functions), all on the file system of `folder`, reach the disk together. Each
    goes to its temp name now, unsynced; at the block's end one syncfs makes all their data
    durable, they are renamed into place in the order written, except the last, then a second
    syncfs makes those names durable, and only then the last is renamed: the last (an epoch's
    run.json) never names an epoch whose files are not on disk, even after a power loss, as with
    an fsync per file. An epoch's six files (params, tensors, activations, metrics, checkpoint,
    run.json) took 12 fsyncs, file and folder each: ~2400 in the writer threads of a 9+9-member
    grid, whose kernel work and GIL hand-overs took the training threads' cores (the command
    0.2-0.47 s faster without them, in alternated runs of ~7.2 s).

    Only where syncfs says what it did (`_syncfs_fd`): Linux >= 5.8 (before, it reported no write
    error), on a local file system that journals its metadata in order (ext4, xfs, btrfs; tmpfs
    needs no sync), with the file descriptor opened before the files are written (syncfs reports
    the errors that happened after that). Elsewhere, or if syncfs fails as unsupported, every file
    gets its own fsync as outside the block. An exception removes the temp files not yet renamed;
    `after_commit` callbacks run only once the files are in place."""
    if getattr(_GROUP, "after", None) is not None:
        yield                                         # nested: part of the outer block
        return
    fd = _syncfs_fd(folder)
    files: List[tuple] = []
    after: List[Callable[[], None]] = []
    _GROUP.files, _GROUP.after = (files if fd is not None else None), after
    try:
        yield
        _GROUP.files = None
        if files:
            if _sync_filesystem(fd, folder):
                for tmp, path in files[:-1]:
                    os.replace(tmp, path)
                if len(files) > 1 and not _sync_filesystem(fd, folder):
                    for parent in {path.parent for _, path in files[:-1]}:
                        _fsync(parent)
                os.replace(*files[-1])
            else:                                     # syncfs unsupported here after all
                for tmp, path in files:
                    _place(tmp, path)
        for callback in after:
            callback()
    except BaseException:
        for tmp, _ in files:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        _GROUP.files = _GROUP.after = None
        if fd is not None:
            os.close(fd)


def after_commit(callback: Callable[[], None]) -> None:
    """`callback` now, or inside durable_together once the block's files are in place."""
    pending = getattr(_GROUP, "after", None)
    if pending is None:
        callback()
    else:
        pending.append(callback)


# File systems whose syncfs reaches the disk and whose journal keeps renames in order.
SYNCFS_FILE_SYSTEMS = ("ext4", "xfs", "btrfs", "tmpfs")
_SYNCFS: list = []
_FS_TYPES: Dict[str, Optional[str]] = {}


def _syncfs():
    """libc's syncfs on Linux >= 5.8, or None."""
    if not _SYNCFS:
        fn = None
        try:
            release = tuple(int(x) for x in os.uname().release.split("-")[0].split(".")[:2])
        except (AttributeError, ValueError):
            release = (0, 0)
        if sys.platform.startswith("linux") and release >= (5, 8):
            try:
                import ctypes

                fn = ctypes.CDLL(None, use_errno=True).syncfs
                fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
            except (OSError, AttributeError):
                fn = None
        _SYNCFS.append(fn)
    return _SYNCFS[0]


def _fs_type(folder: Path) -> Optional[str]:
    """The type of the file system holding `folder` (/proc/self/mountinfo: the longest mount point
    containing it), or None."""
    if str(folder) not in _FS_TYPES:             # (asked once per run and epoch: cached by the name given)
        key, best, kind = os.path.realpath(folder), "", None
        try:
            with open("/proc/self/mountinfo") as f:
                for line in f:
                    fields = line.split()
                    point = fields[4].replace("\\040", " ")
                    inside = key == point or key.startswith(point.rstrip("/") + "/")
                    if inside and len(point) >= len(best):
                        best, kind = point, fields[fields.index("-") + 1]
        except (OSError, ValueError, IndexError):
            kind = None
        _FS_TYPES[str(folder)] = kind
    return _FS_TYPES[str(folder)]


def _syncfs_fd(folder: Path) -> Optional[int]:
    """A descriptor of `folder` for syncfs, or None where syncfs is not to be relied on."""
    if _syncfs() is None or _fs_type(folder) not in SYNCFS_FILE_SYSTEMS:
        return None
    try:
        return os.open(folder, os.O_RDONLY)
    except OSError:
        return None


def _sync_filesystem(fd: int, folder: Path) -> bool:
    """Everything written to the file system of `fd` reaches the disk (syncfs). False if syncfs
    turns out unsupported here (then never tried again); a write error raises."""
    import ctypes
    import errno

    if _syncfs()(fd) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EPERM, errno.EINVAL):
        _SYNCFS[0] = None
        return False
    raise OSError(code, os.strerror(code), str(folder))


def write_json(path: Path, obj: dict) -> None:
    prepare_json(path, obj)()


def prepare_json(path: Path, obj: dict) -> Callable[[], None]:
    """`obj` encoded now; returns the function that writes it to `path` atomically."""
    data = (json.dumps(obj, indent=2, default=_json_default) + "\n").encode()
    return partial(write_bytes, Path(path), data)


def write_bytes(path: Path, data) -> None:
    """Bytes (or a pyarrow Buffer) into `path` atomically: file system calls only (they free the GIL)."""
    _atomic_write(path, lambda f: f.write(data))


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(type(o))


def epoch_file(run_dir: Path, table: str, epoch: int) -> Path:
    return Path(run_dir) / table / f"epoch-{epoch:04d}.parquet"


def _write_parquet(path: Path, table: "pa.Table") -> None:
    """A table into `path`, atomically."""
    _write_encoded(path, _encode_parquet(table))


def _write_encoded(path: Path, data) -> None:
    """A Parquet file's bytes into `path` (its table's folder made if it is not there)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, data)


def _encode_parquet(table: "pa.Table") -> "pa.Buffer":
    """A Parquet file's bytes: zstd for the list columns (full tensors, histograms), the others as
    they are (a column's compressor costs ~10 us to set up and gains nothing on an epoch's few
    scalars: half the CPU of writing a params file, measured); dictionaries for the string keys
    only (not the floats); row groups of 4096 rows so readers can skip epochs by their statistics.
    Into memory, then written in one call: ~7% less CPU than pyarrow writing through a Python file."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression=_COMPRESSION.get(table.schema) or _compression(table.schema),
                   use_dictionary=["name", "kind", "site", "split", "metric", "layer"], row_group_size=4096)
    return sink.getvalue()


def _compression(schema: "pa.Schema") -> dict:
    """Per Parquet column path: zstd for list columns, none for the others."""
    return {f"{field.name}.list.element" if pa.types.is_list(field.type) else field.name:
            "zstd" if pa.types.is_list(field.type) else "none" for field in schema}


_COMPRESSION = {schema: _compression(schema) for schema in SCHEMAS.values()}


# --------------------------------------------------------------------------- columns

# Arrow arrays are made from their buffers here, not by pa.array / Table.from_pydict on Python or
# numpy values: those ask pyarrow's pandas shim whether the values are pandas objects, and its
# first question imports pandas (0.15-0.3 s of CPU; measured: a grid command's two processes spent
# it while both cores were busy starting up, 7.5-8.0 s -> 7.2 s). The fast paths take exactly the
# values the writers pass (and give pa.array's result for them); anything else goes to pa.array,
# which converts or refuses as it always did. A training process never imports pandas (tested);
# the readers below do (they return DataFrames).
_NUMPY = {pa.int32(): np.int32, pa.int64(): np.int64, pa.float32(): np.float32, pa.float64(): np.float64}
_NUMBER = (int, float, np.integer, np.floating)


def _plain_numbers(values) -> bool:
    """A Python sequence of numbers and None only (bool, which pa.array keeps apart, is not one)."""
    return all(v is None or (isinstance(v, _NUMBER) and not isinstance(v, bool)) for v in values)


def _numbers(values, dtype) -> Optional[np.ndarray]:
    """`values` (a plain 1-d numpy array) as `dtype` where that loses nothing pa.array would keep
    (floats from floats, integers from integers in range), else None."""
    if type(values) is not np.ndarray or values.ndim != 1 or not values.dtype.isnative:
        return None
    source, target = values.dtype, np.dtype(dtype)
    if source == target:
        return np.ascontiguousarray(values)
    if target.kind == "f":
        ok = source.kind == "f" and np.can_cast(source, target, "safe")
    else:
        ok = source.kind in "iu" and (np.can_cast(source, target, "safe") or values.size == 0 or (
            int(values.min()) >= np.iinfo(target).min and int(values.max()) <= np.iinfo(target).max))
    return np.ascontiguousarray(values, dtype=target) if ok else None


def _validity(values, fill=0) -> tuple:
    """(values with None as `fill`, validity bitmap buffer or None) of a Python sequence."""
    if None not in values:
        return values, None
    valid = np.fromiter((v is not None for v in values), dtype=bool, count=len(values))
    return [fill if v is None else v for v in values], pa.py_buffer(np.packbits(valid, bitorder="little"))


def _offsets(lengths, n: int) -> np.ndarray:
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(np.fromiter(lengths, dtype=np.int32, count=n), out=offsets[1:])
    return offsets


def list_array(offsets: np.ndarray, flat: np.ndarray, value_type: "pa.DataType") -> "pa.Array":
    """A list<value_type> array: row i holds flat[offsets[i]:offsets[i + 1]] (flat: a 1-d array of
    the type's numpy dtype; not copied when contiguous)."""
    child = pa.Array.from_buffers(value_type, len(flat), [None, pa.py_buffer(
        np.ascontiguousarray(flat, dtype=_NUMPY[value_type]))])
    return pa.Array.from_buffers(pa.list_(value_type), len(offsets) - 1,
                                 [None, pa.py_buffer(np.ascontiguousarray(offsets, dtype=np.int32))], children=[child])


def _fast_column(values, arrow_type: "pa.DataType") -> Optional["pa.Array"]:
    """The array from its buffers for the values the writers pass, None for anything else: numbers
    (a 1-d numpy array, or a list of Python/numpy numbers and None), strings (a list of str and
    None), lists of numbers (a 2-d numpy array, one row each, or a list of number sequences or
    1-d arrays)."""
    is_list = isinstance(values, (list, tuple))
    if arrow_type in _NUMPY:
        validity = None
        if is_list:
            if not _plain_numbers(values):
                return None
            values, validity = _validity(values, 0.0 if pa.types.is_floating(arrow_type) else 0)
            values = np.array(values) if len(values) else np.zeros(0, dtype=_NUMPY[arrow_type])
        data = _numbers(values, _NUMPY[arrow_type])
        return None if data is None else pa.Array.from_buffers(arrow_type, len(data), [validity, pa.py_buffer(data)])
    if arrow_type == pa.string():
        if not is_list or not all(v is None or isinstance(v, str) for v in values):
            return None
        values, validity = _validity(values)
        data = [v.encode() if v else b"" for v in values]
        offsets = _offsets(map(len, data), len(data))
        return pa.Array.from_buffers(arrow_type, len(data), [validity, pa.py_buffer(offsets), pa.py_buffer(b"".join(data))])
    if not (pa.types.is_list(arrow_type) and arrow_type.value_type in _NUMPY):
        return None
    value_type = arrow_type.value_type
    dtype = _NUMPY[value_type]
    if isinstance(values, np.ndarray):
        if type(values) is not np.ndarray or values.ndim != 2:
            return None
        n, width = values.shape
        flat = _numbers(values.reshape(-1), dtype)
        return None if flat is None else list_array(np.arange(n + 1, dtype=np.int32) * width, flat, value_type)
    if not is_list or not all(isinstance(v, (list, tuple)) or (type(v) is np.ndarray and v.ndim == 1) for v in values):
        return None
    flat = [x for v in values for x in (v.tolist() if isinstance(v, np.ndarray) else v)]
    if None in flat or not _plain_numbers(flat):
        return None
    flat = _numbers(np.array(flat) if flat else np.zeros(0, dtype=dtype), dtype)
    return None if flat is None else list_array(_offsets(map(len, values), len(values)), flat, value_type)


def column(values, arrow_type: "pa.DataType") -> "pa.Array":
    """An Arrow array of `arrow_type`, as pa.array(values, type=arrow_type) gives it (a 2-d numpy
    array for a list type: one row each); without pyarrow's conversion where _fast_column knows
    the values."""
    if isinstance(values, pa.Array):
        return values if values.type == arrow_type else values.cast(arrow_type)
    fast = _fast_column(values, arrow_type)
    if fast is not None:
        return fast
    if isinstance(values, np.ndarray) and values.ndim == 2 and pa.types.is_list(arrow_type):
        values = list(values)
    return pa.array(values, type=arrow_type)


def arrow_table(name: str, columns: dict) -> "pa.Table":
    """One of SCHEMAS' tables from its columns (each as `column` takes it)."""
    schema = SCHEMAS[name]
    return pa.Table.from_arrays([column(columns[f.name], f.type) for f in schema], schema=schema)


def write_table(run_dir: Path, table: str, epoch: int, columns: dict) -> Path:
    """Write one epoch's rows of `table` (a dict of columns) atomically; returns the file path."""
    prepare_table(run_dir, table, epoch, columns)()
    return epoch_file(run_dir, table, epoch)


def prepare_table(run_dir: Path, table: str, epoch: int, columns: dict) -> Callable[[], None]:
    """One epoch's rows of `table` encoded now (the CPU part: Arrow columns, Parquet bytes); returns
    the function that writes them atomically (file system calls only)."""
    path = epoch_file(run_dir, table, epoch)
    rows = arrow_table(table, columns)
    data = _encode_parquet(rows)

    def write() -> None:
        _write_encoded(path, data)
        if table in COMPACT_TABLES:
            after_commit(partial(_remember, str(path), rows))      # once the file is in place

    return write


# The compactable tables this process wrote, by file: compact_run takes its rows from here instead of
# reading its own files back (~0.25 s per 9 runs of 10 epochs here), up to WRITTEN_BYTES in all (past
# that it reads the files). Entries leave with their run's compaction, clearing or forget().
_WRITTEN: Dict[str, tuple] = {}                          # file -> (its table, its buffers' size)
WRITTEN_BYTES = 64 * 2 ** 20
_WRITTEN_LOCK = threading.Lock()
_WRITTEN_SIZE = [0]


def _remember(key: str, rows: "pa.Table") -> None:
    size = rows.get_total_buffer_size()                  # (nbytes walks the columns in Python: ~0.1 ms)
    with _WRITTEN_LOCK:
        _drop(key)
        if _WRITTEN_SIZE[0] + size <= WRITTEN_BYTES:
            _WRITTEN[key] = (rows, size)
            _WRITTEN_SIZE[0] += size


def _take(key: str) -> Optional["pa.Table"]:
    with _WRITTEN_LOCK:
        return _drop(key)


def _drop(key: str) -> Optional["pa.Table"]:
    entry = _WRITTEN.pop(key, None)
    if entry is None:
        return None
    _WRITTEN_SIZE[0] -= entry[1]
    return entry[0]


def forget(run_dir: str | os.PathLike) -> None:
    """Drop what _WRITTEN holds of a run (one that cannot be compacted)."""
    prefix = str(Path(run_dir)) + os.sep
    with _WRITTEN_LOCK:
        for key in [key for key in _WRITTEN if key.startswith(prefix)]:
            _drop(key)


def clear_tables(run_dir: Path) -> None:
    """Remove every table file and compacted copy (for a run restarted into the same directory):
    the files paramlab names (own_file), none of a user's own in those folders."""
    for folder in [Path(run_dir) / table for table in TABLES] + [Path(run_dir) / "compact"]:
        if folder.is_dir():
            for f in folder.iterdir():
                if own_file(f.name, compact=folder.name == "compact"):
                    _take(str(f))
                    f.unlink()


def own_file(name: str, compact: bool = False) -> bool:
    """A name paramlab gives a table folder's file (`epoch-0007.parquet`; in compact/, a table's
    `<table>.parquet`), or the hidden temp name of one while it is written (`.<name>.tmp-PID`)."""
    if name.startswith(".") and ".tmp-" in name:
        name = name[1:name.rindex(".tmp-")]
    if compact:
        return name in {f"{t}.parquet" for t in TABLES}
    return name.startswith("epoch-") and name.endswith(".parquet") and name[6:-8].isdigit()


# --------------------------------------------------------------------------- readers

def read_run(run_dir: str | os.PathLike) -> dict:
    with open(Path(run_dir) / "run.json") as f:
        return json.load(f)


def read_table(run_dir: str | os.PathLike, table: str, columns: Optional[Sequence[str]] = None, filter=None):
    """One table of a run as a pandas DataFrame: every epoch file in one dataset scan, only
    `columns`, rows matching the optional pyarrow `filter`; empty with the right columns if none.
    Hidden temp files (a write in progress or killed) and files of other names are skipped."""
    import pyarrow.dataset as ds

    schema = SCHEMAS[table]
    columns = list(columns) if columns is not None else schema.names
    files = epoch_files(run_dir, table)         # paramlab's epoch files only: a user's own file there is not read
    if not files:
        return schema.empty_table().select(columns).to_pandas()
    dataset = ds.dataset([str(f) for f in files], format="parquet", schema=schema)
    return dataset.to_table(columns=columns, filter=filter).to_pandas()


def compact_file(run_dir: str | os.PathLike, table: str) -> Path:
    return Path(run_dir) / "compact" / f"{table}.parquet"


def epoch_files(run_dir: str | os.PathLike, table: str) -> List[Path]:
    """The whole epoch files of one table, in epoch order (hidden temp files left out; one
    listdir, as a report over many runs calls this for every run and table)."""
    folder = Path(run_dir) / table
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return [folder / n for n in sorted(n for n in names if n.startswith("epoch-") and n.endswith(".parquet"))]


def epoch_of(path: Path) -> int:
    """The epoch an epoch file holds (`epoch-0007.parquet` -> 7)."""
    return int(Path(path).name[6:-8])


def compact_run(run_dir: str | os.PathLike, tables: Sequence[str] = COMPACT_TABLES) -> List[Path]:
    """Copy each statistics table of a finished run into one file, `compact/<table>.parquet`.

    Reading 1000 runs x 3 tables x 20 epochs one small file at a time is what makes a big report
    slow; one file per table and run cuts the files 20-fold. The per-epoch folders stay as they
    are (they remain the source of truth); the copy holds exactly their rows, in epoch order, in
    the table's schema. Written atomically; a table without epoch files gets no compact file
    (and loses a stale one). Returns the files written. `tables`: only these."""
    written = []
    for table in tables:
        target = compact_file(run_dir, table)
        files = epoch_files(run_dir, table)
        if not files:
            target.unlink(missing_ok=True)
            continue
        schema = SCHEMAS[table]
        parts = [_take(str(f)) for f in files]
        parts = [rows if rows is not None else pq.read_table(f, schema=schema) for rows, f in zip(parts, files)]
        _write_parquet(target, pa.concat_tables(parts))
        written.append(target)
    return written


def read_metrics(run_dir):
    return read_table(run_dir, "metrics")


def read_params(run_dir, columns: Optional[Sequence[str]] = None):
    return read_table(run_dir, "params", columns)


def read_activations(run_dir):
    return read_table(run_dir, "activations")


def read_tensors(run_dir, epoch: Optional[int] = None, name: Optional[str] = None,
                 kind: Optional[str] = None) -> List[dict]:
    """Full tensors as dicts {epoch, name, kind, site, array} with `array` a numpy float32
    array of the stored shape. Filters are optional."""
    files = [epoch_file(run_dir, "tensors", epoch)] if epoch is not None else epoch_files(run_dir, "tensors")
    out = []
    for f in files:
        if not f.is_file():
            continue
        t = pq.read_table(f)
        names = t.column("name").to_pylist()
        kinds = t.column("kind").to_pylist()
        for i in range(t.num_rows):
            if (name is not None and names[i] != name) or (kind is not None and kinds[i] != kind):
                continue
            values = t.column("values")[i].values.to_numpy(zero_copy_only=False)
            shape = t.column("shape")[i].as_py()
            out.append({"epoch": t.column("epoch")[i].as_py(), "name": names[i], "kind": kinds[i],
                        "site": t.column("site")[i].as_py(), "array": np.array(values).reshape(shape)})
    return out
