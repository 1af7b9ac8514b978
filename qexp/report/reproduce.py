"""``qexp reproduce --tier mini|real``: each paper's claim checked on a CPU.

``mini`` runs on embedded stand-ins in minutes; ``real`` on Fashion-MNIST (``make data``) in
about two hours.  The sweeps are data too (``mini:`` / ``real:`` in ``configs/paper/<key>.yaml``).
Each runs as a Hydra multirun into ``RUNS/<key>/<sweep>`` (``RUNS`` = ``runs/<tier>``) with
``skip_completed=true``, so an interrupted reproduction continues where it stopped; the tables
are regenerated at the end from every tier's runs.

Sweeps run in file order.  A sweep may start from the runs of an earlier one ("train the float
model once, then quantize it N ways")::

    - name: ffdnn_direct
      overrides: [model=ffdnn, "model.width=16,32", quant=ternary, bits=2, "seed=0,1", trainer.epochs=0]
      init_from: {sweep: ffdnn_float, match: [model.width, seed]}

Each of its jobs starts from the completed run of ``ffdnn_float`` whose resolved config has the
job's values of the ``match`` keys (``trainer.init_from=<that sweep's folder>`` with
``trainer.init_match=[...]``; qexp picks the run, or stops with a one-line error before any job).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from qexp.errors import QexpError
from qexp.config import expand_sweep
from qexp.report.tables import PAPERS, TIERS, load_paper, make_tables


def init_overrides(key: str, sweep: dict, earlier: list[str], runs: Path) -> list[str]:
    """The overrides that make ``sweep`` start from the runs of an earlier sweep (its ``init_from``)."""
    dep = sweep.get("init_from")
    if dep is None:
        return []
    if not isinstance(dep, dict) or not isinstance(dep.get("sweep"), str) or not isinstance(dep.get("match", []), list):
        raise QexpError(f"{key}/{sweep['name']}: init_from must be {{sweep: NAME, match: [key, ...]}}, got {dep}")
    if dep["sweep"] not in earlier:
        raise QexpError(f"{key}/{sweep['name']}: init_from names sweep '{dep['sweep']}', which is not an earlier sweep "
                        f"of this paper (earlier: {', '.join(earlier) or 'none'})")
    match = ",".join(str(k) for k in dep.get("match", []))
    return [f"trainer.init_from={(runs / key / dep['sweep']).resolve()}", f"trainer.init_match=[{match}]"]


def run_mini(papers: list[str], runs: str | Path, out_dir: str | Path, dry_run: bool = False, tier: str = "mini") -> None:
    runs = Path(runs)
    for key in papers:
        paper = load_paper(key)
        sweeps = paper.get(tier, [])
        if not sweeps:  # this paper has no such tier (avila2022 has no real one): its results stay as they are
            continue
        planned = []  # every sweep's overrides first: a bad init_from stops before anything runs
        for i, sweep in enumerate(sweeps):
            earlier = [s["name"] for s in sweeps[:i]]
            planned.append((sweep, [*map(str, sweep["overrides"]), *init_overrides(key, sweep, earlier, runs)]))
        for sweep, overrides in planned:
            target = runs / key / sweep["name"]
            cmd = [sys.executable, "-m", "qexp", "train", "-m", *overrides,
                   f"hydra.sweep.dir={target}", "skip_completed=true", "trainer.progress=false"]
            print(f"[{key}] {sweep['name']}: qexp train -m {' '.join(overrides)}", flush=True)
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
    if not dry_run:
        from qexp.report.readme import refresh_project_readme

        refresh_project_readme(out_dir)


def main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="qexp reproduce", description=__doc__.splitlines()[0])
    tier = parser.add_mutually_exclusive_group(required=True)
    tier.add_argument("--tier", choices=TIERS, help="mini: embedded stand-ins, minutes; real: Fashion-MNIST, 186 runs, ~1 h 50 min on 2 CPU cores")
    tier.add_argument("--mini", dest="tier", action="store_const", const="mini", help="same as --tier mini")
    parser.add_argument("--paper", action="append", choices=PAPERS, help="only this paper (repeatable)")
    parser.add_argument("--runs", default=None, help="where the runs go (default runs/<tier>)")
    parser.add_argument("--out", default="results", help="where tables/plots go (default results/)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (sweeps, jobs, folders) without running it")
    args = parser.parse_args(argv)
    run_mini(args.paper or list(PAPERS), args.runs or f"runs/{args.tier}", args.out, args.dry_run, args.tier)
