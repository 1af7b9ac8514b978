"""``qexp bench``: what quantization-aware training costs, measured as ratios in one run.

* step time (forward + backward + optimizer step, after warm-up, median of interleaved rounds)
  of each quantizer vs FP32 on the same model and batch, and of qexp's uniform 4-bit vs the same
  model built with Brevitas (QuantConv2d/QuantLinear, 4-bit per-channel weights);
* ``trainer.compile``: compiled quantized step vs eager FP32 step (compile time apart);
* packed bytes of every quantizer vs the bit-count limit (sum of ceil(n*bits/8) + scale bytes);
* evaluation throughput of the exported (decoded) model vs the FP32 model.

Ratios measured in one process on one machine are comparable; absolute seconds are not the point.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from qexp.quant.base import apply_quantization
from qexp.report.memory import export_packed, export_payload_bytes

QUANTS: dict[str, dict[str, Any]] = {
    "uniform4": {"name": "uniform", "_target_": "qexp.quant.uniform.UniformQuantizer", "bits": 4},
    "bwn": {"name": "bwn", "_target_": "qexp.quant.binary.BinaryQuantizer", "bits": 1},
    "twn": {"name": "twn", "_target_": "qexp.quant.binary.TernaryWeightQuantizer", "bits": 2},
    "sq": {"name": "sq", "_target_": "qexp.quant.sq.StochasticQuantizer", "bits": 2, "base": "twn",
           "ratios": [0.5]},
    "pow2": {"name": "pow2", "_target_": "qexp.quant.pow2.PowerOfTwoQuantizer", "bits": 3},
    "ternary": {"name": "ternary", "_target_": "qexp.quant.ternary.HwangSungQuantizer", "bits": 2},
    "fixed5": {"name": "fixed", "_target_": "qexp.quant.uniform.FixedPointQuantizer", "bits": 5},
    "inq5": {"name": "inq", "_target_": "qexp.quant.pow2.INQQuantizer", "bits": 5},
    "clip_svd8": {"name": "clip_svd", "_target_": "qexp.quant.clip_svd.ClipSVDQuantizer", "bits": 8},
}
STEP_QUANTS = ("uniform4", "bwn", "twn", "sq", "pow2", "ternary")


def _models(quick: bool) -> dict[str, tuple[Callable[[], nn.Module], Callable[[torch.Generator], tuple]]]:
    from qexp.models.mlp import mlp
    from qexp.models.resnet import resnet20

    def classify(shape, classes):
        return lambda g: (torch.randn(*shape, generator=g), torch.randint(0, classes, (shape[0],), generator=g))

    out = {
        "resnet20": (lambda: resnet20((3, 32, 32), 10), classify((32 if quick else 128, 3, 32, 32), 10)),
        "mlp_digits": (lambda: mlp((1, 8, 8), 10), classify((64, 1, 8, 8), 10)),
    }
    try:
        from qexp.models.rnn import rnn

        def speech(g):
            b, t, f = 16, 100, 40
            return torch.randn(b, f, t, generator=g), None

        out["rnn_speech"] = (lambda: rnn((40, 100), 30), speech)
    except Exception:  # noqa: BLE001 - speech models optional
        pass
    return out


def _loss(model: nn.Module, batch: tuple) -> torch.Tensor:
    x, y = batch
    out = model(x)
    if isinstance(out, tuple):
        out = out[0]
    if y is None:
        return out.float().pow(2).mean()
    return nn.functional.cross_entropy(out, y)


def _stepper(model: nn.Module, batch: tuple) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        _loss(model, batch).backward()
        opt.step()

    return step


def _final_stage(handle) -> None:
    handle.set_stage(len(handle.stages) - 1)


def quantized_with_handle(make: Callable[[], nn.Module], quant: str | None, seed: int = 0):
    torch.manual_seed(seed)
    model = make()
    handle = None
    if quant is not None:
        handle = apply_quantization(model, {**QUANTS[quant], "skip": []})
        _final_stage(handle)
    return model.train(), handle


def quantized(make: Callable[[], nn.Module], quant: str | None, seed: int = 0) -> nn.Module:
    return quantized_with_handle(make, quant, seed)[0]


def brevitas_equivalent(model: nn.Module, bits: int = 4) -> nn.Module:
    """The same architecture with Brevitas layers: per-output-channel, symmetric int weights."""
    import brevitas.nn as qnn
    from brevitas.quant import Int8WeightPerChannelFloat

    class WeightQuant(Int8WeightPerChannelFloat):
        bit_width = bits

    model = copy.deepcopy(model)

    def swap(parent: nn.Module):
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                new = qnn.QuantConv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                      child.padding, child.dilation, child.groups, bias=child.bias is not None,
                                      weight_quant=WeightQuant)
                new.load_state_dict(child.state_dict(), strict=False)
                setattr(parent, name, new)
            elif isinstance(child, nn.Linear):
                new = qnn.QuantLinear(child.in_features, child.out_features, bias=child.bias is not None,
                                      weight_quant=WeightQuant)
                new.load_state_dict(child.state_dict(), strict=False)
                setattr(parent, name, new)
            else:
                swap(child)

    swap(model)
    return model.train()


def time_steps(steppers: dict[str, Callable[[], None]], warmup: int, rounds: int, per_round: int) -> dict[str, float]:
    """Median seconds per step; the candidates alternate round by round so drift hits all alike."""
    for fn in steppers.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in steppers}
    for _ in range(rounds):
        for name, fn in steppers.items():
            t0 = time.perf_counter()
            for _ in range(per_round):
                fn()
            samples[name].append((time.perf_counter() - t0) / per_round)
    return {k: statistics.median(v) for k, v in samples.items()}


def packed_vs_limit(make: Callable[[], nn.Module]) -> dict[str, float]:
    """Export payload / (sum over layers of ceil(n*bits/8) + side-tensor bytes + float tensors)."""
    out = {}
    for name in QUANTS:
        model, handle = quantized_with_handle(make, name)
        export = export_packed(model, handle)
        limit = 0
        for state in export["quantized"].values():
            limit += (state["numel"] * state["bits"] + 7) // 8
            limit += sum(t.numel() * t.element_size() for t in state["tensors"].values())
        limit += sum(t.numel() * t.element_size() for t in export["float"].values())
        out[name] = export_payload_bytes(export) / limit
    return out


def eval_throughput(make: Callable[[], nn.Module], batch: tuple, quant: str = "uniform4", rounds: int = 7) -> float:
    """Exported model (decoded once, plain float) vs FP32: ratio of inference times (1.0 = same)."""
    from qexp.report.memory import decode_export

    fp = quantized(make, None).eval()
    q, handle = quantized_with_handle(make, quant)
    export = export_packed(q, handle)
    from hydra.utils import get_class

    cfg = {k: v for k, v in QUANTS[quant].items() if k not in ("name", "_target_")}
    cls = get_class(QUANTS[quant]["_target_"])
    plain = make()
    plain.load_state_dict(decode_export(export, lambda: cls(**cfg)))
    plain.eval()
    x = batch[0]
    with torch.no_grad():
        times = time_steps({"fp32": lambda: fp(x), "exported": lambda: plain(x)}, 3, rounds, 5)
    return times["exported"] / times["fp32"]


def run(quick: bool = False, out: str | Path = "results/bench.json", compile_check: bool = True) -> dict[str, Any]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    result: dict[str, Any] = {"machine": {
        "cpu": platform.processor() or platform.machine(), "threads": threads, "cores": os.cpu_count(),
        "device": "cpu", "torch": torch.__version__, "python": platform.python_version()}}
    rounds, per_round, warmup = (5, 2, 2) if quick else (15, 3, 5)
    for mname, (make, batch_fn) in _models(quick).items():
        batch = batch_fn(g)
        steppers = {"fp32": _stepper(quantized(make, None), batch)}
        for q in STEP_QUANTS:
            steppers[q] = _stepper(quantized(make, q), batch)
        has_brevitas = True
        try:
            steppers["brevitas_uniform4"] = _stepper(brevitas_equivalent(quantized(make, None)), batch)
        except Exception as exc:  # noqa: BLE001 - brevitas missing or layer unsupported
            result.setdefault("notes", []).append(f"{mname}: brevitas not measured ({type(exc).__name__}: {exc})")
            has_brevitas = False
        times = time_steps(steppers, warmup, rounds, per_round)
        row = {}
        for q in STEP_QUANTS:
            row[q] = {"step_ratio_vs_fp32": times[q] / times["fp32"]}
        if has_brevitas:
            row["uniform4"]["step_ratio_vs_brevitas"] = times["uniform4"] / times["brevitas_uniform4"]
            row["brevitas_uniform4"] = {"step_ratio_vs_fp32": times["brevitas_uniform4"] / times["fp32"]}
        if compile_check and not quick:
            try:
                cm = torch.compile(quantized(make, "uniform4"))
                step = _stepper(cm, batch)
                t0 = time.perf_counter()
                step()
                compile_s = time.perf_counter() - t0
                t = time_steps({"compiled": step, "fp32": steppers["fp32"]}, 2, rounds, per_round)
                row["uniform4_compiled"] = {"step_ratio_vs_fp32": t["compiled"] / t["fp32"],
                                            "compile_s": compile_s}
            except Exception as exc:  # noqa: BLE001 - no compiler toolchain
                result.setdefault("notes", []).append(f"{mname}: torch.compile failed ({type(exc).__name__})")
        row["_eval_exported_vs_fp32"] = eval_throughput(make, batch)
        result[mname] = row
    result["packed_vs_limit"] = packed_vs_limit(_models(True)["mlp_digits"][0])
    if out:
        from qexp.report.store import atomic_write_json

        atomic_write_json(out, result)
    return result


def render(result: dict[str, Any]) -> str:
    lines = [f"machine: {result['machine']}", "",
             "| model | quantizer | step / fp32 step | step / brevitas step |", "|---|---|---|---|"]
    for mname, row in result.items():
        if mname in ("machine", "packed_vs_limit", "notes"):
            continue
        for q, v in row.items():
            if q.startswith("_"):
                continue
            vb = v.get("step_ratio_vs_brevitas")
            extra = f" (compile {v['compile_s']:.1f} s)" if "compile_s" in v else ""
            lines.append(f"| {mname} | {q}{extra} | {v['step_ratio_vs_fp32']:.3f} | {'' if vb is None else f'{vb:.3f}'} |")
        lines.append(f"| {mname} | exported eval / fp32 eval | {row['_eval_exported_vs_fp32']:.3f} | |")
    lines += ["", "| quantizer | packed bytes / bit-count limit |", "|---|---|"]
    lines += [f"| {q} | {r:.4f} |" for q, r in result["packed_vs_limit"].items()]
    for n in result.get("notes", []):
        lines.append(f"note: {n}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="qexp bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small batch, few rounds (smoke test)")
    parser.add_argument("--out", default="results/bench.json", help="where to write the JSON")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurement")
    args = parser.parse_args(argv)
    res = run(args.quick, args.out, not args.no_compile)
    print(render(res))
    print(f"\nwritten: {args.out}")
