"""Start a run from trained float weights: ``trainer.init_from`` (and ``init_strict``, ``init_match``).

``init_from`` names a qexp run folder (its ``checkpoints/best.pt``), a qexp checkpoint file
(``last.pt``, ``best.pt``), a plain ``state_dict`` file (``.pt``/``.pth``, e.g. torchvision-style
weights on disk), or a sweep folder of runs, from which ``init_match`` picks the one completed run
whose config has this job's values of the listed keys (``qexp reproduce``'s ``init_from:`` steps).

The weights are loaded into the plain model *before* quantizers are attached, so quantizers start
from them.  Weights of a quantized source run are its float shadow weights (its quantizer buffers
are not carried over).  Files are data: qexp checkpoints go through the checksummed loader, plain
files through ``torch.load(weights_only=True)``.  Every problem is a one-line :class:`QexpError`;
:func:`check_init` raises it before Hydra creates any run folder.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qexp.engine.checkpoint import MAGIC, CorruptCheckpoint, load_checkpoint
from qexp.errors import QexpError, one_line
from qexp.quant.base import plain_keys
from qexp.report.store import RECORD, STATUS, read_record

RUN_CHECKPOINT = Path("checkpoints") / "best.pt"


@dataclass
class InitSource:
    """What ``init_from`` resolved to: the weights (plain float names) and their provenance."""

    path: Path
    sha256: str
    state: dict[str, torch.Tensor]
    run: dict[str, Any] = field(default_factory=dict)  # the source run's metric and choices, if a qexp run

    def provenance(self) -> dict[str, Any]:
        return {"path": str(self.path), "sha256": self.sha256, **({"run": self.run} if self.run else {})}


def _lookup(config: dict[str, Any], dotted: str) -> Any:
    cur: Any = config
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return "<unset>"
        cur = cur[part]
    return cur


def _completed_runs(folder: Path) -> list[tuple[Path, dict[str, Any]]]:
    runs = []
    for rec_path in sorted(folder.rglob(RECORD)):
        rec = read_record(rec_path)
        if rec and rec.get("status") == "completed":
            runs.append((rec_path.parent, rec))
    return runs


def match_run(folder: Path, match: list[str], config: dict[str, Any]) -> Path:
    """The one completed run under ``folder`` whose config agrees with ``config`` on every key of
    ``match`` (a sweep step that depends on an earlier sweep)."""
    want = {k: _lookup(config, k) for k in match}
    shown = ", ".join(f"{k}={v}" for k, v in want.items())
    runs = _completed_runs(folder)
    if not runs:
        raise QexpError(f"trainer.init_from={folder}: no completed run in this folder (did its sweep finish?)")
    if not match:
        if len(runs) == 1:
            return runs[0][0]
        raise QexpError(f"trainer.init_from={folder} holds {len(runs)} runs; name the keys that pick one with "
                        f"trainer.init_match=[key,...] (e.g. [seed]) or give one run folder")
    hits = [d for d, rec in runs if all(str(_lookup(rec.get("config", {}), k)) == str(v) for k, v in want.items())]
    if not hits:
        raise QexpError(f"trainer.init_from={folder}: no completed run with {shown} "
                        f"({len(runs)} completed runs there)")
    if len(hits) > 1:
        raise QexpError(f"trainer.init_from={folder}: {len(hits)} completed runs have {shown} "
                        f"({hits[0].name}, {hits[1].name}); add keys to trainer.init_match")
    return hits[0]


def resolve_path(init_from: str, match: list[str], config: dict[str, Any]) -> Path:
    """The weights file ``init_from`` names (see the module docstring)."""
    path = Path(init_from).expanduser()
    if not path.exists():
        raise QexpError(f"trainer.init_from={init_from}: no such file or folder "
                        f"(give a qexp run folder, a checkpoint file or a state_dict .pt/.pth)")
    if path.is_dir():
        if not any((path / name).exists() for name in (RECORD, STATUS, RUN_CHECKPOINT)):
            path = match_run(path, match, config)  # a sweep folder
        record = read_record(path / RECORD) or read_record(path / STATUS) or {}
        if record.get("status") != "completed":
            raise QexpError(f"trainer.init_from={path}: the run did not complete (status: {record.get('status', 'unknown')}); "
                            f"give one of its checkpoint files to use it anyway")
        ckpt = path / RUN_CHECKPOINT
        if not ckpt.exists():
            raise QexpError(f"trainer.init_from={path}: a run folder without {RUN_CHECKPOINT} "
                            f"(give a checkpoint file, e.g. {path / 'checkpoints' / 'last.pt'})")
        return ckpt
    return path


def _source_run(ckpt: Path) -> dict[str, Any]:
    """Provenance of a checkpoint inside a qexp run folder (RUN/checkpoints/x.pt): its metric and choices."""
    rec = read_record(ckpt.parent.parent / RECORD) if ckpt.parent.name == "checkpoints" else None
    if not rec or rec.get("status") != "completed":
        return {}
    m = rec.get("metric")
    return {"dir": str(ckpt.parent.parent), "metric": m, "final": (rec.get("final") or {}).get(m),
            "choices": rec.get("choices", {}), "quant": (rec.get("quant") or {}).get("name"),
            "bits": (rec.get("quant") or {}).get("bits"), "seed": rec.get("seed")}


def _tensor_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    if isinstance(obj, dict) and obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        return obj
    return None


def read_source(path: Path) -> InitSource:
    """Load the weights file (checksummed qexp checkpoint or weights-only state dict)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise QexpError(f"trainer.init_from={path}: unreadable ({exc.strerror})") from None
    sha = hashlib.sha256(data).hexdigest()
    if data.startswith(MAGIC):
        try:
            obj = load_checkpoint(path)
        except CorruptCheckpoint as exc:
            raise QexpError(f"trainer.init_from: {exc}") from None
        state = _tensor_dict(obj.get("model")) if isinstance(obj, dict) else None
    else:
        import io

        try:
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - truncated, corrupt, or not weights-only data
            reason = one_line(exc, 160)
            raise QexpError(f"trainer.init_from={path}: not a readable state_dict or qexp checkpoint ({reason})") from None
        state = _tensor_dict(obj)
        if state is None and isinstance(obj, dict):  # {"state_dict": {...}} / {"model": {...}} wrappers
            state = next((s for k in ("state_dict", "model") if (s := _tensor_dict(obj.get(k))) is not None), None)
    if state is None:
        raise QexpError(f"trainer.init_from={path}: holds no state dict (a mapping of names to tensors)")
    return InitSource(path, sha, plain_keys(state), _source_run(path))


def open_source(trainer_cfg: Any, config: dict[str, Any]) -> InitSource | None:
    """The init source a run's config names, or None without ``trainer.init_from``."""
    init_from = trainer_cfg.get("init_from")
    if init_from in (None, ""):
        return None
    return read_source(resolve_path(str(init_from), list(trainer_cfg.get("init_match") or []), config))


def load_into(model: nn.Module, source: InitSource, strict: bool = True) -> dict[str, Any]:
    """Copy ``source``'s weights into the plain (not yet quantized) ``model``.

    Strict: a missing or unexpected key or a shape mismatch is an error naming the first one.
    Non-strict: the matching tensors are loaded and the rest listed in the returned report."""
    own = model.state_dict()
    missing = [k for k in own if k not in source.state]
    unexpected = [k for k in source.state if k not in own]
    mismatched = [k for k in own if k in source.state and tuple(own[k].shape) != tuple(source.state[k].shape)]
    if strict:
        where = f"trainer.init_from={source.path}"
        hint = " (trainer.init_strict=false loads the tensors that match)"
        if mismatched:
            k = mismatched[0]
            raise QexpError(f"{where}: shape mismatch at '{k}': file {tuple(source.state[k].shape)}, "
                            f"model {tuple(own[k].shape)}{hint}")
        if missing:
            raise QexpError(f"{where}: the file has no '{missing[0]}' of shape {tuple(own[missing[0]].shape)} "
                            f"({len(missing)} missing keys){hint}")
        if unexpected:
            raise QexpError(f"{where}: the file's '{unexpected[0]}' of shape {tuple(source.state[unexpected[0]].shape)} "
                            f"is not in the model ({len(unexpected)} unexpected keys){hint}")
    loadable = {k: v for k, v in source.state.items() if k in own and k not in mismatched}
    if not loadable:
        raise QexpError(f"trainer.init_from={source.path}: no tensor of the file fits this model")
    model.load_state_dict(loadable, strict=False)
    return {"loaded": len(loadable), "missing": missing, "unexpected": unexpected, "shape_mismatch": mismatched}


def initialise(model: nn.Module, trainer_cfg: Any, config: dict[str, Any]) -> dict[str, Any] | None:
    """Load ``trainer.init_from`` into ``model``; the record's ``init`` entry (None without it)."""
    source = open_source(trainer_cfg, config)
    if source is None:
        return None
    report = load_into(model, source, bool(trainer_cfg.get("init_strict", True)))
    return {**source.provenance(), "strict": bool(trainer_cfg.get("init_strict", True)), **report}
