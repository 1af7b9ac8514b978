"""Datasets: each builder returns a :class:`DataBundle` (splits + task + what the model needs)."""

from qexp.data.bundle import DataBundle

__all__ = ["DataBundle"]
