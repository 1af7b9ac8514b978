"""Speech datasets: a synthesized spoken-command corpus (offline default) and the real corpora.

``spoken_commands``        utterances synthesized offline with eSpeak NG (``qexp.data.espeak``)
                           from a grammar modelled on Fluent Speech Commands: 31 intents =
                           (action, object, location) slots, several phrasings each.  Speakers
                           are accent x voice variant x rate x pitch; val/test speakers use voice
                           variants that never occur in training.  Noise (white/pink/brown/hum)
                           at a random SNR and a random gain are mixed in, seeded.
``fluent_speech_commands`` the FSC release in a local folder (CSV + wavs).
``speech_commands``        Google Speech Commands through ``torchaudio.datasets.SPEECHCOMMANDS``.
``librispeech``            LibriSpeech through ``torchaudio.datasets.LIBRISPEECH``.

Nothing is downloaded.  Every corpus becomes log-Mel (or MFCC) features computed once and
cached (``cache_dir``, one file per content hash, written atomically).  Each item is
``(features (n_mels, T), characters (L,), slots (S,))``; the task decides the batch layout:
``task=ctc`` pads to the batch's longest utterance and keeps lengths and transcripts (character
recognition, model=rnn); ``task=slu`` pads/crops to a fixed number of frames and keeps the slots
(model=resnet_slu, or any image classifier).  The dataset configs take the task from the
model (``task: ${oc.select:model.task,slu}``).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import os
import re
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from qexp.data.bundle import DataBundle
from qexp.errors import QexpError
from qexp.tasks.speech import CTCRecognition, SpokenLanguageUnderstanding

log = logging.getLogger("qexp")

ALPHABET = " abcdefghijklmnopqrstuvwxyz'"  # CTC classes 1..28; 0 is the blank
CACHE_VERSION = 1
TASKS = ("ctc", "slu")

# ------------------------------------------------------------------------------------------------
# the spoken-command grammar (labels as in Fluent Speech Commands)
# ------------------------------------------------------------------------------------------------

SLOT_NAMES = ("action", "object", "location")
ACTIONS = ("activate", "deactivate", "increase", "decrease", "change language", "bring")
OBJECTS = ("none", "music", "lights", "lamp", "volume", "heat", "newspaper", "juice", "socks", "shoes",
           "Chinese", "Korean", "English", "German")
LOCATIONS = ("none", "kitchen", "bedroom", "washroom")
ROOMS = LOCATIONS[1:]

_OBJECT_WORDS = {"lights": ("lights", "light"), "volume": ("volume", "sound"),
                 "heat": ("heat", "heating", "temperature"), "newspaper": ("newspaper", "paper")}
_ROOM_WORDS = {"kitchen": ("kitchen",), "bedroom": ("bedroom",), "washroom": ("washroom", "bathroom")}
_DETERMINERS = {"newspaper": ("the", "my"), "juice": ("some", "the"), "socks": ("my", "the", "some"),
                "shoes": ("my", "the")}

# (action, object) -> (rooms it can name, phrasings, phrasings that need a room).
# {o} object word, {l} room word, {d} determiner.  With a room, every plain phrasing also
# appears as "<phrasing> in the {l}".
_PHRASES: dict[tuple[str, str], tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    ("activate", "lights"): (ROOMS, ("turn on the {o}", "switch on the {o}", "turn the {o} on", "{o} on",
                                     "switch the {o} on"), ("turn on the {l} {o}", "{l} {o} on", "switch on the {l} {o}")),
    ("deactivate", "lights"): (ROOMS, ("turn off the {o}", "switch off the {o}", "turn the {o} off", "{o} off",
                                       "switch the {o} off"), ("turn off the {l} {o}", "{l} {o} off", "switch off the {l} {o}")),
    ("activate", "lamp"): ((), ("turn on the lamp", "switch on the lamp", "lamp on", "turn the lamp on"), ()),
    ("deactivate", "lamp"): ((), ("turn off the lamp", "switch off the lamp", "lamp off", "turn the lamp off"), ()),
    ("activate", "music"): ((), ("play the music", "play music", "put on some music", "start the music", "music on",
                                 "turn on the music"), ()),
    ("deactivate", "music"): ((), ("stop the music", "pause the music", "turn off the music", "music off",
                                   "stop playing music"), ()),
    ("increase", "volume"): ((), ("increase the {o}", "turn up the {o}", "turn the {o} up", "{o} up", "louder",
                                  "make it louder"), ()),
    ("decrease", "volume"): ((), ("decrease the {o}", "turn down the {o}", "turn the {o} down", "{o} down",
                                  "quieter", "make it quieter", "lower the {o}"), ()),
    ("increase", "heat"): (ROOMS, ("increase the {o}", "turn up the {o}", "turn the {o} up", "make it warmer",
                                   "heat up", "raise the {o}"), ("make the {l} warmer", "{l} {o} up")),
    ("decrease", "heat"): (ROOMS, ("decrease the {o}", "turn down the {o}", "turn the {o} down", "make it cooler",
                                   "lower the {o}", "cool down"), ("make the {l} cooler", "{l} {o} down")),
    ("change language", "none"): ((), ("change language", "change the language", "switch the language",
                                       "language settings", "use a different language"), ()),
    **{("change language", lang): ((), ("change the language to {o}", "switch to {o}", "set the language to {o}",
                                        "{o} please", "use {o}", "change language to {o}"), ())
       for lang in ("Chinese", "Korean", "English", "German")},
    **{("bring", obj): ((), ("bring me {d} {o}", "get me {d} {o}", "fetch {d} {o}", "bring {d} {o}", "i need {d} {o}",
                             "go get {d} {o}"), ())
       for obj in ("newspaper", "juice", "socks", "shoes")},
}

#: the 31 intents (action, object, location), in a fixed order
INTENTS: tuple[tuple[str, str, str], ...] = tuple(
    (a, o, loc) for (a, o), (rooms, _, _) in _PHRASES.items() for loc in ("none", *rooms)
)


def phrasings(action: str, obj: str, location: str) -> list[str]:
    """Every sentence of the grammar that expresses the intent, in a fixed order."""
    rooms, plain, roomed = _PHRASES[(action, obj)]
    words = _OBJECT_WORDS.get(obj, (obj.lower(),))
    dets = _DETERMINERS.get(obj, ("the",))
    if location == "none":
        templates, places = plain, ("",)
    else:
        if location not in rooms:
            raise ValueError(f"intent {(action, obj)} names no room")
        templates, places = tuple(t + " in the {l}" for t in plain) + roomed, _ROOM_WORDS[location]
    out: dict[str, None] = {}
    for t in templates:
        for w in words:
            for d in dets:
                for place in places:
                    out[t.format(o=w, l=place, d=d)] = None
    return list(out)


# ------------------------------------------------------------------------------------------------
# text, audio and features
# ------------------------------------------------------------------------------------------------


def normalize_text(text: str) -> str:
    """Lower case, letters/apostrophes/spaces only (other characters become spaces), single spaces."""
    text = re.sub(r"[^a-z' ]+", " ", text.lower().replace("’", "'"))
    return " ".join(text.split())


def encode_text(text: str) -> torch.Tensor:
    return torch.tensor([ALPHABET.index(c) + 1 for c in normalize_text(text)], dtype=torch.long)


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Mono float32 samples in [-1, 1] and the sample rate.  WAV needs only the standard library;
    other formats (LibriSpeech's FLAC) need ``soundfile`` or ``torchcodec``."""
    path = str(path)
    if path.lower().endswith(".wav"):
        try:
            with wave.open(path, "rb") as f:
                sr, ch, width, n = f.getframerate(), f.getnchannels(), f.getsampwidth(), f.getnframes()
                raw = f.readframes(n)
            if width == 1:
                x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128) / 128
            elif width in (2, 4):
                dtype = np.int16 if width == 2 else np.int32
                x = np.frombuffer(raw, dtype).astype(np.float32) / float(np.iinfo(dtype).max + 1)
            elif width == 3:
                b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
                x = ((b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8).astype(np.float32) / 2**23
            else:
                raise ValueError(f"unsupported sample width {width}")
            return x.reshape(-1, ch).mean(1), sr
        except wave.Error:  # e.g. float WAV: scipy reads it
            from scipy.io import wavfile

            sr, x = wavfile.read(path)
            x = x.astype(np.float32) / (np.iinfo(x.dtype).max + 1 if x.dtype.kind in "iu" else 1.0)
            return (x.mean(1) if x.ndim == 2 else x), int(sr)
    try:
        import soundfile

        x, sr = soundfile.read(path, dtype="float32", always_2d=True)
        return x.mean(1), int(sr)
    except ImportError:
        pass
    try:
        import torchcodec  # noqa: F401  (torchaudio.load needs it)
        import torchaudio

        x, sr = torchaudio.load(path)
        return x.mean(0).numpy(), int(sr)
    except ImportError:
        raise MissingDecoder(f"reading {Path(path).suffix} audio needs a decoder: pip install soundfile "
                             f"(or torchcodec); WAV needs nothing") from None


class MissingDecoder(QexpError):
    """No library can decode this audio format (not the file's fault, so never skipped)."""


@dataclass
class FeatureConfig:
    kind: str = "logmel"  # logmel | mfcc
    sample_rate: int = 16000
    n_mels: int = 40
    n_mfcc: int = 40
    win_ms: float = 25.0
    hop_ms: float = 20.0
    f_min: float = 20.0
    normalize: str = "utterance"  # utterance (per-utterance mean/var per band) | none

    def __post_init__(self):
        if self.kind not in ("logmel", "mfcc"):
            raise QexpError(f"dataset.features.kind={self.kind} is not known; allowed: logmel, mfcc")
        if self.normalize not in ("utterance", "none"):
            raise QexpError(f"dataset.features.normalize={self.normalize} is not known; allowed: utterance, none")

    @property
    def n_features(self) -> int:
        return self.n_mfcc if self.kind == "mfcc" else self.n_mels


class FeatureExtractor:
    """Waveform (any rate) -> (n_features, frames) float32, via torchaudio transforms."""

    def __init__(self, cfg: FeatureConfig):
        import torchaudio

        self.cfg = cfg
        win = int(round(cfg.sample_rate * cfg.win_ms / 1000))
        hop = int(round(cfg.sample_rate * cfg.hop_ms / 1000))
        n_fft = 1 << (win - 1).bit_length()
        mel = dict(n_fft=n_fft, win_length=win, hop_length=hop, f_min=cfg.f_min, n_mels=cfg.n_mels)
        if cfg.kind == "mfcc":
            self.transform = torchaudio.transforms.MFCC(cfg.sample_rate, n_mfcc=cfg.n_mfcc, log_mels=True, melkwargs=mel)
        else:
            self.transform = torchaudio.transforms.MelSpectrogram(cfg.sample_rate, **mel)
        self._resamplers: dict[int, Callable] = {}

    def resample(self, x: torch.Tensor, sr: int) -> torch.Tensor:
        if sr == self.cfg.sample_rate:
            return x
        if sr not in self._resamplers:
            import torchaudio

            self._resamplers[sr] = torchaudio.transforms.Resample(sr, self.cfg.sample_rate)
        return self._resamplers[sr](x)

    def __call__(self, samples: np.ndarray | torch.Tensor, sr: int | None = None) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(samples, dtype=np.float32))
        if sr is not None:
            x = self.resample(x, sr)
        with torch.no_grad():
            f = self.transform(x)
        if self.cfg.kind == "logmel":
            f = torch.log(f + 1e-6)
        if self.cfg.normalize == "utterance":
            f = (f - f.mean(1, keepdim=True)) / (f.std(1, keepdim=True) + 1e-5)
        return f.float()


def spec_augment(x: torch.Tensor, freq_masks: int = 0, freq_width: int = 0, time_masks: int = 0,
                 time_width: int = 0) -> torch.Tensor:
    """SpecAugment-style masking (zeros) of random frequency bands and time spans."""
    x = x.clone()
    n_f, n_t = x.shape
    for _ in range(int(freq_masks)):
        w = int(torch.randint(0, int(freq_width) + 1, ()).item())
        if 0 < w < n_f:
            s = int(torch.randint(0, n_f - w + 1, ()).item())
            x[s : s + w] = 0
    for _ in range(int(time_masks)):
        w = int(torch.randint(0, int(time_width) + 1, ()).item())
        w = min(w, n_t // 4)
        if w > 0:
            s = int(torch.randint(0, n_t - w + 1, ()).item())
            x[:, s : s + w] = 0
    return x


# ------------------------------------------------------------------------------------------------
# datasets, batches, bundle
# ------------------------------------------------------------------------------------------------


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


# ------------------------------------------------------------------------------------------------
# cache
# ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def single_thread():
    """Feature extraction runs many tiny ops: one intra-op thread is many times faster than a
    thread pool (which spins, the more so on a shared machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
            data = torch.load(path, weights_only=True)  # a cache may be someone else's file: data only
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


# ------------------------------------------------------------------------------------------------
# spoken_commands: the synthesized corpus
# ------------------------------------------------------------------------------------------------

ACCENTS = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
NOISE_KINDS = ("white", "pink", "brown", "hum")


def _uniform(rng: np.random.Generator, lo_hi: Sequence[float]) -> float:
    lo, hi = float(lo_hi[0]), float(lo_hi[-1])
    return float(rng.uniform(lo, hi)) if hi > lo else lo


def plan_speakers(seed: int, speakers: dict[str, int], heldout_variants: dict[str, int],
                  utterances_per_speaker: int | dict[str, int],
                  rate: Sequence[int], pitch: Sequence[int], pitch_range: Sequence[int], accents: Sequence[str],
                  variant_names: Sequence[str]) -> list[dict[str, Any]]:
    """Who says what: one dict per speaker (split, voice, prosody, sentences with intents).

    Voice variants are dealt to test, val and train first, so held-out speakers never share a
    variant with a training speaker; accents are dealt round-robin within each split.  Each speaker's content depends only on (seed, split, index).
    """
    order = [variant_names[i] for i in np.random.default_rng([seed, 7]).permutation(len(variant_names))]
    n_test, n_val = int(heldout_variants.get("test", 0)), int(heldout_variants.get("val", 0))
    if n_test < 1 or n_val < 1 or n_test + n_val >= len(order):
        raise QexpError(f"dataset.heldout_variants={dict(heldout_variants)}: need >= 1 each for val and test and "
                        f"fewer than {len(order)} in all")
    pools = {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
    per_speaker = utterances_per_speaker if isinstance(utterances_per_speaker, dict) else \
        dict.fromkeys(("train", "val", "test"), utterances_per_speaker)
    plan = []
    for s_idx, split in enumerate(("train", "val", "test")):
        pool = pools[split]
        accent_order = [accents[i] for i in np.random.default_rng([seed, s_idx, 11]).permutation(len(accents))]
        for k in range(int(speakers[split])):
            rng = np.random.default_rng([seed, s_idx, k])
            variant = pool[k % len(pool)]
            accent = accent_order[k % len(accent_order)]  # every split gets an even mix of accents
            prosody = {"rate": int(round(_uniform(rng, rate))), "pitch": int(round(_uniform(rng, pitch))),
                       "range": int(round(_uniform(rng, pitch_range)))}
            sentences = []
            perm = rng.permutation(len(INTENTS))
            for u in range(int(per_speaker[split])):
                if u and u % len(INTENTS) == 0:
                    perm = rng.permutation(len(INTENTS))
                intent = INTENTS[perm[u % len(INTENTS)]]
                options = phrasings(*intent)
                sentences.append({"text": options[int(rng.integers(len(options)))], "intent": list(intent),
                                  "seed": int(rng.integers(1, 2**31 - 1))})
            plan.append({"split": split, "index": k, "speaker": f"{accent}+{variant}/r{prosody['rate']}p{prosody['pitch']}",
                         "variant": variant, "voice": f"{accent}+{variant}", **prosody, "sentences": sentences})
    return plan


def colored_noise(kind: str, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise: white, pink (1/f), brown (1/f^2) or mains hum with harmonics."""
    if kind == "hum":
        t = np.arange(n, dtype=np.float32) / sr
        f0 = 50.0 if rng.random() < 0.5 else 60.0
        x = 0.05 * rng.standard_normal(n, dtype=np.float32)
        for h in range(1, 6):
            x += np.float32(rng.uniform(0.2, 1.0) / h) * np.sin(np.float32(2 * np.pi * f0 * h) * t
                                                               + np.float32(rng.uniform(0, 2 * np.pi)))
    elif kind in ("pink", "brown"):
        m = 1 << max(1, (n - 1).bit_length())  # shape a power-of-two block (fast FFT), keep n samples
        spec = np.fft.rfft(rng.standard_normal(m))
        f = np.arange(len(spec), dtype=np.float64)
        f[0] = 1.0
        spec /= np.sqrt(f) if kind == "pink" else f
        x = np.fft.irfft(spec, m)[:n]
    else:
        x = rng.standard_normal(n)
    x = np.asarray(x, dtype=np.float32)
    return x / np.float32(np.sqrt(np.mean(x.astype(np.float64) ** 2)) + 1e-12)


def degrade(clean: np.ndarray, sr: int, rng: np.random.Generator, pad_ms: Sequence[float], snr_db: Sequence[float],
            gain_db: Sequence[float], noise_kinds: Sequence[str], noise_prob: float) -> tuple[np.ndarray, dict[str, Any]]:
    """Pad with silence, add noise at a random SNR (relative to the speech), apply a random gain."""
    speech = clean.astype(np.float32)
    power = float(np.mean(speech.astype(np.float64) ** 2)) + 1e-12
    lead, trail = (int(sr * _uniform(rng, pad_ms) / 1000) for _ in range(2))
    x = np.concatenate([np.zeros(lead, np.float32), speech, np.zeros(trail, np.float32)])
    meta: dict[str, Any] = {"noise": None, "snr_db": None}
    if noise_kinds and rng.random() < noise_prob:
        kind = noise_kinds[int(rng.integers(len(noise_kinds)))]
        snr = _uniform(rng, snr_db)
        x = x + colored_noise(kind, len(x), sr, rng) * np.float32(math.sqrt(power / 10 ** (snr / 10)))
        meta = {"noise": kind, "snr_db": round(snr, 2)}
    gain = _uniform(rng, gain_db)
    x = np.clip(x * np.float32(10 ** (gain / 20)), -1.0, 1.0)
    meta["gain_db"] = round(gain, 2)
    return x.astype(np.float32), meta


def spoken_commands(seed: int = 0, task: str = "slu", corpus_seed: int | None = 0,
                    speakers: dict[str, int] | None = None, heldout_variants: dict[str, int] | None = None,
                    utterances_per_speaker: int | dict[str, int] = 31, rate: Sequence[int] = (130, 220), pitch: Sequence[int] = (25, 75),
                    pitch_range: Sequence[int] = (30, 70), accents: Sequence[str] = ACCENTS,
                    pad_ms: Sequence[float] = (50, 300), snr_db: Sequence[float] = (5, 30),
                    gain_db: Sequence[float] = (-20, 0), noise: Sequence[str] = NOISE_KINDS, noise_prob: float = 1.0,
                    features: dict[str, Any] | None = None, specaugment: dict[str, int] | None = None,
                    frames: int | None = None, cache_dir: str | None = ".cache/qexp/speech", workers: int = 2) -> DataBundle:
    """Synthesized spoken commands (see the module docstring); deterministic in ``corpus_seed``
    (null: the run seed).  Slots: action (6), object (14), location (4); 31 intents."""
    corpus_seed = seed if corpus_seed is None else int(corpus_seed)
    speakers = dict(speakers or {"train": 124, "val": 12, "test": 12})
    heldout_variants = dict(heldout_variants or {"val": 12, "test": 12})
    if any(speakers.get(s, 0) < 1 for s in ("train", "val", "test")):
        raise QexpError(f"dataset.speakers={speakers} needs train, val and test >= 1")
    per = dict(utterances_per_speaker) if isinstance(utterances_per_speaker, dict) else \
        dict.fromkeys(("train", "val", "test"), utterances_per_speaker)
    if set(per) != {"train", "val", "test"} or any(int(v) < 1 for v in per.values()):
        raise QexpError(f"dataset.utterances_per_speaker={utterances_per_speaker} must be >= 1 (one number, or one per "
                        f"split: {{train: .., val: .., test: ..}})")
    unknown = [k for k in noise if k not in NOISE_KINDS]
    if unknown:
        raise QexpError(f"dataset.noise={list(noise)}: unknown {unknown}; allowed: {', '.join(NOISE_KINDS)}")
    fcfg = FeatureConfig(**(features or {}))
    from qexp.data import espeak

    try:
        variant_names = espeak.variants()
    except espeak.EspeakUnavailable as exc:
        raise QexpError(str(exc)) from None
    plan = plan_speakers(corpus_seed, speakers, heldout_variants, per, rate, pitch, pitch_range,
                         accents, variant_names)
    degrade_args = {"pad_ms": list(pad_ms), "snr_db": list(snr_db), "gain_db": list(gain_db), "noise_kinds": list(noise),
                    "noise_prob": float(noise_prob)}
    key = {"seed": corpus_seed, "plan": content_hash(plan), "degrade": degrade_args, "features": vars(fcfg),
           "espeak_sample_rate": espeak.SAMPLE_RATE}

    def build():
        jobs = [{k: p[k] for k in ("voice", "rate", "pitch", "range")} | {"sentences": p["sentences"]} for p in plan]
        try:
            waves = espeak.synthesize(jobs, workers=workers)
        except espeak.EspeakUnavailable as exc:
            raise QexpError(str(exc)) from None
        extractor = FeatureExtractor(fcfg)
        parts: dict[str, dict[str, list]] = {s: {"f": [], "t": [], "y": [], "spk": []} for s in ("train", "val", "test")}
        noise_count: dict[str, int] = {}
        for spk, spk_waves in zip(plan, waves):
            rng = np.random.default_rng([corpus_seed, 99, ("train", "val", "test").index(spk["split"]), spk["index"]])
            part = parts[spk["split"]]
            for sent, w in zip(spk["sentences"], spk_waves):
                clean = extractor.resample(torch.from_numpy(w.astype(np.float32) / 32768.0), espeak.SAMPLE_RATE)
                noisy, meta = degrade(clean.numpy(), fcfg.sample_rate, rng, **degrade_args)
                noise_count[str(meta["noise"])] = noise_count.get(str(meta["noise"]), 0) + 1
                part["f"].append(extractor(noisy))
                part["t"].append(sent["text"])
                a, o, loc = sent["intent"]
                part["y"].append([ACTIONS.index(a), OBJECTS.index(o), LOCATIONS.index(loc)])
                part["spk"].append(spk["speaker"])
        splits = {s: SpeechSplit(d["f"], d["t"], torch.tensor(d["y"], dtype=torch.long).reshape(-1, 3), d["spk"])
                  for s, d in parts.items()}
        info = {"variants": {s: sorted({p["variant"] for p in plan if p["split"] == s}) for s in splits},
                "noise": noise_count, "seconds": {s: round(sum(f.shape[1] for f in sp.features) * fcfg.hop_ms / 1000, 1)
                                                  for s, sp in splits.items()}}
        return splits, info

    splits, info = cached_splits(cache_dir, "spoken_commands", key, build)
    slot_vocab = {"action": list(ACTIONS), "object": list(OBJECTS), "location": list(LOCATIONS)}
    return make_bundle("spoken_commands", task, splits, SLOT_NAMES, slot_vocab, specaugment, frames,
                       {**info, "features": vars(fcfg), "corpus_seed": corpus_seed, "intents": len(INTENTS)})


# ------------------------------------------------------------------------------------------------
# real corpora (local files only)
# ------------------------------------------------------------------------------------------------


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
                raise QexpError(f"dataset={name}: cannot read {it.path} ({' '.join(str(exc).split())}); "
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
