"""The demo corpus: procedurally generated spoken question/answer dialogues.

Questions come from four families (arithmetic, small fact tables, calendar
facts and time questions); every (question, answer) pair lands in exactly one
split by a hash of the question, so the ``train`` and ``heldout`` splits share
no question. Speech is the :class:`~bayling_duplex.audio.codec.ToyCodec`
stand-in. Everything is deterministic in ``(seed, split, index)``.
"""

from __future__ import annotations

import hashlib
import random
import re
from functools import cache, lru_cache

from bayling_duplex.audio.codec import ToyCodec
from bayling_duplex.format.records import Script, ScriptTurn

SPLITS = ("train", "heldout")
HELDOUT_EVERY = 8  # one question in eight is held out

CAPITALS = {
    "France": "Paris",
    "Japan": "Tokyo",
    "China": "Beijing",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Germany": "Berlin",
    "Egypt": "Cairo",
    "Canada": "Ottawa",
    "Kenya": "Nairobi",
    "Peru": "Lima",
    "Greece": "Athens",
    "Norway": "Oslo",
    "Cuba": "Havana",
    "Chile": "Santiago",
    "India": "New Delhi",
    "Russia": "Moscow",
    "Austria": "Vienna",
    "Poland": "Warsaw",
    "Portugal": "Lisbon",
    "Ireland": "Dublin",
}
COLORS = {
    "the sky": "blue",
    "grass": "green",
    "snow": "white",
    "a banana": "yellow",
    "coal": "black",
    "a tomato": "red",
    "an orange": "orange",
    "milk": "white",
    "the sun": "yellow",
    "a lemon": "yellow",
}
LEGS = {
    "a spider": 8,
    "a dog": 4,
    "a bird": 2,
    "an ant": 6,
    "a cat": 4,
    "a horse": 4,
    "a duck": 2,
    "a crab": 10,
    "a snake": 0,
    "a bee": 6,
}
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
CITIES = [
    "London",
    "Paris",
    "Tokyo",
    "Beijing",
    "New York",
    "Sydney",
    "Cairo",
    "Moscow",
    "Lima",
    "Rome",
    "Berlin",
    "Madrid",
    "Oslo",
    "Dublin",
    "Vienna",
    "Athens",
]
BACKCHANNELS = ("uh-huh.", "mm-hmm.", "I see.", "right.", "okay.")


def _stable(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def _all_pairs() -> list[tuple[str, str]]:
    pairs = []
    for a in range(13):
        for b in range(13):
            pairs.append((f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."))
            pairs.append((f"What is {a} times {b}?", f"{a} times {b} is {a * b}."))
            if a >= b:
                pairs.append((f"What is {a} minus {b}?", f"{a} minus {b} is {a - b}."))
    for country, city in CAPITALS.items():
        pairs.append((f"What is the capital of {country}?", f"The capital of {country} is {city}."))
    for thing, color in COLORS.items():
        pairs.append((f"What color is {thing}?", f"{thing[0].upper()}{thing[1:]} is {color}."))
    for animal, n in LEGS.items():
        pairs.append(
            (f"How many legs does {animal} have?", f"{animal[0].upper()}{animal[1:]} has {n} legs.")
        )
    for names in (DAYS, MONTHS):
        for i, name in enumerate(names):
            nxt = names[(i + 1) % len(names)]
            pairs.append((f"What comes after {name}?", f"{nxt} comes after {name}."))
    for city in CITIES:
        hour = 1 + _stable(city) % 12
        half = "AM" if _stable(city + "#") % 2 else "PM"
        pairs.append((f"What time is it in {city}?", f"It is {hour} {half} in {city}."))
    return pairs


@cache
def qa_pairs(split: str) -> tuple[tuple[str, str], ...]:
    """The (question, answer) pairs of ``split``; the splits are disjoint in questions."""
    if split not in SPLITS:
        raise ValueError(f"demo split must be one of {SPLITS}, got {split!r}")
    held = split == "heldout"
    return tuple(p for p in _all_pairs() if (_stable(p[0]) % HELDOUT_EVERY == 0) == held)


@lru_cache(maxsize=4096)  # ~700 distinct pairs: the codec need not run per dialogue
def demo_turn(question: str, answer: str, codec: ToyCodec) -> ScriptTurn:
    user_codes, word_ends = codec.encode(question)
    answer_codes, _ = codec.encode(answer)
    return ScriptTurn(user_codes, answer, answer_codes, question, word_ends)


def demo_script(
    split: str, index: int, seed: int, codec: ToyCodec, min_turns: int = 2, max_turns: int = 3
) -> Script:
    """Dialogue ``index`` of ``split``: ``min_turns``–``max_turns`` questions from that split."""
    picks = demo_picks(split, index, seed, min_turns, max_turns)
    return Script(demo_id(split, index), tuple(demo_turn(q, a, codec) for q, a in picks))


def demo_id(split: str, index: int) -> str:
    return f"demo-{split}-{index:07d}"


def demo_picks(
    split: str, index: int, seed: int, min_turns: int = 2, max_turns: int = 3
) -> list[tuple[str, str]]:
    """The (question, answer) pairs of dialogue ``index`` of ``split`` (seeded by it)."""
    rng = random.Random(_stable(f"demo|{seed}|{split}|{index}"))
    pairs = qa_pairs(split)
    n = rng.randint(min_turns, max_turns)
    return [pairs[rng.randrange(len(pairs))] for _ in range(n)]


def backchannel_clips(codec: ToyCodec) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """``(text, codes)`` of the short listener responses used in backchannel dialogues."""
    return tuple((text, codec.encode(text)[0]) for text in BACKCHANNELS)


_KEY_PATTERNS = (
    re.compile(r"^It is (\d+ [AP]M) in "),  # time: "It is 3 PM in London."
    re.compile(r"^(\w+) comes after "),  # calendar: "Tuesday comes after Monday."
    re.compile(r" has (\d+) legs\.$"),  # legs
    re.compile(r" is ([\w ]+)\.$"),  # arithmetic, capitals, colours: the part after the last " is "
)


def answer_key(answer: str) -> str:
    """The part of a demo answer that must appear in a correct reply ("7", "Paris", "3 PM")."""
    for pat in _KEY_PATTERNS:
        m = pat.search(answer)
        if m:
            return m.group(1).rsplit(" is ", 1)[-1]
    return answer.rstrip(".")
