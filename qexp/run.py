"""One run: config -> data + model -> quantize -> fit -> measured memory -> record.

Called by ``qexp train`` inside Hydra (one call per job of a sweep).
"""

from __future__ import annotations

import inspect
import logging
import os
import platform
import socket
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from qexp import __version__
from qexp.config import validate
from qexp.data.bundle import DataBundle
from qexp.engine.trainer import Dist, Preempted, Trainer, seed_everything
from qexp.errors import QexpError
from qexp.launch import slurm_dist_env
from qexp.quant.base import QuantHandle, apply_quantization
from qexp.report.memory import measure_memory
from qexp.report.store import RECORD, git_commit, read_record, write_record, write_status

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
        raise QexpError(f"dataset: cannot build {target}: {' '.join(str(exc).split())}") from None
    if hasattr(bundle.task, "label_smoothing"):
        bundle.task.label_smoothing = float(cfg.trainer.label_smoothing)
    return bundle


def build_model(cfg: DictConfig, bundle: DataBundle) -> torch.nn.Module:
    try:
        return instantiate(cfg.model, **bundle.model_kwargs, _convert_="all")
    except QexpError:
        raise
    except Exception as exc:  # noqa: BLE001
        if isinstance(exc.__cause__, QexpError):
            raise exc.__cause__ from None
        raise QexpError(
            f"model {cfg.model.get('_target_')} cannot be built for this dataset "
            f"({bundle.info.get('name', '?')}): {' '.join(str(exc.__cause__ or exc).split())}"
        ) from None


def build(cfg: DictConfig) -> tuple[DataBundle, torch.nn.Module, QuantHandle]:
    """Data, model and attached quantizers for a composed config (used by train and export)."""
    bundle = build_data(cfg)
    model = build_model(cfg, bundle)
    handle = apply_quantization(model, cfg.quant)
    return bundle, model, handle


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
    """Run one training job into ``run_dir``; returns the record (None when skipped)."""
    run_dir = Path(run_dir)
    t0 = time.time()
    validate(cfg)
    slurm_dist_env()
    dist = Dist.from_env()
    if cfg.skip_completed:
        old = read_record(run_dir / RECORD)
        if old and old.get("status") == "completed":
            log.info("skip_completed: %s already completed", run_dir)
            return None
    init_distributed(dist)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        seed_everything(cfg.seed, cfg.trainer.deterministic)
        bundle, model, handle = build(cfg)
        if dist.is_main:
            write_status(run_dir, "running", epoch=0, step=0)
        trainer = Trainer(cfg.trainer, run_dir, cfg.seed, dist)
        picked = choices(cfg)
        hparams = {**picked, "bits": cfg.bits if handle.quantizers else 32, "seed": cfg.seed,
                   "epochs": cfg.trainer.epochs, "lr": cfg.trainer.lr, "batch_size": cfg.trainer.batch_size}
        result = trainer.fit(model, bundle, handle, hparams)
        if not dist.is_main:
            return None
        memory = measure_memory(model, handle)
        record = {
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
                      "skipped": handle.skipped, "stages": handle.stages, "stage_epochs": result["plan"]},
            "choices": picked,
            "config": OmegaConf.to_container(cfg, resolve=True),
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
            write_status(run_dir, "preempted", error=str(exc))
        raise
    except BaseException as exc:
        if dist.is_main:
            msg = str(exc) if isinstance(exc, QexpError) else f"{type(exc).__name__}: {exc}"
            write_status(run_dir, "failed", error=" ".join(msg.split()),
                         traceback=None if isinstance(exc, QexpError) else traceback.format_exc())
        raise
