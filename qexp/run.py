"""One run: config -> data + model -> quantize -> fit -> measured memory -> record.

Called by ``qexp train`` inside Hydra (one call per job of a sweep).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import platform
import socket
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from qexp import __version__
from qexp.config import fingerprint, fingerprint_diff, fingerprint_keys, validate
from qexp.data.bundle import DataBundle
from qexp.engine.init import initialise
from qexp.engine.trainer import Dist, Preempted, Requeued, Trainer, seed_everything
from qexp.errors import QexpError, one_line
from qexp.launch import slurm_dist_env
from qexp.lock import RunLock
from qexp.quant.base import QuantHandle, apply_quantization
from qexp.report.memory import measure_memory
from qexp.report.store import (RECORD, RECORD_FORMAT, git_commit, read_record, remove_stale_temps, write_final_status,
                               write_record, write_status)

log = logging.getLogger("qexp")


def build_data(cfg: DictConfig) -> DataBundle:
    target = cfg.dataset.get("_target_")
    kwargs: dict[str, Any] = {}
    try:
        from hydra.utils import get_method

        fn = get_method(target)
        if "seed" in inspect.signature(fn).parameters:
            kwargs["seed"] = cfg.seed
    except Exception:  # noqa: BLE001 - instantiate reports it below
        pass
    try:
        bundle = instantiate(cfg.dataset, **kwargs, _convert_="all")
    except QexpError:
        raise
    except Exception as exc:  # noqa: BLE001
        cause = exc.__cause__ if isinstance(exc.__cause__, QexpError) else None
        if cause is not None:
            raise cause from None
        raise QexpError(f"dataset: cannot build {target}: {one_line(exc)}") from None
    if hasattr(bundle.task, "label_smoothing"):
        bundle.task.label_smoothing = float(cfg.trainer.label_smoothing)
    return bundle


def build_model(cfg: DictConfig, bundle: DataBundle) -> torch.nn.Module:
    try:
        with warnings.catch_warnings():  # an empty layer is reported by check_model_sizes, in one line
            warnings.filterwarnings("ignore", "Initializing zero-element tensors")
            return instantiate(cfg.model, **bundle.model_kwargs, _convert_="all")
    except QexpError:
        raise
    except Exception as exc:  # noqa: BLE001
        if isinstance(exc.__cause__, QexpError):
            raise exc.__cause__ from None
        raise QexpError(
            f"model {cfg.model.get('_target_')} cannot be built for this dataset "
            f"({bundle.info.get('name', '?')}): {one_line(exc.__cause__ or exc)}"
        ) from None


def check_model_sizes(cfg: DictConfig, model: torch.nn.Module) -> None:
    """A layer without weights (``model.hidden=[0]``) trains to chance and looks like a result."""
    empty = next(((n, list(p.shape)) for n, p in model.named_parameters() if p.numel() == 0), None)
    if empty is not None:
        sizes = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if k != "_target_"}
        raise QexpError(f"model {sizes} gives layer {empty[0]} the empty shape {empty[1]}; every layer size must "
                        f"be >= 1")


def build(cfg: DictConfig) -> tuple[DataBundle, torch.nn.Module, QuantHandle]:
    """Data, model and attached quantizers for a composed config (used by train and export)."""
    bundle = build_data(cfg)
    model = build_model(cfg, bundle)
    check_model_sizes(cfg, model)
    init = initialise(model, cfg.trainer, OmegaConf.to_container(cfg, resolve=True))
    handle = apply_quantization(model, cfg.quant, initialised=init is not None)
    handle.init = init
    return bundle, model, handle


def bits_warning(cfg: DictConfig, handle: QuantHandle) -> str | None:
    """``quant=bwn bits=4``: the quantizer has a fixed width and ignores the top-level ``bits``."""
    if not handle.quantizers or handle.bits == cfg.bits:
        return None
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = HydraConfig.get().overrides.task
        if not any(o.lstrip("+~").startswith("bits=") for o in overrides):
            return None  # bits left at its default: nothing was asked for and ignored
    except ValueError:  # outside @hydra.main: say it whenever they differ
        pass
    return f"bits={cfg.bits} does not apply to quant={handle.name}: it uses {handle.bits}-bit weights"


def epochs_warning(cfg: DictConfig, handle: QuantHandle) -> str | None:
    """``quant=sq trainer.epochs=1``: every stage trains at least one epoch, so more run than asked."""
    stages = len(handle.stages)
    if handle.stage_epochs or cfg.trainer.epochs == 0 or cfg.trainer.epochs >= stages:  # 0: post-training
        return None
    return (f"trainer.epochs={cfg.trainer.epochs} is fewer than the {stages} stages of quant={handle.name}: "
            f"{stages} epochs will run (one per stage); set trainer.epochs or quant.stage_epochs")


def check_run_dir(path: str | os.PathLike, key: str = "hydra.run.dir") -> None:
    """The run folder exists (created) and is a writable folder, else a one-line error."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise QexpError(f"{key}={path} cannot be a run folder: it is an existing file") from None
    except OSError as exc:
        raise QexpError(f"{key}={path} cannot be created: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise QexpError(f"{key}={path} is not writable (permission denied)")


def settle_output_dir(argv: list[str], multirun: bool = False) -> list[str]:
    """Resolve Hydra's run (or sweep) folder once, check that it can be written, and pin it with
    an override, so a bad folder is one line before Hydra starts (not its traceback)."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    given = next((a.split("=", 1)[1] for a in argv if a.startswith(f"{key}=")), None)
    if given is not None and "${" not in given:
        check_run_dir(given.strip("'\""), key)
        return argv
    value = resolve_output_dir(argv, key, multirun)
    check_run_dir(value, key)
    return [*(a for a in argv if not a.startswith(f"{key}=")), f"{key}='{value}'"]


def fresh_subfolder(run_dir: Path) -> Path:
    """``trainer.resume=never`` in a folder that holds a run: start over beside it, never over it."""
    if not (run_dir / RECORD).exists() and not any((run_dir / "checkpoints").glob("*.pt")):
        return run_dir
    n = 1
    while (run_dir / f"restart-{n}").exists():
        n += 1
    fresh = run_dir / f"restart-{n}"
    log.warning("trainer.resume=never: %s already holds a run; starting over in %s", run_dir, fresh)
    return fresh


def check_completed(run_dir: Path, keys: dict[str, Any]) -> bool:
    """True when ``run_dir`` holds a completed record of this experiment; a completed record of
    another experiment is a one-line error (it is never overwritten)."""
    old = read_record(run_dir / RECORD)
    if not old or old.get("status") != "completed":
        return False
    try:
        old_keys = fingerprint_keys(old.get("config") or {})
    except Exception:  # noqa: BLE001 - an odd record: treat as another experiment
        old_keys = {}
    diff = fingerprint_diff(old_keys, keys)
    if diff:
        raise QexpError(f"{run_dir} holds a completed run of another experiment ({diff}); choose another "
                        f"hydra.run.dir, or trainer.resume=never to start over in a fresh sub-folder")
    return True


def choices(cfg: DictConfig) -> dict[str, str]:
    """Which option of each group made this run (from Hydra when available)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        got = dict(HydraConfig.get().runtime.choices)
        return {k: v for k, v in got.items() if not k.startswith("hydra") and k != "qexp_schema" and v is not None}
    except Exception:  # noqa: BLE001 - outside @hydra.main
        return {"quant": str(cfg.quant.get("name", "?"))}


def init_distributed(dist: Dist) -> None:
    """Join the process group of a torchrun/srun launch (NCCL on CUDA, gloo on CPU); once."""
    if dist.world_size > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(dist.local_rank)
        torch.distributed.init_process_group(backend)


def resolve_output_dir(argv: list[str], key: str, multirun: bool = False) -> str:
    """The value Hydra would give ``key`` (hydra.run.dir / hydra.sweep.dir) for this command line."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import setup_globals

    from qexp.config import config_dir, expand_sweep

    ours = [a for a in argv if not a.startswith("-")]
    if multirun:
        ours = expand_sweep(ours)[0]  # the sweep dir does not depend on the job
    setup_globals()  # registers ${now:...}
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        composed = compose(config_name="config", overrides=ours, return_hydra_config=True)
    HydraConfig.instance().set_config(composed)
    return str(OmegaConf.select(composed, key))


def agree_on_output_dir(argv: list[str], multirun: bool = False) -> list[str]:
    """Under torchrun/srun every rank runs the same ``qexp train``; Hydra would name each rank's
    run dir from its own clock (``${now:...}``).  Rank 0 resolves ``hydra.run.dir`` (or
    ``hydra.sweep.dir`` for -m) once and every rank gets it as an override."""
    if not multirun:
        slurm_dist_env()
    dist = Dist.from_env()
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    if dist.world_size <= 1:
        return argv
    if not dist.is_main:
        argv = [*argv, "hydra.output_subdir=null"]  # rank 0 writes .hydra/ alone
    if any(a.startswith(f"{key}=") for a in argv):
        return argv
    init_distributed(dist)
    value: list[Any] = [None]
    if dist.is_main:
        try:
            value[0] = resolve_output_dir(argv, key, multirun)
        except Exception as exc:  # noqa: BLE001 - Hydra reports it again below, on every rank
            log.warning("could not resolve %s for all ranks: %s", key, exc)
    torch.distributed.broadcast_object_list(value, src=0)
    if value[0] is None:
        return argv
    return [*argv, f"{key}='{value[0]}'"]


def train(cfg: DictConfig, run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """Run one training job into ``run_dir``; returns the record (None when skipped).

    Rank 0 holds the folder's lock for the whole run; before anything is written, a completed
    record or a checkpoint in the folder must belong to the same experiment (fingerprint)."""
    run_dir = Path(run_dir)
    t0 = time.time()
    validate(cfg)
    slurm_dist_env()
    dist = Dist.from_env()
    init_distributed(dist)
    check_run_dir(run_dir)
    with RunLock(run_dir) if dist.is_main else contextlib.nullcontext():
        if str(cfg.trainer.resume) not in ("never", "false", "False"):
            return _train_locked(cfg, run_dir, dist, t0)
        fresh = [fresh_subfolder(run_dir) if dist.is_main else None]
        if dist.world_size > 1:
            torch.distributed.broadcast_object_list(fresh, src=0)
        if fresh[0] == run_dir:
            return _train_locked(cfg, run_dir, dist, t0)
        check_run_dir(fresh[0])
        with RunLock(fresh[0]) if dist.is_main else contextlib.nullcontext():
            return _train_locked(cfg, fresh[0], dist, t0)


def _train_locked(cfg: DictConfig, run_dir: Path, dist: Dist, t0: float) -> dict[str, Any] | None:
    keys = fingerprint_keys(cfg)
    if check_completed(run_dir, keys) and cfg.skip_completed:
        log.info("skip_completed: %s already completed", run_dir)
        return None
    if dist.is_main:
        for folder in (run_dir, run_dir / "checkpoints"):
            for tmp in remove_stale_temps(folder):
                log.info("removed %s, left by an interrupted write", tmp)
    trainer = Trainer(cfg.trainer, run_dir, cfg.seed, dist, fingerprint=keys)
    trainer.prepare_resume()  # a checkpoint of another experiment: one line, nothing written
    try:
        seed_everything(cfg.seed, cfg.trainer.deterministic)
        bundle, model, handle = build(cfg)
        if dist.is_main:
            write_status(run_dir, "running")  # the trainer adds epoch and step (a resumed run's, too)
        warnings = [w for w in (bits_warning(cfg, handle), epochs_warning(cfg, handle)) if w]
        for w in warnings:
            log.warning(w)
        picked = choices(cfg)
        hparams = {**picked, "bits": handle.bits if handle.quantizers else 32, "seed": cfg.seed,
                   "epochs": cfg.trainer.epochs, "lr": cfg.trainer.lr, "batch_size": cfg.trainer.batch_size}
        result = trainer.fit(model, bundle, handle, hparams)
        if not dist.is_main:
            return None
        memory = measure_memory(model, handle)
        if result.get("best_lost"):
            warnings.append(f"best checkpoint lost, best = last weights: {result['best_lost']}")
        record = {
            "format": RECORD_FORMAT,
            "status": "completed",
            "metric": bundle.task.metric,
            "higher_is_better": bundle.task.higher_is_better,
            "final": result["final"],
            "best": result["best"],
            "best_epoch": result["best_epoch"],
            "final_val": result["final_val"],
            "memory": memory,  # of the final model (``final``); ``best_memory``: of the ``best`` one
            "best_memory": result.get("best_memory") or memory,
            "quant": {"name": handle.name, "bits": handle.bits, "layers": sorted(handle.quantizers),
                      "layer_bits": handle.layer_bits(), "skipped": handle.skipped, "stages": handle.stages,
                      "stage_epochs": result["plan"], "post_training": not result["plan"]},
            "init": handle.init,
            "choices": picked,
            "config": OmegaConf.to_container(cfg, resolve=True),
            "fingerprint": fingerprint(keys),
            "warnings": warnings,
            "seed": cfg.seed,
            "git": git_commit(),
            "wall_s": time.time() - t0,
            "train_s": result["train_s"],
            "epochs": result["epochs"],
            "steps": result["steps"],
            "history": result["history"],
            "data": bundle.info,
            "model_kwargs": bundle.model_kwargs,
            "host": socket.gethostname(),
            "device": str(trainer.device),
            "world_size": dist.world_size,
            "versions": {"qexp": __version__, "torch": torch.__version__, "python": platform.python_version()},
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        path = write_record(run_dir, record)
        write_status(run_dir, "completed", record=str(path))
        m = record["metric"]
        log.info("test %s %.4f (best-val checkpoint %.4f), memory reduction %.2fx", m, record["final"][m],
                 record["best"][m], memory["reduction"])
        log.info("record: %s | checkpoints: %s | tensorboard: %s", path, run_dir / "checkpoints", run_dir / "tb")
        return record
    except Preempted as exc:
        if dist.is_main:
            write_final_status(run_dir, "preempted", error=str(exc))
        raise
    except KeyboardInterrupt:
        if dist.is_main:
            write_final_status(run_dir, "interrupted", error="interrupted (Ctrl-C); run the same command to resume")
        raise
    except Requeued:
        if dist.is_main:
            write_final_status(run_dir, "preempted", requeued=True,
                         error="checkpoint saved; the launcher requeued the job, which resumes when it starts again")
        raise
    except BaseException as exc:
        if dist.is_main:
            msg = str(exc) if isinstance(exc, QexpError) else f"{type(exc).__name__}: {exc}"
            write_final_status(run_dir, "failed", error=" ".join(msg.split()),
                               traceback=None if isinstance(exc, QexpError) else traceback.format_exc())
        raise
