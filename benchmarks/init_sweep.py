"""Wall time of a quantizer sweep from scratch vs from one trained FP32 run (trainer.init_from).

    python benchmarks/init_sweep.py [--out DIR] [--quants uniform,twn,ternary,inq] [--bits 2] [--model cnn]

From scratch every job trains its own float network (uniform/twn: 30 quantized epochs from random
weights; ternary: 15 float + 15 retraining epochs; INQ: a float stage + 4 partitions).  From
FP32: one 30-epoch float run, then every quantizer retrains it for 15 epochs (staged quantizers
skip their float stage), or quantizes it without training (trainer.epochs=0).  Each sweep is one
``qexp train -m`` process; the time includes its start-up.  Wall time on a shared machine is
noisy, so the CPU time of the child processes (user + system) and the training steps are
reported too.  Prints a markdown table and writes ``init_sweep.json`` in --out.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def _child_cpu() -> float:
    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


def sweep(out: Path, name: str, overrides: list[str], multirun: bool = True) -> dict[str, float]:
    """Run one ``qexp train`` (-m) process; its wall and CPU seconds."""
    target = out / name
    cmd = [sys.executable, "-m", "qexp", "train", *(["-m"] if multirun else []), *overrides, "trainer.progress=false",
           f"hydra.{'sweep' if multirun else 'run'}.dir={target}"]
    t0, c0 = time.time(), _child_cpu()
    subprocess.run(cmd, check=True, capture_output=True)
    return {"wall": time.time() - t0, "cpu": _child_cpu() - c0}


def accuracies(folder: Path) -> dict[str, float]:
    out = {}
    for rec_path in sorted(folder.rglob("record.json")):
        rec = json.loads(rec_path.read_text())
        out[rec["quant"]["name"]] = rec["final"][rec["metric"]]
    return out


def steps(folder: Path) -> int:
    return sum(json.loads(p.read_text())["steps"] for p in folder.rglob("record.json"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/qexp-init-sweep")
    parser.add_argument("--quants", default="uniform,twn,ternary,inq")
    parser.add_argument("--bits", default="2")
    parser.add_argument("--epochs", type=int, default=30, help="float / from-scratch epochs")
    parser.add_argument("--retrain-epochs", type=int, default=15)
    parser.add_argument("--model", default="mlp", help="a model option (digits data)")
    args = parser.parse_args()
    out = Path(args.out)
    model = f"model={args.model}"
    q = [model, f"quant={args.quants}", f"bits={args.bits}", "quant.skip=[]"]
    times = {
        "scratch": sweep(out, "scratch", [*q, f"trainer.epochs={args.epochs}"]),
        "fp32": sweep(out, "fp32", [model, f"trainer.epochs={args.epochs}"], multirun=False),
    }
    init = f"trainer.init_from={out / 'fp32'}"
    times["retrain"] = sweep(out, "retrain", [*q, init, f"trainer.epochs={args.retrain_epochs}"])
    times["direct"] = sweep(out, "direct", [*q, init, "trainer.epochs=0"])
    names = ("scratch", "retrain", "direct", "fp32")
    acc = {k: accuracies(out / k) for k in names}
    n_steps = {k: steps(out / k) for k in names}
    result = {"times_s": times, "steps": n_steps, "accuracy": acc, "args": vars(args)}
    (out / "init_sweep.json").write_text(json.dumps(result, indent=1) + "\n")
    n = len(args.quants.split(","))
    print(f"| sweep of {n} quantizers ({args.model}, {args.bits} bits) | wall (s) | CPU (s) | training steps | "
          + " | ".join(acc["scratch"]) + " |")
    print("|---|---|---|---|" + "---|" * len(acc["scratch"]))
    fp = times["fp32"]
    rows = [("from scratch", times["scratch"], n_steps["scratch"], "scratch"),
            (f"FP32 once ({fp['wall']:.0f} s) + retrain {args.retrain_epochs} epochs",
             {k: fp[k] + times["retrain"][k] for k in fp}, n_steps["fp32"] + n_steps["retrain"], "retrain"),
            ("FP32 once + direct (epochs=0)", {k: fp[k] + times["direct"][k] for k in fp},
             n_steps["fp32"], "direct")]
    for label, t, st, key in rows:
        print(f"| {label} | {t['wall']:.0f} | {t['cpu']:.0f} | {st} | "
              + " | ".join(f"{100 * acc[key].get(k, float('nan')):.2f}" for k in acc["scratch"]) + " |")
    print(f"FP32 reference: {100 * acc['fp32'].get('fp32', float('nan')):.2f} %")


if __name__ == "__main__":
    main()
