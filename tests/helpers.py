"""Builders shared by the stage tests: small typed configs and small built datasets."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir

from bayling_duplex.cli import schemas
from bayling_duplex.cli.hydra import config_dir, to_dataclass


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
    import json

    from bayling_duplex.cli.hydra import plain
    from bayling_duplex.data.recipe import FormatConfig
    from bayling_duplex.model.backbone import load_backbone

    model, tok, _ = load_backbone(conf.model, conf.vocab, root / "cache")
    model.save_pretrained(final)
    tok.save_pretrained(final)
    meta = {"format": plain(FormatConfig()), "data": "demo", "stage": "sft"}
    (final / "duplex.json").write_text(json.dumps(meta))
    return final
