"""``qexp export RUN_DIR``: the packed model of a finished run, and loading it back.

The export holds bit-packed codes + side tensors for quantized weights and FP32 tensors for
the rest (``report.memory``), plus the resolved config needed to rebuild the architecture.
``load_exported`` decodes it into a plain float model whose weights are bit-identical to the
quantized weights the run trained with.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from qexp.config import check_targets, fingerprint_diff, fingerprint_keys, same_experiment
from qexp.engine.checkpoint import latest_valid
from qexp.errors import QexpError, one_line
from qexp.quant.base import apply_quantization, make_quantizer, quantizer_kwargs
from qexp.report.memory import decode_export, export_packed, export_payload_bytes
from qexp.report.store import RECORD, atomic_write_bytes, read_record

EXPORT_NAME = "model.qexp.pt"


def quantizer_factory(quant_cfg: dict[str, Any]):
    """A maker of fresh quantizers of a run's kind, ``make(bits=None)``: the decoder of its packed
    weights, at a layer's own width where ``quant.layer_bits`` gave it one."""
    target = quant_cfg.get("_target_")
    if target is None:
        return lambda bits=None: None
    from hydra.utils import get_class

    check_targets({"quant": {"_target_": target}}, "quant")
    cls = get_class(target)
    q, _ = quantizer_kwargs(quant_cfg)
    name = str(quant_cfg.get("name", target))
    return lambda bits=None: make_quantizer(cls, q, name, bits, "an exported layer")


def _build_model(source: str, config: Any, model_kwargs: Any) -> tuple[Any, torch.nn.Module]:
    """The model a record or export describes, built only from qexp's own targets: these files
    may come from someone else's folder, and a ``_target_`` is a call to any importable name."""
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict) or not isinstance(model_kwargs, dict):
        raise QexpError(f"{source}: no model config in it; not a qexp file of this format")
    check_targets({"config": config, "model_kwargs": model_kwargs}, source)
    cfg = OmegaConf.create(config)
    try:
        return cfg, instantiate(cfg.model, **model_kwargs, _convert_="all")
    except Exception as exc:  # noqa: BLE001
        raise QexpError(f"{source}: its model cannot be built ({one_line(exc, 200)})") from None


def _load_weights(model: torch.nn.Module, state: Any, source: str) -> None:
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, KeyError, AttributeError) as exc:
        raise QexpError(f"{source}: its weights do not fit the model its config describes "
                        f"({one_line(exc, 200)})") from None


def export_run(run_dir: str | Path, out: str | Path | None = None) -> tuple[Path, dict[str, Any]]:
    run_dir = Path(run_dir)
    record = read_record(run_dir / RECORD)
    if record is None or record.get("status") != "completed":
        raise QexpError(f"{run_dir} has no completed record.json; export needs a finished run (qexp train ...)")
    cfg, model = _build_model(f"{run_dir}/{RECORD}", record.get("config"), record.get("model_kwargs"))
    found = latest_valid(run_dir / "checkpoints")
    if found is None:
        raise QexpError(f"{run_dir}/checkpoints has no valid checkpoint to export")
    path, state = found
    keys = fingerprint_keys(record["config"])
    if not same_experiment(state.get("fingerprint"), keys):
        old = state.get("fingerprint")
        what = fingerprint_diff(old, keys) if isinstance(old, dict) else "it has no config fingerprint"
        raise QexpError(f"{path} was not written by the run of {run_dir}/{RECORD} ({what}); export refused")
    handle = apply_quantization(model, cfg.quant, initialised=cfg.trainer.get("init_from") not in (None, ""))
    _load_weights(model, state.get("model"), str(path))
    export = export_packed(model, handle, extra={
        "config": record["config"], "model_kwargs": record["model_kwargs"], "metric": record["metric"],
        "final": record["final"],
    })
    buf = io.BytesIO()
    torch.save(export, buf)
    path = Path(out) if out else run_dir / EXPORT_NAME
    atomic_write_bytes(path, buf.getvalue())
    return path, export


def load_exported(path: str | Path) -> torch.nn.Module:
    """A plain (unparametrized) float model holding the decoded quantized weights."""
    try:
        export = torch.load(path, map_location="cpu", weights_only=True)  # data only: never runs code
    except Exception as exc:  # noqa: BLE001
        raise QexpError(f"{path} is not a readable qexp export ({type(exc).__name__}: "
                        f"{one_line(exc, 160)})") from None
    if not isinstance(export, dict):
        raise QexpError(f"{path} is not a qexp export")
    cfg, model = _build_model(str(path), export.get("config"), export.get("model_kwargs"))
    quant = OmegaConf.to_container(cfg.quant, resolve=True)
    try:
        state = decode_export(export, quantizer_factory(quant))
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise QexpError(f"{path} cannot be decoded ({one_line(exc, 160)})") from None
    _load_weights(model, state, str(path))
    return model


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="qexp export", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run directory with record.json and checkpoints/")
    parser.add_argument("--out", help=f"output file (default RUN_DIR/{EXPORT_NAME})")
    parser.add_argument("--no-verify", action="store_true", help="skip re-evaluating the exported model")
    args = parser.parse_args(argv)
    path, export = export_run(args.run_dir, args.out)
    print(f"packed model: {path} ({export_payload_bytes(export)} payload bytes)")
    if args.no_verify:
        return
    from qexp.engine.trainer import Trainer
    from qexp.run import build_data

    cfg = OmegaConf.create(export["config"])
    model = load_exported(path)
    bundle = build_data(cfg)
    cfg.trainer.progress = False
    trainer = Trainer(cfg.trainer, args.run_dir, cfg.seed)
    metrics = trainer.evaluate_tests(model.to(trainer.device), bundle)
    m = export["metric"]
    print(f"exported model test {m}: {metrics[m]:.6f} (record: {export['final'][m]:.6f})")
