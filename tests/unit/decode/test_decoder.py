"""Streaming decoder: same tokens as a per-token loop of the released runtime, batched or not.

The reference below is written from the released BayLing-Duplex
``stream_audio_tokens`` (greedy): one forward for the user block, then one
forward per sampled token, text slots with the audio ids masked, audio frames
with everything else masked, the silence penalty only while listening, and the
stop after ``max_epad`` [EPAD]s (or EOS) once the block is complete.

The tiny backbone is re-randomised with larger weights and given an LM-head
bias that confines text slots to the control tokens and a few words, so greedy
decoding speaks, stops and varies with the input.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil

import numpy as np
import pytest
import torch
from transformers import DynamicCache

from bayling_duplex.cli.infer import InputError, UserInput, check_inputs, main, read_inputs
from bayling_duplex.decode.config import DecodeConfig
from bayling_duplex.decode.decoder import DuplexDecoder
from bayling_duplex.decode.events import (
    STOP_END_OF_INPUT,
    STOP_EOS,
    STOP_MAX_EPAD,
    AudioBlock,
    Epad,
    Onset,
    Stop,
    TextToken,
    result_to_sequence,
)
from bayling_duplex.decode.kv_cache import growing_cache
from bayling_duplex.format.interleave import split_channels
from bayling_duplex.format.layout import BlockLayout

LAYOUT = BlockLayout()  # 10:5:10
B, T = LAYOUT.frames_per_block, LAYOUT.slots_per_block


def _perturbed(model, vocab, seed: int, eos_candidate: bool = False):
    """A copy of ``model`` whose greedy picks vary: big random weights, a biased LM head."""
    m = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 if "embed" in name else 0.3))
        V, H = m.lm_head.weight.shape
        head = torch.nn.Linear(H, V, bias=True)
        head.weight.zero_()
        head.bias.fill_(-30.0)  # never picked ...
        words = list(range(257, 263))  # ... except a few text ids, the controls and audio
        cand = [vocab.silence_id, vocab.speak_id, vocab.pad_id, vocab.epad_id, *words]
        if eos_candidate:
            cand.append(vocab.eos_id)
        cand += list(range(vocab.audio_start_id, vocab.audio_end_id))
        idx = torch.tensor(cand)
        head.weight[idx] = torch.randn(len(cand), H, generator=g) * 0.5
        head.bias[idx] = 0.0
        head.bias[vocab.silence_id] = 2.0
        m.lm_head = head
    return m.eval()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny matmuls gain nothing from threads, and on a busy CPU they cost a lot."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def setup(tiny_backbone):
    model, _, vocab = tiny_backbone
    return _perturbed(model, vocab, seed=0), vocab


def _codes(seed: int, num_frames: int, vocab) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab.num_audio, size=num_frames)


@torch.inference_mode()
def reference_decode(model, vocab, codes, silence_penalty: float = 0.0, max_epad: int = 0):
    """The released per-token loop (greedy). ``max_epad=0``: never stop on [EPAD]s.

    As an extension, a negative ``silence_penalty`` is applied too (the released
    script applies only positive ones).
    """
    a0, a1 = vocab.audio_start_id, vocab.audio_end_id
    cache = DynamicCache(config=model.config)
    pos = 0
    assistant_count = epad_count = 0
    stop = None
    text, audio = [], []

    def feed(ids):
        nonlocal pos
        out = model(
            input_ids=torch.tensor([ids]),
            position_ids=torch.arange(pos, pos + len(ids)).unsqueeze(0),
            cache=cache,
            use_cache=True,
        )
        pos += len(ids)
        return out.logits[:, -1, :]

    for k in range(len(codes) // B):
        logits = feed([int(c) + a0 for c in codes[k * B : (k + 1) * B]])
        for _ in range(T):
            masked = logits.clone()
            masked[:, a0:a1] = float("-inf")
            reached = max_epad and epad_count >= max_epad
            if silence_penalty and not reached and assistant_count <= epad_count:
                masked[:, vocab.silence_id] -= silence_penalty
            tok = int(masked.argmax(-1)[0])
            text.append(tok)
            if tok == vocab.speak_id:
                assistant_count += 1
            elif tok == vocab.epad_id:
                epad_count += 1
                if max_epad and epad_count >= max_epad:
                    stop = stop or STOP_MAX_EPAD
            elif tok == vocab.eos_id:
                stop = stop or STOP_EOS
            logits = feed([tok])
        for _ in range(B):
            masked = torch.full_like(logits, float("-inf"))
            masked[:, a0:a1] = logits[:, a0:a1]
            tok = int(masked.argmax(-1)[0])
            audio.append(tok - a0)
            logits = feed([tok])
        if stop:
            break
    return text, audio, stop or STOP_END_OF_INPUT


def _assert_same(result, ref):
    text, audio, stop = ref
    assert result.text_ids.tolist() == text
    assert result.assistant_codes.tolist() == audio
    assert result.stop_reason == stop
    assert result.num_blocks * T == len(text)


# --------------------------------------------------------------------------- equivalence


def test_model_output_is_interesting(setup):
    model, vocab = setup
    text, _, _ = reference_decode(model, vocab, _codes(1, 12 * B, vocab))
    assert text.count(vocab.speak_id) >= 2
    assert text.count(vocab.epad_id) >= 2
    assert text.count(vocab.silence_id) >= 2
    assert len(set(text)) >= 6


@pytest.mark.parametrize("max_epad", [0, 2])
def test_one_at_a_time_and_batched_match_reference(setup, max_epad):
    model, vocab = setup
    dec = DuplexDecoder(model, vocab, LAYOUT, DecodeConfig(max_epad=max_epad))
    # different lengths, one with a trailing partial block, one of a single block
    dialogues = [_codes(10 + i, n, vocab) for i, n in enumerate((53, 120, 87, 10))]
    refs = [reference_decode(model, vocab, c, max_epad=max_epad) for c in dialogues]
    for codes, ref in zip(dialogues, refs, strict=True):
        _assert_same(dec.decode(codes), ref)
    for r, ref in zip(dec.decode_batch(dialogues), refs, strict=True):
        _assert_same(r, ref)
    if max_epad:
        assert {ref[2] for ref in refs} == {STOP_MAX_EPAD, STOP_END_OF_INPUT}


def test_stream_events_equal_batch_events(setup):
    model, vocab = setup
    dec = DuplexDecoder(model, vocab, LAYOUT, DecodeConfig(max_epad=3))
    codes = _codes(3, 15 * B, vocab)
    assert list(dec.stream(iter(codes.tolist()))) == list(dec.decode(codes).events)


def test_kv_cache_grows_by_one_block_per_block(setup, monkeypatch):
    model, vocab = setup
    dec = DuplexDecoder(model, vocab, LAYOUT)
    calls = []  # (input length, first position, cache length after the call)
    forward = model.forward

    def spy(*args, **kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        before = cache.get_seq_length()
        out = forward(*args, **kwargs)
        pos = kwargs["position_ids"]
        assert pos[0].tolist() == list(range(before, before + pos.shape[1]))
        calls.append((kwargs["input_ids"].shape[1], before, cache.get_seq_length()))
        return out

    monkeypatch.setattr(model, "forward", spy)
    n_blocks = 6
    for e in dec.stream(_codes(4, n_blocks * B, vocab)):
        if isinstance(e, AudioBlock):
            assert calls[-1][2] == (e.block + 1) * LAYOUT.block_len
    assert [c[0] for c in calls] == ([B] + [1] * (T + B)) * n_blocks  # history never re-fed
    for n, before, after in calls:
        assert after == before + n


def test_growing_cache_behaves_like_dynamic_cache(setup):
    model, _ = setup
    grow, plain = growing_cache(model.config, capacity=4), DynamicCache(config=model.config)
    g = torch.Generator().manual_seed(0)

    def step(n_rows: int, n_new: int) -> None:
        k, v = (torch.randn(n_rows, 2, n_new, 16, generator=g) for _ in range(2))
        torch.testing.assert_close(grow.update(k, v, 0), plain.update(k, v, 0), rtol=0, atol=0)

    def same() -> None:
        a, b = grow.layers[0], plain.layers[0]
        assert grow.get_seq_length() == plain.get_seq_length()
        torch.testing.assert_close((a.keys, a.values), (b.keys, b.values), rtol=0, atol=0)

    for n_new in (3, 1, 5, 1, 1):  # grows past the capacity twice
        step(3, n_new)
        same()
    for cache in (grow, plain):
        cache.batch_select_indices(torch.tensor([2, 0]))
        cache.crop(-2)
    same()
    step(2, 1)
    same()
    for cache in (grow, plain):
        cache.batch_repeat_interleave(2)
    step(4, 2)
    same()


# --------------------------------------------------------------------------- stopping


def test_stops_after_max_epad_with_the_block_complete(setup):
    model, vocab = setup
    codes = _codes(5, 20 * B, vocab)
    full = DuplexDecoder(model, vocab, LAYOUT, DecodeConfig(max_epad=0)).decode(codes)
    epads = np.flatnonzero(full.text_ids == vocab.epad_id)
    assert len(epads) >= 3 and full.stop_reason == STOP_END_OF_INPUT
    for n in (1, 2, 3):
        r = DuplexDecoder(model, vocab, LAYOUT, DecodeConfig(max_epad=n)).decode(codes)
        assert r.stop_reason == STOP_MAX_EPAD
        assert r.num_blocks == epads[n - 1] // T + 1  # the block of the n-th [EPAD], finished
        # no silence bias: stopping only truncates the same greedy decode
        assert r.text_ids.tolist() == full.text_ids[: r.num_blocks * T].tolist()
        assert r.assistant_codes.tolist() == full.assistant_codes[: r.num_blocks * B].tolist()
        assert r.events[-1] == Stop(r.num_blocks - 1, STOP_MAX_EPAD)


def test_stops_at_eos(tiny_backbone):
    model, _, vocab = tiny_backbone
    model = _perturbed(model, vocab, seed=1, eos_candidate=True)
    codes = _codes(6, 30 * B, vocab)
    r = DuplexDecoder(model, vocab, LAYOUT).decode(codes)
    assert r.stop_reason == STOP_EOS
    assert vocab.eos_id in r.text_ids[-T:].tolist()
    assert vocab.eos_id not in r.text_ids[:-T].tolist()
    _assert_same(r, reference_decode(model, vocab, codes))


# --------------------------------------------------------------------------- silence bias


def test_silence_bias_matches_released_penalty(setup):
    model, vocab = setup
    codes = _codes(7, 12 * B, vocab)
    for bias in (-1.5, 1.5):
        dec = DuplexDecoder(model, vocab, LAYOUT, DecodeConfig(silence_bias=bias, max_epad=2))
        _assert_same(dec.decode(codes), reference_decode(model, vocab, codes, -bias, max_epad=2))


def test_silence_bias_acts_only_while_listening(setup):
    model, vocab = setup
    codes = _codes(8, 12 * B, vocab)
    mute = DuplexDecoder(model, vocab, LAYOUT, DecodeConfig(silence_bias=100.0)).decode(codes)
    assert set(mute.text_ids.tolist()) == {vocab.silence_id}  # never starts to speak
    eager = DuplexDecoder(model, vocab, LAYOUT, DecodeConfig(silence_bias=-100.0)).decode(codes)
    opened = closed = 0
    for tok in eager.text_ids.tolist():
        if opened <= closed:  # listening
            assert tok != vocab.silence_id
        opened += tok == vocab.speak_id
        closed += tok == vocab.epad_id
    plain = DuplexDecoder(model, vocab, LAYOUT).decode(codes)
    assert (plain.text_ids == vocab.silence_id).sum() > (eager.text_ids == vocab.silence_id).sum()


# --------------------------------------------------------------------------- events, sequence


def test_events_match_text_channel_positions(setup):
    model, vocab = setup
    r = DuplexDecoder(model, vocab, LAYOUT).decode(_codes(9, 10 * B, vocab))
    seen = set()
    for e in r.events:
        if isinstance(e, Onset):
            assert r.text_ids[e.block * T + e.slot] == vocab.speak_id
        elif isinstance(e, Epad):
            assert r.text_ids[e.block * T + e.slot] == vocab.epad_id
        elif isinstance(e, TextToken):
            assert r.text_ids[e.block * T + e.slot] == e.token_id
        elif isinstance(e, AudioBlock):
            assert list(e.codes) == r.assistant_codes[e.block * B : (e.block + 1) * B].tolist()
            continue
        else:
            assert e == Stop(r.num_blocks - 1, STOP_END_OF_INPUT)
            continue
        seen.add(e.block * T + e.slot)
    quiet = {vocab.silence_id, vocab.pad_id, vocab.eos_id}
    assert seen == {i for i, t in enumerate(r.text_ids.tolist()) if t not in quiet}
    assert sum(isinstance(e, AudioBlock) for e in r.events) == r.num_blocks


def test_result_to_sequence_splits_back(setup):
    model, vocab = setup
    codes = _codes(11, 7 * B + 4, vocab)
    r = DuplexDecoder(model, vocab, LAYOUT).decode(codes)
    seq = result_to_sequence(r, vocab, LAYOUT)
    assert len(seq) == LAYOUT.seq_len(7)
    ch = split_channels(seq, LAYOUT, vocab)
    assert ch.user_codes.tolist() == codes[: 7 * B].tolist()
    assert ch.text_slots.tolist() == r.text_ids.tolist()
    assert ch.assistant_codes.tolist() == r.assistant_codes.tolist()


# --------------------------------------------------------------------------- sampling


def test_sampling_is_reproducible_and_masked(setup):
    model, vocab = setup
    cfg = DecodeConfig(temperature=1.0, top_p=0.9, seed=3)
    dec = DuplexDecoder(model, vocab, LAYOUT, cfg)
    codes = [_codes(12, 8 * B, vocab), _codes(13, 6 * B, vocab)]
    a, b = dec.decode_batch(codes), dec.decode_batch(codes)
    c = dec.decode_batch(codes, seed=4)
    for x, y in zip(a, b, strict=True):
        assert x.text_ids.tolist() == y.text_ids.tolist()
        assert x.assistant_codes.tolist() == y.assistant_codes.tolist()
    assert any(x.text_ids.tolist() != z.text_ids.tolist() for x, z in zip(a, c, strict=True))
    for x in a:
        assert not any(vocab.is_audio(t) for t in x.text_ids.tolist())
        assert ((x.assistant_codes >= 0) & (x.assistant_codes < vocab.num_audio)).all()


# --------------------------------------------------------------------------- bad input


def test_decoder_rejects_bad_codes(setup):
    model, vocab = setup
    dec = DuplexDecoder(model, vocab, LAYOUT)
    with pytest.raises(ValueError, match="outside"):
        dec.decode([0] * 12 + [vocab.num_audio] + [0] * 7)
    with pytest.raises(ValueError, match="outside"):
        dec.decode_batch([[1] * B, [-1] * B])
    with pytest.raises(ValueError, match="less than one block"):
        dec.decode([])
    with pytest.raises(ValueError, match="at least one"):
        dec.decode_batch([])
    with pytest.raises(ValueError, match="fewer than one block"):
        list(dec.stream([1, 2, 3]))
    with pytest.raises(ValueError, match="outside"):
        list(dec.stream([vocab.num_audio] * B))
    with pytest.raises(ValueError):
        DecodeConfig(top_p=0.0)


def test_infer_input_checks(tmp_path, caplog):
    plain = tmp_path / "codes.txt"
    plain.write_text(" ".join(map(str, range(23))))
    (x,) = read_inputs(plain)
    assert x.id == "codes" and len(x.user_codes) == 23
    with caplog.at_level(logging.WARNING):
        (y,) = check_inputs([x], num_audio=256, layout=LAYOUT)
    assert len(y.user_codes) == 20 and "dropping the trailing 3 frame(s)" in caplog.text
    with pytest.raises(InputError, match="outside"):
        check_inputs([UserInput("a", np.array([0] * 10 + [256]))], 256, LAYOUT)
    with pytest.raises(InputError, match="less than one block"):
        check_inputs([UserInput("a", np.array([], dtype=np.int64))], 256, LAYOUT)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(InputError, match="no dialogue"):
        read_inputs(empty)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"id": "x", "user_codes": [1, "2"]}))
    with pytest.raises(InputError, match="list of integers"):
        read_inputs(bad)


def test_infer_command(tiny_backbone, tiny_cache, tmp_path, capsys):
    model, tokenizer, _ = tiny_backbone
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    tokenizer.save_pretrained(ckpt)
    inp = tmp_path / "in.jsonl"
    rows = [{"id": "a", "user_codes": list(range(25))}, {"id": "b", "user_codes": [3] * 40}]
    inp.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "out.jsonl"
    argv = ["--checkpoint", str(ckpt), "--input", str(inp), "--out", str(out)]
    assert main([*argv, "--max-epad", "1", "--batch-size", "1"]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in recs] == ["a", "b"]
    assert len(recs[0]["text_ids"]) == recs[0]["num_blocks"] * T <= 2 * T
    assert recs[0]["events"][-1]["type"] == "stop"
    # a base folder without the duplex tokens is refused with the missing tokens named
    from bayling_duplex.model.tiny import TinyConfig, tiny_backbone_dir

    base = tiny_backbone_dir(TinyConfig(), tiny_cache)
    assert main(["--checkpoint", str(base), "--input", str(inp)]) == 2
    assert "[SILENCE]" in capsys.readouterr().err
    inp.write_text(json.dumps({"id": "c", "user_codes": [999] * 10}) + "\n")
    assert main(argv) == 2
    assert "outside [0, 256)" in capsys.readouterr().err


def test_infer_names_a_missing_checkpoint(tmp_path, capsys):
    inp = tmp_path / "in.txt"
    inp.write_text(" ".join(["3"] * 20))
    assert main(["--checkpoint", str(tmp_path / "nope"), "--input", str(inp)]) == 2
    err = capsys.readouterr().err
    assert f"no folder {tmp_path / 'nope'}" in err and "Repo id" not in err


def test_infer_ratio_must_match_the_checkpoint(tiny_backbone, tmp_path, capsys, caplog):
    from bayling_duplex.format.spec import FormatSpec
    from bayling_duplex.model.checkpoint import CheckpointMeta, write_meta

    model, tokenizer, _ = tiny_backbone
    bare = tmp_path / "bare"  # no duplex.json: any ratio, with a warning
    model.save_pretrained(bare)
    tokenizer.save_pretrained(bare)
    trained = tmp_path / "trained"
    shutil.copytree(bare, trained)
    write_meta(trained, CheckpointMeta(FormatSpec(), "demo", "sft"))  # 10:5:10
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"id": "a", "user_codes": [3] * 40}) + "\n")
    out = tmp_path / "out.jsonl"
    common = ["--input", str(inp), "--out", str(out)]
    assert main(["--checkpoint", str(trained), *common, "--ratio", "8:4:8"]) == 2
    err = capsys.readouterr().err
    assert "--ratio 8:4:8 does not match" in err and "10:5:10" in err
    assert main(["--checkpoint", str(trained), *common, "--ratio", "10:5:10"]) == 0
    assert json.loads(out.read_text())["num_blocks"] == 4
    with caplog.at_level(logging.WARNING):
        assert main(["--checkpoint", str(bare), *common, "--ratio", "8:4:8"]) == 0
    assert "has no duplex.json" in caplog.text and "8:4:8" in caplog.text
    assert json.loads(out.read_text())["num_blocks"] == 5  # 40 frames in blocks of 8
