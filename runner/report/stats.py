"""Statistics tables: the runs table, groups of seeds (mean, sample std, Student-t 95% interval)
and paired comparisons between the values of each axis key.

No scipy: the t quantile comes from the regularized incomplete beta function (continued
fraction) inverted by bisection; tests check it against a printed table.

Comparisons (`comparisons.csv`): for an axis key with two or more values, every value is compared
with a reference value (`keys.reference_value`: `none` / `default` when present, else the smallest
number or first text). A *pair* is two completed runs equal in every other axis key and in the
seed, differing only in this key; the difference is value minus reference of the final val_acc
and val_loss. One row per *cell* (a combination of the other axis keys) and, when there are
several cells, one *pooled* row over all pairs of all cells (the average effect over the grid's
other settings; it treats the pairs as one sample). Each row gives the mean difference, its
95% t interval and the number of pairs; no p-values.
"""
from __future__ import annotations

import json
import math
from functools import lru_cache
from typing import Dict, List, Optional, Sequence

import numpy as np

from . import keys as K

METRICS = ("val_acc", "val_loss", "train_loss")
COMPARED = ("val_acc", "val_loss")


# ----------------------------------------------------------------------------- Student t

def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    if math.isinf(df):
        return 0.5 * (1.0 + math.erf(t / math.sqrt(2.0)))
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


@lru_cache(maxsize=None)
def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with df degrees of freedom (df = inf: the normal), by
    bisection on the CDF to ~1e-12. t_quantile(0.975, 4) = 2.776."""
    if not 0.0 < p < 1.0 or not df > 0:
        return math.nan
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def ci_half_width(std, n):
    """Half-width of the 95% t interval of a mean: t(0.975, n-1) * std / sqrt(n); NaN for n < 2.
    Works on scalars and numpy arrays."""
    std, n = np.asarray(std, dtype=float), np.asarray(n, dtype=float)
    t = np.vectorize(lambda k: t_quantile(0.975, k - 1) if k >= 2 else math.nan, otypes=[float])(n) \
        if n.size else n
    with np.errstate(invalid="ignore", divide="ignore"):
        out = t * std / np.sqrt(n)
    return out if out.ndim else float(out)


def mean_ci(values: Sequence[float]) -> Dict[str, float]:
    """mean, sample std (ddof=1) and the 95% t interval of `values` (NaNs left out);
    with one value the std and the interval are NaN, with none everything is."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    if not v.size:
        return {"mean": math.nan, "std": math.nan, "ci95_low": math.nan, "ci95_high": math.nan}
    mean = float(v.mean())
    std = float(v.std(ddof=1)) if v.size > 1 else math.nan
    h = ci_half_width(std, v.size)
    return {"mean": mean, "std": std, "ci95_low": mean - h, "ci95_high": mean + h}


# ----------------------------------------------------------------------------- tables

def files_safe(df):
    """Object columns holding anything but text (a swept list, mixed numbers and null) as JSON
    text, so that CSV and Parquet store them alike."""
    df = df.copy()
    for c in df.columns:
        if df[c].dtype == object:
            df[c] = df[c].map(lambda v: v if v is None or isinstance(v, str) else
                              (None if isinstance(v, float) and math.isnan(v) else json.dumps(v)))
    return df


def save(df, out, stem: str) -> None:
    df = files_safe(df)
    df.to_csv(out / f"{stem}.csv", index=False)
    df.to_parquet(out / f"{stem}.parquet", index=False)


def runs_table(exp):
    """One row per run: where, what differs, how it ended."""
    import pandas as pd

    rows = []
    for r in exp.runs:
        p = r.info.get("params") or {}
        at = r.stopped_at
        row = {"run": str(r.path), "run_id": r.run_id, "overrides": " ".join(r.info.get("overrides") or []),
               "status": r.status, "group": r.group}
        row.update({K.column_name(k): r.flat.get(k) for k in exp.varying})
        row.update({"epochs_completed": r.info.get("epochs_completed"), "epochs": r.info.get("epochs"),
                    "stopped_epoch": at["epoch"] if at else None, "stopped_step": at["step"] if at else None,
                    "unique_params": p.get("unique"), "total_params": p.get("total"),
                    **{m: r.final(m) for m in METRICS}, "wall_time_s": r.info.get("wall_time_s"),
                    "device": r.info.get("device"), "error": r.info.get("error")})
        rows.append(row)
    return pd.DataFrame(rows)


def groups_table(exp):
    """One row per group (CONTRACT "Report outputs"): the varying keys but seed, n (completed
    runs), n_other (diverged, failed or incomplete), and per metric of the runs' final values
    mean, sample std and 95% t interval over the completed runs only. Row i is group i."""
    import pandas as pd

    rows = []
    for g in exp.groups:
        done = exp.done(g)
        row = {K.column_name(k): g.values[k] for k in exp.group_keys}
        row.update({"n": len(done), "n_other": len(g.runs) - len(done)})
        for m in METRICS:
            row.update({f"{m}_{s}": v for s, v in mean_ci([r.final(m) for r in done]).items()})
        rows.append(row)
    return pd.DataFrame(rows)


def _completed_frame(exp):
    """Completed runs: axis values (as comparison tokens), seed, final metrics. Runs with an
    identical config (the same run twice) are averaged into one, so that a pair is well defined."""
    import pandas as pd

    cols = [*exp.axes, K.SEED]
    rows = [{**{k: K.token(r.flat.get(k)) for k in cols}, **{m: r.final(m) for m in COMPARED}}
            for r in exp.runs if r.completed]
    df = pd.DataFrame(rows, columns=cols + list(COMPARED))
    return df.groupby(cols, as_index=False, dropna=False)[list(COMPARED)].mean() if len(df) else df


def comparisons_table(exp):
    """Paired comparisons of every axis key's values against its reference (module doc)."""
    import pandas as pd

    done = _completed_frame(exp)
    columns = ["key", "value", "reference", "scope", "at", "n_pairs"] + \
        [f"{m}_diff{s}" for m in COMPARED for s in ("", "_ci95_low", "_ci95_high")] + \
        [K.column_name(k) for k in exp.axes] + ["sentence"]
    rows: List[dict] = []
    for key in exp.axes:
        values = sorted({r.flat.get(key) for r in exp.runs}, key=K.value_order)
        if len(values) < 2:
            continue
        ref = K.reference_value(values)
        others = [k for k in exp.axes if k != key]
        for value in (v for v in values if v != ref):
            a = done[done[key] == K.token(value)] if len(done) else done
            b = done[done[key] == K.token(ref)] if len(done) else done
            pairs = a.merge(b, on=others + [K.SEED], suffixes=("", "_ref")) if len(a) and len(b) else None
            base = {"key": K.column_name(key), "value": value, "reference": ref}
            if pairs is None or not len(pairs):
                rows.append({**base, "scope": "pooled", "at": "all runs", "n_pairs": 0,
                             "sentence": f"{K.term(key, value)} vs {K.term(key, ref)}: no pair of completed runs "
                                         f"(same other settings and seed)"})
                continue
            for m in COMPARED:
                pairs[f"{m}_d"] = pairs[m] - pairs[f"{m}_ref"]
            cells = list(pairs.groupby(others, sort=False)) if others else [((), pairs)]
            for cell_key, cell in cells:
                cell_key = cell_key if isinstance(cell_key, tuple) else (cell_key,)
                at = {k: json.loads(v) for k, v in zip(others, cell_key)}
                rows.append(_comparison_row(base, "cell", K.label(at, others) or "all runs", cell,
                                            {K.column_name(k): v for k, v in at.items()}))
            if len(cells) > 1:
                at = f"pooled over {len(cells)} settings of {', '.join(K.column_name(k) for k in others)}"
                rows.append(_comparison_row(base, "pooled", at, pairs, {}))
    return pd.DataFrame(rows, columns=columns)


def _comparison_row(base: dict, scope: str, at: str, pairs, at_columns: dict) -> dict:
    row = {**base, "scope": scope, "at": at, "n_pairs": len(pairs), **at_columns}
    for m in COMPARED:
        s = mean_ci(pairs[f"{m}_d"].tolist())
        row.update({f"{m}_diff": s["mean"], f"{m}_diff_ci95_low": s["ci95_low"],
                    f"{m}_diff_ci95_high": s["ci95_high"]})
    row["sentence"] = comparison_sentence(row)
    return row


def plus_minus(d: float, h: float, scale: float = 1.0) -> str:
    """'1.2 ± 0.8': the half-width to 1-2 significant digits, the mean to the same decimals."""
    d, h = d * scale, h * scale
    if not math.isfinite(h) or h <= 0:
        return f"{d:.3g}"
    lead = h / 10 ** math.floor(math.log10(h))
    decimals = min(6, max(0, -math.floor(math.log10(h)) + (1 if lead < 3 else 0)))
    return f"{d:.{decimals}f} ± {h:.{decimals}f}"


def excludes_zero(row: dict, m: str) -> Optional[bool]:
    lo, hi = row.get(f"{m}_diff_ci95_low"), row.get(f"{m}_diff_ci95_high")
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    return lo > 0 or hi < 0


def comparison_sentence(row: dict) -> str:
    """The comparison in words, e.g. 'sharing=all_hidden is better than sharing=none by 1.2 ± 0.8
    points of val accuracy and has lower val loss by 0.034 ± 0.010 (n=5 pairs, at optim.lr=0.1)'.
    A difference is called better / worse / lower / higher only where its interval excludes 0."""
    this, ref = f"{row['key']}={K.format_value(row['value'])}", f"{row['key']}={K.format_value(row['reference'])}"
    n = row["n_pairs"]
    where = f"n={n} pair{'s' if n != 1 else ''}, " + (
        row["at"] if row["scope"] == "pooled" else ("at " + row["at"] if row["at"] != "all runs" else "all runs"))
    acc, loss = row["val_acc_diff"], row["val_loss_diff"]
    if not (math.isfinite(acc) and math.isfinite(loss)):
        return f"{this} vs {ref}: no final metrics ({where})"
    acc_h = (row["val_acc_diff_ci95_high"] - row["val_acc_diff_ci95_low"]) / 2
    loss_h = (row["val_loss_diff_ci95_high"] - row["val_loss_diff_ci95_low"]) / 2
    acc_sure, loss_sure = excludes_zero(row, "val_acc"), excludes_zero(row, "val_loss")
    if acc_sure is None:  # one pair: differences, no interval
        return (f"{this} vs {ref}: {acc * 100:+.3g} points of val accuracy, {loss:+.3g} val loss "
                f"from one pair, no interval ({where})")
    loss_words = (f"{'lower' if loss < 0 else 'higher'} val loss by {plus_minus(abs(loss), loss_h)}" if loss_sure
                  else f"no clear difference in val loss ({plus_minus(loss, loss_h)})")
    if acc_sure:
        text = (f"{this} is {'better' if acc > 0 else 'worse'} than {ref} by "
                f"{plus_minus(abs(acc), acc_h, 100)} points of val accuracy" +
                (f" and has {loss_words}" if loss_sure else f"; {loss_words}"))
    else:
        text = (f"{this} vs {ref}: no clear difference in val accuracy ({plus_minus(acc, acc_h, 100)} points)" +
                (f"; {this} has {loss_words}" if loss_sure else f" or in val loss ({plus_minus(loss, loss_h)})"))
    return f"{text} ({where})"
