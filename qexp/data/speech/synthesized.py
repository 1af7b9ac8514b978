"""``spoken_commands``: utterances synthesized offline with eSpeak NG (``qexp.data.espeak``) from
the grammar in :mod:`qexp.data.speech.grammar`.  Speakers are accent x voice variant x rate x
pitch; val/test speakers use voice variants that never occur in training.  Noise
(white/pink/brown/hum) at a random SNR and a random gain are mixed in, seeded."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from qexp.data.bundle import DataBundle
from qexp.data.speech.features import FeatureConfig, FeatureExtractor
from qexp.data.speech.grammar import ACTIONS, INTENTS, LOCATIONS, OBJECTS, SLOT_NAMES, phrasings
from qexp.data.speech.splits import SpeechSplit, cached_splits, content_hash, make_bundle
from qexp.errors import QexpError

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
