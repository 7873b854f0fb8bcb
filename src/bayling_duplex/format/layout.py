"""Time in the duplex format: frames, blocks and text-channel slots.

A frame is one speech code (80 ms at 12.5 Hz). A block is ``frames_per_block``
frames (``B``); each block has ``slots_per_block`` text-channel slots (``T``).
The sequence is ``U_k X_k A_k`` per block ``k``: ``B`` user audio tokens, ``T``
text-channel tokens and ``B`` assistant audio tokens, where ``X_k`` and ``A_k``
describe the *next* block of time, frames ``[(k+1)B, (k+2)B)``.

See ``docs/format.md`` sections 2 and 3.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BlockLayout:
    """The ``B:T:B`` ratio and the frame rate. ``10:5:10`` at 12.5 Hz by default."""

    frames_per_block: int = 10
    slots_per_block: int = 5
    frame_rate_hz: float = 12.5

    def __post_init__(self) -> None:
        if self.frames_per_block <= 0:
            raise ValueError(
                f"layout.frames_per_block must be positive, got {self.frames_per_block}"
            )
        if self.slots_per_block <= 0:
            raise ValueError(f"layout.slots_per_block must be positive, got {self.slots_per_block}")
        if self.slots_per_block > self.frames_per_block:
            raise ValueError(
                "layout.slots_per_block must not exceed layout.frames_per_block "
                f"({self.slots_per_block} > {self.frames_per_block}): a slot spans at least one frame"
            )
        if self.frame_rate_hz <= 0:
            raise ValueError(f"layout.frame_rate_hz must be positive, got {self.frame_rate_hz}")

    @property
    def ratio(self) -> str:
        """The ratio as written in the released runtime, e.g. ``"10:5:10"``."""
        return f"{self.frames_per_block}:{self.slots_per_block}:{self.frames_per_block}"

    @property
    def block_len(self) -> int:
        """Tokens per block in the sequence: ``2B + T``."""
        return 2 * self.frames_per_block + self.slots_per_block

    @property
    def frame_s(self) -> float:
        return 1.0 / self.frame_rate_hz

    @property
    def block_s(self) -> float:
        return self.frames_per_block / self.frame_rate_hz

    def slot_of_frame(self, frame: int) -> tuple[int, int]:
        """The (output block ``k``, slot ``j``) whose interval contains ``frame``.

        Frames of the first block (``frame < B``) have no slot: the assistant
        cannot act before it has heard one block.
        """
        B, T = self.frames_per_block, self.slots_per_block
        if frame < B:
            raise ValueError(f"frame {frame} lies in the first block, which has no text slot")
        return frame // B - 1, ((frame % B) * T) // B

    def slot_index_of_frame(self, frame: int) -> int:
        """Flat text-channel index ``k·T + j`` of :meth:`slot_of_frame`."""
        k, j = self.slot_of_frame(frame)
        return k * self.slots_per_block + j

    def slot_start_frame(self, slot_index: int) -> int:
        """First frame covered by flat slot ``slot_index`` (the smallest ``f`` mapping to it)."""
        B, T = self.frames_per_block, self.slots_per_block
        k, j = divmod(slot_index, T)
        # smallest r with (r*T)//B == j  ->  r = ceil(j*B/T)
        return (k + 1) * B + (j * B + T - 1) // T

    def slot_start_s(self, slot_index: int) -> float:
        """Start time in seconds of flat slot ``slot_index``: ``((k+1)B + j·B/T)·80 ms``.

        Uses the exact ``j·B/T`` (as the released runtime does), not the first
        whole frame, so it is meaningful when ``T`` does not divide ``B``.
        """
        B, T = self.frames_per_block, self.slots_per_block
        k, j = divmod(slot_index, T)
        return ((k + 1) * B + j * B / T) / self.frame_rate_hz

    def seq_len(self, num_blocks: int) -> int:
        """Sequence length for ``num_blocks`` blocks: ``K·(2B+T)``."""
        return num_blocks * self.block_len

    @classmethod
    def parse(cls, ratio: str, frame_rate_hz: float = 12.5) -> BlockLayout:
        """Parse ``"B:T:B"`` (user and assistant audio per block must be equal)."""
        parts = ratio.split(":")
        if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"ratio must look like '10:5:10', got {ratio!r}")
        b_user, t, b_asst = (int(p) for p in parts)
        if b_user != b_asst:
            raise ValueError(f"user and assistant audio per block must be equal, got {ratio!r}")
        return cls(frames_per_block=b_user, slots_per_block=t, frame_rate_hz=frame_rate_hz)
