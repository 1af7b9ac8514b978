"""``qexp tables``: each paper's tables from run records, beside the paper's own numbers.

A paper is data (``configs/paper/<key>.yaml``): tables of rows, each row a ``match`` on the
record (dotted keys into ``choices`` / ``config`` / ``quant``) plus the paper's reported
numbers.  Records are grouped by row; several seeds give mean ± std and n.  Rows without
runs are shown as missing, never filled in; failed/running runs are listed apart.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qexp.report.store import RECORD, STATUS, read_record

PAPERS = ("chen2021", "dong2017", "avila2022", "sung2015", "zhao2019")


def paper_dir() -> Path:
    from qexp.config import config_dir

    return config_dir() / "paper"


def load_paper(key: str) -> dict[str, Any]:
    path = paper_dir() / f"{key}.yaml"
    if not path.exists():
        from qexp.errors import QexpError

        known = ", ".join(sorted(p.stem for p in paper_dir().glob("*.yaml")))
        raise QexpError(f"--paper {key}: no configs/paper/{key}.yaml; allowed: {known}")
    return yaml.safe_load(path.read_text())


@dataclass
class RunSet:
    completed: list[dict[str, Any]] = field(default_factory=list)
    other: list[tuple[Path, str, str]] = field(default_factory=list)  # (dir, status, error)


def collect(runs: str | Path) -> RunSet:
    """Every record under ``runs`` (recursively); runs without a completed record listed apart."""
    out = RunSet()
    root = Path(runs)
    seen: set[Path] = set()
    for rec_path in sorted(root.rglob(RECORD)):
        rec = read_record(rec_path)
        seen.add(rec_path.parent)
        if rec is None:
            out.other.append((rec_path.parent, "unreadable", "record.json cannot be parsed"))
        elif rec.get("status") == "completed":
            rec["_dir"] = str(rec_path.parent)
            out.completed.append(rec)
        else:
            out.other.append((rec_path.parent, str(rec.get("status")), str(rec.get("error", ""))))
    for st_path in sorted(root.rglob(STATUS)):
        if st_path.parent in seen:
            continue
        st = read_record(st_path) or {}
        out.other.append((st_path.parent, str(st.get("status", "unknown")), str(st.get("error", "") or "")))
    return out


def lookup(record: dict[str, Any], dotted: str) -> Any:
    """``choices.model`` / ``config.trainer.epochs`` / ``quant.bits``; bare keys look in choices,
    then the top of the config (``seed``, ``bits``)."""
    parts = dotted.split(".")
    roots = [record] if parts[0] in record else [record.get("choices", {}), record.get("config", {})]
    for node in roots:
        cur: Any = node
        for p in parts:
            if isinstance(cur, dict) and p in cur:
                cur = cur[p]
            else:
                cur = _MISSING
                break
        if cur is not _MISSING:
            return cur
    return _MISSING


_MISSING = object()


def matches(record: dict[str, Any], match: dict[str, Any]) -> bool:
    for key, want in match.items():
        got = lookup(record, key)
        if got is _MISSING:
            return False
        if isinstance(want, list) and not isinstance(got, list):
            if got not in want:
                return False
        elif got != want and str(got) != str(want):
            return False
    return True


def _stats(values: list[float]) -> tuple[float | None, float | None, int]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None, None, 0
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0), len(vals)


CHECKPOINTS = ("final", "best")


def model_of(record: dict[str, Any], checkpoint: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(test metrics, measured memory) of one model of a run: the ``final`` one or the ``best``
    validation checkpoint, so a table never pairs one model's metric with another's size.
    Records written before ``best_memory`` existed have no size for ``best``."""
    if checkpoint == "final":
        return record["final"], record["memory"]
    return record["best"], record.get("best_memory")


def build_rows(table: dict[str, Any], metric: str, records: list[dict[str, Any]], scale: float) -> list[dict[str, Any]]:
    checkpoint = table.get("checkpoint", "final")
    if checkpoint not in CHECKPOINTS:
        from qexp.errors import QexpError

        raise QexpError(f"table {table.get('name')}: checkpoint={checkpoint} is not valid; allowed: final, best")
    rows = []
    for row in table["rows"]:
        hits = [r for r in records if matches(r, row.get("match", {}))]
        m = row.get("metric", metric)
        models = [model_of(r, checkpoint) for r in hits]
        mean, std, n = _stats([metrics.get(m) for metrics, _ in models])
        red, _, _ = _stats([mem["reduction"] if mem else None for _, mem in models])
        bits = sorted({r["quant"].get("bits") for r in hits if r["quant"].get("bits")})
        paper = row.get("paper")
        rows.append({
            "label": row["label"],
            "metric": m,
            "ours": None if mean is None else mean * scale,
            "std": None if std is None else std * scale,
            "n": n,
            "paper": paper,
            "diff": None if (mean is None or paper is None) else mean * scale - paper,
            "reduction": red,
            "paper_reduction": row.get("paper_reduction"),
            "bits": row.get("bits", bits[0] if len(bits) == 1 else (bits or None)),
            "quant": row.get("quant") or (hits[0]["quant"]["name"] if hits else None),
            "higher_is_better": hits[0].get("higher_is_better", True) if hits else True,
            "runs": [r["_dir"] for r in hits],
        })
    return rows


def build_width_rows(table: dict[str, Any], metric: str, records: list[dict[str, Any]], scale: float) -> list[dict[str, Any]]:
    """sung2015's study: float vs quantized accuracy per network width, the gap, and the
    effective compression ratio = (float size reaching the quantized net's error, interpolated in
    log-size over widths) / (quantized packed size)."""
    import numpy as np

    rows = []
    for w in table["widths"]:
        pair = {}
        for side in ("float", "quant"):
            hits = [r for r in records if matches(r, table[side]) and lookup(r, table["width_key"]) == w]
            models = [model_of(r, table.get("checkpoint", "final")) for r in hits]
            mean, std, n = _stats([metrics.get(metric) for metrics, _ in models])
            size, _, _ = _stats([mem["packed_bytes"] if mem else None for _, mem in models])
            pair[side] = (mean, std, n, size)
        rows.append({"width": w, "float": pair["float"], "quant": pair["quant"]})
    fl = [(r["float"][3], 1 - r["float"][0]) for r in rows if r["float"][2]]
    for r in rows:
        fm, qm = r["float"][0], r["quant"][0]
        r["gap"] = None if fm is None or qm is None else (fm - qm) * scale
        r["ecr"] = None
        r["ecr_note"] = ""
        if qm is not None and len(fl) >= 2:
            sizes = np.log(np.array([f[0] for f in fl]))
            errs = np.array([f[1] for f in fl])
            order = np.argsort(errs)  # np.interp needs increasing x
            e_q = 1 - qm
            lo, hi = errs.min(), errs.max()
            note = ""
            if e_q < lo:
                e_q, note = lo, ">="  # better than the largest float net: a lower bound
            elif e_q > hi:
                e_q, note = hi, "<="
            size_f = float(np.exp(np.interp(e_q, errs[order], sizes[order])))
            r["ecr"], r["ecr_note"] = size_f / r["quant"][3], note
    return rows


def render_width_table(table: dict[str, Any], rows: list[dict[str, Any]], scale: float) -> list[str]:
    unit = table.get("unit", "%")
    out = [f"| width | float ({unit}) | n | quantized ({unit}) | n | gap float − quantized | float bytes | "
           "quantized bytes (packed) | effective compression ratio |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f, q = r["float"], r["quant"]
        cell = lambda m, sd, n: (f"{m * scale:.2f} ± {sd * scale:.2f}" if n else "**missing**")  # noqa: E731
        ecr = f"{r['ecr_note']}{r['ecr']:.1f}x" if r["ecr"] else ""
        out.append(f"| {r['width']} | {cell(*f[:3])} | {f[2]} | {cell(*q[:3])} | {q[2]} | "
                   f"{_fmt(r['gap'])} | {_fmt(f[3], 0)} | {_fmt(q[3], 0)} | {ecr} |")
    return out


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def render_markdown(paper: dict[str, Any], tables: list[tuple[dict[str, Any], list[dict[str, Any]]]],
                    others: list[tuple[Path, str, str]]) -> str:
    out = [f"# {paper['key']}: {paper['title']}", "", f"**Claim:** {paper['claim']}", ""]
    if paper.get("verdict"):
        out += [f"**At our scale:** {paper['verdict']}", ""]
    for table, rows in tables:
        unit = table.get("unit", "%")
        out += [f"## {table['caption']}", ""]
        if table.get("note"):
            out += [table["note"], ""]
        if table.get("kind") == "width_gap":
            out += render_width_table(table, rows, table["_scale"]) + [""]
            continue
        out += [f"| row | bits | ours ({unit}) | ± std | n | paper ({unit}) | ours − paper | memory reduction (measured) | paper reduction |",
                "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            ours = _fmt(r["ours"]) if r["n"] else "**missing** (no runs)"
            red = f"{r['reduction']:.2f}x" if r["reduction"] else ""
            pred = f"{r['paper_reduction']}x" if r["paper_reduction"] else ""
            diff = (f"{r['diff']:+.2f}" if r["diff"] is not None else "")
            out.append(f"| {r['label']} | {_fmt(r['bits'])} | {ours} | {_fmt(r['std']) if r['n'] else ''} | {r['n']} | "
                       f"{_fmt(r['paper'])} | {diff} | {red} | {pred} |")
        out.append("")
    if others:
        out += ["## Runs not completed (not in the tables)", "", "| run | status | error |", "|---|---|---|"]
        out += [f"| {d} | {s} | {e[:120]} |" for d, s, e in others]
        out.append("")
    return "\n".join(out)


def render_csv(tables: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["table", "row", "metric", "bits", "ours", "std", "n", "paper", "diff", "reduction", "paper_reduction"])
    for table, rows in tables:
        if table.get("kind") == "width_gap":
            for r in rows:
                for side in ("float", "quant"):
                    m, sd, n, size = r[side]
                    w.writerow([table["name"], f"width={r['width']} {side}", table.get("metric", "accuracy"), "",
                                m, sd, n, "", r["gap"] if side == "quant" else "",
                                r["ecr"] if side == "quant" else "", ""])
            continue
        for r in rows:
            w.writerow([table["name"], r["label"], r["metric"], r["bits"], r["ours"], r["std"], r["n"], r["paper"],
                        r["diff"], r["reduction"], r["paper_reduction"]])
    return buf.getvalue()


def render_latex(paper: dict[str, Any], tables: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> str:
    out = []
    for table, rows in tables:
        if table.get("kind") == "width_gap":
            out += [f"% {table['caption']}: see the markdown/CSV table (width study)", ""]
            continue
        out += ["\\begin{table}[t]", "\\centering", f"\\caption{{{paper['key']}: {table['caption']}}}",
                "\\begin{tabular}{lrrrrr}", "\\toprule",
                "Row & Bits & Ours & Paper & $\\Delta$ & Reduction \\\\", "\\midrule"]
        for r in rows:
            ours = f"{r['ours']:.2f} $\\pm$ {r['std']:.2f}" if r["n"] else "--"
            diff = f"{r['diff']:+.2f}" if r["diff"] is not None else "--"
            red = f"{r['reduction']:.1f}x" if r["reduction"] else "--"
            out.append(f"{r['label']} & {_fmt(r['bits'])} & {ours} & {_fmt(r['paper']) or '--'} & {diff} & {red} \\\\")
        out += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    return "\n".join(out)


def _has_runs(row: dict[str, Any]) -> bool:
    if "width" in row:
        return bool(row["float"][2] or row["quant"][2])
    return bool(row["n"])


def make_tables(key: str, runs: str | Path, out_dir: str | Path = "results", formats: tuple[str, ...] = ("md",),
                plot: bool = True) -> dict[str, Path]:
    paper = load_paper(key)
    runset = collect(runs) if Path(runs).exists() else RunSet()
    tables = []
    for table in paper["tables"]:
        metric = table.get("metric", paper.get("metric", "accuracy"))
        scale = float(table.get("scale", 100.0 if metric in ("accuracy", "f1", "object_dice", "top5", "cer", "wer") else 1.0))
        table["_scale"] = scale
        build = build_width_rows if table.get("kind") == "width_gap" else build_rows
        tables.append((table, build(table, metric, runset.completed, scale)))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    from qexp.report.store import atomic_write_bytes

    written: dict[str, Path] = {}
    if "md" in formats:
        written["md"] = out_dir / f"{key}.md"
        atomic_write_bytes(written["md"], render_markdown(paper, tables, runset.other).encode())
    if "csv" in formats:
        written["csv"] = out_dir / f"{key}.csv"
        atomic_write_bytes(written["csv"], render_csv(tables).encode())
    if "latex" in formats:
        written["latex"] = out_dir / f"{key}.tex"
        atomic_write_bytes(written["latex"], render_latex(paper, tables).encode())
    if plot and any(_has_runs(r) for _, rows in tables for r in rows):
        from qexp.report.plots import plot_paper

        written["png"] = plot_paper(paper, tables, out_dir / f"{key}.png")
    summary = {t["name"]: rows for t, rows in tables}
    atomic_write_bytes(out_dir / f"{key}.json", (json.dumps(summary, indent=1, default=str) + "\n").encode())
    return written
