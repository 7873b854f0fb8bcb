"""Data recipes: typed configs of ``data_recipes/*.yaml`` and the build fingerprint.

A recipe says where dialogues come from (per split), the sequence format, the
speech codec, the synthesis mix and how the build shards. Its fingerprint
(recipe + vocabulary + builder version + codec) is written into the manifest,
and training refuses data built for another configuration.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from bayling_duplex.data.mixer import WaveformConfig
from bayling_duplex.data.speech_demo import SpeechConfig
from bayling_duplex.data.synthesis import SynthesisConfig
from bayling_duplex.format.layout import BlockLayout
from bayling_duplex.format.records import RecordLimits
from bayling_duplex.format.spec import FormatConfig
from bayling_duplex.format.vocab import DuplexVocab

# Bump when the builder's output for the same inputs changes.
BUILDER_VERSION = 1
SOURCE_KINDS = ("demo", "scripts_jsonl", "timelines_jsonl", "hf_scripts", "hf_timelines")
CODEC_KINDS = ("toy", "units", "glm4voice")


@dataclass
class SourceConfig:
    """Where one split's dialogues come from.

    * ``demo``: the generated demo corpus (``count`` dialogues of ``split``).
    * ``scripts_jsonl`` / ``timelines_jsonl``: a JSON-lines file of records.
    * ``hf_scripts`` / ``hf_timelines``: a Hugging Face dataset from local files
      (``path`` is a ``save_to_disk`` folder, or json/parquet files with ``hf_format``).
    """

    kind: str = "demo"
    path: str | None = None
    split: str = "train"  # demo split, or the Hugging Face split name
    count: int | None = 1000  # demo: how many; others: at most this many (None: all)
    hf_format: str = "disk"  # disk (save_to_disk folder), json or parquet

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"recipe source kind must be one of {SOURCE_KINDS}, got {self.kind!r}")
        if self.kind != "demo" and not self.path:
            raise ValueError(f"recipe source of kind {self.kind!r} needs a path")
        if self.kind == "demo" and not self.count:
            raise ValueError("a demo source needs a positive count")
        if self.hf_format not in ("disk", "json", "parquet"):
            raise ValueError(
                f"recipe source hf_format must be disk, json or parquet, got {self.hf_format!r}"
            )


@dataclass
class CodecConfig:
    """The speech codec the codes come from.

    * ``toy``: the text-driven stand-in (fast smoke recipe; no audio at all);
    * ``units``: the learned 12.5 Hz unit codec, fitted by the build on ``fit_minutes``
      of the recipe's own training audio as mixed and saved beside the data
      (``<data>/codec``), with the real-speech demo (``recipe.speech``);
    * ``glm4voice``: GLM-4-Voice's 12.5 Hz tokenizer (the paper's codes).
    """

    kind: str = "toy"
    num_codes: int = 256  # toy / units: codes it emits; must fit the tokenizer's audio range
    fit_minutes: float = 20.0  # units: minutes of mixed training audio the codec is fitted on
    fit_iters: int = 25  # units: k-means iterations
    fit_seed: int = 0  # units: k-means seed

    def __post_init__(self) -> None:
        if self.kind not in CODEC_KINDS:
            raise ValueError(f"recipe.codec.kind must be one of {CODEC_KINDS}, got {self.kind!r}")
        if self.kind == "units" and not (self.fit_minutes > 0 and self.fit_iters > 0):
            raise ValueError("recipe.codec.fit_minutes and recipe.codec.fit_iters must be positive")

    @property
    def name(self) -> str:
        """The codec's identity in the data's fingerprint (a fitted codec's own fingerprint
        is recorded in the manifest's ``codec`` entry and checked against its folder)."""
        if self.kind == "toy":
            return f"toy-v2-{self.num_codes}"
        if self.kind == "units":
            return f"units-v1-{self.num_codes}"
        return "glm4voice-12.5hz"


@dataclass
class RecipeConfig:
    name: str = "demo"
    train: SourceConfig = field(default_factory=SourceConfig)
    heldout: SourceConfig | None = None
    format: FormatConfig = field(default_factory=FormatConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    # codes (compose the tokenized clips) or waveform (mix the audio, then tokenize): mixer.py
    waveform: WaveformConfig = field(default_factory=WaveformConfig)
    # who speaks the demo dialogues at codec.kind=units (data/speech_demo.py)
    speech: SpeechConfig = field(default_factory=SpeechConfig)
    # backchannel clips for real data: JSON lines of {"text", "codes"}; demo uses the toy codec's
    backchannels_path: str | None = None
    shard_size: int = 1000  # dialogues (source records) per shard
    max_reject_share: float = 0.01  # the build fails when more than this share is rejected
    # sizes a source record may have (sequence length, frames, text, counts, id, line bytes)
    limits: RecordLimits = field(default_factory=RecordLimits)

    def __post_init__(self) -> None:
        if self.codec.kind == "units":
            if bad := [s.kind for s in self.splits().values() if s.kind != "demo"]:
                raise ValueError(
                    f"recipe.codec.kind=units speaks the demo dialogues: its sources must be "
                    f"of kind demo, not {bad}"
                )
            if self.waveform.level != "waveform":
                raise ValueError(
                    "recipe.codec.kind=units mixes audio: set recipe.waveform.level=waveform"
                )
        if self.shard_size <= 0:
            raise ValueError("recipe.shard_size must be positive")
        if not 0 <= self.max_reject_share <= 1:
            raise ValueError("recipe.max_reject_share must lie in [0, 1]")

    def splits(self) -> dict[str, SourceConfig]:
        out = {"train": self.train}
        if self.heldout is not None:
            out["heldout"] = self.heldout
        return out

    def record_limits(self) -> RecordLimits:
        """``limits`` with ``max_frames`` resolved for this recipe's block layout."""
        f = self.format
        return self.limits.for_layout(
            BlockLayout(f.frames_per_block, f.slots_per_block, f.frame_rate_hz)
        )


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def vocab_fingerprint(vocab: DuplexVocab, tokenizer) -> str:
    """The duplex ids plus a digest of the whole tokenizer (text ids matter too)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    tok_state = (
        backend.to_str()
        if backend is not None
        else json.dumps(sorted(tokenizer.get_vocab().items()))
    )
    return _digest(
        {"ids": vocab.__dict__, "tokenizer": hashlib.sha256(tok_state.encode()).hexdigest()}
    )


def recipe_digest(recipe_plain: dict) -> str:
    """The ``recipe`` part of a manifest's fingerprint: every key that changes what is built."""
    return _digest({k: v for k, v in recipe_plain.items() if k not in ("max_reject_share",)})


def fingerprint(recipe_plain: dict, vocab_fp: str, codec_name: str) -> dict:
    """Manifest fingerprint: each part and their combination."""
    parts = {
        "recipe": recipe_digest(recipe_plain),
        "vocab": vocab_fp,
        "builder": BUILDER_VERSION,
        "codec": codec_name,
    }
    return {**parts, "combined": _digest(parts)}


def differences(built: dict, expected: dict, keys=None, prefix: str = "") -> list[str]:
    """Every key in which ``built`` differs from ``expected``, as ``"key: built != expected"``."""
    keys = [k for k in (keys or expected) if k != "combined"]
    return [
        f"{prefix}{k}: {built.get(k)} != {expected.get(k)}"
        for k in keys
        if built.get(k) != expected.get(k)
    ]


def mismatch_message(subject: str, parts: list[str], fix: str) -> str:
    """The one wording of a fingerprint refusal (built data, preference pairs): one line
    naming every part that differs, each with both values, the built one first."""
    return (
        f"{subject} was made for another configuration (built != expected): "
        f"{'; '.join(parts)}; {fix}"
    )
