"""Builders shared by the stage tests: small typed configs and small built datasets."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir

from bayling_duplex.cli import schemas
from bayling_duplex.cli.hydra import config_dir, to_dataclass

# The small tiny model every stage test trains (the default is larger): one list, used as
# overrides by every test that composes a config or starts a command.
TINY_MODEL = [
    "model.tiny.hidden_size=32",
    "model.tiny.intermediate_size=64",
    "model.tiny.num_layers=2",
    "model.tiny.num_heads=2",
    "model.tiny.num_kv_heads=1",
]


def compose_conf(root: str, overrides: list[str]):
    """A typed root config, composed exactly as the command line would."""
    schemas.register()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(root, overrides=overrides)
    return to_dataclass(cfg, schemas.ROOTS[root])


def build_small_demo(
    out: Path, cache: Path, train: int = 48, heldout: int = 12, shard_size: int = 24
) -> Path:
    """The demo recipe at a small size, built once into ``out``."""
    from bayling_duplex.cli.data import build_dataset

    conf = compose_conf(
        "build",
        [
            "recipe=demo",
            f"recipe.train.count={train}",
            f"recipe.heldout.count={heldout}",
            f"recipe.shard_size={shard_size}",
            f"output_dir={out}",
            f"cache_dir={cache}",
            "num_workers=1",
        ],
    )
    if not (out / "manifest.json").is_file():
        build_dataset(conf)
    return out


def save_tiny_sft(conf, root: Path, final: Path) -> Path:
    """The extended tiny backbone of ``conf`` saved into ``final`` as a trained SFT run saves it."""
    from bayling_duplex.format.spec import FormatSpec
    from bayling_duplex.model.backbone import load_backbone
    from bayling_duplex.model.checkpoint import CheckpointMeta, write_meta

    model, tok, _ = load_backbone(conf.model, conf.vocab, root / "cache")
    model.save_pretrained(final)
    tok.save_pretrained(final)
    write_meta(final, CheckpointMeta(FormatSpec(), "demo", "sft"))
    return final
