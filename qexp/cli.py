"""``qexp`` command line: a thin layer that hands work to Hydra or the report layer."""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

from qexp.errors import QexpError, one_line

# removed commands -> what to use instead
REMOVED = {
    "sbatch": "qexp sbatch was removed (its script could not run without the job files the launcher writes); "
              "submit a sweep with: qexp train -m hydra/launcher=slurm ... (README: Sweeps on a cluster), "
              "or adapt scripts/sbatch_example.sh for one plain sbatch job",
}

SUBCOMMANDS = {
    "train": "train one run, or a sweep with -m (Hydra overrides: group=option key=value)",
    "tables": "regenerate each paper's tables beside the paper's numbers: qexp tables [--paper KEY] [--runs DIR]",
    "reproduce": "run a reproduction tier's sweeps and regenerate results/: qexp reproduce --tier mini|real",
    "bench": "step-time ratios (quantized vs FP32, qexp vs Brevitas) and packed size vs the bit limit",
    "export": "write the packed (bit-exact, k-bit) model of a finished run: qexp export RUN_DIR",
}


def _usage() -> str:
    from qexp.config import GROUPS, group_options

    lines = [
        "usage: qexp <command> [args]",
        "",
        "qexp reproduces weight-quantization papers: compose dataset x model x quantizer, train,",
        "and record accuracy against memory reduction measured from the packed export.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<10} {text}" for name, text in SUBCOMMANDS.items()]
    lines += ["", "config groups (qexp train group=option):"]
    for group in GROUPS:
        lines.append(f"  {group:<10} {', '.join(group_options(group)) or '-'}")
    lines += [
        "",
        "top-level keys: bits=<1..32> (weight bits, used by every quantizer), seed=<int>",
        "",
        "examples:",
        "  qexp train                                      # digits + MLP + FP32 (embedded default)",
        "  qexp train quant=uniform bits=4 quant.skip=[]   # 4-bit weights in every layer",
        "  qexp train -m quant=fp32,uniform bits=2,4       # sweep: one run per combination",
        "  qexp train quant=uniform bits=8 trainer.init_from=RUN_DIR trainer.epochs=0   # post-training quantization",
        "  qexp train --help                               # every key with its default",
        "  qexp export runs/2026-11-25/12-00-00            # packed model of a run",
    ]
    return "\n".join(lines)


def fail(message: str, code: int = 2) -> None:
    print(f"error: {one_line(message)}", file=sys.stderr)
    sys.exit(code)


def _hydra_train(argv: list[str]) -> None:
    import hydra
    from omegaconf import DictConfig

    from qexp.config import config_dir

    @hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")
    def _main(cfg: DictConfig) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        from qexp.engine.trainer import Preempted
        from qexp.errors import JobFailed
        from qexp.run import train

        try:
            train(cfg, HydraConfig.get().runtime.output_dir)
        except (QexpError, Preempted) as exc:
            if isinstance(exc, QexpError):
                message, code = str(exc), exc.exit_code
            else:
                message, code = f"preempted: {exc}; run the same command again to resume", 75
            if HydraConfig.get().mode != RunMode.MULTIRUN:
                fail(message, code)
            # a sweep job: an Exception (never SystemExit) lets every launcher record the failed
            # job and go on; qexp's sweeper prints each failed job's line at the end
            logging.getLogger("qexp").error("error: %s", message)
            raise JobFailed(message, code) from None

    sys.argv = ["qexp train", *argv]
    _main()


def cmd_train(argv: list[str]) -> None:
    if any(a in ("-h", "--help", "--hydra-help", "--info") or a.startswith(("--cfg", "-c=")) for a in argv):
        return _hydra_train(argv)
    multirun = any(a in ("-m", "--multirun") for a in argv)
    overrides = [a for a in argv if not a.startswith("-")]
    from qexp.config import check_overrides

    check_overrides(overrides, multirun=multirun)  # fail fast, before Hydra creates any folder
    from qexp.run import agree_on_output_dir, settle_output_dir

    argv = agree_on_output_dir(argv, multirun)  # torchrun/srun: one run dir for all ranks
    _hydra_train(settle_output_dir(argv, multirun))  # a folder that cannot be written: one line


def cmd_tables(argv: list[str]) -> None:
    import argparse

    from qexp.report.tables import PAPERS, TIERS, make_tables

    parser = argparse.ArgumentParser(prog="qexp tables", description="Regenerate each paper's tables from run records.")
    parser.add_argument("--paper", action="append", choices=PAPERS, help="only this paper (repeatable)")
    parser.add_argument("--runs", default=None, help="one folder of runs for every table (default: runs/<tier>/<paper>, "
                        "the folder of each table's tier)")
    parser.add_argument("--out", default="results", help="output folder (default results/)")
    parser.add_argument("--format", action="append", choices=("md", "csv", "latex"), help="default: md + csv + latex")
    args = parser.parse_args(argv)
    if args.runs is not None and not Path(args.runs).is_dir():
        raise QexpError(f"--runs {args.runs}: no such folder of runs")
    for key in args.paper or PAPERS:
        runs = args.runs if args.runs is not None else {tier: f"runs/{tier}/{key}" for tier in TIERS}
        written = make_tables(key, runs, args.out, tuple(args.format or ("md", "csv", "latex")))
        print(f"{key}: " + ", ".join(str(p) for p in written.values()))
    from qexp.report.readme import refresh_project_readme

    refresh_project_readme(args.out)


def cmd_reproduce(argv: list[str]) -> None:
    from qexp.report.reproduce import main as reproduce_main

    reproduce_main(argv)


def cmd_bench(argv: list[str]) -> None:
    from qexp.bench import main as bench_main

    bench_main(argv)


def cmd_export(argv: list[str]) -> None:
    from qexp.export import main as export_main

    export_main(argv)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.captureWarnings(True)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return
    cmd, rest = argv[0], argv[1:]
    handlers = {"train": cmd_train, "export": cmd_export, "tables": cmd_tables,
                "reproduce": cmd_reproduce, "bench": cmd_bench}
    if cmd in REMOVED:
        fail(REMOVED[cmd])
    if cmd not in handlers:
        fail(f"unknown command '{cmd}'; allowed: {', '.join(SUBCOMMANDS)} (see qexp --help)")
    try:
        handlers[cmd](rest)
    except QexpError as exc:
        fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - a bug: show where, then a one-line summary
        traceback.print_exc()
        fail(f"{type(exc).__name__}: {exc}", 1)


if __name__ == "__main__":
    main()
