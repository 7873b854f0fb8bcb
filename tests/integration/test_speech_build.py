"""A small build of the real-speech default: codec fitted beside the data, checked, no marker."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("espeakng_loader")

from helpers import compose_conf

from bayling_duplex.data.load import DataMismatchError, check_manifest


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from bayling_duplex.cli.data import build_dataset

    root = tmp_path_factory.mktemp("speech")
    conf = compose_conf(
        "build",
        [
            "recipe=speech_demo",
            "recipe.train.count=240",
            "recipe.heldout.count=24",
            "recipe.shard_size=120",
            "recipe.codec.fit_minutes=1.5",
            f"output_dir={root / 'data'}",
            f"cache_dir={root / 'cache'}",
            "num_workers=2",
        ],
    )
    manifest = build_dataset(conf)
    return root / "data", manifest, conf


def test_the_codec_is_fitted_beside_the_data_and_its_silence_measured(built) -> None:
    from bayling_duplex.audio.units import UnitCodec

    path, manifest, _ = built
    codec = UnitCodec.load(path / "codec")
    assert manifest["codec"]["fingerprint"] == codec.fingerprint
    assert manifest["codec"]["name"] == codec.name
    assert manifest["silence_codes"] == list(codec.silence_codes)
    assert manifest["codec"]["fitted_on"]["seconds"] >= 90
    assert manifest["splits"]["train"]["sequences"] == 240
    assert manifest["splits"]["train"]["rejected"] == 0


def test_no_turn_final_code_is_a_marker(built) -> None:
    _, manifest, _ = built
    audit = manifest["splits"]["train"]["turn_end_audit"]
    assert audit["turn_final_codes"] > 400
    assert audit["never_inside_share"] < 0.05  # a marker code would put it near 1
    assert audit["distinct_final_codes"] > 30  # turns end on many units, not one


def test_training_refuses_data_whose_codec_was_replaced(built, tmp_path) -> None:
    import shutil

    from bayling_duplex.format.vocab import VocabConfig, extend_tokenizer, resolve_vocab
    from bayling_duplex.model.backbone import backbone_source, load_tokenizer

    path, manifest, conf = built
    tok = load_tokenizer(backbone_source(conf.model, conf.cache_dir))
    extend_tokenizer(tok, VocabConfig())
    vocab = resolve_vocab(tok, VocabConfig())
    check_manifest(manifest, vocab, tok, path)  # as built: accepted
    copy = tmp_path / "data"
    shutil.copytree(path, copy)
    info = json.loads((copy / "codec" / "codec.json").read_text())
    info["fingerprint"] = "0" * 12
    (copy / "codec" / "codec.json").write_text(json.dumps(info))
    with pytest.raises(DataMismatchError, match="codec fingerprint"):
        check_manifest(manifest, vocab, tok, copy)
    shutil.rmtree(copy / "codec")
    with pytest.raises(DataMismatchError, match="missing"):
        check_manifest(manifest, vocab, tok, copy)
