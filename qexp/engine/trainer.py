"""The training loop: stages x epochs x steps, evaluation, checkpoints, resume, faults.

One loop serves every task (the task object defines loss and metrics) and every quantizer
(the quant handle defines stages).  Checkpoints hold everything needed to continue
bit-identically: model (incl. quantizer buffers), optimizer, LR schedule, AMP scaler, RNG
states, stage/epoch/step and the sampler position.
"""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader

from qexp.config import fingerprint_diff, same_experiment
from qexp.data.bundle import DataBundle
from qexp.engine import checkpoint as ckpt
from qexp.engine.logging import Logger
from qexp.engine.sampling import ResumableSampler
from qexp.errors import NumericalError, QexpError, one_line
from qexp.quant.base import QuantHandle
from qexp.report.memory import measure_memory
from qexp.report.store import write_status
from qexp.tasks.base import to_device

log = logging.getLogger("qexp")

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("none", "step", "cosine")


class Preempted(Exception):
    """SIGTERM/SIGUSR1 arrived: a checkpoint was written; the job can be requeued and resumed."""


class Requeued(SystemExit):
    """A stop signal arrived under submitit, whose handler requeued the job and exits the process
    (a SystemExit, so that no result is written): the job starts again and resumes."""


def seed_everything(seed: int, deterministic: bool = True) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", 0))
            return torch.device(f"cuda:{local}")
        return torch.device("cpu")
    return torch.device(name)


def rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors and tuples (checkpoints are read back with weights_only)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def make_optimizer(cfg: Any, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (momentum, nesterov) / Adam / AdamW; weight decay skips biases and norm parameters
    (``decay_norm``: norm scales and shifts are decayed like weights, as Caffe's solvers do)."""
    norm = set()
    if getattr(cfg, "decay_norm", False):
        norm = {id(p) for m in model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(recurse=False)}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() > 1 or id(p) in norm else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def lr_factor(cfg: Any, step: int, steps_per_epoch: int, epochs: int) -> float:
    """Multiplier of the base LR at ``step`` of a stage: linear warm-up, then step/cosine decay."""
    total = max(1, steps_per_epoch * epochs)
    warm = int(cfg.warmup_epochs * steps_per_epoch)
    if step < warm:
        return (step + 1) / warm
    if cfg.scheduler == "cosine":
        t = (step - warm) / max(1, total - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
    if cfg.scheduler == "step":
        epoch = step // max(1, steps_per_epoch)
        if cfg.milestones:
            return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
        return cfg.gamma ** (epoch // max(1, cfg.step_size))
    return 1.0


def stage_epochs(handle: QuantHandle | None, epochs: int) -> list[int]:
    """Epochs per stage: the quantizer's ``stage_epochs`` or ``trainer.epochs`` split evenly;
    none at all for ``trainer.epochs=0`` (post-training quantization, whatever the stages say)."""
    if epochs == 0:
        return []
    stages = handle.stages if handle is not None else [{}]
    if handle is not None and handle.stage_epochs:
        return list(handle.stage_epochs)
    n = len(stages)
    base = max(1, epochs // n)
    plan = [base] * n
    plan[-1] = max(1, epochs - base * (n - 1))
    return plan


def first_nonfinite_param(model: nn.Module) -> str | None:
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            return name.replace(".parametrizations.", ".").replace(".original", "")
    return None


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "Dist":
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))


@dataclass
class _FitState:
    """What the phases of one ``Trainer.fit`` share.  ``progress`` is the part a checkpoint
    stores (its keys, in this order, are the checkpoint's), the rest is rebuilt on resume."""
    model: nn.Module
    train_model: nn.Module  # the model, DDP-wrapped and compiled as configured
    bundle: DataBundle
    handle: QuantHandle | None
    sampler: ResumableSampler
    plan: list[int]  # epochs per stage
    flat: list[tuple[int, int]]  # (stage, epoch in stage) of every epoch
    steps_per_epoch: int
    amp: bool
    scaler: torch.amp.GradScaler
    progress: dict[str, Any] = field(default_factory=lambda: {
        "epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_metric": None, "best_epoch": None,
        "history": [], "stage": 0, "epoch_loss_sum": 0.0, "epoch_count": 0})
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    loss_sum: Any = 0.0  # running loss of the current epoch (a tensor on the device)
    count: int = 0
    old_handlers: dict[int, Any] = field(default_factory=dict)  # the signal handlers fit replaced


class Trainer:
    def __init__(self, cfg: Any, run_dir: str | Path, seed: int, dist: Dist | None = None,
                 fingerprint: dict[str, Any] | None = None):
        self.cfg = cfg
        # the experiment's identity (config.fingerprint_keys): stored in every checkpoint, and a
        # checkpoint is resumed only when it matches
        self.fingerprint = fingerprint
        self.resume_state: dict[str, Any] | None = None
        self.best_lost: str | None = None
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.seed = seed
        self.dist = dist or Dist()
        if cfg.batch_size % self.dist.world_size:  # DDP: trainer.batch_size is the global batch
            raise QexpError(f"trainer.batch_size={cfg.batch_size} must be divisible by the number of processes "
                            f"({self.dist.world_size}): it is the global batch, split evenly over the ranks")
        self.batch_size = cfg.batch_size // self.dist.world_size  # per rank
        self.device = pick_device(cfg.device)
        self.logger: Logger | None = None  # opened by fit(): evaluation alone writes no logs
        self._stop_signal: int | None = None

    # -- helpers --------------------------------------------------------------------------
    def _loader(self, dataset, bundle: DataBundle, train: bool, sampler=None, epoch: int = 0) -> DataLoader:
        cuda = self.device.type == "cuda"
        workers = self.cfg.num_workers
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.cfg.eval_batch_size,
            sampler=sampler,
            shuffle=False,
            drop_last=False,
            num_workers=workers,
            pin_memory=cuda,
            persistent_workers=workers > 0 and train,
            collate_fn=bundle.collate_fn,
            # its own generator keeps the global RNG untouched; seeded per epoch so worker
            # augmentation seeds differ between epochs but not between a run and its resume
            generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch),
        )

    def _evaluate(self, model: nn.Module, bundle: DataBundle, dataset) -> dict[str, float]:
        model.eval()
        with torch.no_grad():
            # weights do not change during evaluation: quantize each weight once, not per batch
            with parametrize.cached():
                out = bundle.task.evaluate(model, self._loader(dataset, bundle, train=False), self.device)
        model.train()
        return out

    def evaluate_tests(self, model: nn.Module, bundle: DataBundle) -> dict[str, float]:
        sets = bundle.test_sets()
        out: dict[str, float] = {}
        for i, (name, ds) in enumerate(sets.items()):
            metrics = self._evaluate(model, bundle, ds)
            if i == 0:
                out.update(metrics)
            if len(sets) > 1:
                out.update({f"{k}_{name}": v for k, v in metrics.items()})
        return out

    def _on_signal(self, signum, frame):  # noqa: ARG002
        self._stop_signal = signum

    def _stop_requested(self, step: int) -> bool:
        """A stop signal arrived.  Under DDP the ranks agree every ``log_every`` steps, so all of
        them stop at the same step even when the signal reached only some, or at different steps."""
        if self.dist.world_size == 1:
            return self._stop_signal is not None
        if step % self.cfg.log_every:
            return False
        flag = torch.tensor([float(self._stop_signal is not None)], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def _status(self, **fields):
        if self.dist.is_main:
            write_status(self.run_dir, "running", **fields)

    # -- the loop -------------------------------------------------------------------------
    def fit(self, model: nn.Module, bundle: DataBundle, handle: QuantHandle | None,
            hparams: dict[str, Any] | None = None) -> dict[str, Any]:
        """Train every epoch of the stage plan (none: post-training quantization), continuing a
        checkpoint when there is one, and return the history with the test metrics."""
        self.logger = Logger(self.run_dir, enabled=self.dist.is_main, progress=self.cfg.progress)
        st = self._prepare(model, bundle, handle)
        self._restore(st)
        st.old_handlers = self._catch_signals()
        t0 = time.time()
        try:
            model.train()
            for gi in range(st.progress["epoch"], len(st.flat)):
                self._enter_stage(st, st.flat[gi][0])
                self._train_epoch(st, gi)
                self._end_epoch(st, gi)
        finally:
            for sig, h in st.old_handlers.items():
                signal.signal(sig, h)
        return self._finish(st, time.time() - t0, hparams)

    def _prepare(self, model: nn.Module, bundle: DataBundle, handle: QuantHandle | None) -> _FitState:
        """Model on its device (DDP-wrapped, compiled), the sampler and the stage plan."""
        cfg = self.cfg
        model.to(self.device)
        if cfg.channels_last and self.device.type == "cuda":
            model.to(memory_format=torch.channels_last)
        train_model: nn.Module = model
        if self.dist.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            train_model = DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.compile:
            # a frame inductor cannot build (no C++ toolchain, an unsupported op) runs eagerly
            # with a logged warning instead of ending the run
            torch._dynamo.config.suppress_errors = True
            train_model = torch.compile(train_model)
        sampler = ResumableSampler(len(bundle.train), self.seed, shuffle=True, rank=self.dist.rank,
                                   world_size=self.dist.world_size)
        plan = stage_epochs(handle, cfg.epochs)
        steps_per_epoch = math.ceil(len(sampler) / self.batch_size)
        if cfg.max_steps_per_epoch:
            steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
        amp = cfg.amp and self.device.type == "cuda"
        return _FitState(model=model, train_model=train_model, bundle=bundle, handle=handle, sampler=sampler,
                         plan=plan, flat=[(s, e) for s, n in enumerate(plan) for e in range(n)],
                         steps_per_epoch=steps_per_epoch, amp=amp,
                         scaler=torch.amp.GradScaler("cuda", enabled=amp))

    def _new_optimizer(self, st: _FitState, stage_idx: int):
        cfg, steps_per_epoch, n_ep = self.cfg, st.steps_per_epoch, st.plan[stage_idx]
        opt = make_optimizer(cfg, st.model)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg, s, steps_per_epoch, n_ep))
        return opt, sched

    def _restore(self, st: _FitState) -> None:
        """Continue from the checkpoint ``trainer.resume`` names; post-training (no epochs) starts
        in the final stage, everything quantized."""
        if not st.plan:
            if st.handle is not None:
                st.handle.set_stage(len(st.handle.stages) - 1)
            return
        resumed = self.resume_state if self.resume_state is not None else self.prepare_resume()
        if resumed is None:
            return
        if "optimizer" not in resumed:  # a post-training run's checkpoint
            log.info("%s holds no training state; training starts from the initial weights", resumed["_path"])
            return
        state = st.progress
        try:
            state.update({k: resumed[k] for k in state})
            if st.handle is not None:
                st.handle.set_stage(state["stage"])
            st.model.load_state_dict(resumed["model"])
            st.optimizer, st.scheduler = self._new_optimizer(st, state["stage"])
            st.optimizer.load_state_dict(resumed["optimizer"])
            st.scheduler.load_state_dict(resumed["scheduler"])
            st.scaler.load_state_dict(resumed["scaler"])
            set_rng_state(resumed["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
            raise QexpError(f"checkpoint {resumed['_path']} does not fit this run "
                            f"({type(exc).__name__}: {one_line(exc, 200)}); "
                            f"use trainer.resume=never to start over in a fresh sub-folder") from None
        log.info("resumed from %s at epoch %d step %d", resumed["_path"], state["epoch"], state["step_in_epoch"])
        self._status(epoch=state["epoch"], step=state["global_step"], stage=state["stage"], resumed=True)

    def _catch_signals(self) -> dict[int, Any]:
        """Route stop signals to ``_on_signal``; returns the handlers they replace."""
        old_handlers: dict[int, Any] = {}
        if self.cfg.handle_signals:
            # SIGTERM: SLURM preemption / scancel; SIGUSR1/2: time limit warnings (submitit: USR2)
            for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
                try:
                    old_handlers[sig] = signal.signal(sig, self._on_signal)
                except ValueError:  # not in the main thread
                    break
        return old_handlers

    def _enter_stage(self, st: _FitState, stage_idx: int) -> None:
        """Switch the quantizer to the epoch's stage; a new optimizer for the first stage trained
        (and for every stage with ``restart_lr_per_stage``)."""
        if st.optimizer is None or stage_idx != st.progress["stage"]:
            if st.handle is not None:
                st.handle.set_stage(stage_idx)
            if st.optimizer is None or self.cfg.restart_lr_per_stage:
                st.optimizer, st.scheduler = self._new_optimizer(st, stage_idx)
            st.progress["stage"] = stage_idx

    def _checkpoint(self, st: _FitState) -> dict[str, Any]:
        return {
            **st.progress,
            "model": st.model.state_dict(),
            "optimizer": st.optimizer.state_dict(),
            "scheduler": st.scheduler.state_dict(),
            "scaler": st.scaler.state_dict(),
            "rng": rng_state(),
            "plan": st.plan,
            "fingerprint": self.fingerprint,
        }

    def _save(self, st: _FitState) -> None:
        st.progress["epoch_loss_sum"], st.progress["epoch_count"] = float(st.loss_sum), st.count
        if self.dist.is_main:
            ckpt.rotate_and_save(self.ckpt_dir, self._checkpoint(st))

    def _train_epoch(self, st: _FitState, gi: int) -> None:
        """The steps of epoch ``gi`` (from the sampler position when resuming mid-epoch), with
        periodic checkpoints and a checkpoint-and-stop when a stop signal arrives."""
        cfg, state, stage_idx = self.cfg, st.progress, st.flat[gi][0]
        start = state["step_in_epoch"]
        st.sampler.set_epoch(gi, start * self.batch_size)
        loader = self._loader(st.bundle.train, st.bundle, train=True, sampler=st.sampler, epoch=gi)
        total = st.steps_per_epoch - start
        bar = self.logger.bar(loader, total=total, desc=f"epoch {gi + 1}/{len(st.flat)}")
        # running loss of this epoch (restored when resuming mid-epoch)
        st.loss_sum = torch.tensor(state["epoch_loss_sum"] if start else 0.0, dtype=torch.float64,
                                   device=self.device)
        st.count = state["epoch_count"] if start else 0
        for i, batch in enumerate(bar):
            if i >= total:
                break
            loss = self._train_step(st, batch)
            gs = state["global_step"]
            if gs % cfg.log_every == 0 or i == total - 1:
                self._log_step(st, bar, loss, gi)
            if cfg.checkpoint_every_steps and gs % cfg.checkpoint_every_steps == 0:
                self._save(st)
                self._status(epoch=gi + 1, step=gs, stage=stage_idx)
            if self._stop_requested(gs):
                self._stop(st, gi)
        bar.close()

    def _train_step(self, st: _FitState, batch) -> torch.Tensor:
        cfg, optimizer = self.cfg, st.optimizer
        batch = to_device(batch, self.device)
        # cached(): each quantized weight is computed once per forward, however often
        # the model reads it (nn.LSTM/GRU read every weight twice per call)
        with torch.autocast(self.device.type, enabled=st.amp), parametrize.cached():
            loss, n = st.bundle.task.loss(st.train_model, batch)
        optimizer.zero_grad(set_to_none=True)
        st.scaler.scale(loss).backward()
        if cfg.grad_clip > 0:
            st.scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(st.model.parameters(), cfg.grad_clip)
        st.scaler.step(optimizer)
        st.scaler.update()
        st.scheduler.step()
        st.loss_sum += loss.detach() * n
        st.count += n
        st.progress["global_step"] += 1
        st.progress["step_in_epoch"] += 1
        return loss

    def _log_step(self, st: _FitState, bar, loss: torch.Tensor, gi: int) -> None:
        """Log the step's loss; a non-finite one ends the run (the last good checkpoint is kept)."""
        gs, value = st.progress["global_step"], loss.item()
        if not math.isfinite(value):
            layer = first_nonfinite_param(st.model)
            where = f"weights of layer {layer} are non-finite" if layer else "weights are finite"
            raise NumericalError(
                f"loss became {value} by step {gs} (epoch {gi + 1}); {where}; "
                f"lower trainer.lr or enable trainer.grad_clip (last good checkpoint kept)"
            )
        bar.set_postfix(loss=f"{value:.4f}", lr=f"{st.scheduler.get_last_lr()[0]:.2e}")
        self.logger.scalars({"train/loss": value, "train/lr": st.scheduler.get_last_lr()[0]}, gs)

    def _stop(self, st: _FitState, gi: int) -> None:
        """A stop signal: checkpoint, then hand over to the handler it replaced (submitit requeues
        the job and exits: Requeued) or raise Preempted."""
        gs = st.progress["global_step"]
        self._save(st)
        self._status(epoch=gi + 1, step=gs, stage=st.flat[gi][0], preempted=self._stop_signal)
        previous = st.old_handlers.get(self._stop_signal)
        if callable(previous):  # e.g. submitit's handler: requeue the job, then exit
            try:
                previous(self._stop_signal, None)
            except SystemExit as exc:
                raise Requeued(exc.code) from None
        raise Preempted(f"received signal {self._stop_signal or '(on another rank)'} at step {gs}; "
                        f"checkpoint saved")

    def _end_epoch(self, st: _FitState, gi: int) -> None:
        """Evaluate on val, keep the best checkpoint, log, checkpoint."""
        state, stage_idx, task, model = st.progress, st.flat[gi][0], st.bundle.task, st.model
        mean_loss = st.loss_sum / max(st.count, 1)
        if self.dist.world_size > 1:  # every rank saw an equal share: average the ranks' means
            torch.distributed.all_reduce(mean_loss)
            mean_loss = mean_loss / self.dist.world_size
        train_loss = mean_loss.item()
        if not math.isfinite(train_loss):
            layer = first_nonfinite_param(model)
            raise NumericalError(f"loss became {train_loss} in epoch {gi + 1}"
                                 + (f"; weights of layer {layer} are non-finite" if layer else "")
                                 + "; lower trainer.lr or enable trainer.grad_clip")
        entry = {"epoch": gi + 1, "stage": stage_idx, "train_loss": train_loss,
                 "lr": st.scheduler.get_last_lr()[0]}
        if self.dist.is_main:
            val = self._evaluate(model, st.bundle, st.bundle.val)
            entry.update({f"val_{k}": v for k, v in val.items()})
            self.logger.scalars({f"val/{k}": v for k, v in val.items()} | {"train/epoch_loss": train_loss},
                                state["global_step"])
            metric = val[task.metric]
            if state["best_metric"] is None or task.better(metric, state["best_metric"]):
                # the best checkpoint is taken from the last stage only: earlier stages
                # are not fully quantized yet
                if stage_idx == len(st.plan) - 1:
                    state["best_metric"], state["best_epoch"] = metric, gi + 1
                    ckpt.save_checkpoint(self.ckpt_dir / "best.pt",
                                         {"model": model.state_dict(), "epoch": gi + 1, "val": val,
                                          "fingerprint": self.fingerprint})
            log.info("epoch %d/%d stage %d  loss %.4f  val %s %.4f", gi + 1, len(st.flat), stage_idx,
                     train_loss, task.metric, metric)
        state["history"].append(entry)
        state["epoch"] = gi + 1
        state["step_in_epoch"] = 0
        st.loss_sum, st.count = torch.zeros((), dtype=torch.float64), 0
        self._save(st)
        self._status(epoch=gi + 1, step=state["global_step"], stage=stage_idx)
        if self.dist.world_size > 1:
            torch.distributed.barrier()

    def _finish(self, st: _FitState, train_s: float, hparams: dict[str, Any] | None) -> dict[str, Any]:
        """Test metrics of the final and the best weights; closes the logger."""
        state = st.progress
        result: dict[str, Any] = {"history": state["history"], "epochs": len(st.flat), "steps": state["global_step"],
                                  "plan": st.plan, "train_s": train_s}
        if self.dist.is_main:
            result["final"] = self.evaluate_tests(st.model, st.bundle)
            result["final_val"] = self._evaluate(st.model, st.bundle, st.bundle.val)
            result.update(self._best_results(st, result["final"], result["final_val"]))
            result["best_lost"] = self.best_lost
            self.logger.scalars({f"test/{k}": v for k, v in result["final"].items()}, state["global_step"])
            self.logger.hparams(hparams or {}, {f"test_{k}": v for k, v in result["final"].items()})
        self.logger.close()
        return result

    def _best_results(self, st: _FitState, final: dict[str, float], final_val: dict[str, float]) -> dict[str, Any]:
        """``best``, ``best_epoch`` and ``best_memory`` (None: the final model's, the record's
        ``memory``); post-training writes the quantized model as the run's checkpoint."""
        model = st.model
        if not st.plan:  # post-training quantization: the quantized model is the run's checkpoint
            done = {"model": model.state_dict(), "epoch": 0, "global_step": 0, "plan": [],
                    "val": final_val, "fingerprint": self.fingerprint}
            ckpt.rotate_and_save(self.ckpt_dir, done)
            ckpt.save_checkpoint(self.ckpt_dir / "best.pt", done)
            return {"best": dict(final), "best_epoch": 0, "best_memory": None}
        best = self._load_best(model)
        if best is None:
            return {"best": dict(final), "best_epoch": len(st.flat), "best_memory": None}
        last_state = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(best)
        out = {"best": self.evaluate_tests(model, st.bundle), "best_epoch": st.progress["best_epoch"],
               # the packed size of the model these metrics come from (clip_svd's energy rank and
               # SQ's float rows depend on the weights, so it can differ from the final model's)
               "best_memory": measure_memory(model, st.handle)}
        model.load_state_dict(last_state)
        return out

    def _load_best(self, model: nn.Module) -> dict[str, Any] | None:
        """``best.pt``'s weights, or None (falling back to the last weights, with a warning and
        ``best_lost`` set) when it is corrupt or from another experiment."""
        path = self.ckpt_dir / "best.pt"
        if not path.exists():
            return None
        try:
            best = ckpt.load_checkpoint(path)
            if self.fingerprint is not None and not same_experiment(best.get("fingerprint"), self.fingerprint):
                raise ckpt.CorruptCheckpoint(f"{path}: written by another experiment (config fingerprint differs)")
            weights = best["model"]
            shapes = {k: tuple(v.shape) for k, v in weights.items()}
            if shapes != {k: tuple(v.shape) for k, v in model.state_dict().items()}:
                raise ckpt.CorruptCheckpoint(f"{path}: its weights do not fit this model")
            return weights
        except (ckpt.CorruptCheckpoint, KeyError, TypeError, AttributeError) as exc:
            self.best_lost = one_line(exc, 300)
            log.warning("best checkpoint lost (%s); the best-val result is the last weights' instead", self.best_lost)
            return None

    def prepare_resume(self) -> dict[str, Any] | None:
        """Find the checkpoint to resume (``trainer.resume``) and check that it belongs to this
        experiment; called before the run writes anything, so a mismatch changes nothing."""
        mode = str(self.cfg.resume)
        if mode in ("never", "false", "False"):
            return None
        if mode == "auto":
            found = ckpt.latest_valid(self.ckpt_dir)
            if found is None:
                return None
            path, state = found
        else:
            path = Path(mode)
            if not path.exists():
                raise QexpError(f"trainer.resume={mode}: no such checkpoint; use auto, never or a checkpoint path")
            try:
                state = ckpt.load_checkpoint(path)
            except ckpt.CorruptCheckpoint as exc:
                raise QexpError(f"trainer.resume: {exc}") from None
        if self.fingerprint is not None and not same_experiment(state.get("fingerprint"), self.fingerprint):
            old = state.get("fingerprint")
            what = fingerprint_diff(old, self.fingerprint) if isinstance(old, dict) else "it has no config fingerprint"
            raise QexpError(f"checkpoint {path} belongs to another experiment ({what}); choose another "
                            f"hydra.run.dir, or trainer.resume=never to start over in a fresh sub-folder")
        state["_path"] = str(path)
        self.resume_state = state
        return state
