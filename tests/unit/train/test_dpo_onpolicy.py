"""The DPO stage with on-policy pairs: rounds, resume between rounds, mixtures, bad config."""

from __future__ import annotations

import json

import pytest
from helpers import TINY_MODEL, build_small_demo, compose_conf, save_tiny_sft

TINY = [*TINY_MODEL, "data=demo", "run.wandb.mode=disabled"]
SMALL = [
    "pairs.onpolicy.dialogues=6",
    "pairs.onpolicy.heldout_dialogues=2",
    "pairs.onpolicy.samples=2",
    "pairs.train=8",
    "pairs.heldout=2",
    "train.max_steps=1",
    "train.batch_size=2",
    "eval.enabled=false",
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo-onpolicy")
    data = build_small_demo(root / "demo", root / "cache", train=16, heldout=4, shard_size=16)
    final = save_tiny_sft(compose_conf("dpo", TINY), root, root / "sft" / "final")
    return data, final


def conf_of(setup, tmp_path, *extra):
    data, final = setup
    return compose_conf(
        "dpo",
        [*TINY, f"init={final}", f"data.path={data}", f"pairs.path={tmp_path / 'pairs'}", *SMALL,
         *extra],
    )  # fmt: skip


def test_two_on_policy_rounds_each_roll_out_their_own_policy_and_resume(setup, tmp_path):
    from bayling_duplex.train.dpo import run_dpo

    conf = conf_of(setup, tmp_path, "pairs.source=on_policy", "rounds=2")
    run = tmp_path / "run"
    summary = run_dpo(conf, run)
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    r1, r2 = (json.loads((run / f"round_{n}" / "summary.json").read_text()) for n in (1, 2))
    assert r1["policy"] == str(setup[1]) and r2["policy"] == str(run / "round_1" / "final")
    assert json.loads((run / "round_2" / "final" / "duplex.json").read_text())["init"] == str(
        run / "round_1" / "final"
    )
    assert (run / "final" / "model.safetensors").is_file() and (run / "summary.md").is_file()
    # one pair set per policy, each with its manifest (fingerprint names the policy)
    sets = sorted((tmp_path / "pairs_onpolicy").iterdir())
    assert len(sets) == 2
    manifests = [json.loads((s / "manifest.json").read_text()) for s in sets]
    assert {m["policy"] for m in manifests} == {str(setup[1]), str(run / "round_1" / "final")}
    assert all(m["splits"]["train"]["pairs"] > 0 for m in manifests)
    assert all(k.startswith("op_") for k in r1["pairs"]["train"]["kinds"])
    # resume: round 1 is complete and kept; round 2 (its summary lost) is trained again
    weights = run / "round_1" / "final" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    (run / "round_2" / "summary.json").unlink()
    again = run_dpo(conf_of(setup, tmp_path, "pairs.source=on_policy", "rounds=2",
                            "run.resume=true"), run)  # fmt: skip
    assert weights.stat().st_mtime_ns == before
    assert (run / "round_2" / "summary.json").is_file() and len(again["rounds"]) == 2


def test_mix_concatenates_gold_and_on_policy_pairs(setup, tmp_path):
    from bayling_duplex.train.dpo import run_dpo

    summary = run_dpo(conf_of(setup, tmp_path, "pairs.source=mix"), tmp_path / "run")
    kinds = summary["pairs"]["train"]["kinds"]
    assert any(k.startswith("op_") for k in kinds) and any(not k.startswith("op_") for k in kinds)
    sources = summary["pair_sources"]
    n = sum(s["splits"]["train"]["pairs"] for s in sources.values())
    assert set(sources) == {"gold", "on_policy"} and summary["train_pairs"] == n


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("pairs.source=both", "pairs.source"),
        ("pairs.onpolicy.samples=0", "pairs.onpolicy.samples"),
        ("pairs.onpolicy.rewards.stop=-1", "rewards"),
        ("pairs.source=gold rounds=2", "rounds"),  # a second gold round would repeat the first
        ("rounds=0", "rounds"),
    ],
)
def test_bad_values_fail_naming_the_key(setup, tmp_path, override, key):
    with pytest.raises(Exception, match=key):
        conf_of(setup, tmp_path, *override.split())


def test_on_policy_pairs_refuse_data_of_another_codec(setup, tmp_path):
    import shutil

    from bayling_duplex.data.load import DataMismatchError
    from bayling_duplex.train.dpo import run_dpo

    data, _ = setup
    other = tmp_path / "other"
    shutil.copytree(data, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["codec"] = {"name": "units", "fingerprint": "f00", "dir": "codec"}
    (other / "manifest.json").write_text(json.dumps(manifest))
    conf = conf_of(setup, tmp_path, "pairs.source=on_policy", f"data.path={other}")
    with pytest.raises(DataMismatchError, match="codec"):
        run_dpo(conf, tmp_path / "run")
