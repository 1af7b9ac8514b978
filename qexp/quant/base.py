"""The quantizer contract and the one verb that applies it to a model.

A quantizer is an ``nn.Module`` that maps a float weight to its quantized value.  It is put
between a parameter and its use with ``torch.nn.utils.parametrize``, so the float "shadow"
weight stays the trained parameter and gradients reach it through a straight-through
estimator (STE).  Every quantizer also defines ``encode``/``decode``: integer codes that are
bit-packed at ``bits`` bits plus the small float tensors (scales, zero points) needed to
rebuild the quantized weight bit-exactly.  ``report.memory`` measures those packed bytes.

Schedules (SQ ratios, INQ partitions, ternary retraining phases) are *stages*: a quantizer
publishes ``stage_plan()`` and the trainer calls ``set_stage(i)`` at each stage boundary.
Stage state lives in buffers, so checkpoints carry it.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from qexp.errors import QexpError
from qexp.quant.pack import pack_codes, unpack_codes

QUANTIZABLE_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.RNNBase,
)


@dataclass
class Packed:
    """A quantized tensor as stored in the export: bit-packed codes plus float side tensors."""

    shape: tuple[int, ...]
    bits: int
    numel: int  # number of coded elements
    codes: bytes
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return len(self.codes) + sum(t.numel() * t.element_size() for t in self.tensors.values())

    def to_state(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            "bits": self.bits,
            "numel": self.numel,
            "codes": torch.frombuffer(bytearray(self.codes), dtype=torch.uint8)
            if self.codes
            else torch.empty(0, dtype=torch.uint8),
            "tensors": {k: v.detach().cpu().contiguous() for k, v in self.tensors.items()},
            "meta": dict(self.meta),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "Packed":
        return cls(
            shape=tuple(state["shape"]),
            bits=int(state["bits"]),
            numel=int(state["numel"]),
            codes=state["codes"].numpy().tobytes(),
            tensors=dict(state["tensors"]),
            meta=dict(state["meta"]),
        )


@dataclass(frozen=True)
class ChannelLayout:
    """Where a weight keeps its output channels.

    ``Linear``/``Conv``/RNN weights are (out, in/groups, *k): output channel ``o`` is row ``o``.
    ``ConvTranspose`` weights are (in, out/groups, *k): output channel ``g * out/groups + j`` is
    column ``j`` of the rows of group ``g``.  Per-channel statistics (scales, exponents, SQ's
    rows) must follow the output channels, so a ``ConvTranspose2d(16, 8)`` gets 8 scales, not 16.
    ``to_plain`` rearranges a transposed weight into the (out, in/groups, *k) layout of the
    equivalent convolution; for every other layer it is the identity (no copy).
    """

    transposed: bool = False
    groups: int = 1

    @classmethod
    def of(cls, module: nn.Module) -> "ChannelLayout":
        if isinstance(module, nn.modules.conv._ConvTransposeNd):
            return cls(True, int(module.groups))
        return PLAIN

    def to_meta(self) -> dict[str, Any]:
        return {"layout": {"transposed": True, "groups": self.groups}} if self.transposed else {}

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> "ChannelLayout":
        got = meta.get("layout")
        return cls(bool(got["transposed"]), int(got["groups"])) if got else PLAIN

    def out_channels(self, shape: tuple[int, ...]) -> int:
        if not shape:
            return 1
        return shape[1] * self.groups if self.transposed else shape[0]

    def to_plain(self, w: torch.Tensor) -> torch.Tensor:
        if not self.transposed:
            return w
        cin, cog, *k = w.shape
        g = self.groups
        return w.reshape(g, cin // g, cog, *k).transpose(1, 2).reshape(g * cog, cin // g, *k)

    def from_plain(self, wp: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """Inverse of :meth:`to_plain`: ``wp`` (any shape with ``shape``'s element order in the
        plain layout) back to the layer's ``shape``."""
        if not self.transposed:
            return wp.reshape(shape)
        cin, cog, *k = shape
        g = self.groups
        return wp.reshape(g, cog, cin // g, *k).transpose(1, 2).reshape(shape)

    def rows(self, w: torch.Tensor) -> torch.Tensor:
        """Weights as (out_channels, fan_in): one row per output filter/neuron."""
        if w.dim() == 0:
            return w.reshape(1, 1)
        p = self.to_plain(w)
        return p.reshape(p.shape[0], -1)

    def expand(self, stat: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Broadcast a per-output-channel statistic of shape (C,) against ``w``."""
        if w.dim() == 0:
            return stat.reshape(())
        ones = (1,) * (w.dim() - 2)
        if not self.transposed:
            return stat.reshape((-1,) + (1,) * (w.dim() - 1))
        cin, cog = w.shape[:2]
        g = self.groups
        if g == 1:
            return stat.reshape(1, -1, *ones)
        return stat.reshape(g, 1, cog, *ones).expand(g, cin // g, cog, *ones).reshape(cin, cog, *ones)


PLAIN = ChannelLayout()


def stat_rows(w: torch.Tensor, per_channel: bool, layout: ChannelLayout = PLAIN) -> torch.Tensor:
    """The rows a statistic is taken over: one per output channel, or the whole tensor as one."""
    return layout.rows(w) if per_channel else w.reshape(1, -1)


def expand_stat(stat: torch.Tensor, w: torch.Tensor, per_channel: bool, layout: ChannelLayout = PLAIN) -> torch.Tensor:
    """Broadcast a statistic from :func:`stat_rows` rows (shape (C,) or (1,)) against ``w``."""
    return layout.expand(stat, w) if per_channel else stat.reshape(())


def check_bits(kind: str, bits: Any, lo: int, hi: int) -> None:
    """One-line :class:`QexpError` unless ``bits`` is an integer in ``lo..hi``."""
    if not isinstance(bits, int) or isinstance(bits, bool) or not lo <= bits <= hi:
        allowed = f"{lo}" if lo == hi else f"an integer {lo}..{hi}"
        raise QexpError(f"quant.bits={bits!r} is out of range for quant={kind}; allowed: {allowed}")


def check_choice(kind: str, key: str, value: Any, allowed: tuple[Any, ...]) -> None:
    if value not in allowed:
        raise QexpError(f"quant.{key}={value!r} is not valid for quant={kind}; allowed: {', '.join(map(str, allowed))}")


def check_flag(kind: str, key: str, value: Any) -> bool:
    """One-line :class:`QexpError` unless ``value`` is a boolean (Hydra's true/false)."""
    if not isinstance(value, bool):
        raise QexpError(f"quant.{key}={value!r} is not valid for quant={kind}; allowed: true, false")
    return value


def check_ratios(kind: str, ratios: Any, must_end_at_one: bool = False) -> list[float]:
    """The stage ratios as floats: a non-empty, non-decreasing list of fractions in (0, 1]."""
    values = list(ratios) if isinstance(ratios, (list, tuple)) else [ratios]
    ok = bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1 for v in values)
    if not ok or any(b < a for a, b in zip(values, values[1:])):
        raise QexpError(f"quant.ratios={ratios} is out of range for quant={kind}; "
                        f"allowed: a non-decreasing list of fractions in (0, 1], e.g. [0.5, 0.75, 0.875, 1.0]")
    if must_end_at_one and values[-1] != 1:
        raise QexpError(f"quant.ratios={ratios} must end with 1.0 for quant={kind} (the last stage quantizes every weight)")
    return [float(v) for v in values]


class Quantizer(nn.Module):
    """Base class.  Subclasses implement ``compute_codes`` and ``dequantize``.

    ``quantize`` and ``decode`` both go through ``dequantize``, so the value seen in training
    and the value rebuilt from the packed export are the same floating-point numbers.
    """

    #: short name used in records and tables
    kind = "base"

    def __init__(self, bits: int, per_channel: bool = True):
        super().__init__()
        if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 32:
            raise QexpError(f"bits={bits!r} is out of range; allowed: an integer 1..32")
        self.bits = int(bits)
        self.per_channel = bool(per_channel)
        # the buffer travels with checkpoints; the Python mirror keeps the hot path free of
        # device-to-host syncs (reading a CUDA bool each forward would stall the stream)
        self.register_buffer("enabled", torch.tensor(True))
        self._enabled = True
        self.layout = PLAIN  # where the output channels are: set by apply_quantization per layer

    def set_layout(self, layout: ChannelLayout) -> None:
        """Called before :meth:`attach`: the channel layout of the layer this quantizer owns."""
        self.layout = layout

    def _rows(self, w: torch.Tensor) -> torch.Tensor:
        """The rows this quantizer's statistics are taken over (see :func:`stat_rows`)."""
        return stat_rows(w, self.per_channel, self.layout)

    def _expand(self, stat: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """A statistic of :meth:`_rows` broadcast against ``w`` (see :func:`expand_stat`)."""
        return expand_stat(stat, w, self.per_channel, self.layout)

    def _unrows(self, rows: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """Inverse of :meth:`_rows`: values computed row by row back in the weight's ``shape``."""
        return self.layout.from_plain(rows, shape) if self.per_channel else rows.reshape(shape)

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def set_enabled(self, flag: bool) -> None:
        self._enabled = bool(flag)
        self.enabled.fill_(self._enabled)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._enabled = bool(self.enabled)  # once per load, not per step

    # -- the part subclasses define ---------------------------------------------------------
    def compute_codes(self, w: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Integer codes in [0, 2**bits) with ``w``'s shape, and the side tensors."""
        raise NotImplementedError

    def dequantize(
        self, codes: torch.Tensor, params: dict[str, torch.Tensor], w_like: torch.Tensor
    ) -> torch.Tensor:
        """Float weight rebuilt from codes and side tensors (same dtype/device as ``w_like``)."""
        raise NotImplementedError

    def attach(self, w: torch.Tensor) -> None:
        """Called once with the float weight before training: allocate shape-dependent buffers
        here so checkpoints can be loaded into a freshly built model.  Default: none needed."""
        self.weight_shape = tuple(w.shape)

    # -- schedules ----------------------------------------------------------------------------
    def stage_plan(self) -> list[dict[str, Any]]:
        """One dict per training stage; the default is a single stage."""
        return [{}]

    def set_stage(self, index: int) -> None:
        """Called by the trainer at the start of stage ``index`` (default: nothing changes)."""
        self.stage = index

    # -- derived ------------------------------------------------------------------------------
    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        codes, params = self.compute_codes(w.detach())
        return self.dequantize(codes, params, w)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self._enabled:
            return w
        return ste(w, self.quantize(w))

    def encode(self, w: torch.Tensor) -> Packed:
        w = w.detach()
        check_finite(w, "encode")
        codes, params = self.compute_codes(w)
        return Packed(
            shape=tuple(w.shape),
            bits=self.bits,
            numel=codes.numel(),
            codes=pack_codes(codes, self.bits),
            tensors={k: v.detach().cpu() for k, v in params.items()},
            meta={"kind": self.kind, **self.layout.to_meta()},
        )

    def decode(self, packed: Packed, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        self.set_layout(ChannelLayout.from_meta(packed.meta))
        codes = unpack_codes(packed.codes, packed.bits, packed.numel)
        if codes.numel() == _numel(packed.shape):
            codes = codes.reshape(packed.shape)  # else: a flat code stream (SQ rows, SVD factors)
        like = torch.empty(packed.shape, dtype=dtype)
        return self.dequantize(codes, dict(packed.tensors), like)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, per_channel={self.per_channel}"


def check_finite(w: torch.Tensor, where: str) -> None:
    """Quantizing NaN/Inf weights has no meaning: say so in one line instead of packing garbage."""
    if not torch.isfinite(w).all():
        bad = int((~torch.isfinite(w)).sum())
        raise QexpError(f"{where}: weight of shape {tuple(w.shape)} has {bad} non-finite (NaN/Inf) values; "
                        "the run diverged — lower trainer.lr or enable trainer.grad_clip")


def ste(w: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Straight-through estimator: forward ``q``, gradient of the identity to ``w``.

    Written as ``q + (w - w)`` rather than ``w + (q - w)``: ``w - w.detach()`` is exactly zero,
    so the forward value is ``q`` bit for bit (``w + (q - w)`` can be one ulp off when ``|w|``
    and ``|q|`` differ a lot), which keeps training values equal to the decoded export.
    """
    return q.detach() + (w - w.detach())


def signed_scale(scale: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """+scale where ``w >= 0``, -scale elsewhere: the values of 1-bit codes ``(w >= 0)`` in one
    float kernel (a bool mask + where is three).  ``w + 0.0`` turns -0.0 into +0.0, which the
    codes count as non-negative.  ``scale`` is broadcast against ``w``."""
    return torch.copysign(scale.expand_as(w), w + 0.0)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


# ----------------------------------------------------------------------------------------------
# applying a quantizer to a model
# ----------------------------------------------------------------------------------------------


def quantizable_params(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(module name, module, parameter name) for every weight a quantizer may own, in order."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, nn.RNNBase):
            for pname in module._flat_weights_names:
                if pname.startswith("weight"):
                    found.append((name, module, pname))
        elif isinstance(module, QUANTIZABLE_LAYERS):
            found.append((name, module, "weight"))
    return found


def original_weight(module: nn.Module, pname: str) -> torch.Tensor:
    """The float (shadow) parameter behind a possibly parametrized weight."""
    if parametrize.is_parametrized(module, pname):
        return module.parametrizations[pname].original
    return getattr(module, pname)


def plain_keys(state: dict[str, Any]) -> dict[str, Any]:
    """A (possibly quantized) model's state dict under the names of the unquantized model: the float
    shadow weight ``m.parametrizations.weight.original`` becomes ``m.weight``; quantizer buffers go."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        if ".parametrizations." in f".{key}":
            head, _, tail = key.partition("parametrizations.")
            pname, _, rest = tail.partition(".")
            if rest == "original":
                out[f"{head}{pname}"] = value
            continue
        out[key] = value
    return out


def _resolve_skip(entries: list[tuple[str, nn.Module, str]], skip: list[str]) -> set[str]:
    skipped: set[str] = set()
    for item in skip:
        hits = _match_layers(entries, str(item))
        if not hits:
            allowed = ", ".join(["first", "last"] + sorted({m for m, _, _ in entries}))
            raise QexpError(f"quant.skip names '{item}', which is not a quantizable layer of this model; allowed: {allowed}")
        skipped.update(hits)
    return skipped


def _match_layers(entries: list[tuple[str, nn.Module, str]], item: str) -> list[str]:
    """Parameter keys an entry of ``quant.skip`` / ``quant.layer_bits`` names: ``first``, ``last``,
    a module name, a parameter key, or a shell-style glob over either (``features.*``)."""
    keys = [f"{m}.{p}" if m else p for m, _, p in entries]
    modules = [m for m, _, _ in entries]
    if item in ("first", "last") and keys:
        wanted = modules[0] if item == "first" else modules[-1]
        return [k for k, m in zip(keys, modules) if m == wanted]
    if item in keys:
        return [item]
    if any(c in item for c in "*?["):
        return [k for k, m in zip(keys, modules) if fnmatch.fnmatchcase(m, item) or fnmatch.fnmatchcase(k, item)]
    return [k for k, m in zip(keys, modules) if m == item]


def resolve_layer_bits(entries: list[tuple[str, nn.Module, str]], layer_bits: dict[str, Any],
                       skipped: set[str]) -> dict[str, int]:
    """``quant.layer_bits`` ({name | glob | first | last: bits}) as bits per parameter key; later
    entries win where two name the same layer."""
    out: dict[str, int] = {}
    modules = sorted({m for m, _, _ in entries})
    for item, bits in layer_bits.items():
        item = str(item)
        if not isinstance(bits, int) or isinstance(bits, bool):
            raise QexpError(f"quant.layer_bits.{item}={bits!r} must be an integer number of bits")
        hits = _match_layers(entries, item)
        if not hits:
            raise QexpError(f"quant.layer_bits names '{item}', which matches no quantizable layer of this model; "
                            f"allowed: first, last, a shell glob, or {', '.join(modules)}")
        kept = [k for k in hits if k in skipped]
        if kept:
            raise QexpError(f"quant.layer_bits names '{item}' ({kept[0]}), which quant.skip keeps in float")
        out.update({k: bits for k in hits})
    return out


def resolve_stage_epochs(stage_epochs: Any, n_stages: int) -> list[int] | None:
    """``quant.stage_epochs`` as one positive integer per stage (an integer means: each stage);
    None stays None (the trainer splits ``trainer.epochs`` evenly)."""
    if stage_epochs is None:
        return None
    values = list(stage_epochs) if isinstance(stage_epochs, (list, tuple)) else [stage_epochs] * n_stages
    if len(values) != n_stages or not all(isinstance(e, int) and not isinstance(e, bool) and e >= 1 for e in values):
        raise QexpError(f"quant.stage_epochs={stage_epochs} must be one positive integer per stage ({n_stages} stages), "
                        f"or one integer for every stage")
    return values


@dataclass
class QuantHandle:
    """What ``apply_quantization`` attached: the quantizers by parameter key, and the stages."""

    name: str
    quantizers: dict[str, Quantizer]
    owners: dict[str, tuple[nn.Module, str]]
    skipped: list[str]
    stages: list[dict[str, Any]]
    stage_epochs: list[int] | None = None
    default_bits: int | None = None  # the width of layers that quant.layer_bits does not name
    init: dict[str, Any] | None = None  # the trained weights the model started from (trainer.init_from)

    def set_stage(self, index: int) -> None:
        for q in self.quantizers.values():
            q.set_stage(index)

    def float_weights(self) -> dict[str, torch.Tensor]:
        return {k: original_weight(m, p) for k, (m, p) in self.owners.items()}

    def encode_all(self) -> dict[str, Packed]:
        return {k: self.quantizers[k].encode(w) for k, w in self.float_weights().items()}

    @property
    def bits(self) -> int | None:
        if self.default_bits is not None:
            return self.default_bits
        return next((q.bits for q in self.quantizers.values()), None)

    def layer_bits(self) -> dict[str, int]:
        return {k: q.bits for k, q in self.quantizers.items()}


def resolve_float_stage(cfg: dict[str, Any], initialised: bool) -> bool:
    """``pretrain_stage: null`` (auto) of a staged quantizer: a float stage 0 only when the run
    does not start from trained weights (``trainer.init_from``).  Sets the concrete value in
    ``cfg``; returns True when auto dropped the float stage."""
    if "pretrain_stage" not in cfg or cfg["pretrain_stage"] is not None:
        return False
    cfg["pretrain_stage"] = not initialised
    return initialised


def fit_stage_epochs(stage_epochs: Any, n_stages: int, dropped_float: bool) -> Any:
    """A ``stage_epochs`` list written for the full schedule ([float, ...]) loses its float entry
    when auto dropped the float stage (the experiment files list the paper's whole schedule)."""
    if dropped_float and isinstance(stage_epochs, (list, tuple)) and len(stage_epochs) == n_stages + 1:
        return list(stage_epochs)[1:]
    return stage_epochs


def quantizer_kwargs(cfg: dict[str, Any], initialised: bool = False) -> tuple[dict[str, Any], bool]:
    """The constructor arguments in a ``quant`` config (what is not qexp's own bookkeeping)."""
    q = {k: v for k, v in cfg.items()
         if k not in ("name", "_target_", "skip", "stage_epochs", "act_bits", "layer_bits")}
    dropped = resolve_float_stage(q, initialised)
    return q, dropped


def make_quantizer(cls: type, kwargs: dict[str, Any], name: str, bits: int | None = None, where: str = "") -> Quantizer:
    """One quantizer; ``bits`` (from ``quant.layer_bits``) replaces the config's width."""
    args = dict(kwargs) if bits is None else {**kwargs, "bits": bits}
    try:
        return cls(**args)
    except TypeError as exc:
        raise QexpError(f"quant={name}: {exc}") from None
    except QexpError as exc:
        if bits is None:
            raise
        raise QexpError(f"quant.layer_bits: {bits} bits for {where}: {exc}") from None


def apply_quantization(model: nn.Module, quant_cfg: Any, initialised: bool = False) -> QuantHandle:
    """Attach one quantizer per quantizable weight, following ``quant_cfg`` (the ``quant`` group).

    ``quant_cfg`` holds ``_target_`` (the quantizer class, or null for fp32), ``skip``,
    ``layer_bits`` (per-layer widths) and the quantizer's own keys.  ``stage_epochs`` (optional)
    sets the epochs of each stage.  ``initialised``: the model holds trained float weights
    (``trainer.init_from``), so staged quantizers with ``pretrain_stage: null`` skip their float stage.
    """
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(quant_cfg, resolve=True) if not isinstance(quant_cfg, dict) else dict(quant_cfg)
    name = str(cfg.get("name", cfg.get("_target_") or "fp32"))
    target = cfg.get("_target_")
    skip = list(cfg.get("skip") or [])
    layer_bits_cfg = dict(cfg.get("layer_bits") or {})
    kwargs, dropped_float = quantizer_kwargs(cfg, initialised)
    entries = quantizable_params(model)
    skipped = _resolve_skip(entries, skip)
    per_layer = resolve_layer_bits(entries, layer_bits_cfg, skipped)
    if target is None:
        return QuantHandle(name, {}, {}, sorted(skipped), [{}], None)
    cls = get_class(target)
    quantizers: dict[str, Quantizer] = {}
    owners: dict[str, tuple[nn.Module, str]] = {}
    for mname, module, pname in entries:
        key = f"{mname}.{pname}" if mname else pname
        if key in skipped:
            continue
        q = make_quantizer(cls, kwargs, name, per_layer.get(key), key)
        weight = getattr(module, pname)
        check_finite(weight.detach(), f"quant={name} on {key}")
        q.set_layout(ChannelLayout.of(module))
        q.attach(weight.detach())
        q.to(weight.device)
        parametrize.register_parametrization(module, pname, q, unsafe=True)
        quantizers[key] = q
        owners[key] = (module, pname)
    if not quantizers:
        raise QexpError(f"quant={name} quantizes no layer of this model (quant.skip={skip}); use quant.skip=[] or quant=fp32")
    first = next(iter(quantizers.values()))
    stages = first.stage_plan()
    stage_epochs = fit_stage_epochs(cfg.get("stage_epochs"), len(stages), dropped_float)
    default_bits = make_quantizer(cls, kwargs, name).bits
    handle = QuantHandle(name, quantizers, owners, sorted(skipped), stages,
                         resolve_stage_epochs(stage_epochs, len(stages)), default_bits)
    handle.set_stage(0)
    return handle
