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
import logging
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qexp.report.store import RECORD, RECORD_FORMAT, STATUS, effective_status, read_record

log = logging.getLogger("qexp")

PAPERS = ("chen2021", "dong2017", "avila2022", "sung2015", "zhao2019")
TIERS = ("mini", "real")  # mini: embedded stand-ins; real: Fashion-MNIST (paper-scale tables read the mini folder)
TIER_TITLES = {"mini": "Mini", "real": "Real data: Fashion-MNIST"}
PERCENT_METRICS = ("accuracy", "f1", "object_dice", "top5", "cer", "wer")


def tier_of(entry: dict[str, Any]) -> str:
    """Which tier's runs a table or comparison reads (``tier:`` in the paper file; default mini)."""
    return str(entry.get("tier", "mini"))


def _scale(entry: dict[str, Any], metric: str) -> float:
    return float(entry.get("scale", 100.0 if metric in PERCENT_METRICS else 1.0))


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
    unreadable: list[tuple[Path, str]] = field(default_factory=list)  # (record path, reason)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def record_problem(rec: dict[str, Any]) -> str | None:
    """Why a completed record cannot be tabulated (None when it can): the tables read ``final``,
    ``memory``, ``quant``, ``choices`` and ``config``, so those must have the shapes we write."""
    fmt = rec.get("format", 1)
    if not isinstance(fmt, int) or fmt > RECORD_FORMAT:
        return f"written by a newer qexp (record format {fmt!r}; this one reads <= {RECORD_FORMAT})"
    final = rec.get("final")
    if not isinstance(final, dict) or not final:
        return f"no final metrics (final: {json.dumps(final)[:40]})"
    bad = next((k for k, v in final.items() if v is not None and not _is_number(v)), None)
    if bad is not None:
        return f"final.{bad} is {json.dumps(final[bad])[:40]}, not a number"
    memory = rec.get("memory")
    if not isinstance(memory, dict) or any(memory.get(k) is not None and not _is_number(memory.get(k))
                                          for k in ("reduction", "packed_bytes")):
        return "memory is missing or not numeric"
    if not isinstance(rec.get("quant"), dict):
        return "quant is missing or not a mapping"
    for key in ("choices", "config"):
        if not isinstance(rec.get(key, {}), dict):
            return f"{key} is not a mapping"
    return None


def collect(runs: str | Path) -> RunSet:
    """Every record under ``runs`` (recursively); runs without a completed record listed apart,
    records that cannot be tabulated listed as unreadable (with the reason), never fatal."""
    out = RunSet()
    root = Path(runs)
    seen: set[Path] = set()
    for rec_path in sorted(root.rglob(RECORD)):
        rec = read_record(rec_path)
        seen.add(rec_path.parent)
        if rec is None:
            out.unreadable.append((rec_path, "not a JSON object (cannot be parsed)"))
        elif rec.get("status") == "completed":
            problem = record_problem(rec)
            if problem:
                out.unreadable.append((rec_path, problem))
                continue
            rec["_dir"] = str(rec_path.parent)
            out.completed.append(rec)
        else:
            out.other.append((rec_path.parent, str(rec.get("status")), str(rec.get("error", ""))))
    for st_path in sorted(root.rglob(STATUS)):
        if st_path.parent in seen:
            continue
        st = read_record(st_path) or {}
        out.other.append((st_path.parent, effective_status(st), str(st.get("error", "") or "")))
    for path, why in out.unreadable:
        log.warning("skipping unreadable record %s: %s", path, why)
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
    log-size over widths) / (quantized packed size).  An optional ``direct`` match adds the
    directly quantized network (no retraining) and its gap beside the retrained one."""
    import numpy as np

    rows = []
    sides = ("float", "quant", "direct") if "direct" in table else ("float", "quant")
    for w in table["widths"]:
        pair = {}
        for side in sides:
            hits = [r for r in records if matches(r, table[side]) and lookup(r, table["width_key"]) == w]
            models = [model_of(r, table.get("checkpoint", "final")) for r in hits]
            mean, std, n = _stats([metrics.get(metric) for metrics, _ in models])
            size, _, _ = _stats([mem["packed_bytes"] if mem else None for _, mem in models])
            pair[side] = (mean, std, n, size)
        rows.append({"width": w, **pair})
    fl = [(r["float"][3], 1 - r["float"][0]) for r in rows if r["float"][2]]
    for r in rows:
        fm, qm = r["float"][0], r["quant"][0]
        r["gap"] = None if fm is None or qm is None else (fm - qm) * scale
        if "direct" in r:
            dm = r["direct"][0]
            r["direct_gap"] = None if fm is None or dm is None else (fm - dm) * scale
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
    direct = "direct" in table
    quant = "retrained" if direct else "quantized"
    head = f"| width | float ({unit}) | n | {quant} ({unit}) | n | gap float − {quant} | "
    head += f"direct, no retraining ({unit}) | n | gap float − direct | " if direct else ""
    cols = 12 if direct else 9
    out = [head + "float bytes | quantized bytes (packed) | effective compression ratio |", "|---" * cols + "|"]
    cell = lambda m, sd, n: (f"{m * scale:.2f} ± {sd * scale:.2f}" if n else "**missing**")  # noqa: E731
    for r in rows:
        f, q = r["float"], r["quant"]
        ecr = f"{r['ecr_note']}{r['ecr']:.1f}x" if r["ecr"] else ""
        d = f"{cell(*r['direct'][:3])} | {r['direct'][2]} | {_fmt(r['direct_gap'])} | " if direct else ""
        out.append(f"| {r['width']} | {cell(*f[:3])} | {f[2]} | {cell(*q[:3])} | {q[2]} | "
                   f"{_fmt(r['gap'])} | {d}{_fmt(f[3], 0)} | {_fmt(q[3], 0)} | {ecr} |")
    return out


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _table_lines(table: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    if table.get("kind") == "width_gap":
        return render_width_table(table, rows, table["_scale"])
    unit = table.get("unit", "%")
    out = [f"| row | bits | ours ({unit}) | ± std | n | paper ({unit}) | ours − paper | memory reduction (measured) | paper reduction |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ours = _fmt(r["ours"]) if r["n"] else "**missing** (no runs)"
        red = f"{r['reduction']:.2f}x" if r["reduction"] else ""
        pred = f"{r['paper_reduction']}x" if r["paper_reduction"] else ""
        diff = (f"{r['diff']:+.2f}" if r["diff"] is not None else "")
        out.append(f"| {r['label']} | {_fmt(r['bits'])} | {ours} | {_fmt(r['std']) if r['n'] else ''} | {r['n']} | "
                   f"{_fmt(r['paper'])} | {diff} | {red} | {pred} |")
    return out


def _direction_text(c: dict[str, Any]) -> str:
    if c["direction"] == "equal":
        return f"A ≈ B (within ±{c['margin']:g})"  # no "|": it would split a markdown table cell
    return "A > B" if c["direction"] == "greater" else "A < B"


def render_comparisons(comparisons: list[dict[str, Any]]) -> list[str]:
    """Each claimed comparison: the paired difference over seeds, its 95 % t-interval, the verdict."""
    out = ["| claim (A vs B) | paper says | n | A − B, mean ± std (points) | 95 % interval | verdict |",
           "|---|---|---|---|---|---|"]
    for c in comparisons:
        spread = f"{c['mean']:+.2f} ± {c['std']:.2f}" if c["std"] is not None else _fmt(c["mean"])
        interval = f"[{c['low']:+.2f}, {c['high']:+.2f}]" if c["low"] is not None else "— (n < 2)"
        verdict = f"**{c['verdict']}**" if c["n"] else "**missing** (no runs)"
        out.append(f"| {c['caption']} | {_direction_text(c)} | {c['n']} | {spread} | {interval} | {verdict} |")
    return out


def render_markdown(paper: dict[str, Any], tables: list[tuple[dict[str, Any], list[dict[str, Any]]]],
                    others: list[tuple[Path, str, str]], comparisons: list[dict[str, Any]] = (),
                    unreadable: list[tuple[Path, str]] = ()) -> str:
    out = [f"# {paper['key']}: {paper['title']}", "", f"**Claim:** {paper['claim']}", ""]
    if paper.get("verdict"):
        out += [f"**At our scale:** {paper['verdict']}", ""]
    for tier in TIERS:
        tier_tables = [(t, rows) for t, rows in tables if tier_of(t) == tier]
        tier_comparisons = [c for c in comparisons if c["tier"] == tier]
        level = "##"
        if tier != "mini":
            if not tier_tables and not tier_comparisons:
                continue
            out += [f"## {TIER_TITLES[tier]}", ""]
            out += [paper[f"{tier}_note"], ""] if paper.get(f"{tier}_note") else []
            level = "###"
        for table, rows in tier_tables:
            out += [f"{level} {table['caption']}", ""]
            if table.get("note"):
                out += [table["note"], ""]
            if table.get("_source"):
                out += [f"_Runs: {table['_source']}_", ""]
            out += _table_lines(table, rows) + [""]
        if tier_comparisons:
            title = "Verdicts" if tier != "mini" else "Verdicts (mini): paired differences over seeds"
            out += [f"{level} {title}", "",
                    "Each claim is a paired difference over seeds (the same seeds on both sides), with its 95 % "
                    "t-interval: **reproduced** when the interval excludes zero in the paper's direction (lies "
                    "inside the margin, for claims of equality), **not reproduced** when it excludes zero the "
                    "other way (lies outside the margin), **inconclusive** otherwise.", ""]
            out += render_comparisons(tier_comparisons) + [""]
    if others:
        out += ["## Runs not completed (not in the tables)", "", "| run | status | error |", "|---|---|---|"]
        out += [f"| {d} | {s} | {e[:120]} |" for d, s, e in others]
        out.append("")
    if unreadable:
        out += ["## Unreadable records (skipped)", "", "| record | reason |", "|---|---|"]
        out += [f"| {p} | {why} |" for p, why in unreadable]
        out.append("")
    return "\n".join(out)


def render_csv(tables: list[tuple[dict[str, Any], list[dict[str, Any]]]], comparisons: list[dict[str, Any]] = ()) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["table", "row", "metric", "bits", "ours", "std", "n", "paper", "diff", "reduction", "paper_reduction",
                "tier", "ci_low", "ci_high", "verdict"])
    for table, rows in tables:
        if table.get("kind") == "width_gap":
            for r in rows:
                for side in ("float", "quant", "direct"):
                    if side not in r:
                        continue
                    m, sd, n, _ = r[side]
                    gap = {"quant": r["gap"], "direct": r.get("direct_gap")}.get(side, "")
                    w.writerow([table["name"], f"width={r['width']} {side}", table.get("metric", "accuracy"), "",
                                m, sd, n, "", gap, r["ecr"] if side == "quant" else "", ""])
            continue
        for r in rows:
            w.writerow([table["name"], r["label"], r["metric"], r["bits"], r["ours"], r["std"], r["n"], r["paper"],
                        r["diff"], r["reduction"], r["paper_reduction"], tier_of(table)])
    for c in comparisons:  # ours/std = mean/std of the paired differences A − B (points)
        w.writerow(["verdicts", c["caption"], c["metric"], "", c["mean"], c["std"], c["n"], "", "", "", "",
                    c["tier"], c["low"], c["high"], c["verdict"] if c["n"] else "missing"])
    return buf.getvalue()


def _tex(text: str) -> str:
    return str(text).replace("%", r"\%").replace("&", r"\&").replace("_", r"\_").replace("#", r"\#")


def render_latex(paper: dict[str, Any], tables: list[tuple[dict[str, Any], list[dict[str, Any]]]],
                 comparisons: list[dict[str, Any]] = ()) -> str:
    out = []
    for table, rows in tables:
        if table.get("kind") == "width_gap":
            out += [f"% {table['caption']}: see the markdown/CSV table (width study)", ""]
            continue
        out += ["\\begin{table}[t]", "\\centering", f"\\caption{{{paper['key']}: {table['caption']}}}",
                "\\begin{tabular}{lrrrrrr}", "\\toprule",
                "Row & Bits & Ours & $n$ & Paper & $\\Delta$ & Reduction \\\\", "\\midrule"]
        for r in rows:
            ours = f"{r['ours']:.2f} $\\pm$ {r['std']:.2f}" if r["n"] else "--"
            diff = f"{r['diff']:+.2f}" if r["diff"] is not None else "--"
            red = f"{r['reduction']:.1f}x" if r["reduction"] else "--"
            out.append(f"{r['label']} & {_fmt(r['bits'])} & {ours} & {r['n']} & {_fmt(r['paper']) or '--'} & {diff} & "
                       f"{red} \\\\")
        out += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    for tier in TIERS:
        rows = [c for c in comparisons if c["tier"] == tier]
        if not rows:
            continue
        out += ["\\begin{table}[t]", "\\centering",
                f"\\caption{{{paper['key']}: verdicts ({TIER_TITLES.get(tier, tier)}), paired differences over seeds}}",
                "\\begin{tabular}{lrrrl}", "\\toprule",
                "Claim (A vs B) & $n$ & A $-$ B & 95\\,\\% interval & Verdict \\\\", "\\midrule"]
        for c in rows:
            spread = f"{c['mean']:+.2f} $\\pm$ {c['std']:.2f}" if c["std"] is not None else _fmt(c["mean"]) or "--"
            interval = f"[{c['low']:+.2f}, {c['high']:+.2f}]" if c["low"] is not None else "--"
            out.append(f"{_tex(c['caption'])} & {c['n']} & {spread} & {interval} & {c['verdict']} \\\\")
        out += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    return "\n".join(out)


def _has_runs(row: dict[str, Any]) -> bool:
    if "width" in row:
        return bool(row["float"][2] or row["quant"][2])
    return bool(row["n"])


def _side_values(side: dict[str, Any], records: list[dict[str, Any]], metric: str, scale: float) -> dict[Any, float]:
    """seed -> metric (× scale) of the runs ``side`` matches; a side ``{match: M, minus: N}`` gives
    the per-seed difference M − N (e.g. a float–ternary gap at one width)."""
    def per_seed(match: dict[str, Any]) -> dict[Any, float]:
        groups: dict[Any, list[float]] = {}
        for r in records:
            value = r["final"].get(metric)
            if matches(r, match) and value is not None:
                groups.setdefault(r.get("seed"), []).append(value * scale)
        return {seed: statistics.fmean(v) for seed, v in groups.items()}

    if "match" not in side:
        return per_seed(side)
    values = per_seed(side["match"])
    if side.get("minus") is None:
        return values
    minus = per_seed(side["minus"])
    return {seed: v - minus[seed] for seed, v in values.items() if seed in minus}


def build_comparison(key: str, comp: dict[str, Any], metric: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    from qexp.errors import QexpError
    from qexp.report.stats import DIRECTIONS, paired_difference

    direction = comp.get("direction", "greater")
    if direction not in DIRECTIONS or not isinstance(comp.get("a"), dict) or not isinstance(comp.get("b"), dict):
        raise QexpError(f"configs/paper/{key}.yaml: comparison '{comp.get('caption')}' needs a: and b: matches and "
                        f"direction one of {', '.join(DIRECTIONS)} (got {direction})")
    metric = comp.get("metric", metric)
    scale = _scale(comp, metric)
    a = _side_values(comp["a"], records, metric, scale)
    b = _side_values(comp["b"], records, metric, scale)
    result = paired_difference(a, b, direction, float(comp.get("margin", 0.0)))
    return {"caption": comp["caption"], "tier": tier_of(comp), "metric": metric, "direction": direction,
            "margin": float(comp.get("margin", 0.0)), **result.as_dict()}


def build_rows_for(table: dict[str, Any], metric: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    build = build_width_rows if table.get("kind") == "width_gap" else build_rows
    return build(table, metric, records, table["_scale"])


def _previous(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def make_tables(key: str, runs: str | Path | dict[str, str | Path], out_dir: str | Path = "results",
                formats: tuple[str, ...] = ("md",), plot: bool = True) -> dict[str, Path]:
    """Tables, plot and verdicts of one paper.  ``runs`` is one folder for every table, or a folder
    per tier ({"mini": ..., "real": ...}).  A tier whose folder is not on this machine keeps its
    rows and verdicts from the previous ``OUT/<key>.json``, so regenerating one tier never erases
    the other's results."""
    paper = load_paper(key)
    folders = {t: Path(runs[t]) if t in runs else None for t in TIERS} if isinstance(runs, dict) else \
        {t: Path(runs) for t in TIERS}
    out_dir = Path(out_dir)
    previous = _previous(out_dir / f"{key}.json")
    kept_sources = previous.get("_sources", {})
    for entry in [*paper["tables"], *paper.get("comparisons", [])]:
        if tier_of(entry) not in TIERS:
            from qexp.errors import QexpError

            raise QexpError(f"configs/paper/{key}.yaml: tier={tier_of(entry)} in '{entry.get('name') or entry.get('caption')}'"
                            f"; allowed: {', '.join(TIERS)}")
    loaded: dict[Path, RunSet] = {}
    for folder in {f for f in folders.values() if f is not None and f.exists()}:
        loaded[folder] = collect(folder)

    def runset(tier: str) -> RunSet | None:
        folder = folders.get(tier)
        return loaded.get(folder) if folder is not None else None

    tables, sources = [], {}
    for table in paper["tables"]:
        metric = table.get("metric", paper.get("metric", "accuracy"))
        table["_scale"] = _scale(table, metric)
        rs = runset(tier_of(table))
        if rs is None:  # the tier's runs are not here: carry the previous rows over (missing if none)
            rows = previous.get(table["name"]) or build_rows_for(table, metric, [])
            where = kept_sources.get(table["name"]) or str(folders.get(tier_of(table)) or f"runs/{tier_of(table)}/{key}")
            table["_source"] = f"{where} is not on this machine, so these rows are carried over from the previous {key}.json"
            sources[table["name"]] = where
        else:
            rows = build_rows_for(table, metric, rs.completed)
            table["_source"] = str(folders.get(tier_of(table))) if tier_of(table) != "mini" else ""
            sources[table["name"]] = str(folders.get(tier_of(table)) or "")
        tables.append((table, rows))
    kept_comparisons = {(c["tier"], c["caption"]): c for c in previous.get("_comparisons", [])}
    comparisons = []
    for comp in paper.get("comparisons", []):
        rs = runset(tier_of(comp))
        if rs is None and (tier_of(comp), comp.get("caption")) in kept_comparisons:
            comparisons.append(kept_comparisons[(tier_of(comp), comp["caption"])])
        else:
            comparisons.append(build_comparison(key, comp, paper.get("metric", "accuracy"), rs.completed if rs else []))
    others = [o for rs in loaded.values() for o in rs.other]
    unreadable = [u for rs in loaded.values() for u in rs.unreadable]
    out_dir.mkdir(parents=True, exist_ok=True)
    from qexp.report.store import atomic_write_bytes

    written: dict[str, Path] = {}
    if "md" in formats:
        written["md"] = out_dir / f"{key}.md"
        atomic_write_bytes(written["md"], render_markdown(paper, tables, others, comparisons, unreadable).encode())
    if "csv" in formats:
        written["csv"] = out_dir / f"{key}.csv"
        atomic_write_bytes(written["csv"], render_csv(tables, comparisons).encode())
    if "latex" in formats:
        written["latex"] = out_dir / f"{key}.tex"
        atomic_write_bytes(written["latex"], render_latex(paper, tables, comparisons).encode())
    if plot and any(_has_runs(r) for _, rows in tables for r in rows):
        from qexp.report.plots import plot_paper

        written["png"] = plot_paper(paper, tables, out_dir / f"{key}.png")
    summary: dict[str, Any] = {t["name"]: rows for t, rows in tables}
    summary["_sources"] = sources
    summary["_comparisons"] = comparisons
    atomic_write_bytes(out_dir / f"{key}.json", (json.dumps(summary, indent=1, default=str) + "\n").encode())
    return written
