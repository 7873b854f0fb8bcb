"""Vocabulary extension: ids, round trips, row initialisation (reuse and grow), invariants."""

from __future__ import annotations

import pytest
import torch

from bayling_duplex.format.vocab import (
    GLM4_CHAT_SPECIALS,
    VocabConfig,
    VocabError,
    count_audio_tokens,
    resolve_vocab,
    text_row_count,
)
from bayling_duplex.model.backbone import ModelConfig, load_backbone, load_trained
from bayling_duplex.model.embeddings import extend_vocabulary
from bayling_duplex.model.tiny import TinyConfig, build_tiny_model, build_tiny_tokenizer

SMALL = TinyConfig(
    text_vocab_size=300,
    num_audio_tokens=40,
    hidden_size=16,
    intermediate_size=32,
    num_heads=2,
    num_kv_heads=1,
)


def _fresh(cfg: TinyConfig = SMALL):
    tok = build_tiny_tokenizer(cfg)
    return build_tiny_model(cfg, tok), tok


def test_tiny_layout_matches_glm4voice_order():
    tok = build_tiny_tokenizer(SMALL)
    n_text = text_row_count(tok)
    ids = tok.convert_tokens_to_ids(list(GLM4_CHAT_SPECIALS))
    assert ids == list(range(n_text, n_text + len(GLM4_CHAT_SPECIALS)))
    start, n = count_audio_tokens(tok, VocabConfig())
    assert start == n_text + len(GLM4_CHAT_SPECIALS)
    assert n == SMALL.num_audio_tokens


def test_extension_reuses_padded_rows_and_initialises_them():
    model, tok = _fresh()
    rows_before = model.get_input_embeddings().weight.shape[0]
    n_text = text_row_count(tok)
    vocab, new_ids = extend_vocabulary(model, tok, VocabConfig())
    # released order: [SILENCE] [PAD] [EPAD] right after the last audio id
    assert new_ids == [vocab.audio_end_id, vocab.audio_end_id + 1, vocab.audio_end_id + 2]
    assert [vocab.silence_id, vocab.pad_id, vocab.epad_id] == new_ids
    assert vocab.speak_id == tok.convert_tokens_to_ids("<|assistant|>")
    emb = model.get_input_embeddings().weight
    assert emb.shape[0] == rows_before  # reuse: no resize
    mean = emb[:n_text].mean(0)
    for i in new_ids:
        torch.testing.assert_close(emb[i], mean)
        torch.testing.assert_close(model.lm_head.weight[i], model.lm_head.weight[:n_text].mean(0))


def test_extension_grows_matrix_when_ids_fall_outside():
    cfg = TinyConfig(**{**SMALL.__dict__, "vocab_pad_multiple": 1, "vocab_spare_rows": 0})
    model, tok = _fresh(cfg)
    rows_before = model.get_input_embeddings().weight.shape[0]
    assert rows_before == len(tok)
    _vocab, new_ids = extend_vocabulary(model, tok, VocabConfig(), pad_to_multiple_of=8)
    rows = model.get_input_embeddings().weight.shape[0]
    assert rows > rows_before and rows % 8 == 0 and max(new_ids) < rows
    assert model.lm_head.weight.shape[0] == rows
    n_text = text_row_count(tok)
    for i in new_ids:
        torch.testing.assert_close(
            model.get_input_embeddings().weight[i],
            model.get_input_embeddings().weight[:n_text].mean(0),
        )


def test_normal_rule_differs_from_mean():
    model, tok = _fresh()
    _, new_ids = extend_vocabulary(model, tok, VocabConfig(new_row_init="normal", init_std=0.5))
    w = model.get_input_embeddings().weight[new_ids]
    assert w.std() > 0.2
    assert not torch.allclose(w[0], w[1])


def test_extension_is_idempotent_and_round_trips(tmp_path):
    model, tok = _fresh()
    vocab, _ = extend_vocabulary(model, tok, VocabConfig())
    before = model.get_input_embeddings().weight.detach().clone()
    vocab2, again = extend_vocabulary(model, tok, VocabConfig())
    assert again == [] and vocab2 == vocab
    torch.testing.assert_close(model.get_input_embeddings().weight, before)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model3, tok3, vocab3 = load_trained(tmp_path, VocabConfig())
    assert vocab3 == vocab
    sample = "Hi, what time is it?[SILENCE]<|assistant|>[PAD][EPAD]<|audio_3|>"
    assert tok3(sample)["input_ids"] == tok(sample)["input_ids"]
    torch.testing.assert_close(model3.get_input_embeddings().weight, before)


def test_custom_token_strings():
    model, tok = _fresh()
    cfg = VocabConfig(silence_token="<listen>", pad_token="<pad>", epad_token="<stop>")
    _vocab, new_ids = extend_vocabulary(model, tok, cfg)
    assert tok.convert_ids_to_tokens(new_ids) == ["<listen>", "<pad>", "<stop>"]


def test_load_trained_without_control_tokens_names_them(tmp_path):
    model, tok = _fresh()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(VocabError, match=r"\[SILENCE\].*\[PAD\].*\[EPAD\]"):
        load_trained(tmp_path, VocabConfig())


def test_non_contiguous_audio_is_rejected():
    from tokenizers import AddedToken

    tok = build_tiny_tokenizer(SMALL)
    # a code beyond a gap: <|audio_41|> exists but <|audio_40|> does not
    tok.add_tokens([AddedToken("<|audio_41|>", special=True)], special_tokens=True)
    with pytest.raises(VocabError, match="hole"):
        count_audio_tokens(tok, VocabConfig())


def test_resolve_requires_extension():
    tok = build_tiny_tokenizer(SMALL)
    with pytest.raises(VocabError, match="extend it first"):
        resolve_vocab(tok, VocabConfig())


def test_tiny_backbone_builds_offline_and_deterministically(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    a = load_backbone(ModelConfig(tiny=SMALL), VocabConfig(), tmp_path / "a")
    b = load_backbone(ModelConfig(tiny=SMALL), VocabConfig(), tmp_path / "b")
    assert a[2] == b[2]
    for (na, pa), (nb, pb) in zip(
        a[0].state_dict().items(), b[0].state_dict().items(), strict=True
    ):
        assert na == nb
        torch.testing.assert_close(pa, pb)
    assert (tmp_path / "a" / f"tiny-{SMALL.fingerprint()}" / "tokenizer.json").is_file()


def test_default_tiny_size(tiny_backbone):
    model, _, vocab = tiny_backbone
    n = sum(p.numel() for p in model.parameters())
    assert 100_000 < n < 2_000_000
    assert vocab.num_audio == TinyConfig().num_audio_tokens
