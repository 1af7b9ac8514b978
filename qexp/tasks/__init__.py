"""Tasks: what a batch means, the loss to train, and the metrics to evaluate.

A task object travels with the data (``DataBundle.task``) so the trainer stays generic:
classification, segmentation and speech recognition all run through the same loop.
"""

from qexp.tasks.base import Task, to_device

__all__ = ["Task", "to_device"]
