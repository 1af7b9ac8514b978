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
import math
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

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

    def step():  # the trainer's step: forward under parametrize.cached(), backward, update
        with parametrize.cached():
            loss = _loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
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


def time_steps(steppers: dict[str, Callable[[], None]], warmup: int, rounds: int,
               min_sample_s: float = 0.02) -> dict[str, list[float]]:
    """Seconds per call of each candidate, one sample per round.

    The candidates alternate within every round, so machine drift (other jobs, clock changes)
    hits them alike, and the order rotates from round to round.  A sample repeats the call as
    often as the fastest candidate needs to last ``min_sample_s`` (the same count for every
    candidate), so timer and scheduler jitter stay small against it.
    """
    for fn in steppers.values():
        for _ in range(warmup):
            fn()
    fastest = math.inf
    for fn in steppers.values():
        t0 = time.perf_counter()
        fn()
        fastest = min(fastest, time.perf_counter() - t0)
    inner = max(1, math.ceil(min_sample_s / max(fastest, 1e-9)))
    samples: dict[str, list[float]] = {k: [] for k in steppers}
    names = list(steppers)
    for r in range(rounds):
        # the starting candidate rotates, so no candidate always runs right after the same one
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn = steppers[name]
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            samples[name].append((time.perf_counter() - t0) / inner)
    return samples


def paired_ratio(samples: dict[str, list[float]], a: str, b: str) -> dict[str, float]:
    """Median over rounds of time(a) / time(b) in the same round, with its quartiles as the spread."""
    ratios = sorted(x / y for x, y in zip(samples[a], samples[b]))
    q1, med, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
    return {"ratio": med, "q1": q1, "q3": q3}


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


def eval_throughput(make: Callable[[], nn.Module], batch: tuple, quant: str = "uniform4", rounds: int = 15) -> dict:
    """Exported model (decoded once, plain float) vs FP32: ratio of inference times (1.0 = same)."""
    from qexp.export import quantizer_factory
    from qexp.report.memory import decode_export

    fp = quantized(make, None).eval()
    q, handle = quantized_with_handle(make, quant)
    export = export_packed(q, handle)
    plain = make()
    plain.load_state_dict(decode_export(export, quantizer_factory(QUANTS[quant])))
    plain.eval()
    x = batch[0]
    with torch.no_grad():
        samples = time_steps({"fp32": lambda: fp(x), "exported": lambda: plain(x)}, 3, rounds)
    return paired_ratio(samples, "exported", "fp32")


def brevitas_supported(model: nn.Module) -> str | None:
    """Why the Brevitas twin would not be equivalent (None when it would)."""
    from qexp.quant.base import quantizable_params

    others = sorted({type(m).__name__ for _, m, _ in quantizable_params(model)
                     if not isinstance(m, (nn.Conv2d, nn.Linear))})
    if others:
        return (f"its {', '.join(others)} layers have no drop-in Brevitas equivalent here "
                f"(QuantLSTM is a separate Python implementation), so the twin would not be the same model")
    return None


def _entry(samples: dict[str, list[float]], name: str, ref: str) -> dict[str, Any]:
    r = paired_ratio(samples, name, ref)
    return {"step_ratio_vs_fp32": r["ratio"], "spread": [r["q1"], r["q3"]],
            "step_ms": 1e3 * statistics.median(samples[name])}


def run(quick: bool = False, out: str | Path = "results/bench.json", compile_check: bool = True,
        rounds: int | None = None, models: list[str] | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    result: dict[str, Any] = {"machine": {
        "cpu": _cpu_name(), "threads": torch.get_num_threads(), "cores": os.cpu_count(),
        "device": "cpu", "torch": torch.__version__, "python": platform.python_version()},
        "method": ("median over rounds of time(candidate) / time(fp32) in the same round; candidates "
                   "alternate within a round; spread = quartiles of those per-round ratios")}
    rounds = rounds or (5 if quick else 40)
    warmup = 2 if quick else 5
    cold_cache = None
    if compile_check and not quick and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        # an empty inductor cache, so compile_s is what a first run on a fresh machine pays
        cold_cache = os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="qexp-bench-inductor-")
    for mname, (make, batch_fn) in _models(quick).items():
        if models and mname not in models:
            continue
        log(f"[{mname}] timing fp32, {', '.join(STEP_QUANTS)} and brevitas_uniform4 ({rounds} rounds)")
        batch = batch_fn(g)
        steppers = {"fp32": _stepper(quantized(make, None), batch)}
        for q in STEP_QUANTS:
            steppers[q] = _stepper(quantized(make, q), batch)
        why_not = brevitas_supported(make())
        if why_not is None:
            try:
                steppers["brevitas_uniform4"] = _stepper(brevitas_equivalent(quantized(make, None)), batch)
            except ImportError as exc:
                why_not = f"brevitas is not installed ({exc}); make bench installs it"
        if why_not:
            result.setdefault("notes", []).append(f"{mname}: Brevitas not measured: {why_not}")
        samples = time_steps(steppers, warmup, rounds)
        row: dict[str, Any] = {q: _entry(samples, q, "fp32") for q in ("fp32", *STEP_QUANTS)}
        if "brevitas_uniform4" in samples:
            row["brevitas_uniform4"] = _entry(samples, "brevitas_uniform4", "fp32")
            vs = paired_ratio(samples, "uniform4", "brevitas_uniform4")
            row["uniform4"]["step_ratio_vs_brevitas"] = vs["ratio"]
            row["uniform4"]["spread_vs_brevitas"] = [vs["q1"], vs["q3"]]
        if compile_check and not quick:
            log(f"[{mname}] torch.compile of the uniform 4-bit model")
            try:
                step = _stepper(torch.compile(quantized(make, "uniform4")), batch)
                t0 = time.perf_counter()
                step()
                compile_s = time.perf_counter() - t0
                t = time_steps({"fp32": steppers["fp32"], "compiled": step}, 2, rounds)
                row["uniform4_compiled"] = {**_entry(t, "compiled", "fp32"), "compile_s": compile_s}
            except Exception as exc:  # noqa: BLE001 - no C++ toolchain, unsupported op: report, go on
                result.setdefault("notes", []).append(f"{mname}: torch.compile failed ({type(exc).__name__}: {exc})"[:300])
        log(f"[{mname}] exported-model inference")
        ev = eval_throughput(make, batch, rounds=rounds)
        row["_eval_exported_vs_fp32"] = ev["ratio"]
        row["_eval_spread"] = [ev["q1"], ev["q3"]]
        result[mname] = row
    if cold_cache:
        shutil.rmtree(cold_cache, ignore_errors=True)
        del os.environ["TORCHINDUCTOR_CACHE_DIR"]
    result["packed_vs_limit"] = packed_vs_limit(_models(True)["mlp_digits"][0])
    # the bounds are for ResNet-20 at batch 128: a quick run (batch 32) is a smoke test only
    result["targets"] = [] if quick else check_targets(result)
    result["quick"] = quick
    if out:
        from qexp.report.store import atomic_write_json

        atomic_write_json(out, result)
    return result


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: the issue's acceptance bounds: (model, row, key) -> upper limit of the measured ratio
TARGETS = {
    ("resnet20", "uniform4", "step_ratio_vs_fp32"): 1.03,
    ("resnet20", "sq", "step_ratio_vs_fp32"): 1.06,
    ("resnet20", "uniform4", "step_ratio_vs_brevitas"): 0.97,
}
PACKED_LIMIT = 1.02


def check_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    checks = []
    for (model, row, key), limit in TARGETS.items():
        value = result.get(model, {}).get(row, {}).get(key)
        if value is not None:
            checks.append({"what": f"{model} {row} {key}", "limit": limit, "measured": value, "met": value <= limit})
    for q, r in result.get("packed_vs_limit", {}).items():
        checks.append({"what": f"packed/limit {q}", "limit": PACKED_LIMIT, "measured": r, "met": r <= PACKED_LIMIT})
    return checks


def render(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"machine: {m['cpu']}, {m['cores']} cores, {m['threads']} torch threads, torch {m['torch']}, "
             f"{m['device']}", "",
             "| model | quantizer | step / fp32 step (quartiles) | step / brevitas step | step ms |",
             "|---|---|---|---|---|"]
    for mname, row in result.items():
        if not isinstance(row, dict) or "fp32" not in row:
            continue
        for q, v in row.items():
            if q.startswith("_"):
                continue
            vb = v.get("step_ratio_vs_brevitas")
            extra = f" (compile {v['compile_s']:.0f} s apart)" if "compile_s" in v else ""
            lo, hi = v["spread"]
            lines.append(f"| {mname} | {q}{extra} | {v['step_ratio_vs_fp32']:.3f} ({lo:.3f}–{hi:.3f}) | "
                         f"{'' if vb is None else f'{vb:.3f}'} | {v['step_ms']:.2f} |")
        lo, hi = row["_eval_spread"]
        lines.append(f"| {mname} | exported model, inference | {row['_eval_exported_vs_fp32']:.3f} ({lo:.3f}–{hi:.3f}) | | |")
    lines += ["", "| quantizer | packed bytes / bit-count limit |", "|---|---|"]
    lines += [f"| {q} | {r:.4f} |" for q, r in result["packed_vs_limit"].items()]
    timing = [c for c in result.get("targets", []) if not c["what"].startswith("packed")]
    if timing:
        lines += ["", "| target | limit | measured | met |", "|---|---|---|---|"]
        lines += [f"| {c['what']} | ≤ {c['limit']} | {c['measured']:.3f} | {'yes' if c['met'] else 'NO'} |" for c in timing]
    if result.get("quick"):
        lines.append("note: --quick is a smoke run (ResNet-20 at batch 32, 5 rounds); the bounds are checked on full runs only")
    for n in result.get("notes", []):
        lines.append(f"note: {n}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="qexp bench", description=__doc__.splitlines()[0],
        epilog="Only ratios measured in the same run are meaningful; run it on an otherwise idle machine.")
    parser.add_argument("--quick", action="store_true", help="small batch, few rounds (smoke test)")
    parser.add_argument("--out", default="results/bench.json", help="where to write the JSON ('' = nowhere)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurement")
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds per model (default 40; quick 5)")
    parser.add_argument("--models", default=None,
                        help="comma-separated subset of resnet20, mlp_digits, rnn_speech (default: all)")
    args = parser.parse_args(argv)
    res = run(args.quick, args.out, not args.no_compile, args.rounds,
              args.models.split(",") if args.models else None, log=lambda msg: print(msg, flush=True))
    print(render(res))
    if args.out:
        print(f"\nwritten: {args.out}")
