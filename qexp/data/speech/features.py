"""Text, audio and features: the CTC alphabet, audio decoding, log-Mel/MFCC extraction and
SpecAugment masking, shared by every speech corpus."""

from __future__ import annotations

import contextlib
import os
import re
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from qexp.errors import QexpError

ALPHABET = " abcdefghijklmnopqrstuvwxyz'"  # CTC classes 1..28; 0 is the blank




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
