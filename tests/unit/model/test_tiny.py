"""The tiny tokenizer's demo lines (a resource file) stay what the demo corpus generates."""

from importlib import resources

from bayling_duplex.data.demo import BACKCHANNELS, qa_pairs
from bayling_duplex.model.tiny import DEMO_TEXT


def test_demo_text_resource_matches_the_demo_corpus() -> None:
    lines = list(BACKCHANNELS)
    for split in ("train", "heldout"):
        lines += [text for pair in qa_pairs(split) for text in pair]
    shipped = resources.files("bayling_duplex").joinpath(DEMO_TEXT).read_text("utf-8")
    assert shipped.splitlines() == lines, (
        "regenerate src/bayling_duplex/resources/demo_text.txt from data.demo"
    )
