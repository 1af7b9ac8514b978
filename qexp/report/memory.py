"""Measured model sizes: the packed export and its bytes, against the FP32 state dict.

``fp32_bytes``   every tensor of the plain model's state dict, floats at 4 bytes per element.
``packed_bytes`` the payload of the packed export: bit-packed codes (``ceil(n*bits/8)`` bytes
                 per quantized weight) + their side tensors (scales, zero points, float
                 leftovers) + every other tensor at FP32.
``reduction``    fp32_bytes / packed_bytes.
"""

from __future__ import annotations

import io
from typing import Any

import torch
from torch import nn

from qexp.quant.base import Packed, QuantHandle, plain_keys

FORMAT = "qexp-packed-v1"


def _tensor_nbytes(t: torch.Tensor, as_fp32: bool = True) -> int:
    if t.is_floating_point() and as_fp32:
        return t.numel() * 4
    return t.numel() * t.element_size()


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as an unquantized model would have it (float shadow weights under
    their plain names, quantizer buffers dropped)."""
    return plain_keys(model.state_dict())


def fp32_bytes(model: nn.Module) -> int:
    return sum(_tensor_nbytes(t) for t in plain_state_dict(model).values())


def export_packed(model: nn.Module, handle: QuantHandle | None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The packed model: quantized weights as :class:`Packed` states, every other tensor in FP32."""
    packed = handle.encode_all() if handle is not None else {}
    floats = {
        k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu()
        for k, v in plain_state_dict(model).items()
        if k not in packed
    }
    return {
        "format": FORMAT,
        # each layer's quantizer width (quant.layer_bits): its decoder is built at that width
        "quantized": {k: {**p.to_state(), "quantizer_bits": handle.quantizers[k].bits} for k, p in packed.items()},
        "float": floats,
        **(extra or {}),
    }


def export_payload_bytes(export: dict[str, Any]) -> int:
    n = 0
    for state in export["quantized"].values():
        n += state["codes"].numel() + sum(t.numel() * t.element_size() for t in state["tensors"].values())
    n += sum(_tensor_nbytes(t, as_fp32=False) for t in export["float"].values())
    return n


def measure_memory(model: nn.Module, handle: QuantHandle | None) -> dict[str, Any]:
    export = export_packed(model, handle)
    base = fp32_bytes(model)
    packed = export_payload_bytes(export)
    buf = io.BytesIO()
    torch.save(export, buf)
    per_layer = {
        k: {"bits": s["bits"], "numel": s["numel"], "codes_bytes": int(s["codes"].numel()),
            "side_bytes": int(sum(t.numel() * t.element_size() for t in s["tensors"].values()))}
        for k, s in export["quantized"].items()
    }
    return {
        "fp32_bytes": base,
        "packed_bytes": packed,
        "reduction": base / packed if packed else None,
        "file_bytes": buf.getbuffer().nbytes,
        "quantized_layers": per_layer,
    }


def decode_export(export: dict[str, Any], make_quantizer) -> dict[str, torch.Tensor]:
    """Plain float state dict rebuilt from an export; ``make_quantizer(bits)`` returns a quantizer
    of the run's kind at a layer's width (its ``decode`` uses only what the packed state holds)."""
    if export.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} export")
    state = dict(export["float"])
    for key, pstate in export["quantized"].items():
        packed = Packed.from_state(pstate)
        state[key] = make_quantizer(pstate.get("quantizer_bits")).decode(packed)
    return state
