"""report.html: summary, comparisons in words, the groups table, the runs table, the figures.
Every string from a run (paths, ids, config values, errors) is escaped."""
from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from . import keys as K
from .figures import FIGURES
from .stats import METRICS, excludes_zero, plus_minus

esc = html.escape
CELL_ROWS_OPEN = 30   # more per-cell comparison rows than this: folded under the pooled ones
RUNS_OPEN = 100       # more runs than this: the runs table starts folded

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1400px;color:#222;padding:0 16px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:17px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
p.note{color:#555;font-size:13px;margin-top:2px}
table{border-collapse:collapse;font-size:12px;width:100%} th,td{border:1px solid #ddd;padding:4px 6px;text-align:left;vertical-align:top}
th{background:#f3f3f3;cursor:pointer;position:sticky;top:0} th:hover{background:#e6e6e6}
td.id{word-break:break-all;min-width:12em} td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.clear td{background:#eef7ee} tr.clear-worse td{background:#fbeeee}
.status-completed{color:#1a7f37;font-weight:600}.status-diverged{color:#b35900;font-weight:600}
.status-failed{color:#c62828;font-weight:600}.status-incomplete{color:#6f42c1;font-weight:600}
img{max-width:100%;border:1px solid #eee;margin-top:6px}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:5px}
code{background:#f5f5f5;padding:1px 4px;border-radius:3px} summary{cursor:pointer;margin:8px 0;color:#333}
"""
SORT_JS = """
document.querySelectorAll('table.sortable th').forEach(function(th, i){
  th.addEventListener('click', function(){
    var tb = th.closest('table').tBodies[0], rows = Array.from(tb.rows), asc = th.dataset.asc !== '1';
    rows.sort(function(a, b){
      var x = a.cells[i].dataset.v, y = b.cells[i].dataset.v, nx = parseFloat(x), ny = parseFloat(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return asc ? c : -c;});
    rows.forEach(function(r){ tb.appendChild(r); });
    th.closest('tr').querySelectorAll('th').forEach(function(h){ h.dataset.asc = ''; });
    th.dataset.asc = asc ? '1' : '';
  });
});
"""


def _missing(v) -> bool:
    return v is None or (isinstance(v, (float, np.floating)) and math.isnan(v))


def fmt(v) -> str:
    if _missing(v):
        return ""
    if isinstance(v, (float, np.floating)):
        return f"{v:.4f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def _swatch(colour) -> str:
    return '<span class="swatch" style="background:#%02x%02x%02x"></span>' % tuple(int(255 * c) for c in colour[:3])


def _cell(text: str, sort_value=None, cls: str = "", prefix: str = "") -> str:
    sv = text if sort_value is None else ("" if _missing(sort_value) else str(sort_value))
    return f'<td data-v="{esc(sv)}"{f" class={cls}" if cls else ""}>{prefix}{esc(text)}</td>'


def _table(headers: Sequence[str], rows: List[str], cls: str = "sortable") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    return (f"<table class={cls}><thead><tr>{head}</tr></thead><tbody>\n" +
            "\n".join(rows) + "\n</tbody></table>")


def _mean_pm(row, m: str) -> str:
    mean, lo, hi = row[f"{m}_mean"], row[f"{m}_ci95_low"], row[f"{m}_ci95_high"]
    if _missing(mean):
        return ""
    return plus_minus(mean, (hi - lo) / 2) if not _missing(lo) else f"{mean:.4f}"


def groups_html(exp, groups) -> str:
    keys = [K.column_name(k) for k in exp.axes]
    headers = ["group"] + keys + ["n", "n other"] + [f"{m.replace('_', ' ')} (mean ± 95%)" for m in METRICS]
    rows = []
    for g, (_, row) in zip(exp.groups, groups.iterrows()):
        cells = [_cell(f"{g.index} ({g.rank})" if g.rank else str(g.index), g.index, prefix=_swatch(g.color))]
        cells += [_cell(K.format_value(g.values[k]), g.values[k] if isinstance(g.values[k], (int, float)) else None)
                  for k in exp.axes]
        others = ", ".join(r.stop_note() for r in exp.others(g)[:3]) + (" ..." if len(exp.others(g)) > 3 else "")
        cells += [_cell(str(row["n"]), row["n"], "num"),
                  _cell(f"{row['n_other']}" + (f" ({others})" if others else ""), row["n_other"], "num")]
        cells += [_cell(_mean_pm(row, m), row[f"{m}_mean"], "num") for m in METRICS]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return _table(headers, rows)


def comparisons_html(comparisons) -> str:
    headers = ["comparison", "where", "pairs", "Δ val acc (points)", "Δ val loss", "in words"]

    def row_html(row) -> str:
        acc, loss = excludes_zero(row, "val_acc"), excludes_zero(row, "val_loss")
        cls = ""
        if acc or loss:
            better = (row["val_acc_diff"] > 0) if acc else (row["val_loss_diff"] < 0)
            cls = " class=clear" if better else " class=clear-worse"
        cells = [_cell(f"{row['key']}={K.format_value(row['value'])} vs {K.format_value(row['reference'])}"),
                 _cell(row["at"]), _cell(str(row["n_pairs"]), row["n_pairs"], "num")]
        for m, scale in (("val_acc", 100.0), ("val_loss", 1.0)):
            d, lo, hi = row[f"{m}_diff"], row[f"{m}_diff_ci95_low"], row[f"{m}_diff_ci95_high"]
            text = "" if _missing(d) else (plus_minus(d, (hi - lo) / 2, scale) if not _missing(lo)
                                           else f"{d * scale:+.3g}")
            cells.append(_cell(text, d, "num"))
        cells.append(_cell(row["sentence"]))
        return f"<tr{cls}>" + "".join(cells) + "</tr>"

    records = comparisons.to_dict("records")
    pooled = [r for r in records if r["scope"] == "pooled" or r["at"] == "all runs"]
    cells = [r for r in records if r not in pooled]
    parts = []
    if pooled:
        parts.append(_table(headers, [row_html(r) for r in pooled]))
    if cells:
        table = _table(headers, [row_html(r) for r in cells])
        if len(cells) > CELL_ROWS_OPEN or pooled:
            parts.append(f"<details{' open' if len(cells) <= CELL_ROWS_OPEN else ''}><summary>Per setting of the other "
                         f"keys ({len(cells)} rows)</summary>{table}</details>")
        else:
            parts.append(table)
    return "\n".join(parts)


def runs_html(exp, runs) -> str:
    keys = [K.column_name(k) for k in exp.varying]
    cols = ["run_id"] + keys + ["status", "stopped at", "epochs_completed", "unique_params", "total_params",
                                "train_loss", "val_loss", "val_acc", "wall_time_s", "error"]
    rows = []
    for r, (_, row) in zip(exp.runs, runs.iterrows()):
        cells = []
        for c in cols:
            if c == "run_id":
                cells.append(_cell(str(row[c]), cls="id", prefix=_swatch(exp.groups[r.group].color)))
            elif c in keys:
                v = row[c]
                text = "" if _missing(v) else K.format_value(v)
                cells.append(_cell(text, v if isinstance(v, (int, float)) and not isinstance(v, bool) else None))
            elif c == "status":
                cells.append(_cell(r.status, cls=f"status-{esc(r.status)}"))
            elif c == "stopped at":
                at = r.stopped_at
                text = "" if at is None else f"epoch {at['epoch']}" + (f", step {at['step']}" if at["step"] is not None else "")
                cells.append(_cell(text, at["epoch"] if at else None))
            elif c == "wall_time_s":
                cells.append(_cell("" if _missing(row[c]) else f"{row[c]:.1f}", row[c], "num"))
            else:
                v = row[c]
                num = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                cells.append(_cell(fmt(v), v if num else None, "num" if num else ""))
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return _table([c.replace("_", " ") for c in cols], rows)


def write_html(exp, figures: Dict[str, str], out: Path, runs, groups, comparisons) -> Path:
    counts: Dict[str, int] = {}
    for r in exp.runs:
        counts[r.status] = counts.get(r.status, 0) + 1
    axes = ", ".join(f"<code>{esc(K.column_name(k))}</code>" for k in exp.axes) or "none (one configuration)"
    brought = [k for k in exp.group_keys if k not in exp.axes]
    seeds = K.SEED in exp.varying
    notes = []
    if seeds:
        notes.append("Runs that differ only in <code>seed</code> form a group; figures and tables show group means "
                     "with 95% Student-t intervals.")
    else:
        notes.append("Every configuration ran once (one seed), so there are no intervals: ask for replicates with "
                     "<code>seed=range(0,5)</code>.")
    if brought:
        notes.append("Varying only because a group option brings them (not an axis): " +
                     ", ".join(f"<code>{esc(k)}</code>" for k in brought) + ".")
    sections = []
    for key, title, note, _ in FIGURES:
        if key in figures:
            sections.append(f"<h2>{esc(title)}</h2><p class=note>{esc(note)}</p>"
                            f'<img src="{esc(figures[key])}" alt="{esc(title)}">')
    comparisons_part = ""
    if len(comparisons):
        comparisons_part = (
            "<h2>Comparisons</h2><p class=note>Each value of a key against its reference (<code>none</code> / "
            "<code>default</code> when present, else the smallest or first value), on pairs of completed runs equal in "
            "every other key and the seed. Δ = value minus reference, mean ± half-width of its 95% t interval. "
            "Green / red rows: an interval excludes 0 (better / worse). Pooled rows average over every setting of the "
            "other keys.</p>\n" + comparisons_html(comparisons))
    runs_table = runs_html(exp, runs)
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>paramlab report</title><style>{CSS}</style></head>
<body>
<h1>paramlab report</h1>
<p class=note>{len(exp.runs)} runs ({esc(', '.join(f'{v} {k}' for k, v in sorted(counts.items())))}) in
{len(exp.groups)} group{'s' if len(exp.groups) != 1 else ''}; axes: {axes}{'; replicates over <code>seed</code>' if seeds else ''}.
{' '.join(notes)}</p>
{comparisons_part}
<h2>Groups</h2><p class=note>One row per group of runs that differ only in seed (<code>groups.csv</code>).
n: completed runs (only these enter the means); n other: runs that diverged, failed or are incomplete.
Click a column header to sort.</p>
{groups_html(exp, groups)}
<h2>Runs</h2><p class=note><em>incomplete</em>: run.json still says running (killed, or still going).
<em>stopped at</em>: the epoch (and step) where a run diverged, failed or was cut off.</p>
<details{' open' if len(exp.runs) <= RUNS_OPEN else ''}><summary>{len(exp.runs)} runs</summary>
{runs_table}
</details>
{chr(10).join(sections)}
<script>{SORT_JS}</script>
</body></html>
"""
    path = Path(out) / "report.html"
    path.write_text(doc, encoding="utf-8")
    return path
