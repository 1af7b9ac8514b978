"""The real speech corpora, from local files only (nothing is downloaded): Fluent Speech Commands
(CSV + wavs), Google Speech Commands and LibriSpeech (through ``torchaudio.datasets``)."""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from qexp.data.bundle import DataBundle
from qexp.data.speech.features import FeatureConfig, FeatureExtractor, MissingDecoder, read_audio
from qexp.data.speech.grammar import SLOT_NAMES
from qexp.data.speech.splits import SpeechSplit, cached_splits, content_hash, make_bundle
from qexp.errors import QexpError, one_line

log = logging.getLogger("qexp")


@dataclass
class AudioItem:
    path: str
    text: str
    labels: tuple[str, ...]
    speaker: str


def _check_bad_file_mode(on_bad_file: str) -> None:
    if on_bad_file not in ("skip", "fail"):
        raise QexpError(f"dataset.on_bad_file={on_bad_file} is not known; allowed: skip, fail")


def load_items(name: str, items: Sequence[AudioItem], extractor: FeatureExtractor, on_bad_file: str,
               slot_vocab: dict[str, list[str]], slot_names: Sequence[str], max_seconds: float | None = None,
               pad_to_seconds: float | None = None) -> tuple[SpeechSplit, dict[str, int]]:
    """Read, featurize and label ``items``; unreadable files are skipped (counted) or fail."""
    feats, texts, slots, speakers = [], [], [], []
    skipped = {"unreadable": 0, "too_long": 0}
    for it in items:
        try:
            x, sr = read_audio(it.path)
            if x.size == 0 or not np.all(np.isfinite(x)):
                raise ValueError("empty or non-finite audio")
        except MissingDecoder:
            raise
        except Exception as exc:  # noqa: BLE001 - any unreadable file
            if on_bad_file == "fail":
                raise QexpError(f"dataset={name}: cannot read {it.path} ({one_line(exc)}); "
                                f"fix or remove it, or set dataset.on_bad_file=skip") from None
            skipped["unreadable"] += 1
            log.warning("dataset=%s: skipping unreadable %s (%s)", name, it.path, exc)
            continue
        if max_seconds and len(x) / sr > max_seconds:
            skipped["too_long"] += 1
            continue
        if pad_to_seconds and len(x) < int(pad_to_seconds * sr):
            x = np.pad(x, (0, int(pad_to_seconds * sr) - len(x)))
        feats.append(extractor(x, sr))
        texts.append(it.text)
        slots.append([slot_vocab[s].index(v) for s, v in zip(slot_names, it.labels)])
        speakers.append(it.speaker)
    y = torch.tensor(slots, dtype=torch.long).reshape(len(slots), len(slot_names))
    return SpeechSplit(feats, texts, y, speakers), skipped


def _real_corpus(name: str, task: str, split_items: dict[str, list[AudioItem]], slot_names: Sequence[str],
                 features: dict[str, Any] | None, specaugment: dict[str, int] | None, frames: int | None,
                 cache_dir: str | None, on_bad_file: str, root: Path, max_seconds: float | None = None,
                 pad_to_seconds: float | None = None) -> DataBundle:
    _check_bad_file_mode(on_bad_file)
    fcfg = FeatureConfig(**(features or {}))
    slot_vocab = {s: sorted({it.labels[i] for items in split_items.values() for it in items})
                  for i, s in enumerate(slot_names)}
    key = {"root": str(root.resolve()), "features": vars(fcfg), "max_seconds": max_seconds, "pad": pad_to_seconds,
           "files": content_hash({s: [(it.path, it.text, it.labels) for it in items] for s, items in split_items.items()})}
    # the skip/fail mode does not change the content: a skipped file is absent either way

    def build():
        extractor = FeatureExtractor(fcfg)
        splits, skipped = {}, {}
        for s, items in split_items.items():
            splits[s], skipped[s] = load_items(name, items, extractor, on_bad_file, slot_vocab, slot_names,
                                               max_seconds, pad_to_seconds)
            if len(splits[s]) == 0:
                raise QexpError(f"dataset={name}: no readable audio in the {s} split under {root}")
        return splits, {"skipped_files": skipped}

    splits, info = cached_splits(cache_dir, name, key, build)
    total = sum(v.get("unreadable", 0) for v in info.get("skipped_files", {}).values())
    if total:
        log.warning("dataset=%s: %d unreadable audio files skipped", name, total)
    return make_bundle(name, task, splits, slot_names, slot_vocab, specaugment, frames,
                       {**info, "features": vars(fcfg), "root": str(root)})


def _limit(items: list[AudioItem], n: int | None) -> list[AudioItem]:
    return items[: int(n)] if n else items


def fluent_speech_commands(root: str | None = None, task: str = "slu", features: dict[str, Any] | None = None,
                           specaugment: dict[str, int] | None = None, frames: int | None = None,
                           cache_dir: str | None = ".cache/qexp/speech", on_bad_file: str = "skip",
                           max_utterances: int | None = None) -> DataBundle:
    """Fluent Speech Commands from a local copy of the release: ``root`` is the folder holding
    ``data/{train,valid,test}_data.csv`` and ``wavs/speakers/...`` (or its parent, which holds
    ``fluent_speech_commands_dataset/``).  Its splits have disjoint speakers."""
    hint = ("put the Fluent Speech Commands release (data/train_data.csv, data/valid_data.csv, data/test_data.csv, "
            "wavs/speakers/...) in a folder and pass dataset.root=FOLDER")
    if not root:
        raise QexpError(f"dataset=fluent_speech_commands needs dataset.root: {hint}")
    base = Path(root).expanduser()
    if not (base / "data" / "train_data.csv").is_file() and (base / "fluent_speech_commands_dataset").is_dir():
        base = base / "fluent_speech_commands_dataset"
    csvs = {"train": "train_data.csv", "val": "valid_data.csv", "test": "test_data.csv"}
    missing = [c for c in csvs.values() if not (base / "data" / c).is_file()]
    if missing:
        raise QexpError(f"dataset=fluent_speech_commands: {base / 'data'} lacks {', '.join(missing)}; {hint}")
    split_items = {}
    for s, c in csvs.items():
        with open(base / "data" / c, newline="") as f:
            rows = list(csv.DictReader(f))
        need = {"path", "speakerId", "transcription", "action", "object", "location"}
        if rows and not need <= set(rows[0]):
            raise QexpError(f"dataset=fluent_speech_commands: {base / 'data' / c} lacks columns "
                            f"{sorted(need - set(rows[0]))}")
        split_items[s] = _limit([AudioItem(str(base / r["path"]), r["transcription"],
                                           (r["action"], r["object"], r["location"]), r["speakerId"]) for r in rows],
                                max_utterances)
    return _real_corpus("fluent_speech_commands", task, split_items, SLOT_NAMES, features, specaugment, frames,
                        cache_dir, on_bad_file, base)


def speech_commands(root: str | None = None, task: str = "slu", url: str = "speech_commands_v0.02",
                    features: dict[str, Any] | None = None, specaugment: dict[str, int] | None = None,
                    frames: int | None = None, cache_dir: str | None = ".cache/qexp/speech", on_bad_file: str = "skip",
                    max_utterances: int | None = None) -> DataBundle:
    """Google Speech Commands (keyword spotting, 35 words in v0.02) via torchaudio, download=False.
    ``root`` holds ``SpeechCommands/<url>/``; its validation/testing lists give speaker-disjoint splits."""
    from torchaudio.datasets import SPEECHCOMMANDS

    folder = Path(root or ".").expanduser() / "SpeechCommands" / url
    if not root or not folder.is_dir():
        raise QexpError(f"dataset=speech_commands: no {folder}; extract {url}.tar.gz into ROOT/SpeechCommands/{url}/ "
                        f"and pass dataset.root=ROOT")
    split_items = {}
    for s, subset in (("train", "training"), ("val", "validation"), ("test", "testing")):
        ds = SPEECHCOMMANDS(root, url=url, download=False, subset=subset)
        items = []
        for n in range(len(ds)):
            rel, _, label, speaker, _ = ds.get_metadata(n)
            items.append(AudioItem(os.path.join(ds._archive, rel), label, (label,), str(speaker)))
        split_items[s] = _limit(items, max_utterances)
    return _real_corpus("speech_commands", task, split_items, ("word",), features, specaugment, frames, cache_dir,
                        on_bad_file, folder, pad_to_seconds=1.0)


def librispeech(root: str | None = None, task: str = "ctc", train_url: str = "train-clean-100",
                val_url: str = "dev-clean", test_url: str = "test-clean", features: dict[str, Any] | None = None,
                specaugment: dict[str, int] | None = None, cache_dir: str | None = ".cache/qexp/speech",
                on_bad_file: str = "skip", max_utterances: int | None = None,
                max_seconds: float | None = 16.0) -> DataBundle:
    """LibriSpeech (read English, character CTC) via torchaudio, download=False.  ``root`` holds
    ``LibriSpeech/<subset>/``; FLAC decoding needs ``soundfile`` (or ``torchcodec``)."""
    from torchaudio.datasets import LIBRISPEECH

    if task != "ctc":
        raise QexpError(f"dataset=librispeech supports task=ctc only (got {task}); use model=rnn")
    base = Path(root or ".").expanduser() / "LibriSpeech"
    missing = [u for u in (train_url, val_url, test_url) if not (base / u).is_dir()]
    if not root or missing:
        raise QexpError(f"dataset=librispeech: no {', '.join(str(base / u) for u in missing or [train_url])}; extract "
                        f"the OpenSLR-12 archives so that ROOT/LibriSpeech/<subset>/ exists and pass dataset.root=ROOT")
    split_items = {}
    for s, url in (("train", train_url), ("val", val_url), ("test", test_url)):
        ds = LIBRISPEECH(root, url=url, download=False)
        items = []
        for n in range(len(ds) if not max_utterances else min(len(ds), int(max_utterances))):
            rel, _, text, speaker, chapter, _ = ds.get_metadata(n)
            items.append(AudioItem(os.path.join(ds._archive, rel), text, (), str(speaker)))
        split_items[s] = items
    return _real_corpus("librispeech", task, split_items, (), features, specaugment, None, cache_dir, on_bad_file,
                        base, max_seconds=max_seconds)
