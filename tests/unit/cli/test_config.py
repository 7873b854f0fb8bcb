"""Every shipped config composes into its typed schema; unknown keys and bad values fail."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from bayling_duplex.cli import schemas
from bayling_duplex.cli.hydra import MOVED_KEYS, ConfigError, config_dir, to_dataclass

schemas.register()
CONFIGS = config_dir()
GROUP_DIRS = sorted(p for p in CONFIGS.iterdir() if p.is_dir() and p.name in schemas.GROUPS)


def _compose(root: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(root, overrides=overrides)


def _options(group: Path) -> list[str]:
    return sorted(p.stem for p in group.glob("*.yaml"))


ROOT_FILES = sorted(CONFIGS / f"{r}.yaml" for r in schemas.ROOTS)
GROUP_FILES = sorted(p for g in GROUP_DIRS for p in g.glob("*.yaml"))
EXPERIMENT_FILES = sorted((CONFIGS / "experiment").glob("*.yaml"))
ACCELERATE_FILES = sorted((CONFIGS / "accelerate").glob("*.yaml"))
LAUNCHER_FILES = sorted((CONFIGS / "hydra" / "launcher").glob("*.yaml"))


def _leaves(node, prefix: str = ""):
    """``(dotted key, value)`` of every plain value a YAML file sets (interpolations and
    Hydra's own keys left out: they are resolved or consumed by Hydra)."""
    for key, value in node.items():
        if key in ("defaults", "hydra"):
            continue
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _leaves(value, dotted + ".")
        elif not (isinstance(value, str) and "${" in value):
            yield dotted, value


def _assert_reaches_the_typed_config(yaml_file: Path, conf, under: str = "") -> list:
    """Each value ``yaml_file`` sets is the value of that field in the typed ``conf``."""
    typed = OmegaConf.structured(conf)
    raw = OmegaConf.to_container(OmegaConf.load(yaml_file), resolve=False)
    leaves = list(_leaves(raw, under))
    for key, value in leaves:
        assert OmegaConf.select(typed, key, default="<missing>") == value, (yaml_file, key)
    return leaves


@pytest.mark.parametrize("root_file", ROOT_FILES, ids=lambda p: p.stem)
def test_root_composes_to_schema(root_file):
    """The root's own values arrive in the typed config (and every group default loads)."""
    root = root_file.stem
    conf = to_dataclass(_compose(root, []), schemas.ROOTS[root])
    _assert_reaches_the_typed_config(root_file, conf)
    for group in GROUP_DIRS:
        if group.name in {f.name for f in dataclasses.fields(conf)}:
            assert dataclasses.is_dataclass(getattr(conf, group.name))


@pytest.mark.parametrize(
    ("root", "option_file"),
    [
        (r, p)
        for r, schema in sorted(schemas.ROOTS.items())
        for p in GROUP_FILES
        if p.parent.name in {f.name for f in dataclasses.fields(schema)}
    ],
    ids=lambda v: v if isinstance(v, str) else f"{v.parent.name}={v.stem}",
)
def test_every_group_option_composes(root, option_file):
    """``group=option`` puts that option's values into the root's ``group`` field."""
    group, option = option_file.parent.name, option_file.stem
    conf = to_dataclass(_compose(root, [f"{group}={option}"]), schemas.ROOTS[root])
    leaves = _assert_reaches_the_typed_config(option_file, conf, under=f"{group}.")
    assert leaves or group == "deepspeed", f"{option_file} sets nothing"


@pytest.mark.parametrize("preset", EXPERIMENT_FILES, ids=lambda p: p.stem)
def test_experiment_presets_compose(preset):
    root = "dpo" if "dpo" in preset.stem else "sft"
    conf = to_dataclass(_compose(root, [f"experiment={preset.stem}"]), schemas.ROOTS[root])
    assert conf.stage == root
    _assert_reaches_the_typed_config(preset, conf)  # `# @package _global_`: root-level keys


@pytest.mark.parametrize("launch_file", ACCELERATE_FILES, ids=lambda p: p.stem)
def test_accelerate_files_are_launch_configs(launch_file):
    """accelerate's own loader reads each file, and its process layout is coherent."""
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(launch_file))
    assert cfg.distributed_type in ("DEEPSPEED", "MULTI_GPU", "MULTI_CPU")
    assert cfg.num_processes >= cfg.num_machines >= 1
    assert cfg.use_cpu == (launch_file.stem == "cpu_2proc")


@pytest.mark.parametrize("launcher_file", LAUNCHER_FILES, ids=lambda p: p.stem)
def test_hydra_launcher_presets_compose(launcher_file):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(
            "sft",
            overrides=[f"hydra/launcher={launcher_file.stem}"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert "submitit" in launcher._target_
    for key, value in _leaves(OmegaConf.to_container(OmegaConf.load(launcher_file))):
        assert OmegaConf.select(launcher, key) == value, key


def test_every_yaml_under_configs_is_covered():
    """No stray YAML: each one is in the parametrization of one of the tests above."""
    covered = set(ROOT_FILES + GROUP_FILES + EXPERIMENT_FILES + ACCELERATE_FILES + LAUNCHER_FILES)
    shipped = {  # configs/recipe is a link to data_recipes/: follow it
        Path(d) / f for d, _, files in os.walk(CONFIGS, followlinks=True) for f in files
    }
    assert {p for p in shipped if p.suffix == ".yaml"} == covered


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


@pytest.mark.parametrize(("old", "new"), sorted(MOVED_KEYS.items()))
def test_a_moved_key_fails_naming_its_new_place(old, new):
    assert OmegaConf.select(_compose("dpo", []), new) is not None  # the new key exists
    with pytest.raises(ConfigError, match=rf"^{re.escape(old)} moved to {re.escape(new)}\b"):
        to_dataclass(_compose("dpo", [f"+{old}=1"]), schemas.ROOTS["dpo"])


@pytest.mark.parametrize(
    ("old", "new"), [("float32", "fp32"), ("bfloat16", "bf16"), ("float16", "fp16")]
)
def test_model_dtype_old_spelling_fails_naming_the_new_value(old, new):
    with pytest.raises(ConfigError, match=rf"model\.dtype={old} is now spelled {new}\b"):
        to_dataclass(_compose("sft", [f"model.dtype={old}"]), schemas.SftConfig)


def test_one_precision_vocabulary():
    from bayling_duplex.model.backbone import DTYPES
    from bayling_duplex.train.config import PRECISIONS

    assert tuple(DTYPES) == PRECISIONS
    for value in PRECISIONS:
        conf = to_dataclass(
            _compose("sft", [f"model.dtype={value}", f"train.precision={value}"]),
            schemas.SftConfig,
        )
        assert conf.model.dtype == conf.train.precision == value


def test_dpo_pairs_default_to_the_policys_own_rollouts():
    """The shipped default is on-policy pairs (docs/dpo.md §5, "Ablation"); gold is an option."""
    conf = to_dataclass(_compose("dpo", []), schemas.ROOTS["dpo"])
    assert conf.pairs.source == "on_policy"
    assert (
        to_dataclass(_compose("dpo", ["pairs.source=gold"]), schemas.ROOTS["dpo"]).pairs.source
        == "gold"
    )


def test_dpo_defaults_of_the_generic_keys_are_kept():
    """DPO's train.*/optim.* defaults are the values its flat dpo.* keys had."""
    from bayling_duplex.train.config import OptimConfig, TrainConfig

    conf = to_dataclass(_compose("dpo", []), schemas.ROOTS["dpo"])
    assert conf.train == TrainConfig(
        epochs=1.0,
        max_steps=-1,
        batch_size=8,
        grad_accum=1,
        precision="fp32",
        gradient_checkpointing=False,
        logging_steps=10,
        save_steps=500,
        save_total_limit=1,
        eval_steps=0,
        dataloader_workers=0,
    )
    assert conf.optim == OptimConfig(
        lr=2e-5,
        weight_decay=0.0,
        warmup_ratio=0.1,
        scheduler="cosine",
        max_grad_norm=1.0,
        adam_beta2=0.999,  # transformers' default, which DPO ran with
    )
    sft = to_dataclass(_compose("sft", []), schemas.SftConfig)
    # configs/sft.yaml sets the main job's epochs, batch, evaluation, control and silence weights
    assert (
        sft.optim.lr,
        sft.optim.adam_beta2,
        sft.train.epochs,
        sft.train.batch_size,
        sft.train.eval_steps,
    ) == (2e-3, 0.98, 6.0, 4, 0)
    assert (sft.train.loss_weights.control, sft.train.loss_weights.silence_slot) == (2.0, 2.0)
    assert (sft.train.loss_weights.text, sft.train.loss_weights.speech) == (1.0, 1.0)
    # the real-speech default pauses every user turn of a hesitation dialogue; the schema's
    # default (which the evaluation's own dialogues use) stays one pause per dialogue
    from bayling_duplex.data.load import recipe_from_file

    assert recipe_from_file("speech_demo").synthesis.hesitation_turns == "all"
    assert schemas.RecipeConfig().synthesis.hesitation_turns == "one"


def test_importing_the_train_configs_imports_no_torch():
    code = (
        "import sys, bayling_duplex.train.config\n"
        "print(sorted(m for m in ('torch', 'transformers', 'trl', 'peft') if m in sys.modules))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


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


def test_cli_moved_key_override_fails_naming_the_new_key(tmp_path):
    res = _cli("dpo", "dpo.lr=1e-4", "dpo.max_steps=3", cwd=tmp_path)
    assert res.returncode == 2
    assert "dpo.lr moved to optim.lr; dpo.max_steps moved to train.max_steps" in res.stderr


def test_cli_moved_key_in_a_yaml_fails_naming_the_new_key(tmp_path):
    """An experiment file of the old layout: Hydra refuses it, and the new key is named."""
    root = tmp_path / "root"
    shutil.copytree(CONFIGS, root / "configs")
    (root / "data_recipes").mkdir()
    (root / "configs" / "experiment" / "old_dpo.yaml").write_text(
        "# @package _global_\ndpo:\n  beta: 0.2\n  lr: 1.0e-4\n"
    )
    res = subprocess.run(
        [sys.executable, "-m", "bayling_duplex.train", "dpo", "experiment=old_dpo"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "BAYLING_DUPLEX_ROOT": str(root)},
    )
    assert res.returncode == 2, res.stderr[-2000:]
    assert "error: dpo.lr moved to optim.lr" in res.stderr


def test_cli_cfg_job_prints_config(tmp_path):
    res = _cli("sft", "--cfg", "job", "model.tiny.hidden_size=32", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "hidden_size: 32" in res.stdout
    assert not (tmp_path / "runs").exists()


def test_cli_help(tmp_path):
    res = _cli("dpo", "--help", cwd=tmp_path)
    assert res.returncode == 0
    assert "deepspeed:" in res.stdout and "zero3" in res.stdout
