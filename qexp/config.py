"""The config schema (structured configs in Hydra's ConfigStore), composition, and validation.

Everything that can be checked before work starts is checked here, so a bad override costs a
one-line message and no run directory content: unknown group options and keys, wrong types
(via the schema), out-of-range values (via :func:`validate`), and quantizer arguments (a probe
quantizer is constructed).
"""

from __future__ import annotations

import functools
import inspect
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
    # start from trained weights (qexp/engine/init.py): a run folder, a checkpoint, a state_dict
    # .pt/.pth, or a sweep folder (init_match picks the run); epochs=0 = post-training quantization
    init_from: Optional[str] = None
    init_strict: bool = True  # false: load the tensors that fit, record what was skipped
    init_match: list[str] = field(default_factory=list)  # config keys a sweep folder's run must share


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
    "epochs": (lambda v: v >= 0, "an integer >= 0 (0 = post-training quantization, no training step)"),
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


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"trainer.lr": 0.002, "model.hidden": [256, 128], ...}`` of a plain nested dict."""
    if not isinstance(node, dict) or (not node and prefix):
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _plain(cfg: Any) -> dict[str, Any]:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return dict(cfg)


def check_finite(cfg: Any) -> None:
    """``trainer.lr=inf`` or ``nan`` anywhere would only fail many steps later."""
    import math

    for key, value in flatten(_plain(cfg)).items():
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, float) and not math.isfinite(v):
                raise QexpError(f"{key}={value} is not a finite number")


def validate(cfg: DictConfig) -> None:
    """Raise :class:`QexpError` (one line, naming key and allowed values) on any bad value."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        hint = " (the folder of the local copy; nothing is downloaded)" if missing[0].endswith(".root") else ""
        raise QexpError(f"{missing[0]} is required{hint}; pass {missing[0]}=...")
    check_finite(cfg)
    check_targets(cfg, "config")
    _check(isinstance(cfg.bits, int) and 1 <= cfg.bits <= 32, "bits", cfg.bits, "an integer 1..32")
    _check(cfg.seed >= 0, "seed", cfg.seed, "an integer >= 0")
    for key, (rule, allowed) in _TRAINER_RULES.items():
        value = cfg.trainer[key]
        _check(bool(rule(value)), f"trainer.{key}", value, allowed)
    if cfg.trainer.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise QexpError(f"trainer.device={cfg.trainer.device} but CUDA is not available here; use trainer.device=auto or cpu")
    validate_quant(cfg.quant, initialised=cfg.trainer.get("init_from") not in (None, ""))


def validate_quant(quant: DictConfig, initialised: bool = False) -> None:
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
    layer_bits = q.get("layer_bits") or {}
    if not isinstance(layer_bits, dict):
        raise QexpError(f"quant.layer_bits={layer_bits} must be a mapping {{name | glob | first | last: bits}}, "
                        f"e.g. quant.layer_bits={{first:8,last:8}}")
    for item, bits in layer_bits.items():
        if not isinstance(bits, int) or isinstance(bits, bool):
            raise QexpError(f"quant.layer_bits.{item}={bits!r} must be an integer number of bits")
    target = q.get("_target_")
    if target is None:
        return
    from qexp.quant.base import fit_stage_epochs, make_quantizer, quantizer_kwargs, resolve_stage_epochs

    kwargs, dropped_float = quantizer_kwargs(q, initialised)
    try:
        cls = get_class(target)
    except Exception:  # noqa: BLE001
        raise QexpError(f"quant={name}: quantizer class {target} cannot be imported") from None
    quantizer = make_quantizer(cls, kwargs, name)
    for item, bits in layer_bits.items():  # a width this quantizer cannot take fails here, not mid-run
        make_quantizer(cls, kwargs, name, bits, str(item))
    n_stages = len(quantizer.stage_plan())
    resolve_stage_epochs(fit_stage_epochs(q.get("stage_epochs"), n_stages, dropped_float), n_stages)


def check_model_level(cfg: DictConfig, cache: dict[Any, Any]) -> None:
    """Checks that need the model: ``trainer.init_from`` (the file, and that it fits the model)
    and the layer names of ``quant.skip`` / ``quant.layer_bits``.  Run before Hydra creates a run
    folder; only when one of them is set (it builds the dataset to learn the model's shape).
    ``cache`` keeps built data and read files between the jobs of a sweep."""
    init_from = cfg.trainer.get("init_from")
    if init_from in (None, "") and not cfg.quant.get("layer_bits"):
        return
    from types import SimpleNamespace

    from qexp.engine.init import load_into, read_source, resolve_path
    from qexp.quant.base import apply_quantization
    from qexp.run import build_data, build_model

    data_key = ("data", OmegaConf.to_yaml(cfg.dataset))
    if data_key not in cache:
        cache[data_key] = build_data(cfg).model_kwargs
    model = build_model(cfg, SimpleNamespace(model_kwargs=cache[data_key], info={}))
    if init_from not in (None, ""):
        path = resolve_path(str(init_from), list(cfg.trainer.init_match), OmegaConf.to_container(cfg, resolve=True))
        if ("file", path) not in cache:
            cache[("file", path)] = read_source(path)
        load_into(model, cache[("file", path)], bool(cfg.trainer.init_strict))
    apply_quantization(model, cfg.quant, initialised=init_from not in (None, ""))


# ---------------------------------------------------------------------------------------------
# what may be instantiated: the targets qexp's own configs name
# ---------------------------------------------------------------------------------------------


def _targets_in(node: Any) -> list[tuple[str, str]]:
    """(dotted path, target) of every ``_target_`` in a plain nested dict/list."""
    found = []
    stack: list[tuple[str, Any]] = [("", node)]
    while stack:
        path, cur = stack.pop()
        if isinstance(cur, dict):
            if "_target_" in cur:
                found.append((path, str(cur["_target_"])))
            stack += [(f"{path}.{k}" if path else str(k), v) for k, v in cur.items() if k != "_target_"]
        elif isinstance(cur, list):
            stack += [(f"{path}[{i}]", v) for i, v in enumerate(cur)]
    return found


def allowed_targets() -> frozenset[str]:
    """Every ``_target_`` named by a YAML file under ``configs/`` (Hydra's own launcher configs
    aside) and every quantizer class: the only things a config read from a file may build."""
    return _allowed_targets(str(config_dir()))


@functools.lru_cache(maxsize=4)
def _allowed_targets(root: str) -> frozenset[str]:
    import yaml

    targets: set[str] = set()
    for path in Path(root).rglob("*.yaml"):
        if "hydra" in path.relative_to(root).parts:
            continue
        try:
            targets.update(t for _, t in _targets_in(yaml.safe_load(path.read_text())))
        except (OSError, yaml.YAMLError):
            continue
    from qexp.quant.base import Quantizer

    todo = [Quantizer]
    while todo:
        cls = todo.pop()
        targets.add(f"{cls.__module__}.{cls.__qualname__}")
        todo += cls.__subclasses__()
    return frozenset(targets)


def check_targets(cfg: Any, where: str) -> None:
    """Refuse (one line) any ``_target_`` that is not one of :func:`allowed_targets`."""
    allowed = allowed_targets()
    for path, target in _targets_in(_plain(cfg) if not isinstance(cfg, dict) else cfg):
        if target not in allowed:
            raise QexpError(f"{where}: {path or 'config'}._target_={target} is not a target of qexp's configs; "
                            f"refusing to instantiate it")


# ---------------------------------------------------------------------------------------------
# the fingerprint of an experiment: resume, skip and export only within the same one
# ---------------------------------------------------------------------------------------------

# Keys that change how a run is shown, where it writes or how it is resumed, never what it
# computes: a run re-started with other values of these is still the same experiment.  Every
# other key of the resolved config (new keys included, automatically) is part of the fingerprint.
FINGERPRINT_EXCLUDE = (
    "trainer.progress",  # progress bars
    "trainer.log_every",  # logging / finiteness-check interval
    "trainer.num_workers",  # data-loader processes (per-epoch seeded generator: same batches)
    "trainer.device",  # where it runs (a run moved from one machine to another may resume)
    "trainer.resume",  # resume mode
    "trainer.handle_signals",
    "trainer.checkpoint_every_steps",  # resume is bit-identical whatever the interval
    "skip_completed",
    "dataset.cache_dir",  # where a built dataset is cached
    "hydra",  # the run dir and launcher
)


def fingerprint_keys(cfg: Any) -> dict[str, Any]:
    """The flattened resolved config minus :data:`FINGERPRINT_EXCLUDE` (JSON-safe values)."""
    import json

    flat = flatten(_plain(cfg))
    keep = {k: v for k, v in flat.items()
            if not any(k == x or k.startswith(x + ".") for x in FINGERPRINT_EXCLUDE)}
    return json.loads(json.dumps(keep, sort_keys=True, default=str))


def fingerprint(keys: dict[str, Any]) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


def same_experiment(old: Any, new: dict[str, Any]) -> bool:
    return isinstance(old, dict) and not fingerprint_diff(old, new)


def fingerprint_diff(old: dict[str, Any], new: dict[str, Any], limit: int = 4) -> str:
    """``seed 3 -> 4, trainer.epochs 2 -> 3`` (the first ``limit`` differing keys), or "" when
    both are the same experiment.  A key that only one side has counts only when its value
    there is not null: a key added to qexp later with a null (off) default changes nothing."""
    keys = sorted(k for k in set(old) | set(new) if old.get(k, "<unset>") != new.get(k, "<unset>")
                  and not (k not in old and new[k] is None) and not (k not in new and old[k] is None))
    parts = [f"{k} {old.get(k, '<unset>')} -> {new.get(k, '<unset>')}" for k in keys[:limit]]
    if len(keys) > limit:
        parts.append(f"and {len(keys) - limit} more")
    return ", ".join(parts)


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
    cache: dict[Any, Any] = {}
    for job in jobs:
        try:
            cfg = compose(job)
        except QexpError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise explain_compose_error(exc, job) from None
        check_added_keys(job)
        validate(cfg)
        check_dataset_root(cfg, cache)
        check_model_level(cfg, cache)
        configs.append(cfg)
    return configs


def check_dataset_root(cfg: DictConfig, cache: dict[Any, Any]) -> None:
    """A ``dataset.root`` that does not exist fails before any run folder does, with the
    dataset's own message (which says what to install or put where): its loader looks at the
    root first, so building it costs nothing when the root is missing."""
    root = cfg.dataset.get("root") if "root" in cfg.dataset else None
    if not isinstance(root, str) or not root or Path(root).expanduser().exists():
        return
    key = ("dataset-root", cfg.dataset.get("_target_"), root)
    if key in cache:
        return
    cache[key] = True
    from qexp.run import build_data

    build_data(cfg)  # raises the loader's one-line QexpError
    raise QexpError(f"dataset.root={root}: no such folder")


def _accepts(target: str, name: str) -> bool:
    """Whether the callable ``target`` takes a keyword argument ``name``."""
    from hydra.utils import get_method

    try:
        params = inspect.signature(get_method(target)).parameters.values()
    except Exception:  # noqa: BLE001 - not importable: instantiate reports it
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def check_added_keys(job: list[str]) -> None:
    """A key added with ``+`` (``+trainer.lrr=0.1``) must be known: present in the composed
    defaults, a config group, or an argument of the ``_target_`` of the node it is added to."""
    _absent = object()
    for o in job:
        if not o.startswith("+"):
            continue
        key = o.lstrip("+").split("=", 1)[0].split("@", 1)[0]
        if "/" in key or key in GROUPS or (config_dir() / key).is_dir():
            continue
        base = compose([x for x in job if x is not o])
        if OmegaConf.select(base, key, default=_absent) is not _absent:
            continue
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(base, parent, default=None) if parent else base
        if isinstance(node, DictConfig) and "_target_" in node and _accepts(str(node["_target_"]), leaf):
            continue
        keys = ", ".join(k for k in node if k != "_target_") if isinstance(node, DictConfig) else ""
        where = f" of {parent}" if parent else ""
        raise QexpError(f"{key} is not a config key (added with +); allowed keys{where}: {keys}")
