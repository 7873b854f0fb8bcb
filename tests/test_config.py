"""Every shipped config composes into its typed schema; unknown keys and bad values fail."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from bayling_duplex.cli import schemas
from bayling_duplex.cli.hydra import ConfigError, config_dir, to_dataclass

schemas.register()
CONFIGS = config_dir()
GROUP_DIRS = sorted(p for p in CONFIGS.iterdir() if p.is_dir() and p.name in schemas.GROUPS)


def _compose(root: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(root, overrides=overrides)


def _options(group: Path) -> list[str]:
    return sorted(p.stem for p in group.glob("*.yaml"))


@pytest.mark.parametrize("root", sorted(schemas.ROOTS))
def test_root_composes_to_schema(root):
    conf = to_dataclass(_compose(root, []), schemas.ROOTS[root])
    assert isinstance(conf, schemas.ROOTS[root])


@pytest.mark.parametrize(
    ("root", "group", "option"),
    [
        (r, g.name, o)
        for r, schema in sorted(schemas.ROOTS.items())
        for g in GROUP_DIRS
        if g.name in {f.name for f in dataclasses.fields(schema)}
        for o in _options(g)
    ],
)
def test_every_group_option_composes(root, group, option):
    conf = to_dataclass(_compose(root, [f"{group}={option}"]), schemas.ROOTS[root])
    assert isinstance(getattr(conf, group), schemas.GROUPS[group])


def test_experiment_presets_compose():
    presets = sorted((CONFIGS / "experiment").glob("*.yaml"))
    for preset in presets:
        root = "dpo" if "dpo" in preset.stem else "sft"
        conf = to_dataclass(_compose(root, [f"experiment={preset.stem}"]), schemas.ROOTS[root])
        assert conf.stage == root


def test_every_yaml_under_configs_is_covered():
    """No stray YAML: each one is a root, a group option or an accelerate launcher file."""
    covered = {CONFIGS / f"{r}.yaml" for r in schemas.ROOTS}
    covered |= {p for g in GROUP_DIRS for p in g.glob("*.yaml")}
    covered |= set((CONFIGS / "experiment").glob("*.yaml"))
    covered |= set((CONFIGS / "accelerate").glob("*.yaml"))
    covered |= set((CONFIGS / "hydra").rglob("*.yaml"))
    assert set(CONFIGS.rglob("*.yaml")) <= covered


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("+foo=1", "foo"),
        ("+model.tiny.hiden_size=3", "model.tiny.hiden_size"),
        ("+run.wandb.projet=x", "run.wandb.projet"),
    ],
)
def test_unknown_key_fails_naming_it(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        to_dataclass(_compose("sft", [override]), schemas.SftConfig)


def test_unknown_key_without_plus_fails_in_hydra():
    with pytest.raises(Exception, match="hiden"):
        _compose("sft", ["model.tiny.hiden=3"])


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.kind=gpt", "model.kind"),
        ("model.dtype=int8", "model.dtype"),
        ("vocab.new_row_init=magic", "vocab.new_row_init"),
        ("run.wandb.mode=loud", "run.wandb.mode"),
        ("model.tiny.num_heads=3", "model.tiny.hidden_size"),
    ],
)
def test_bad_value_fails_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        to_dataclass(_compose("sft", [override]), schemas.SftConfig)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bayling_duplex.train", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_unknown_stage_lists_stages(tmp_path):
    res = _cli("pretrain", cwd=tmp_path)
    assert res.returncode == 2
    assert "sft" in res.stderr and "dpo" in res.stderr


def test_cli_unknown_key_fails(tmp_path):
    res = _cli("sft", "+trian.lr=1", cwd=tmp_path)
    assert res.returncode != 0
    assert "trian" in res.stderr


def test_cli_cfg_job_prints_config(tmp_path):
    res = _cli("sft", "--cfg", "job", "model.tiny.hidden_size=32", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "hidden_size: 32" in res.stdout
    assert not (tmp_path / "runs").exists()


def test_cli_help(tmp_path):
    res = _cli("dpo", "--help", cwd=tmp_path)
    assert res.returncode == 0
    assert "deepspeed:" in res.stdout and "zero3" in res.stdout
