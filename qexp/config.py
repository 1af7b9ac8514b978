"""The config schema (structured configs in Hydra's ConfigStore), composition, and validation.

Everything that can be checked before work starts is checked here, so a bad override costs a
one-line message and no run directory content: unknown group options and keys, wrong types
(via the schema), out-of-range values (via :func:`validate`), and quantizer arguments (a probe
quantizer is constructed).
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from qexp.errors import QexpError

GROUPS = ("dataset", "model", "quant", "trainer", "experiment")


def config_dir() -> Path:
    env = os.environ.get("QEXP_CONFIG_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "configs"


def group_options(group: str) -> list[str]:
    folder = config_dir() / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


@dataclass
class TrainerConfig:
    epochs: int = 30
    batch_size: int = 64  # global batch: each of N DDP ranks takes batch_size / N
    eval_batch_size: int = 512
    optimizer: str = "adam"  # sgd | adam | adamw
    lr: float = 2e-3
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0  # not applied to biases, nor to norm parameters unless decay_norm
    decay_norm: bool = False  # true: BN/GroupNorm/LayerNorm scale and shift are decayed too (as Caffe does)
    scheduler: str = "cosine"  # none | step | cosine   (per stage, stepped every iteration)
    step_size: int = 10  # scheduler=step: decay every step_size epochs ...
    gamma: float = 0.1
    milestones: list[int] = field(default_factory=list)  # ... or at these epochs
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    grad_clip: float = 0.0  # max gradient norm, 0 = off
    device: str = "auto"  # auto = CUDA when present, else CPU
    num_workers: int = 0
    deterministic: bool = True
    amp: bool = False  # mixed precision (CUDA only)
    compile: bool = False  # torch.compile the model (on in the CIFAR/ImageNet conv-net experiments)
    channels_last: bool = False
    progress: bool = True
    log_every: int = 20  # steps between loss logs / finiteness checks
    checkpoint_every_steps: int = 0  # 0 = checkpoint at epoch ends only
    resume: str = "auto"  # auto | never | path to a checkpoint
    restart_lr_per_stage: bool = True  # each quantization stage warm-starts with a fresh schedule
    handle_signals: bool = True  # SIGTERM/SIGUSR1 -> checkpoint and exit for requeue
    max_steps_per_epoch: Optional[int] = None  # cap (smoke tests)


@dataclass
class QexpConfig:
    dataset: Any = MISSING
    model: Any = MISSING
    quant: Any = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    bits: int = 4
    seed: int = 0
    skip_completed: bool = False  # a run dir whose record.json is completed is not run again


def register_configs() -> None:
    ConfigStore.instance().store(name="qexp_schema", node=QexpConfig)


register_configs()

# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------

_TRAINER_RULES: dict[str, tuple[Any, str]] = {
    "epochs": (lambda v: v >= 1, "an integer >= 1"),
    "batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "eval_batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "optimizer": (lambda v: v in ("sgd", "adam", "adamw"), "one of sgd, adam, adamw"),
    "lr": (lambda v: v > 0, "a number > 0"),
    "momentum": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "weight_decay": (lambda v: v >= 0, "a number >= 0"),
    "scheduler": (lambda v: v in ("none", "step", "cosine"), "one of none, step, cosine"),
    "step_size": (lambda v: v >= 1, "an integer >= 1"),
    "gamma": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "warmup_epochs": (lambda v: v >= 0, "a number >= 0"),
    "label_smoothing": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "grad_clip": (lambda v: v >= 0, "a number >= 0 (0 = off)"),
    "num_workers": (lambda v: v >= 0, "an integer >= 0"),
    "log_every": (lambda v: v >= 1, "an integer >= 1"),
    "checkpoint_every_steps": (lambda v: v >= 0, "an integer >= 0 (0 = epoch ends only)"),
    "device": (lambda v: v == "auto" or re.fullmatch(r"cpu|cuda(:\d+)?|mps", v) is not None, "auto, cpu or cuda[:N]"),
    "max_steps_per_epoch": (lambda v: v is None or v >= 1, "null or an integer >= 1"),
}


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise QexpError(f"{key}={value} is out of range; allowed: {allowed}")


def validate(cfg: DictConfig) -> None:
    """Raise :class:`QexpError` (one line, naming key and allowed values) on any bad value."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        hint = " (the folder of the local copy; nothing is downloaded)" if missing[0].endswith(".root") else ""
        raise QexpError(f"{missing[0]} is required{hint}; pass {missing[0]}=...")
    _check(isinstance(cfg.bits, int) and 1 <= cfg.bits <= 32, "bits", cfg.bits, "an integer 1..32")
    _check(cfg.seed >= 0, "seed", cfg.seed, "an integer >= 0")
    for key, (rule, allowed) in _TRAINER_RULES.items():
        value = cfg.trainer[key]
        _check(bool(rule(value)), f"trainer.{key}", value, allowed)
    if cfg.trainer.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise QexpError(f"trainer.device={cfg.trainer.device} but CUDA is not available here; use trainer.device=auto or cpu")
    validate_quant(cfg.quant)


def validate_quant(quant: DictConfig) -> None:
    from hydra.utils import get_class

    q = OmegaConf.to_container(quant, resolve=True)
    name = q.get("name", "?")
    for key in ("ratios",):
        if key in q and q[key] is not None:
            values = q[key] if isinstance(q[key], list) else [q[key]]
            bad = [v for v in values if not (isinstance(v, (int, float)) and 0 < v <= 1)]
            if bad or not values:
                raise QexpError(f"quant.{key}={q[key]} is out of range; allowed: a non-empty list of fractions in (0, 1]")
            if any(b < a for a, b in zip(values, values[1:])):
                raise QexpError(f"quant.{key}={q[key]} must be non-decreasing (e.g. [0.5, 0.75, 0.875, 1.0])")
    if q.get("skip") is not None and not isinstance(q.get("skip"), list):
        raise QexpError(f"quant.skip={q.get('skip')} must be a list of layer names, 'first', 'last' (e.g. quant.skip=[first,last]) or []")
    target = q.pop("_target_", None)
    if target is None:
        return
    stage_epochs = q.pop("stage_epochs", None)
    for k in ("name", "skip", "act_bits"):
        q.pop(k, None)
    try:
        cls = get_class(target)
    except Exception:  # noqa: BLE001
        raise QexpError(f"quant={name}: quantizer class {target} cannot be imported") from None
    try:
        quantizer = cls(**q)
    except TypeError as exc:
        raise QexpError(f"quant={name}: {exc}") from None
    from qexp.quant.base import resolve_stage_epochs

    resolve_stage_epochs(stage_epochs, len(quantizer.stage_plan()))


# ---------------------------------------------------------------------------------------------
# composition with one-line errors
# ---------------------------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    cause = exc.__cause__
    if cause is not None and str(cause).strip():
        text = f"{text.splitlines()[0]} {str(cause).strip().splitlines()[0]}"
    return " ".join(text.split())


def explain_compose_error(exc: BaseException, overrides: list[str]) -> QexpError:
    """Turn Hydra's multi-line composition errors into one line naming the key and the fix."""
    msg = str(exc)
    m = re.search(r"Could not find '([^']+)/([^'/]+)'", msg)
    if m:
        group, option = m.group(1), m.group(2)
        options = group_options(group)
        return QexpError(f"{group}={option} is not a known option; allowed: {', '.join(options)}")
    full = msg + " " + str(exc.__cause__ or "")
    m = re.search(r"Could not (?:override|append to config\.?) ?'([^']+)'", full) or re.search(
        r"Key '([^']+)' is not in struct", full)
    if m and re.search(r"not in struct|Key '[^']+' not in '", full):
        key = m.group(1)
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        allowed = ""
        try:
            base = compose([o for o in overrides if o.split("=")[0].lstrip("+~") != key])
            node = OmegaConf.select(base, parent) if parent else base
            if isinstance(node, DictConfig):
                keys = ", ".join(k for k in node.keys() if k != "_target_")
                allowed = f"; allowed keys{' of ' + parent if parent else ''}: {keys}"
        except Exception:  # noqa: BLE001
            allowed = ""
        return QexpError(f"{key} is not a config key{allowed}")
    return QexpError(_one_line(exc))


def compose(overrides: list[str]) -> DictConfig:
    """Compose the run config for ``overrides`` (Hydra-internal ``hydra.*`` overrides ignored)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    ours = [o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]
    was = GlobalHydra.instance().is_initialized()
    if was:
        return hydra_compose(config_name="config", overrides=ours)
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=ours)


def expand_sweep(overrides: list[str]) -> list[list[str]]:
    """Every job's override list of a multirun (comma lists, ranges, choice(...))."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    axes = []
    for o in parsed:
        if o.is_sweep_override():
            axes.append([f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()])
        else:
            axes.append([o.input_line])
    return [list(combo) for combo in itertools.product(*axes)]


def check_overrides(overrides: list[str], multirun: bool = False) -> list[DictConfig]:
    """Compose and validate every job of the command line; raise QexpError on the first problem."""
    ours = [o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for o in ours:
        try:
            parser.parse_overrides([o])
        except Exception as exc:  # noqa: BLE001 - grammar errors
            text = _one_line(exc).split(" See https://")[0]
            raise QexpError(f"cannot parse overrides: '{o}': {text} (form: key=value, group=option, key=[a,b])") from None
    jobs = expand_sweep(ours) if multirun else [ours]
    configs = []
    for job in jobs:
        try:
            cfg = compose(job)
        except QexpError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise explain_compose_error(exc, job) from None
        validate(cfg)
        configs.append(cfg)
    return configs
