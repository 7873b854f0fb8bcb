"""The duplex format of one dataset or checkpoint: its block layout and silence pattern.

:class:`FormatSpec` is the frozen value every stage passes around, with its JSON
form (manifests and a checkpoint's ``duplex.json`` hold ``to_json()``) and a
field-by-field comparison. :class:`FormatConfig` is its typed, editable config
(``recipe.format``, ``eval.format``), which may read the silence pattern from a
file measured on the speech tokenizer. :class:`~bayling_duplex.format.layout.BlockLayout`
is the time part of both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bayling_duplex.format.layout import BlockLayout


@dataclass(frozen=True)
class FormatSpec:
    """The layout plus the silence code pattern: all the interleaver needs besides the vocab."""

    layout: BlockLayout = field(default_factory=BlockLayout)
    silence_codes: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        if not self.silence_codes:
            raise ValueError("silence_codes must hold at least one code")

    def to_json(self) -> dict:
        """The flat JSON form written into manifests and ``duplex.json``."""
        return {
            "frames_per_block": self.layout.frames_per_block,
            "slots_per_block": self.layout.slots_per_block,
            "frame_rate_hz": self.layout.frame_rate_hz,
            "silence_codes": list(self.silence_codes),
        }

    @classmethod
    def from_json(cls, obj: dict) -> FormatSpec:
        """Inverse of :meth:`to_json`; a missing or extra key is an error naming it."""
        keys = {"frames_per_block", "slots_per_block", "frame_rate_hz", "silence_codes"}
        missing, extra = keys - set(obj), set(obj) - keys
        if missing or extra:
            raise ValueError(
                f"a format needs exactly the keys {sorted(keys)}: "
                f"missing {sorted(missing)}, unknown {sorted(extra)}"
            )
        layout = BlockLayout(
            int(obj["frames_per_block"]), int(obj["slots_per_block"]), float(obj["frame_rate_hz"])
        )
        return cls(layout, tuple(int(c) for c in obj["silence_codes"]))

    def differences(self, other: FormatSpec) -> list[str]:
        """Every field in which ``other`` differs, as ``"name: mine != other"`` (empty: same)."""
        mine, theirs = self.to_json(), other.to_json()
        return [f"{k}: {mine[k]} != {theirs[k]}" for k in mine if mine[k] != theirs[k]]

    def silence(self, start_frame: int, end_frame: int) -> np.ndarray:
        """Silence codes for frames ``[start, end)``: frame f gets ``pattern[f % len(pattern)]``."""
        pat = np.asarray(self.silence_codes, dtype=np.int64)
        return pat[np.arange(start_frame, end_frame) % len(pat)]


@dataclass
class FormatConfig:
    """The ``B:T:B`` layout and the silence code pattern of the speech codec."""

    frames_per_block: int = 10
    slots_per_block: int = 5
    frame_rate_hz: float = 12.5
    silence_codes: list[int] = field(default_factory=lambda: [0])
    # a JSON file {"silence_codes": [...]} measured from the speech tokenizer
    # (written by the audio tokenizing command); when set it replaces silence_codes
    silence_codes_file: str | None = None
    # the codes are measured from the codec the build fits (recipe.codec.kind=units) and
    # recorded in the data's manifest: silence_codes stays empty in the recipe
    silence_from_codec: bool = False

    def __post_init__(self) -> None:
        BlockLayout(self.frames_per_block, self.slots_per_block, self.frame_rate_hz)  # validates
        if not self.silence_codes and not self.silence_codes_file and not self.silence_from_codec:
            raise ValueError(
                "recipe.format.silence_codes is empty and neither silence_codes_file nor "
                "silence_from_codec is set"
            )

    def resolve(self) -> None:
        """Read ``silence_codes_file`` into ``silence_codes`` (before a build)."""
        if self.silence_codes_file:
            path = Path(self.silence_codes_file)
            if not path.is_file():
                raise FileNotFoundError(
                    f"recipe.format.silence_codes_file {path} does not exist; "
                    "it is written when audio is tokenized (docs/data.md)"
                )
            self.silence_codes = [int(c) for c in json.loads(path.read_text())["silence_codes"]]

    def spec_layout(self) -> BlockLayout:
        return BlockLayout(self.frames_per_block, self.slots_per_block, self.frame_rate_hz)

    def spec(self) -> FormatSpec:
        return FormatSpec(self.spec_layout(), tuple(self.silence_codes))

    @classmethod
    def from_spec(cls, spec: FormatSpec) -> FormatConfig:
        return cls(**{k: v for k, v in spec.to_json().items()})
