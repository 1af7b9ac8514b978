"""Bit-packing of integer codes: k-bit codes stored in ceil(n*k/8) bytes, bit-exact round trip."""

from __future__ import annotations

import numpy as np
import torch


def pack_codes(codes: torch.Tensor, bits: int) -> bytes:
    """Pack non-negative integer ``codes`` (< 2**bits) into a little-endian bit stream."""
    if not 1 <= bits <= 32:
        raise ValueError(f"bits must be in [1, 32], got {bits}")
    flat = codes.detach().reshape(-1).to("cpu", torch.int64).numpy().astype(np.uint64)
    if flat.size and (flat.max() >= (1 << bits)):
        raise ValueError(f"code {int(flat.max())} does not fit in {bits} bits")
    if bits == 8:
        return flat.astype(np.uint8).tobytes()
    shifts = np.arange(bits, dtype=np.uint64)
    bitmat = ((flat[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bitmat.reshape(-1), bitorder="little").tobytes()


def unpack_codes(payload: bytes, bits: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: returns an int64 tensor of ``numel`` codes."""
    raw = np.frombuffer(payload, dtype=np.uint8)
    if bits == 8:
        return torch.from_numpy(raw[:numel].astype(np.int64))
    bitvec = np.unpackbits(raw, count=numel * bits, bitorder="little")
    weights = (np.uint64(1) << np.arange(bits, dtype=np.uint64))
    vals = (bitvec.reshape(numel, bits).astype(np.uint64) * weights).sum(axis=1)
    return torch.from_numpy(vals.astype(np.int64))


def packed_nbytes(numel: int, bits: int) -> int:
    """The bit-count limit: bytes needed to store ``numel`` codes of ``bits`` bits."""
    return (numel * bits + 7) // 8


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """A boolean mask as a uint8 tensor of ceil(n/8) bytes (little-endian bit order)."""
    flat = mask.detach().reshape(-1).to("cpu", torch.bool).numpy()
    return torch.from_numpy(np.packbits(flat, bitorder="little").copy())


def unpack_mask(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_mask`: a flat bool tensor of ``numel`` entries (on CPU)."""
    raw = packed.detach().to("cpu", torch.uint8).numpy()
    return torch.from_numpy(np.unpackbits(raw, count=numel, bitorder="little").astype(bool))
