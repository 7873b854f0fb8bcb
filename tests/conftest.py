"""Shared fixtures: every test is offline and CPU-only; tiny backbones are built in-process."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# tests/unit/<subpackage>/ and tests/integration/ import the shared helpers from here
sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    """One cache folder for tiny backbones, shared by the whole session."""
    return tmp_path_factory.mktemp("tiny-cache")


@pytest.fixture(scope="session")
def tiny_backbone(tiny_cache):
    """The default tiny backbone, extended: (model, tokenizer, vocab)."""
    from bayling_duplex.format.vocab import VocabConfig
    from bayling_duplex.model.backbone import ModelConfig, load_backbone

    return load_backbone(ModelConfig(), VocabConfig(), tiny_cache)


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
