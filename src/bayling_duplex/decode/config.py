"""How the decoder picks tokens and when it stops: a torch-free config."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DecodeConfig:
    """How tokens are picked and when decoding stops."""

    # 0 = greedy (argmax; the evaluation default). The released runtime samples at 0.8.
    temperature: float = 0.0
    # nucleus sampling mass when temperature > 0 (1.0 = off). Released default 0.8.
    top_p: float = 1.0
    # added to the [SILENCE] logit while the assistant is not inside a response.
    # Negative makes it speak sooner: the released `silence_penalty` p is silence_bias = -p.
    silence_bias: float = 0.0
    # stop after this many [EPAD]s (the block is finished first); 0 = never (decode
    # all the user audio). The released runtime's max_epad_count defaults to 1.
    max_epad: int = 0
    # seed of the torch.Generator each decode call draws samples from
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"decode.temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"decode.top_p must be in (0, 1], got {self.top_p}")
        if self.max_epad < 0:
            raise ValueError(f"decode.max_epad must be >= 0 (0 = never stop), got {self.max_epad}")
