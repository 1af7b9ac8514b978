"""qexp: an experiment runner for weight quantization of deep networks."""

__version__ = "0.1.0"
