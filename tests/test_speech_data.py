"""Speech data: eSpeak synthesis, the spoken-command corpus, the real-corpus loaders."""

import csv
import wave

import numpy as np
import pytest
import torch

from qexp.data import espeak
from qexp.data.speech import (ALPHABET, INTENTS, SLOT_NAMES, CTCCollate, SLUCollate, fluent_speech_commands,
                              librispeech, normalize_text, phrasings, plan_speakers, read_audio, speech_commands,
                              spoken_commands)
from qexp.errors import QexpError

TINY = dict(speakers={"train": 3, "val": 1, "test": 1}, utterances_per_speaker=4, workers=2)


def test_synthesis_is_deterministic():
    job = {"voice": "en-us+m3", "rate": 170, "pitch": 40, "range": 50,
           "sentences": [{"text": "turn on the lights in the kitchen", "seed": 3}, {"text": "lamp off", "seed": 4}]}
    other = dict(job, voice="en-gb-scotland+f2")
    a = espeak.synthesize([job, other])
    b = espeak.synthesize([other, job])
    assert [w.tobytes() for w in a[0]] == [w.tobytes() for w in b[1]]  # same job -> same bytes
    assert [w.tobytes() for w in a[1]] == [w.tobytes() for w in b[0]]
    assert a[0][0].dtype == np.int16 and len(a[0][0]) > 0.5 * espeak.SAMPLE_RATE
    assert a[0][0].tobytes() != a[1][0].tobytes()  # another speaker sounds different


def test_grammar_covers_fsc_intents():
    assert len(INTENTS) == 31 and len(set(INTENTS)) == 31
    for intent in INTENTS:
        options = phrasings(*intent)
        assert len(options) >= 3
        assert all(normalize_text(p) == p and set(p) <= set(ALPHABET) for p in options)
    assert "turn on the lights in the kitchen" in phrasings("activate", "lights", "kitchen")
    assert "lights on" in phrasings("activate", "lights", "none")
    # a phrasing names one intent only
    owner = {}
    for intent in INTENTS:
        for p in phrasings(*intent):
            assert owner.setdefault(p, intent) == intent, p


def test_heldout_speakers_never_in_train():
    plan = plan_speakers(0, {"train": 80, "val": 12, "test": 12}, {"val": 10, "test": 10}, 5, (130, 220), (25, 75),
                         (30, 70), ("en-us", "en"), espeak.variants())
    by_split = {s: {p["variant"] for p in plan if p["split"] == s} for s in ("train", "val", "test")}
    assert len(by_split["test"]) == 10 and len(by_split["val"]) == 10
    assert not by_split["train"] & by_split["test"] and not by_split["train"] & by_split["val"]
    assert not by_split["val"] & by_split["test"]
    # a speaker's content depends only on (seed, split, index): more training speakers leave test alone
    small = plan_speakers(0, {"train": 5, "val": 12, "test": 12}, {"val": 10, "test": 10}, 5, (130, 220), (25, 75),
                          (30, 70), ("en-us", "en"), espeak.variants())
    assert [p for p in plan if p["split"] == "test"] == [p for p in small if p["split"] == "test"]


def test_spoken_commands_corpus_deterministic_cached_and_heldout(tmp_path):
    a = spoken_commands(cache_dir=str(tmp_path), **TINY)
    assert a.info["cached"] is False and a.info["sizes"] == {"train": 12, "val": 4, "test": 4}
    b = spoken_commands(cache_dir=str(tmp_path), **TINY)
    assert b.info["cached"] is True
    c = spoken_commands(cache_dir=None, **TINY)  # rebuilt from scratch: the same numbers
    for split in ("train", "val", "test"):
        fa, fb, fc = (getattr(x, split).split.features for x in (a, b, c))
        assert all(torch.equal(x.half(), y) and torch.equal(x, z) for x, y, z in zip(fa, fb, fc))
    assert set(a.train.split.speakers).isdisjoint(a.test.split.speakers)
    assert set(a.train.split.speakers).isdisjoint(a.val.split.speakers)
    # items carry features, transcript and the three slots
    x, chars, slots = a.test[0]
    assert x.shape[0] == 40 and slots.shape == (len(SLOT_NAMES),)
    assert "".join(ALPHABET[i - 1] for i in chars) == a.test.split.texts[0]
    assert a.model_kwargs == {"in_shape": (1, 40, a.collate_fn.frames), "num_classes": 24}
    xb, yb = a.collate_fn([a.train[i] for i in range(3)])
    assert xb.shape == (3, 1, 40, a.collate_fn.frames) and yb.shape == (3, 3)
    d = spoken_commands(cache_dir=str(tmp_path), task="ctc", **TINY)
    assert d.info["cached"] is True and d.task.metric == "cer" and not d.task.higher_is_better
    xb, lens, y, ylens = d.collate_fn([d.train[i] for i in range(3)])
    assert xb.shape[:2] == (3, 40) and int(lens.max()) == xb.shape[2] and int(ylens.sum()) == len(y)


def test_collates_pad_and_crop():
    items = [(torch.ones(4, 5), torch.tensor([1, 2]), torch.tensor([0])),
             (torch.ones(4, 9), torch.tensor([3]), torch.tensor([1]))]
    x, lens, y, ylens = CTCCollate()(items)
    assert x.shape == (2, 4, 9) and lens.tolist() == [5, 9] and x[0, :, 5:].abs().sum() == 0
    assert y.tolist() == [1, 2, 3] and ylens.tolist() == [2, 1]
    x, s = SLUCollate(8)(items)
    assert x.shape == (2, 1, 4, 8) and x[0, 0, :, 5:].abs().sum() == 0 and x[1].sum() == 32 and s.tolist() == [[0], [1]]


def _write_wav(path, seconds=0.4, sr=16000, freq=440.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    samples = (0.3 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sr)
        f.writeframes(samples.tobytes())


def _fake_fsc(root, corrupt=False):
    """A tiny release: data/{train,valid,test}_data.csv + wavs/speakers/<spk>/<id>.wav."""
    rows = {"train": [("spk1", "Turn on the lights.", "activate", "lights", "none"),
                      ("spk1", "Bring me my socks", "bring", "socks", "none"),
                      ("spk2", "Heat up in the kitchen", "increase", "heat", "kitchen")],
            "valid": [("spk3", "Lights off", "deactivate", "lights", "none")],
            "test": [("spk4", "Turn the heat down in the bedroom", "decrease", "heat", "bedroom"),
                     ("spk4", "Lights on", "activate", "lights", "none")]}
    (root / "data").mkdir(parents=True)
    n = 0
    for split, items in rows.items():
        with open(root / "data" / f"{split}_data.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["", "path", "speakerId", "transcription", "action", "object", "location"])
            for i, (spk, text, a, o, loc) in enumerate(items):
                rel = f"wavs/speakers/{spk}/utt{n}.wav"
                _write_wav(root / rel, freq=200 + 50 * n)
                w.writerow([i, rel, spk, text, a, o, loc])
                n += 1
    if corrupt:
        (root / "wavs/speakers/spk1/utt1.wav").write_bytes(b"RIFF not really a wav")


def test_fsc_loader_on_fake_release(tmp_path):
    _fake_fsc(tmp_path / "fluent_speech_commands_dataset")  # the release's own folder name
    b = fluent_speech_commands(root=str(tmp_path / "fluent_speech_commands_dataset"), cache_dir=str(tmp_path / "cache"))
    assert b.info["sizes"] == {"train": 3, "val": 1, "test": 2}
    assert b.info["slots"]["action"] == ["activate", "bring", "deactivate", "decrease", "increase"]
    x, _, slots = b.test[0]
    assert x.shape[0] == 40 and x.shape[1] == 21  # 0.4 s at 20 ms hops = 20, +1 centred frame
    assert [b.info["slots"][s][int(v)] for s, v in zip(SLOT_NAMES, slots)] == ["decrease", "heat", "bedroom"]
    assert b.task.num_classes == sum(len(v) for v in b.info["slots"].values())
    ctc = fluent_speech_commands(root=str(tmp_path), task="ctc", cache_dir=None)  # the parent folder works too
    assert ctc.train.split.texts[0] == "Turn on the lights." and ctc.task.metric == "cer"
    assert normalize_text(ctc.train.split.texts[0]) == "turn on the lights"


def test_fsc_bad_files_skip_or_fail(tmp_path):
    _fake_fsc(tmp_path / "fsc", corrupt=True)
    b = fluent_speech_commands(root=str(tmp_path / "fsc"), cache_dir=None, on_bad_file="skip")
    assert b.info["sizes"]["train"] == 2 and b.info["skipped_files"]["train"]["unreadable"] == 1
    with pytest.raises(QexpError, match="utt1.wav.*on_bad_file=skip"):
        fluent_speech_commands(root=str(tmp_path / "fsc"), cache_dir=None, on_bad_file="fail")


@pytest.mark.parametrize("builder,hint", [(fluent_speech_commands, "train_data.csv"),
                                          (speech_commands, "SpeechCommands"), (librispeech, "LibriSpeech")])
def test_missing_root_is_one_line(tmp_path, builder, hint):
    for root in (None, str(tmp_path / "nowhere")):
        with pytest.raises(QexpError) as err:
            builder(root=root, cache_dir=None)
        assert hint in str(err.value) and "\n" not in str(err.value) and "dataset.root" in str(err.value)


def test_speech_commands_through_torchaudio(tmp_path):
    base = tmp_path / "SpeechCommands" / "speech_commands_v0.02"
    for word, spk in (("yes", "aa11"), ("no", "bb22"), ("yes", "cc33"), ("no", "dd44")):
        _write_wav(base / word / f"{spk}_nohash_0.wav", seconds=0.7)
    (base / "validation_list.txt").write_text("yes/cc33_nohash_0.wav\n")
    (base / "testing_list.txt").write_text("no/dd44_nohash_0.wav\n")
    b = speech_commands(root=str(tmp_path), cache_dir=None)
    assert b.info["sizes"] == {"train": 2, "val": 1, "test": 1} and b.info["slots"] == {"word": ["no", "yes"]}
    assert b.train[0][0].shape == (40, 51)  # padded to 1 s


def test_read_audio_wav(tmp_path):
    _write_wav(tmp_path / "a.wav", seconds=0.25, sr=8000)
    x, sr = read_audio(tmp_path / "a.wav")
    assert sr == 8000 and x.dtype == np.float32 and len(x) == 2000 and 0.29 < np.abs(x).max() <= 0.3
