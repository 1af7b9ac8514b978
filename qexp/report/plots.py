"""One figure per paper: metric vs measured memory reduction, FP32 as a reference line."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from qexp.report.store import atomic_write_bytes  # noqa: E402

MARKERS = {"fp32": "*", "uniform": "o", "fixed": "s", "inq": "D", "bwn": "v", "twn": "^", "sq": "P",
           "ternary": "X", "pow2": "h", "clip_svd": "p"}


def _plot_width(ax, table: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    scale = table["_scale"]
    sides = (("float", "float", "o"), ("quant", "retrained" if "direct" in table else "quantized", "s"),
             ("direct", "direct (no retraining)", "^"))
    for side, label, marker in sides:
        pts = [(r["width"], r[side][0] * scale, (r[side][1] or 0) * scale) for r in rows if side in r and r[side][2]]
        if pts:
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], fmt=f"-{marker}",
                        capsize=3, label=label)
    gaps = [(r["width"], r["gap"]) for r in rows if r["gap"] is not None]
    if gaps:
        twin = ax.twinx()
        twin.bar([g[0] for g in gaps], [g[1] for g in gaps], width=[g[0] * 0.3 for g in gaps], alpha=0.25,
                 color="red", label="gap")
        twin.set_ylabel(f"gap float − {'retrained' if 'direct' in table else 'quantized'} (points)", color="red")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("width (units per hidden layer)")
    ax.set_ylabel(f"{table.get('metric', 'accuracy')} ({table.get('unit', '%')})")
    ax.set_title(textwrap.fill(table["caption"], 60), fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")


def plot_paper(paper: dict[str, Any], tables: list[tuple[dict[str, Any], list[dict[str, Any]]]], path: Path) -> Path:
    with_runs = [(t, rows) for t, rows in tables
                 if any((r["float"][2] or r["quant"][2]) if "width" in r else r["n"] for r in rows)]
    fig, axes = plt.subplots(1, len(with_runs), figsize=(5.2 * len(with_runs), 4.2), squeeze=False)
    for ax, (table, rows) in zip(axes[0], with_runs):
        if table.get("kind") == "width_gap":
            _plot_width(ax, table, rows)
            continue
        unit = table.get("unit", "%")
        metric = rows[0]["metric"]
        for r in rows:
            if not r["n"]:
                continue
            if r["quant"] == "fp32":
                ax.axhline(r["ours"], color="grey", ls="--", lw=1)
                ax.annotate(f"{r['label']}", (1.0, r["ours"]), fontsize=7, color="grey",
                            xytext=(2, 2), textcoords="offset points")
            ax.errorbar(r["reduction"], r["ours"], yerr=r["std"] or 0, fmt=MARKERS.get(r["quant"] or "", "o"),
                        capsize=3, label=r["label"])
            if r["paper"] is not None and r["paper_reduction"]:
                ax.plot(r["paper_reduction"], r["paper"], MARKERS.get(r["quant"] or "", "o"), mfc="none",
                        color="black", alpha=0.5)
        ax.set_xscale("log")
        ax.set_xlabel("memory reduction vs FP32 (measured, packed export)")
        ax.set_ylabel(f"{metric} ({unit})" + ("  ↓ better" if not rows[0]["higher_is_better"] else ""))
        ax.set_title(textwrap.fill(table["caption"], 60), fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(textwrap.fill(f"{paper['key']}: {paper['claim']}", 60 * len(with_runs)), fontsize=8)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path
