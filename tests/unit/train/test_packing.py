"""Packing (train/collate.py): by position ids with no mask, or with the dense 4-D mask;
packed logits equal separate forwards in every attention path this CPU has."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap

import pytest
import torch

from bayling_duplex.train.collate import DuplexCollator, pack_attention

LENGTHS = (7, 5, 9)


def _rows(vocab):
    out, start = [], vocab.audio_start_id
    for i, n in enumerate(LENGTHS):
        ids = [start + 17 * i + j for j in range(n)]
        out.append({"input_ids": ids, "classes": [1] * n})
    return out


def _separate_logits(model, rows) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat(
            [model(torch.tensor([r["input_ids"]]), use_cache=False).logits[0] for r in rows]
        )


def test_position_id_packing_holds_no_square_mask(tiny_backbone):
    rows = _rows(tiny_backbone[2])
    batch = DuplexCollator(pad_id=0, pack=True, attention="position_ids")(rows)
    total = sum(LENGTHS)
    assert "attention_mask" not in batch
    assert batch["position_ids"].tolist() == [[*range(7), *range(5), *range(9)]]
    for name, t in batch.items():
        assert t.shape == (1, total), name  # nothing of shape [.., L, L]
    dense = DuplexCollator(pad_id=0, pack=True, attention="mask")(rows)
    assert dense["attention_mask"].shape == (1, 1, total, total)  # the eager fallback's


@pytest.mark.parametrize(
    ("attn", "mode"),
    [("eager", "mask"), ("sdpa", "mask"), ("eager", "position_ids"), ("sdpa", "position_ids")],
)
def test_packed_logits_equal_separate_logits(tiny_backbone, attn, mode):
    model = copy.deepcopy(tiny_backbone[0]).eval()
    model.set_attn_implementation(attn)
    rows = _rows(tiny_backbone[2])
    batch = DuplexCollator(pad_id=0, pack=True, attention=mode)(rows)
    batch.pop("classes")
    with torch.no_grad():
        packed = model(**batch, use_cache=False).logits[0]
    torch.testing.assert_close(packed, _separate_logits(model, rows), atol=1e-5, rtol=1e-4)


FLEX_PROBE = textwrap.dedent(
    """
    import torch
    from bayling_duplex.format.vocab import VocabConfig
    from bayling_duplex.model.embeddings import extend_vocabulary
    from bayling_duplex.model.tiny import TinyConfig, build_tiny_model, build_tiny_tokenizer
    from bayling_duplex.train.collate import DuplexCollator

    tok = build_tiny_tokenizer(TinyConfig())
    model = build_tiny_model(TinyConfig(), tok).eval()
    vocab, _ = extend_vocabulary(model, tok, VocabConfig())
    rows = [{"input_ids": [vocab.audio_start_id + 17 * i + j for j in range(n)],
             "classes": [1] * n} for i, n in enumerate(LENGTHS)]
    with torch.no_grad():
        ref = torch.cat([model(torch.tensor([r["input_ids"]]), use_cache=False).logits[0]
                         for r in rows])
        model.set_attn_implementation("flex_attention")
        batch = DuplexCollator(pad_id=0, pack=True, attention="position_ids")(rows)
        batch.pop("classes")
        out = model(**batch, use_cache=False).logits[0]
    print("MAXDIFF", (out - ref).abs().max().item())
    """
).replace("LENGTHS", repr(LENGTHS))


def test_flex_attention_packed_logits_if_it_runs_on_this_cpu():
    """Flex attention compiles its kernel; on some CPU builds of torch that fails or crashes
    the process, so it runs in a subprocess and is skipped when it cannot run at all."""
    try:
        run = subprocess.run(
            [sys.executable, "-c", FLEX_PROBE], capture_output=True, text=True, timeout=300
        )
    except subprocess.TimeoutExpired:
        pytest.skip("flex_attention did not finish compiling on this CPU within 300 s")
    lines = [x for x in run.stdout.splitlines() if x.startswith("MAXDIFF")]
    if not lines:
        tail = (run.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"flex_attention does not run on this CPU (exit {run.returncode}): {tail}")
    assert float(lines[0].split()[1]) < 1e-4


def test_auto_chooses_the_dense_mask_for_eager_and_position_ids_otherwise(tiny_backbone):
    model = copy.deepcopy(tiny_backbone[0])
    for attn, expected in (("sdpa", "position_ids"), ("eager", "mask")):
        model.set_attn_implementation(attn)
        assert pack_attention(model, "auto") == expected
    assert pack_attention(model, "position_ids") == "position_ids"

    class Remote(torch.nn.Module):  # a checkpoint's own modelling code
        config = model.config

    model.set_attn_implementation("sdpa")
    assert pack_attention(Remote(), "auto") == "mask"


def test_a_bad_attention_choice_is_refused():
    with pytest.raises(ValueError, match="attention must be one of"):
        DuplexCollator(pad_id=0, pack=True, attention="flash")
