"""The duplex vocabulary: the single source of truth for every token the format uses.

GLM-4-Voice's tokenizer holds text, chat specials and the 12.5 Hz speech codes
as ``<|audio_0|>``, ``<|audio_1|>``, … with contiguous ids. The duplex format
adds three control tokens and reuses one chat special:

* ``[SILENCE]`` (listen, new): the assistant is silent in this text slot.
* ``<|assistant|>`` (speak, reused): the assistant starts a response in this slot.
* ``[PAD]`` (new): the response text is finished, its speech is still playing.
* ``[EPAD]`` (stop, new): the response's speech has ended (naturally or cut).

Token strings are configuration (defaults as released); ids are always looked up
from the tokenizer and never hard-coded. The number of audio tokens is read from
the tokenizer too: public GLM-4-Voice sources disagree on 16384 vs 16383, and in
the released duplex tokenizer ``[SILENCE]`` sits right after the last audio id.

The embedding rows of new tokens either already exist (GLM-4-Voice pads its
matrix to 168960 rows, so the released ids 168736–168738 fall inside) or must be
grown; either way they are initialised here, since padded rows hold noise.
"""

from __future__ import annotations

from dataclasses import dataclass

# Chat specials of the GLM-4 / GLM-4-Voice tokenizer, in id order (the first one,
# <|endoftext|>, directly follows the text BPE vocabulary). The tiny tokenizer
# reproduces this layout; the real one is read as it is.
GLM4_CHAT_SPECIALS: tuple[str, ...] = (
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
    "<|begin_of_audio|>",
    "<|end_of_audio|>",
)

NEW_ROW_INIT_RULES = ("mean_text", "normal")


class VocabError(ValueError):
    """A tokenizer or model that breaks the duplex vocabulary's invariants."""


@dataclass
class VocabConfig:
    """Token strings of the duplex format and how new embedding rows are initialised."""

    # listen: the assistant stays silent in this slot (added)
    silence_token: str = "[SILENCE]"
    # speak: the assistant starts a response here (reused GLM-4 chat special)
    speak_token: str = "<|assistant|>"
    # response text finished, speech still playing (added)
    pad_token: str = "[PAD]"
    # stop: the response's speech ended, naturally or cut by an interruption (added)
    epad_token: str = "[EPAD]"
    # speech code c is the token audio_token_format.format(c)
    audio_token_format: str = "<|audio_{}|>"
    # rule for the rows of newly added tokens: mean_text (mean of the text rows) or normal
    new_row_init: str = "mean_text"
    # std of the normal rule (also the noise added to mean_text when > 0 and noise is asked)
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.new_row_init not in NEW_ROW_INIT_RULES:
            raise ValueError(
                f"vocab.new_row_init must be one of {NEW_ROW_INIT_RULES}, got {self.new_row_init!r}"
            )
        if "{}" not in self.audio_token_format:
            raise ValueError("vocab.audio_token_format must contain '{}' for the code")
        tokens = (*self.added_tokens, self.speak_token)
        if len(set(tokens)) != len(tokens):
            raise ValueError(f"vocab control tokens must be distinct, got {tokens}")

    @property
    def added_tokens(self) -> tuple[str, str, str]:
        """The tokens the duplex design adds, in the released id order."""
        return (self.silence_token, self.pad_token, self.epad_token)

    def audio_token(self, code: int) -> str:
        return self.audio_token_format.format(code)


@dataclass(frozen=True)
class DuplexVocab:
    """Resolved ids of the duplex tokens for one tokenizer. Build with :func:`resolve_vocab`."""

    silence_id: int
    speak_id: int
    pad_id: int
    epad_id: int
    audio_start_id: int
    num_audio: int
    vocab_size: int  # len(tokenizer): ids are < this
    eos_id: int | None = None

    @property
    def audio_end_id(self) -> int:
        """One past the last audio id."""
        return self.audio_start_id + self.num_audio

    @property
    def control_ids(self) -> tuple[int, int, int, int]:
        return (self.silence_id, self.speak_id, self.pad_id, self.epad_id)

    def audio_id(self, code: int) -> int:
        return self.audio_start_id + code

    def is_audio(self, token_id: int) -> bool:
        return self.audio_start_id <= token_id < self.audio_end_id


def _token_id(tokenizer, token: str) -> int | None:
    """The id of ``token`` if the tokenizer holds it as one token, else None."""
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None:
        return None
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and tid == unk and token != tokenizer.unk_token:
        return None
    return int(tid)


def count_audio_tokens(tokenizer, cfg: VocabConfig) -> tuple[int, int]:
    """Return ``(audio_start_id, num_audio)``: the contiguous run starting at code 0.

    Raises :class:`VocabError` if ``<|audio_0|>`` is missing or a code's id breaks
    contiguity (an id gap would make ``id - start`` decode to the wrong code).
    """
    vocab = tokenizer.get_vocab()
    start = vocab.get(cfg.audio_token(0))
    if start is None:
        raise VocabError(f"tokenizer has no audio tokens: {cfg.audio_token(0)!r} is missing")
    n = 0
    while True:
        tid = vocab.get(cfg.audio_token(n))
        if tid is None:
            break
        if tid != start + n:
            raise VocabError(
                f"audio tokens are not contiguous: {cfg.audio_token(n)!r} has id {tid}, "
                f"expected {start + n}"
            )
        n += 1
    if vocab.get(cfg.audio_token(n + 1)) is not None:
        raise VocabError(f"audio tokens have a hole: {cfg.audio_token(n)!r} is missing")
    return start, n


def resolve_vocab(tokenizer, cfg: VocabConfig) -> DuplexVocab:
    """Look up every duplex id in ``tokenizer`` and check the invariants.

    Raises :class:`VocabError` naming each missing control token.
    """
    missing = [t for t in (*cfg.added_tokens, cfg.speak_token) if _token_id(tokenizer, t) is None]
    if missing:
        raise VocabError(
            f"tokenizer lacks the duplex control tokens {missing}; extend it first "
            "(bayling_duplex.vocab.extend_tokenizer) or load a checkpoint trained by this project"
        )
    audio_start, num_audio = count_audio_tokens(tokenizer, cfg)
    eos = _token_id(tokenizer, "<|endoftext|>")
    vocab = DuplexVocab(
        silence_id=_token_id(tokenizer, cfg.silence_token),
        speak_id=_token_id(tokenizer, cfg.speak_token),
        pad_id=_token_id(tokenizer, cfg.pad_token),
        epad_id=_token_id(tokenizer, cfg.epad_token),
        audio_start_id=audio_start,
        num_audio=num_audio,
        vocab_size=len(tokenizer),
        eos_id=eos,
    )
    check_vocab(vocab)
    return vocab


def check_vocab(vocab: DuplexVocab, num_embeddings: int | None = None) -> None:
    """Invariants: distinct control ids outside the audio range, ids inside the matrix."""
    ids = vocab.control_ids
    if len(set(ids)) != len(ids):
        raise VocabError(f"duplex control tokens share ids: {ids}")
    for name, tid in zip(("silence", "speak", "pad", "epad"), ids, strict=True):
        if vocab.is_audio(tid):
            raise VocabError(f"the {name} token id {tid} lies inside the audio range")
    if vocab.num_audio <= 0:
        raise VocabError("tokenizer has no audio tokens")
    if num_embeddings is not None:
        top = max(*ids, vocab.audio_end_id - 1)
        if top >= num_embeddings:
            raise VocabError(
                f"token id {top} has no embedding row: the model has {num_embeddings} rows"
            )


def extend_tokenizer(tokenizer, cfg: VocabConfig) -> list[str]:
    """Add the missing duplex tokens to ``tokenizer`` as special tokens; return those added.

    Tokens are added in the released order (``[SILENCE] [PAD] [EPAD]``), so on
    GLM-4-Voice's tokenizer they get ids right after the last audio token.
    """
    if _token_id(tokenizer, cfg.speak_token) is None:
        raise VocabError(
            f"tokenizer lacks the speak token {cfg.speak_token!r}, which is reused, not added"
        )
    missing = [t for t in cfg.added_tokens if _token_id(tokenizer, t) is None]
    if missing:
        from tokenizers import AddedToken

        tokenizer.add_tokens(
            [AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True
        )
    return missing


def text_row_count(tokenizer) -> int:
    """Rows ``[0, n)`` that belong to the text BPE vocabulary (ids below every added token)."""
    added = tokenizer.get_added_vocab()
    return min(added.values()) if added else len(tokenizer)
