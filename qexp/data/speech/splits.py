"""Speech splits in memory, their datasets and batches, the task bundle, and the feature cache
(one file per content hash, written atomically, read back as tensors only)."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import Dataset

from qexp.data.bundle import DataBundle
from qexp.data.speech.features import ALPHABET, encode_text, normalize_text, single_thread, spec_augment
from qexp.errors import QexpError
from qexp.tasks.speech import CTCRecognition, SpokenLanguageUnderstanding

log = logging.getLogger("qexp")

CACHE_VERSION = 1
TASKS = ("ctc", "slu")




@dataclass
class SpeechSplit:
    """One split in memory: features, transcripts, slot labels and speakers."""

    features: list[torch.Tensor]
    texts: list[str]
    slots: torch.Tensor  # (N, S) long; S may be 0
    speakers: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.features)


class SpeechDataset(Dataset):
    """Items ``(features (F, T) float32, characters (L,) long, slots (S,) long)``."""

    def __init__(self, split: SpeechSplit, specaugment: dict[str, int] | None = None):
        self.split = split
        self.targets = [encode_text(t) for t in split.texts]
        self.specaugment = dict(specaugment) if specaugment else None

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        x = self.split.features[i].float()
        if self.specaugment:
            x = spec_augment(x, **self.specaugment)
        return x, self.targets[i], self.split.slots[i]


class CTCCollate:
    """``(features (B, F, T_max), lengths (B,), targets (sum L,), target_lengths (B,))``."""

    def __call__(self, items):
        feats, targets, _ = zip(*items)
        lengths = torch.tensor([f.shape[1] for f in feats], dtype=torch.long)
        x = feats[0].new_zeros(len(feats), feats[0].shape[0], int(lengths.max()))
        for i, f in enumerate(feats):
            x[i, :, : f.shape[1]] = f
        y_len = torch.tensor([len(t) for t in targets], dtype=torch.long)
        return x, lengths, torch.cat(targets), y_len


class SLUCollate:
    """``(features (B, 1, F, frames), slots (B, S))``: zero-padded / cropped to ``frames``."""

    def __init__(self, frames: int):
        self.frames = int(frames)

    def __call__(self, items):
        feats, _, slots = zip(*items)
        x = feats[0].new_zeros(len(feats), 1, feats[0].shape[0], self.frames)
        for i, f in enumerate(feats):
            n = min(f.shape[1], self.frames)
            x[i, 0, :, :n] = f[:, :n]
        return x, torch.stack(slots)


def make_bundle(name: str, task: str, splits: dict[str, SpeechSplit], slot_names: Sequence[str],
                slot_vocab: dict[str, list[str]], specaugment: dict[str, int] | None, frames: int | None,
                info: dict[str, Any]) -> DataBundle:
    """The bundle for ``task`` (ctc | slu) over train/val/test splits."""
    if task not in TASKS:
        raise QexpError(f"dataset.task={task} is not known; allowed: {', '.join(TASKS)}")
    n_feat = splits["train"].features[0].shape[0]
    longest = max(f.shape[1] for f in splits["train"].features)
    if task == "ctc":
        empty = [i for i, t in enumerate(splits["train"].texts) if not normalize_text(t)]
        if len(empty) == len(splits["train"]):
            raise QexpError(f"dataset={name}: no transcripts, so task=ctc is impossible; use task=slu")
        task_obj: Any = CTCRecognition(ALPHABET)
        collate: Any = CTCCollate()
        model_kwargs = {"in_shape": (n_feat, longest), "num_classes": task_obj.num_classes}
    else:
        if not slot_names:
            raise QexpError(f"dataset={name} has no labels to classify; use task=ctc")
        sizes = [len(slot_vocab[s]) for s in slot_names]
        task_obj = SpokenLanguageUnderstanding(slot_names, sizes)
        frames = int(frames or 8 * math.ceil(longest / 8))
        collate = SLUCollate(frames)
        model_kwargs = {"in_shape": (1, n_feat, frames), "num_classes": task_obj.num_classes}
    train = SpeechDataset(splits["train"], specaugment)
    return DataBundle(
        train=train,
        val=SpeechDataset(splits["val"]),
        test=SpeechDataset(splits["test"]),
        task=task_obj,
        model_kwargs=model_kwargs,
        collate_fn=collate,
        info={"name": name, "task": task, "sizes": {k: len(v) for k, v in splits.items()},
              "speakers": {k: len(set(v.speakers)) for k, v in splits.items()}, "slots": dict(slot_vocab),
              "alphabet": ALPHABET, **info},
    )


def content_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _save_atomic(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _pack_splits(splits: dict[str, SpeechSplit]) -> dict[str, Any]:
    out = {}
    for name, s in splits.items():
        lengths = [f.shape[1] for f in s.features]
        feats = torch.cat(s.features, 1).half() if s.features else torch.zeros(0, 0, dtype=torch.half)
        out[name] = {"features": feats, "lengths": lengths, "texts": s.texts, "slots": s.slots,
                     "speakers": s.speakers}
    return out


def _unpack_splits(data: dict[str, Any]) -> dict[str, SpeechSplit]:
    out = {}
    for name, d in data.items():
        feats = list(torch.split(d["features"], d["lengths"], 1)) if d["lengths"] else []
        out[name] = SpeechSplit(feats, list(d["texts"]), d["slots"], list(d["speakers"]))
    return out


def cached_splits(cache_dir: str | None, name: str, key: dict[str, Any],
                  build: Callable[[], tuple[dict[str, SpeechSplit], dict[str, Any]]]) -> tuple[dict[str, SpeechSplit], dict[str, Any]]:
    """Load the splits for ``key`` from the cache or build (and cache) them."""
    key = {"version": CACHE_VERSION, "name": name, **key}
    path = Path(cache_dir).expanduser() / name / f"{content_hash(key)}.pt" if cache_dir else None
    if path is not None and path.exists():
        try:
            data = torch.load(path, weights_only=True)  # a cache is data: tensors and plain containers only
            if data.get("key") == json.loads(json.dumps(key, default=str)):
                info = dict(data["info"], cache=str(path), cached=True)
                return _unpack_splits(data["splits"]), info
        except Exception as exc:  # noqa: BLE001 - a damaged cache file is rebuilt
            log.warning("speech cache %s unreadable (%s); rebuilding", path, exc)
    with single_thread():
        splits, info = build()
    splits = _unpack_splits(_pack_splits(splits))  # float16 features whether built now or loaded
    if path is not None:
        _save_atomic({"key": json.loads(json.dumps(key, default=str)), "splits": _pack_splits(splits), "info": info},
                     path)
        info = dict(info, cache=str(path), cached=False)
    return splits, info
