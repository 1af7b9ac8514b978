"""``qexp reproduce --mini``: each paper's claim checked at small scale on offline data.

The sweeps are data too (``mini:`` in ``configs/paper/<key>.yaml``).  Each runs as a Hydra
multirun into ``RUNS/<key>/<sweep>`` with ``skip_completed=true``, so an interrupted
reproduction continues where it stopped; the tables are regenerated at the end.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from qexp.errors import QexpError
from qexp.report.tables import PAPERS, load_paper, make_tables


def run_mini(papers: list[str], runs: str | Path, out_dir: str | Path, dry_run: bool = False) -> None:
    runs = Path(runs)
    for key in papers:
        paper = load_paper(key)
        sweeps = paper.get("mini", [])
        for sweep in sweeps:
            target = runs / key / sweep["name"]
            cmd = [sys.executable, "-m", "qexp", "train", "-m", *map(str, sweep["overrides"]),
                   f"hydra.sweep.dir={target}", "skip_completed=true", "trainer.progress=false"]
            print(f"[{key}] {sweep['name']}: qexp train -m {' '.join(map(str, sweep['overrides']))}", flush=True)
            if dry_run:
                continue
            t0 = time.time()
            done = subprocess.run(cmd)
            if done.returncode != 0:
                raise QexpError(f"mini sweep {key}/{sweep['name']} failed (exit {done.returncode}); "
                                f"see {target}; rerun to continue (completed jobs are skipped)")
            print(f"[{key}] {sweep['name']}: {time.time() - t0:.0f} s", flush=True)
        if not dry_run:
            written = make_tables(key, runs / key, out_dir, formats=("md", "csv", "latex"))
            print(f"[{key}] tables: {', '.join(str(p) for p in written.values())}", flush=True)


def main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="qexp reproduce", description=__doc__.splitlines()[0])
    parser.add_argument("--mini", action="store_true", required=True, help="the CPU-sized reproduction (required)")
    parser.add_argument("--paper", action="append", choices=PAPERS, help="only this paper (repeatable)")
    parser.add_argument("--runs", default="runs/mini", help="where the runs go (default runs/mini)")
    parser.add_argument("--out", default="results", help="where tables/plots go (default results/)")
    parser.add_argument("--dry-run", action="store_true", help="print the sweeps without running them")
    args = parser.parse_args(argv)
    run_mini(args.paper or list(PAPERS), args.runs, args.out, args.dry_run)
