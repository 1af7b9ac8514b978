"""Offline speech synthesis with eSpeak NG, called through ctypes.

The library (``libespeak-ng.so``) and its voice data come from the PyPI wheel
``espeakng-loader``; nothing is downloaded.  Output is synchronous 16-bit mono PCM at
22,050 Hz, about 3 ms of CPU per short command.

eSpeak keeps synthesis state between utterances in C statics (the pitch-flutter phase, the
automatic gain, the echo buffer) that no API call resets, so the same text can come out a few
samples different depending on what was said before.  To make a corpus a pure function of its
seed, every *job* (one speaker's list of sentences) is synthesized in a fresh process, with the
library's random seed fixed before each sentence.  This file runs as that worker script
(``python espeak.py JOB.json OUT.npz``) and imports only the standard library and numpy.
"""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np

SAMPLE_RATE = 22050
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_PARAM = {"rate": 1, "volume": 2, "pitch": 3, "range": 4, "wordgap": 7}
_INSTALL_HINT = "pip install espeakng-loader (it ships libespeak-ng and the voice data; no download at run time)"


class EspeakUnavailable(RuntimeError):
    """The eSpeak NG library or its data could not be loaded."""


def _loader():
    try:
        import espeakng_loader
    except ImportError:
        raise EspeakUnavailable(f"spoken_commands needs eSpeak NG: {_INSTALL_HINT}") from None
    return espeakng_loader


def data_path() -> Path:
    return Path(_loader().get_data_path())


def variants() -> list[str]:
    """Names of the voice variants (``!v`` folder) shipped with the data, sorted."""
    folder = data_path() / "voices" / "!v"
    return sorted(p.name for p in folder.iterdir() if p.is_file() and " " not in p.name)


class Espeak:
    """One initialized library per process (eSpeak is a process-wide singleton)."""

    _CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

    def __init__(self) -> None:
        loader = _loader()
        try:
            lib = ctypes.CDLL(loader.get_library_path())
        except OSError as exc:
            raise EspeakUnavailable(f"cannot load {loader.get_library_path()}: {exc}; {_INSTALL_HINT}") from None
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, loader.get_data_path().encode(), 0)
        if rate <= 0:
            raise EspeakUnavailable(f"espeak_Initialize failed (data at {loader.get_data_path()})")
        self.sample_rate = int(rate)
        self._chunks: list[np.ndarray] = []

        def collect(wav, n, events):  # noqa: ARG001
            if n > 0 and wav:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        self._callback = self._CALLBACK(collect)  # keep a reference: C holds only the pointer
        lib.espeak_SetSynthCallback(self._callback)
        self.lib = lib
        self._voice: str | None = None

    def set_voice(self, name: str) -> None:
        if name != self._voice:
            if self.lib.espeak_SetVoiceByName(name.encode()) != 0:
                raise ValueError(f"eSpeak NG has no voice {name!r}")
            self._voice = name

    def say(self, text: str, voice: str, rate: int = 175, pitch: int = 50, range_: int = 50, wordgap: int = 0,
            seed: int = 1) -> np.ndarray:
        """``text`` as int16 samples at :attr:`sample_rate`."""
        self.set_voice(voice)
        for key, value in (("rate", rate), ("pitch", pitch), ("range", range_), ("wordgap", wordgap)):
            self.lib.espeak_SetParameter(_PARAM[key], int(value), 0)
        self.lib.espeak_ng_SetRandSeed(int(seed))
        self._chunks.clear()
        data = text.encode("utf-8") + b"\0"
        if self.lib.espeak_Synth(data, len(data), 0, 0, 0, 0, None, None) != 0:
            raise RuntimeError(f"espeak_Synth failed for {text!r}")
        self.lib.espeak_Synchronize()
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


def _run_job(job: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Synthesize one job in this process: concatenated samples and per-sentence offsets."""
    engine = Espeak()
    waves = [engine.say(s["text"], job["voice"], job["rate"], job["pitch"], job.get("range", 50),
                        job.get("wordgap", 0), s.get("seed", 1))
             for s in job["sentences"]]
    offsets = np.cumsum([0] + [len(w) for w in waves]).astype(np.int64)
    samples = np.concatenate(waves) if waves else np.zeros(0, np.int16)
    return samples, offsets


def synthesize(jobs: Sequence[dict[str, Any]], workers: int = 2) -> list[list[np.ndarray]]:
    """Synthesize every job in its own fresh process; returns, per job, one int16 array per sentence.

    A job is ``{"voice": "en-us+f3", "rate": 170, "pitch": 50, "range": 50, "wordgap": 0,
    "sentences": [{"text": ..., "seed": ...}, ...]}``.  Same jobs -> same samples, bit for bit.
    """
    _loader()  # fail early, in this process, with the install hint
    script = str(Path(__file__).resolve())
    with tempfile.TemporaryDirectory(prefix="qexp-espeak-") as tmp:
        def one(i: int) -> list[np.ndarray]:
            job_file, out_file = Path(tmp) / f"{i}.json", Path(tmp) / f"{i}.npz"
            job_file.write_text(json.dumps(jobs[i]))
            # -P: the script's folder (qexp/data) must not shadow top-level modules
            proc = subprocess.run([sys.executable, "-P", script, str(job_file), str(out_file)], capture_output=True,
                                  text=True)
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
                raise EspeakUnavailable(f"eSpeak worker failed for voice {jobs[i]['voice']}: {tail[0]}")
            with np.load(out_file) as z:
                samples, offsets = z["samples"], z["offsets"]
            return [samples[a:b].copy() for a, b in zip(offsets[:-1], offsets[1:])]

        with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
            return list(pool.map(one, range(len(jobs))))


def _main(argv: list[str]) -> int:
    job = json.loads(Path(argv[0]).read_text())
    samples, offsets = _run_job(job)
    np.savez(argv[1], samples=samples, offsets=offsets)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
