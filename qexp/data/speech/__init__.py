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

from qexp.data.speech.corpora import fluent_speech_commands, librispeech, speech_commands
from qexp.data.speech.features import (ALPHABET, FeatureConfig, FeatureExtractor, MissingDecoder, encode_text,
                                       normalize_text, read_audio, spec_augment)
from qexp.data.speech.grammar import ACTIONS, INTENTS, LOCATIONS, OBJECTS, SLOT_NAMES, phrasings
from qexp.data.speech.splits import CTCCollate, SLUCollate, SpeechDataset, SpeechSplit, cached_splits, make_bundle
from qexp.data.speech.synthesized import plan_speakers, spoken_commands

__all__ = ["ACTIONS", "ALPHABET", "CTCCollate", "FeatureConfig", "FeatureExtractor", "INTENTS", "LOCATIONS",
           "MissingDecoder", "OBJECTS", "SLOT_NAMES", "SLUCollate", "SpeechDataset", "SpeechSplit", "cached_splits",
           "encode_text", "fluent_speech_commands", "librispeech", "make_bundle", "normalize_text", "phrasings",
           "plan_speakers", "read_audio", "spec_augment", "speech_commands", "spoken_commands"]
