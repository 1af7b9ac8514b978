"""``qexp reproduce --tier mini|real``: each paper's claim checked on a CPU.

``mini`` runs on embedded stand-ins in minutes; ``real`` on Fashion-MNIST (``make data``) in
about two hours.  The sweeps are data too (``mini:`` / ``real:`` in ``configs/paper/<key>.yaml``).
Each runs as a Hydra multirun into ``RUNS/<key>/<sweep>`` (``RUNS`` = ``runs/<tier>``) with
``skip_completed=true``, so an interrupted reproduction continues where it stopped; the tables
are regenerated at the end from every tier's runs.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from qexp.errors import QexpError
from qexp.config import expand_sweep
from qexp.report.tables import PAPERS, TIERS, load_paper, make_tables


def run_mini(papers: list[str], runs: str | Path, out_dir: str | Path, dry_run: bool = False, tier: str = "mini") -> None:
    runs = Path(runs)
    for key in papers:
        paper = load_paper(key)
        sweeps = paper.get(tier, [])
        if not sweeps:  # this paper has no such tier (avila2022 has no real one): its results stay as they are
            continue
        for sweep in sweeps:
            target = runs / key / sweep["name"]
            cmd = [sys.executable, "-m", "qexp", "train", "-m", *map(str, sweep["overrides"]),
                   f"hydra.sweep.dir={target}", "skip_completed=true", "trainer.progress=false"]
            print(f"[{key}] {sweep['name']}: qexp train -m {' '.join(map(str, sweep['overrides']))}", flush=True)
            if dry_run:
                print(f"    {len(expand_sweep(list(map(str, sweep['overrides']))))} jobs -> {target}", flush=True)
                continue
            t0 = time.time()
            done = subprocess.run(cmd)
            if done.returncode != 0:
                raise QexpError(f"{tier} sweep {key}/{sweep['name']} failed (exit {done.returncode}); "
                                f"see {target}; rerun to continue (completed jobs are skipped)")
            print(f"[{key}] {sweep['name']}: {time.time() - t0:.0f} s", flush=True)
        if not dry_run:
            folders = {t: Path("runs") / t / key for t in TIERS} | {tier: runs / key}
            written = make_tables(key, folders, out_dir, formats=("md", "csv", "latex"))
            print(f"[{key}] tables: {', '.join(str(p) for p in written.values())}", flush=True)


def main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="qexp reproduce", description=__doc__.splitlines()[0])
    tier = parser.add_mutually_exclusive_group(required=True)
    tier.add_argument("--tier", choices=TIERS, help="mini: embedded stand-ins, minutes; real: Fashion-MNIST, ~2 h")
    tier.add_argument("--mini", dest="tier", action="store_const", const="mini", help="same as --tier mini")
    parser.add_argument("--paper", action="append", choices=PAPERS, help="only this paper (repeatable)")
    parser.add_argument("--runs", default=None, help="where the runs go (default runs/<tier>)")
    parser.add_argument("--out", default="results", help="where tables/plots go (default results/)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (sweeps, jobs, folders) without running it")
    args = parser.parse_args(argv)
    run_mini(args.paper or list(PAPERS), args.runs or f"runs/{args.tier}", args.out, args.dry_run, args.tier)
