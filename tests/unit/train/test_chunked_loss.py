"""The loss without full logits (train/linear_ce.py, train/loss.py DuplexLoss): the same
loss and gradients as the full-logits loss, padded and packed, with LoRA, with the
channel softmax; the call through the output layer (where ZeRO-3 gathers); Liger's
absence; and a short training run that matches.

Tolerances: float32 throughout. The chunked path sums the same float32 terms in
another order (a log-sum-exp per slice of the vocabulary), so losses agree to
1e-5 relative and gradients to 1e-5 absolute (their largest entries are ~1e-2).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import TINY_MODEL, build_small_demo, compose_conf

from bayling_duplex.format.interleave import TokenClass
from bayling_duplex.train import linear_ce
from bayling_duplex.train.collate import DuplexCollator
from bayling_duplex.train.config import SftTrainConfig
from bayling_duplex.train.linear_ce import liger_unavailable, linear_cross_entropy
from bayling_duplex.train.loss import DuplexLoss, LossWeights, resolve_impl
from bayling_duplex.train.output_layer import check_hidden_state_forward, output_weight

# float32 summation order differs between the two paths (and with the thread count): gradients
# that sum over many positions (an embedding row) are large, so they get a relative bound too.
LOSS_RTOL, GRAD_RTOL, GRAD_ATOL = 1e-5, 1e-5, 1e-5
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


def sft_conf(data, *extra: str):
    return compose_conf("sft", [*TINY, f"data.path={data}", *extra])


@pytest.fixture(scope="module")
def demo_rows(tmp_path_factory):
    """Six built demo dialogues (real classes: user audio, text channel, assistant audio)."""
    from bayling_duplex.data.build import load_split

    root = tmp_path_factory.mktemp("chunked-data")
    data = build_small_demo(root / "demo", root / "cache", train=8, heldout=2, shard_size=8)
    ds = load_split(data, "train").select(range(6))
    return [{"input_ids": r["input_ids"], "classes": r["classes"]} for r in ds]


def _loss_and_grads(model, loss: DuplexLoss, batch: dict):
    model.zero_grad(set_to_none=True)
    inputs = dict(batch)
    classes = inputs.pop("classes")
    value, _ = loss(model, inputs, classes)
    value.backward()
    return value.detach(), {
        n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
    }


def _assert_same(a, b):
    (la, ga), (lb, gb) = a, b
    torch.testing.assert_close(la, lb, rtol=LOSS_RTOL, atol=0)
    assert ga.keys() == gb.keys() and ga
    for name in ga:
        torch.testing.assert_close(
            ga[name],
            gb[name],
            rtol=GRAD_RTOL,
            atol=GRAD_ATOL,
            msg=lambda m, name=name: f"{name}: {m}",
        )


# --------------------------------------------------------------------------- the function


def test_chunked_cross_entropy_and_gradients_are_exact_in_float64():
    torch.manual_seed(0)
    h = torch.randn(13, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 8, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 50, (13,))
    ce = linear_cross_entropy(h, w, t, chunk_elements=7 * 13)  # slices 7 wide: 8 slices
    torch.testing.assert_close(ce, F.cross_entropy(h @ w.T, t, reduction="none"))
    assert torch.autograd.gradcheck(
        lambda h, w: linear_cross_entropy(h, w, t, chunk_elements=7 * 13), (h, w)
    )
    audio = torch.rand(13) < 0.5
    t2 = torch.where(audio, torch.randint(20, 30, (13,)), torch.randint(0, 20, (13,)))
    assert torch.autograd.gradcheck(
        lambda h, w: linear_cross_entropy(
            h, w, t2, audio_rows=audio, audio_columns=(20, 30), chunk_elements=3 * 13
        ),
        (h, w),
    )


def test_channel_softmax_on_hand_made_logits():
    """Logits = hidden (identity weight); ids 2 and 3 are audio."""
    ln2 = math.log(2)
    hidden = torch.tensor(
        [
            [0.0, 0.0, ln2, 0.0, 0.0],  # audio target 2: softmax over ids 2, 3 only
            [0.0, ln2, 5.0, 5.0, 0.0],  # text target 1: over ids 0, 1, 4 only
            [0.0, 0.0, 0.0, 9.0, 0.0],  # text target 4
        ]
    )
    targets = torch.tensor([2, 1, 4])
    audio = torch.tensor([True, False, False])
    ce = linear_cross_entropy(
        hidden, torch.eye(5), targets, audio_rows=audio, audio_columns=(2, 4), chunk_elements=2
    )
    expected = [math.log(3 / 2), math.log(4 / 2), math.log(3)]
    torch.testing.assert_close(ce, torch.tensor(expected))
    # without channels: every id competes
    plain = linear_cross_entropy(hidden, torch.eye(5), targets)
    torch.testing.assert_close(plain, F.cross_entropy(hidden, targets, reduction="none"))
    assert (plain > ce).all()


def test_the_loss_runs_as_the_output_layers_forward(tiny_backbone, demo_rows):
    """ZeRO-3 gathers a partitioned weight through the output layer's module hooks (forward,
    and backward when the gradient reaches the module's output): the chunked loss calls
    that module, with the hidden states as its input, and leaves its forward as it was.
    (The real gather: tests/integration/test_distributed.py, ZeRO-3 on two processes.)"""
    model = copy.deepcopy(tiny_backbone[0])
    head, seen = model.lm_head, []
    hooks = [
        head.register_forward_pre_hook(lambda m, args: seen.append(("forward", args[0].shape))),
        head.register_full_backward_pre_hook(lambda m, grad: seen.append(("backward", None))),
    ]
    batch = DuplexCollator(pad_id=tiny_backbone[2].silence_id)(demo_rows[:2])
    classes = batch.pop("classes")
    loss, _ = DuplexLoss(LossWeights().table(), "chunked")(model, batch, classes)
    loss.backward()
    for h in hooks:
        h.remove()
    hidden = (*batch["input_ids"].shape, model.config.hidden_size)
    # the model's own call (logits of the last position) and the loss's, with all hidden states
    assert ("forward", hidden) in seen and ("backward", None) in seen
    assert "forward" not in head.__dict__ and head(torch.zeros(1, hidden[-1])).shape[-1] > 0


def test_liger_absent_falls_back_to_chunked_with_a_warning(caplog):
    assert "CUDA" in liger_unavailable("cpu")
    with caplog.at_level("WARNING"):
        assert resolve_impl("liger", torch.device("cpu")) == "chunked"
    assert "train.loss_impl=liger" in caplog.text and "chunked" in caplog.text
    assert resolve_impl("full", "cpu") == "full" and resolve_impl("chunked", "cpu") == "chunked"
    # the kernel's module is never imported for the default path
    assert "liger_kernel" not in dir(linear_ce)


@pytest.mark.parametrize(
    ("key", "value"), [("loss_impl", "fused"), ("pack_attention", "flash"), ("loss_impl", "")]
)
def test_bad_values_fail_naming_the_key(key, value):
    with pytest.raises(ValueError, match=rf"train\.{key} must be one of"):
        SftTrainConfig(**{key: value})


def test_bad_values_fail_from_the_command_line(tmp_path):
    with pytest.raises(Exception, match=r"train\.loss_impl"):
        sft_conf(tmp_path, "train.loss_impl=fused")


# --------------------------------------------------------------------------- on the tiny model


@pytest.mark.parametrize("pack", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("channels", [False, True], ids=["all-ids", "channel-softmax"])
def test_chunked_loss_equals_full_logits_loss(tiny_backbone, demo_rows, pack, channels):
    model, _, vocab = tiny_backbone
    audio = (vocab.audio_start_id, vocab.audio_end_id) if channels else None
    weights = LossWeights(control=2.0, silent_audio=0.5).table()
    batch = DuplexCollator(pad_id=vocab.silence_id, pack=pack, attention="position_ids")(demo_rows)
    full = _loss_and_grads(model, DuplexLoss(weights, "full", audio), batch)
    chunked = _loss_and_grads(model, DuplexLoss(weights, "chunked", audio), batch)
    assert torch.isfinite(full[0])
    _assert_same(full, chunked)
    # held-out figures: the same sums and counts per channel
    inputs = dict(batch)
    classes = inputs.pop("classes")
    a = DuplexLoss(weights, "full", audio).figures(model, dict(inputs), classes)
    b = DuplexLoss(weights, "chunked", audio).figures(model, dict(inputs), classes)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=LOSS_RTOL, atol=1e-6, msg=k)


def test_packed_loss_equals_padded_loss(tiny_backbone, demo_rows):
    """Packing changes nothing but the batch's shape: one row or six, the same per-target
    losses (the weighted mean is over the same targets)."""
    model, _, vocab = tiny_backbone
    loss = DuplexLoss(LossWeights().table(), "chunked")
    padded = DuplexCollator(pad_id=vocab.silence_id)(demo_rows)
    packed = DuplexCollator(pad_id=vocab.silence_id, pack=True, attention="position_ids")(demo_rows)
    a, b = _loss_and_grads(model, loss, padded), _loss_and_grads(model, loss, packed)
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=0)


def test_zero_weight_targets_never_reach_the_output_layer(tiny_backbone, demo_rows, monkeypatch):
    from bayling_duplex.train import loss as loss_mod

    model, _, vocab = tiny_backbone
    seen = []
    real = loss_mod.linear_cross_entropy

    def spy(h, *args, **kwargs):
        seen.append(h.shape[0])
        return real(h, *args, **kwargs)

    monkeypatch.setattr(loss_mod, "linear_cross_entropy", spy)
    batch = DuplexCollator(pad_id=vocab.silence_id)(demo_rows[:2])
    classes = batch.pop("classes")
    no_audio = LossWeights(speech=0, silent_audio=0).table()
    DuplexLoss(no_audio, "chunked")(model, dict(batch), classes)
    tgt = F.pad(classes[:, 1:], (0, 1))
    text = ((tgt >= TokenClass.SILENCE_SLOT) & (tgt <= TokenClass.TEXT)).sum().item()
    assert seen == [text] and text < 0.5 * batch["input_ids"].numel()


def test_lora_model_uses_the_base_output_layer_with_its_trained_rows(tiny_backbone, demo_rows):
    from peft import get_peft_model

    from bayling_duplex.train.config import LoraSettings
    from bayling_duplex.train.hf_args import lora_config

    base, _, vocab = tiny_backbone
    model = get_peft_model(
        copy.deepcopy(base), lora_config(LoraSettings(r=4, dropout=0.0), list(vocab.control_ids))
    )
    check_hidden_state_forward(model)
    head = model.get_base_model().lm_head
    with torch.no_grad():  # trained rows that differ from the base rows
        head.token_adapter.trainable_tokens_delta["default"].add_(0.5)
    w = output_weight(model)
    torch.testing.assert_close(
        w[vocab.silence_id], head.token_adapter.base_layer.weight[vocab.silence_id] + 0.5
    )
    batch = DuplexCollator(pad_id=vocab.silence_id)(demo_rows[:3])
    weights = LossWeights(control=2.0).table()
    _assert_same(
        _loss_and_grads(model, DuplexLoss(weights, "full"), batch),
        _loss_and_grads(model, DuplexLoss(weights, "chunked"), batch),
    )


def test_an_output_layer_with_an_adapter_is_refused(tiny_backbone):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        copy.deepcopy(tiny_backbone[0]), LoraConfig(r=2, target_modules=["lm_head"])
    )
    with pytest.raises(ValueError, match=r"train\.loss_impl=full"):
        check_hidden_state_forward(model)


def test_training_with_the_chunked_loss_matches_the_full_loss(tmp_path):
    """A few steps of the SFT stage on the tiny model, same seed: per-step losses, held-out
    losses and every trained parameter agree between train.loss_impl=full and chunked."""
    from safetensors.torch import load_file

    from bayling_duplex.train.sft import run_sft

    data = build_small_demo(tmp_path / "demo", tmp_path / "cache")
    steps = ["train.max_steps=4", "train.save_steps=4", "train.loss_weights.control=2"]
    runs = {
        impl: run_sft(sft_conf(data, *steps, f"train.loss_impl={impl}"), tmp_path / impl)
        for impl in ("full", "chunked")
    }
    losses = {k: [h["loss"] for h in r["log_history"] if "loss" in h] for k, r in runs.items()}
    assert len(losses["full"]) == 4
    assert losses["chunked"] == pytest.approx(losses["full"], rel=1e-5)
    for key in ("eval_loss", "eval_text_loss", "eval_audio_loss"):
        assert runs["chunked"][key] == pytest.approx(runs["full"][key], rel=1e-4)
    a = load_file(tmp_path / "full" / "final" / "model.safetensors")
    b = load_file(tmp_path / "chunked" / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:  # four Adam steps of lr 2e-3 from equal gradients (to float rounding)
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-4, msg=name)
