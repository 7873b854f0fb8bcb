"""The SFT stage: collator, loss, a CPU run with its checkpoint files, exact resume, LoRA, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import TINY_MODEL, build_small_demo, compose_conf

from bayling_duplex.format.interleave import TokenClass
from bayling_duplex.train.collate import DuplexCollator, real_token_share
from bayling_duplex.train.loss import LossWeights, token_losses, weighted_loss

TINY = [
    "data=demo",
    "train.behaviour_dialogues=0",
    *TINY_MODEL,
    "run.wandb.mode=disabled",
    "train.batch_size=4",
    "train.logging_steps=1",
    "train.eval_dialogues=8",
    "train.eval_steps=0",
]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft-data")
    return build_small_demo(root / "demo", root / "cache")


def sft_conf(data, *extra: str):
    return compose_conf("sft", [*TINY, f"data.path={data}", *extra])


def test_collator_pads_as_documented():
    rows = [
        {"input_ids": [11, 12, 13], "classes": [0, 1, 4]},
        {"input_ids": [14, 15], "classes": [0, 3]},
    ]
    b = DuplexCollator(pad_id=99)(rows)
    assert b["input_ids"].tolist() == [[11, 12, 13], [14, 15, 99]]
    assert b["classes"].tolist() == [[0, 1, 4], [0, 3, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert b["position_ids"].tolist() == [[0, 1, 2], [0, 1, 0]]


def test_collator_packs_with_block_diagonal_mask():
    rows = [
        {"input_ids": [11, 12, 13], "classes": [0, 1, 4]},
        {"input_ids": [14, 15], "classes": [1, 3]},
    ]
    b = DuplexCollator(pad_id=99, pack=True)(rows)
    assert b["input_ids"].tolist() == [[11, 12, 13, 14, 15]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    # the second dialogue's first token is not a target of the first dialogue
    assert b["classes"].tolist() == [[0, 1, 4, 0, 3]]
    m = (b["attention_mask"][0, 0] == 0).int().tolist()  # additive: 0 where attended
    assert m == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [0, 0, 0, 1, 0],
        [0, 0, 0, 1, 1],
    ]


def test_packed_logits_equal_separate_logits(tiny_backbone):
    model, _, vocab = tiny_backbone
    a = [vocab.audio_start_id + i for i in range(7)]
    b = [vocab.audio_start_id + 20 + i for i in range(5)]
    rows = [{"input_ids": a, "classes": [0] * 7}, {"input_ids": b, "classes": [0] * 5}]
    packed = DuplexCollator(pad_id=0, pack=True)(rows)
    packed.pop("classes")
    with torch.no_grad():
        lp = model(**packed).logits[0]
        la = model(torch.tensor([a])).logits[0]
        lb = model(torch.tensor([b])).logits[0]
    torch.testing.assert_close(lp[:7], la, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(lp[7:], lb, atol=1e-5, rtol=1e-4)


def test_weighted_loss_matches_plain_ce_and_zero_removes_a_class():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 11)
    ids = torch.randint(0, 11, (2, 6))
    classes = torch.tensor([[0, 1, 3, 4, 5, 2], [0, 0, 1, 1, 4, 4]], dtype=torch.int8)
    # reference: plain CE of position i against token i+1
    ce = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, 11), ids[:, 1:].reshape(-1), reduction="none"
    ).view(2, 5)
    torch.testing.assert_close(token_losses(logits, ids)[:, :-1], ce)
    target = classes[:, 1:] != TokenClass.USER_AUDIO
    assert torch.isclose(
        weighted_loss(logits, ids, classes, LossWeights().table()), ce[target].mean()
    )
    no_audio = LossWeights(speech=0, silent_audio=0).table()
    text_only = target & (classes[:, 1:] <= TokenClass.TEXT)
    assert torch.isclose(weighted_loss(logits, ids, classes, no_audio), ce[text_only].mean())


def test_padding_share_report():
    lengths = [10, 30, 11, 29]
    assert real_token_share(lengths, 2) == pytest.approx(80 / (2 * 30 + 2 * 29))
    assert real_token_share(sorted(lengths), 2) == pytest.approx(80 / 82)


def test_sft_cpu_run_writes_checkpoint_and_changes_every_parameter(small_data, tmp_path):
    from bayling_duplex.model.backbone import load_backbone, load_trained
    from bayling_duplex.train.sft import run_sft

    conf = sft_conf(small_data, "train.max_steps=4", "train.save_steps=2")
    summary = run_sft(conf, tmp_path)
    final = tmp_path / "final"
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (final / name).is_file()
    assert (tmp_path / "checkpoint-4" / "optimizer.pt").is_file()
    assert summary["steps"] == 4 and "eval_text_loss" in summary and "eval_audio_loss" in summary
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 4
    before, _, _ = load_backbone(conf.model, conf.vocab, tmp_path / "backbone")
    after, _, _ = load_trained(final, conf.vocab)
    for (name, p0), (_, p1) in zip(
        before.named_parameters(), after.named_parameters(), strict=True
    ):
        assert not torch.equal(p0, p1), f"{name} did not change"


@pytest.mark.parametrize("noise", [[], ["train.user_unit_swap=0.3"]], ids=["plain", "noised"])
def test_resume_reproduces_the_uninterrupted_losses(small_data, tmp_path, caplog, noise):
    import logging

    from bayling_duplex.train.sft import run_sft

    steps = ["train.max_steps=6", "train.save_steps=3", "train.eval_dialogues=0", *noise]
    full = run_sft(sft_conf(small_data, *steps), tmp_path / "full")
    run_sft(sft_conf(small_data, *steps, "train.stop_after_steps=3"), tmp_path / "cut")
    assert not (tmp_path / "cut" / "final").exists()
    # a newer checkpoint half-written by a run killed while saving: no trainer_state.json
    half = tmp_path / "cut" / "checkpoint-5"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        resumed = run_sft(sft_conf(small_data, *steps, "run.resume=true"), tmp_path / "cut")
    assert resumed["resumed_from"].endswith("checkpoint-3")
    assert "checkpoint-5" in caplog.text

    def losses(summary, lo, hi):
        return [h["loss"] for h in summary["log_history"] if "loss" in h and lo < h["step"] <= hi]

    assert losses(resumed, 3, 6) == pytest.approx(losses(full, 3, 6), rel=1e-6, abs=1e-7)
    assert len(losses(full, 3, 6)) == 3
    # train_loss: the mean over all 6 steps, as in the uninterrupted run
    saved = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert saved["train_loss"] == resumed["train_loss"]
    assert resumed["train_loss"] == pytest.approx(full["train_loss"], rel=1e-6)
    assert full["train_loss"] == pytest.approx(sum(losses(full, 0, 6)) / 6, rel=1e-6)


def test_lora_trains_adapters_and_new_token_rows(small_data, tmp_path):
    from peft import get_peft_model

    from bayling_duplex.model.backbone import load_backbone
    from bayling_duplex.train.hf_args import lora_config

    conf = sft_conf(small_data, "lora.enabled=true", "lora.r=4")
    model, _, vocab = load_backbone(conf.model, conf.vocab, tmp_path)
    peft_model = get_peft_model(model, lora_config(conf.lora, list(vocab.control_ids)))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert any("lora_A" in n for n in trainable)
    assert any("embed_tokens" in n and "token_adapter" in n for n in trainable)
    assert any("lm_head" in n and "token_adapter" in n for n in trainable)
    assert not any(
        n.endswith("embed_tokens.weight") and "token_adapter" not in n for n in trainable
    )


def test_lora_sft_run(small_data, tmp_path):
    from bayling_duplex.train.sft import run_sft

    summary = run_sft(
        sft_conf(small_data, "lora.enabled=true", "lora.r=4", "train.max_steps=2"), tmp_path
    )
    assert summary["steps"] == 2
    assert (tmp_path / "final" / "adapter_config.json").is_file()


def test_missing_data_names_the_build_command(tmp_path):
    from bayling_duplex.data.load import DataMismatchError
    from bayling_duplex.train.sft import run_sft

    conf = sft_conf(tmp_path / "nowhere", "data.build_if_missing=false")
    with pytest.raises(
        DataMismatchError, match=r"python -m bayling_duplex\.data build recipe=demo"
    ):
        run_sft(conf, tmp_path / "run")


def test_data_built_from_another_version_of_its_recipe_is_named_in_a_warning(tmp_path, caplog):
    import logging
    from types import SimpleNamespace

    from bayling_duplex.data.load import ensure_built, recipe_drift, recipe_from_file
    from bayling_duplex.data.recipe import recipe_digest
    from bayling_duplex.runtime import plain

    data = SimpleNamespace(path=str(tmp_path), recipe="demo", build_if_missing=False)
    now = recipe_digest(plain(recipe_from_file("demo")))
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"fingerprint": {"recipe": now}}))
    assert recipe_drift(tmp_path, data) is None
    manifest.write_text(json.dumps({"fingerprint": {"recipe": "0123abcd"}}))
    with caplog.at_level(logging.WARNING):
        ensure_built(data, None, None)  # the data stays usable: a warning, not a refusal
    assert "another version of recipe demo" in caplog.text and "0123abcd" in caplog.text
    assert f"output_dir={tmp_path} overwrite=true" in caplog.text
    # no recipe of that name, or no fingerprint: nothing to compare, no warning
    assert recipe_drift(tmp_path, SimpleNamespace(path=str(tmp_path), recipe="nope")) is None
    manifest.write_text("{}")
    assert recipe_drift(tmp_path, data) is None


def test_data_of_another_vocabulary_is_refused(small_data, tmp_path):
    from bayling_duplex.data.load import DataMismatchError
    from bayling_duplex.train.sft import run_sft

    conf = sft_conf(small_data, "vocab.silence_token='<listen>'")
    with pytest.raises(DataMismatchError, match="vocabulary"):
        run_sft(conf, tmp_path / "run")


def test_behaviour_evaluation_is_logged_during_training(small_data, tmp_path):
    from bayling_duplex.train.sft import run_sft

    conf = sft_conf(small_data, "train.max_steps=2", "train.behaviour_dialogues=4")
    summary = run_sft(conf, tmp_path)
    assert "behaviour/SR@3s" in summary and 0.0 <= summary["behaviour/SR@3s"] <= 1.0
    assert any("behaviour/SR@3s" in h for h in summary["log_history"])
    meta = json.loads((tmp_path / "final" / "duplex.json").read_text())
    assert meta["format"]["frames_per_block"] == 10 and meta["format"]["silence_codes"] == [0]


# --------------------------------------------------------------------------- issue 12: data refusals


def _edited_copy(data, out, edit):
    """``data``'s manifest alone, edited: training refuses it before reading a shard."""
    out.mkdir(parents=True)
    manifest = json.loads((data / "manifest.json").read_text())
    edit(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_data_of_another_format_codec_or_builder_is_refused_naming_each(small_data, tmp_path):
    from bayling_duplex.data.load import DataMismatchError
    from bayling_duplex.train.sft import run_sft

    def other(m):
        m["layout"]["slots_per_block"] = 4
        m["layout"]["frame_rate_hz"] = 25.0
        m["silence_codes"] = [7, 8]
        m["fingerprint"]["codec"] = "glm4voice-12.5hz"
        m["fingerprint"]["builder"] = 99

    data = _edited_copy(small_data, tmp_path / "s4", other)
    with pytest.raises(DataMismatchError) as e:
        run_sft(sft_conf(data), tmp_path / "run")
    msg = str(e.value)
    assert "\n" not in msg and "made for another configuration (built != expected)" in msg
    for part in (
        "format.slots_per_block: 4 != 5",
        "format.frame_rate_hz: 25.0 != 12.5",
        "format.silence_codes: [7, 8] != [0]",
        "codec: glm4voice-12.5hz != toy-v2-256",
        "builder: 99 != 1",
    ):
        assert part in msg, msg
    assert "vocab" not in msg and "data.recipe" in msg
    assert not (tmp_path / "run" / "checkpoint-1").exists()


def test_data_built_with_slots_per_block_4_is_refused(tmp_path):
    """The issue's repro: a 10:4:10 build does not train against the 10:5:10 demo recipe."""
    from helpers import compose_conf as build_conf

    from bayling_duplex.cli.data import build_dataset
    from bayling_duplex.data.load import DataMismatchError
    from bayling_duplex.train.sft import run_sft

    out = tmp_path / "s4"
    build_dataset(
        build_conf(
            "build",
            [
                "recipe.format.slots_per_block=4",
                "recipe.train.count=8",
                "recipe.heldout=null",
                f"output_dir={out}",
                f"cache_dir={tmp_path / 'cache'}",
                "num_workers=1",
            ],
        )
    )
    with pytest.raises(DataMismatchError, match=r"format\.slots_per_block: 4 != 5"):
        run_sft(sft_conf(out, "train.max_steps=1"), tmp_path / "run")


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda m: m.update(splits={}), "no train split (splits: none)"),
        (lambda m: m["splits"].pop("train"), "no train split (splits: heldout (12 sequences))"),
        (lambda m: m["splits"]["train"].update(sequences=0), "an empty train split"),
    ],
    ids=["no splits", "heldout only", "empty train"],
)
def test_data_without_training_sequences_is_refused(small_data, tmp_path, edit, words):
    from bayling_duplex.data.load import DataMismatchError
    from bayling_duplex.train.sft import run_sft

    data = _edited_copy(small_data, tmp_path / "d", edit)
    with pytest.raises(DataMismatchError, match="holds no training sequences") as e:
        run_sft(sft_conf(data), tmp_path / "run")
    assert words in str(e.value)


def test_a_failed_empty_build_is_refused_with_its_failure(tmp_path, tiny_cache):
    from bayling_duplex.data.build import BuildError, run_build
    from bayling_duplex.data.load import DataMismatchError
    from bayling_duplex.data.recipe import RecipeConfig, SourceConfig
    from bayling_duplex.format.vocab import VocabConfig
    from bayling_duplex.model.backbone import ModelConfig, backbone_source
    from bayling_duplex.train.sft import run_sft

    (tmp_path / "empty.jsonl").write_text("")
    recipe = RecipeConfig(
        name="e", train=SourceConfig(kind="timelines_jsonl", path=str(tmp_path / "empty.jsonl"))
    )
    tok = str(backbone_source(ModelConfig(), tiny_cache))
    with pytest.raises(BuildError):
        run_build(recipe, tok, VocabConfig(), tmp_path / "e", 1, progress=False)
    with pytest.raises(DataMismatchError, match="failed build: split train yields no sequence"):
        run_sft(sft_conf(tmp_path / "e"), tmp_path / "run")


def test_sequences_longer_than_the_model_positions_are_refused(small_data, tmp_path):
    from bayling_duplex.data.load import DataMismatchError
    from bayling_duplex.train.sft import run_sft

    manifest = json.loads((small_data / "manifest.json").read_text())
    longest = manifest["splits"]["train"]["max_seq_len"]
    assert longest == manifest["splits"]["train"]["num_blocks"]["max"] * 25
    conf = sft_conf(small_data, f"model.tiny.max_position_embeddings={longest - 1}")
    with pytest.raises(DataMismatchError) as e:
        run_sft(conf, tmp_path / "run")
    msg = str(e.value)
    assert f"{longest} tokens" in msg and f"max_position_embeddings={longest - 1}" in msg
    assert "recipe.limits.max_seq_len" in msg and "\n" not in msg
    # an older manifest without max_seq_len: the longest is read from the block stats
    old = _edited_copy(
        small_data, tmp_path / "old", lambda m: m["splits"]["train"].pop("max_seq_len")
    )
    with pytest.raises(DataMismatchError, match=f"{longest} tokens"):
        run_sft(sft_conf(old, f"model.tiny.max_position_embeddings={longest - 1}"), tmp_path / "r2")


def _sigint_at_call(monkeypatch, cls, n: int) -> None:
    """Ctrl-C arrives while ``cls.compute_loss`` runs for the ``n``-th time (mid-step)."""
    import signal

    original, calls = cls.compute_loss, []

    def compute_loss(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            signal.raise_signal(signal.SIGINT)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "compute_loss", compute_loss)


def test_ctrl_c_saves_the_step_and_names_the_checkpoint_to_resume(
    small_data, tmp_path, monkeypatch
):
    import signal

    from bayling_duplex.train.sft import run_sft
    from bayling_duplex.train.sft_trainer import DuplexTrainer, TrainingInterrupted

    steps = ["train.max_steps=4", "train.save_steps=100", "train.eval_dialogues=0"]
    handler = signal.getsignal(signal.SIGINT)
    _sigint_at_call(monkeypatch, DuplexTrainer, 2)
    with pytest.raises(TrainingInterrupted) as e:
        run_sft(sft_conf(small_data, *steps), tmp_path)
    assert e.value.step == 2
    assert str(e.value) == (
        "stopped at step 2; resume with run.resume=true "
        f"(it continues from {tmp_path / 'checkpoint-2'})"
    )
    assert (tmp_path / "checkpoint-2" / "trainer_state.json").is_file()
    assert not (tmp_path / "final").exists() and not (tmp_path / "summary.json").exists()
    assert signal.getsignal(signal.SIGINT) is handler
    monkeypatch.undo()
    resumed = run_sft(sft_conf(small_data, *steps, "run.resume=true"), tmp_path)
    assert resumed["resumed_from"].endswith("checkpoint-2") and resumed["steps"] == 4


def test_cli_ctrl_c_prints_one_line_and_exits_130(small_data, tmp_path):
    import re
    import signal
    import subprocess
    import sys
    import threading
    import time
    from pathlib import Path

    args = [sys.executable, "-m", "bayling_duplex.train", "sft", *TINY]
    args += [f"data.path={small_data}", "train.max_steps=400", "train.eval_dialogues=0"]
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = bytearray()

    def read():
        while chunk := proc.stderr.read1(4096):
            err.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 180
    while not re.search(rb"[1-9]\d*/400 \[", err) and proc.poll() is None:
        assert time.monotonic() < deadline, err.decode(errors="replace")[-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(timeout=180)
    reader.join(10)
    text = err.decode(errors="replace")
    assert rc == 130, text[-3000:]
    assert "Traceback" not in text
    last = text.strip().splitlines()[-1]
    m = re.fullmatch(
        r"stopped at step (\d+); resume with run\.resume=true \(it continues from (.+)\)", last
    )
    assert m, last
    assert m.group(2).endswith(f"checkpoint-{m.group(1)}") and Path(m.group(2)).is_dir()


# --------------------------------------------------------------------------- the pause weight


def test_built_hesitation_rows_get_marked_slots(small_data):
    from bayling_duplex.data.build import load_split

    rows = [r for r in load_split(small_data, "train") if r["scenario"] == "hesitation"][:4]
    assert rows
    batch = DuplexCollator(pad_id=0, pause_layout=(10, 5))(rows)
    marked = (batch["classes"] == TokenClass.PAUSE_SILENCE).sum(dim=1)
    assert (marked > 0).all() and (marked % 5 == 0).all()  # whole blocks of silence slots


def test_sft_trains_with_the_pause_weight(small_data, tmp_path):
    from bayling_duplex.train.sft import run_sft

    conf = sft_conf(small_data, "train.max_steps=2", "train.loss_weights.pause_silence=4")
    assert run_sft(conf, tmp_path)["steps"] == 2


def test_sft_trains_with_user_unit_noise(small_data, tmp_path):
    from bayling_duplex.train.sft import run_sft

    for scope in ("all", "speech"):
        conf = sft_conf(
            small_data,
            "train.max_steps=2",
            "train.user_unit_swap=0.2",
            f"train.user_unit_swap_scope={scope}",
        )
        assert run_sft(conf, tmp_path / scope)["steps"] == 2


def test_the_speech_scope_on_data_without_segments_is_refused_naming_the_key(tmp_path):
    import datasets

    from bayling_duplex.format.layout import BlockLayout
    from bayling_duplex.train.sft import _speech_layout

    conf = sft_conf(tmp_path, "train.user_unit_swap=0.2", "train.user_unit_swap_scope=speech")
    old = datasets.Dataset.from_dict({"meta": [json.dumps({"num_frames": 10})] * 3})
    with pytest.raises(ValueError, match=r"train\.user_unit_swap_scope"):
        _speech_layout(conf, old, BlockLayout(10, 5))
    assert _speech_layout(sft_conf(tmp_path), old, BlockLayout(10, 5)) is None


def test_data_without_recorded_pauses_is_refused_naming_the_key(tmp_path):
    import datasets

    from bayling_duplex.format.layout import BlockLayout
    from bayling_duplex.train.sft import _pause_layout

    conf = sft_conf(tmp_path, "train.loss_weights.pause_silence=4")
    old = datasets.Dataset.from_dict({"meta": [json.dumps({"num_frames": 10})] * 3})
    with pytest.raises(ValueError, match=r"train\.loss_weights\.pause_silence"):
        _pause_layout(conf, old, BlockLayout(10, 5))
    assert _pause_layout(sft_conf(tmp_path), old, BlockLayout(10, 5)) is None


def test_a_wrong_pause_weight_fails_naming_the_key(tmp_path):
    with pytest.raises(Exception, match=r"pause_silence"):
        sft_conf(tmp_path, "train.loss_weights.pause_silence=loud")
