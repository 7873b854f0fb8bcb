"""New vocabulary rows in a model: initialise them, or grow the matrices to hold them.

The torch half of the vocabulary: :mod:`bayling_duplex.format.vocab` says which
ids the duplex tokens have; this module gives them embedding and LM-head rows.
"""

from __future__ import annotations

import torch

from bayling_duplex.format.vocab import (
    DuplexVocab,
    VocabConfig,
    check_vocab,
    extend_tokenizer,
    resolve_vocab,
    text_row_count,
)


@torch.no_grad()
def init_new_rows(model, token_ids: list[int], num_text_rows: int, cfg: VocabConfig) -> None:
    """Initialise the input-embedding and LM-head rows of ``token_ids`` by ``cfg.new_row_init``.

    Untied heads get their own rows initialised by the same rule from the head's
    text rows. Rows already present in the matrix are overwritten: padded rows
    of a released checkpoint are untrained.
    """
    if not token_ids:
        return
    idx = torch.tensor(token_ids, dtype=torch.long)
    matrices = [model.get_input_embeddings().weight]
    out = model.get_output_embeddings()
    if out is not None and out.weight.data_ptr() != matrices[0].data_ptr():
        matrices.append(out.weight)
    for w in matrices:
        if cfg.new_row_init == "mean_text":
            row = w[:num_text_rows].float().mean(dim=0)
            w[idx.to(w.device)] = row.to(w.dtype).expand(len(token_ids), -1)
        else:  # normal
            gen = torch.Generator().manual_seed(0)
            noise = torch.randn(len(token_ids), w.shape[1], generator=gen) * cfg.init_std
            w[idx.to(w.device)] = noise.to(device=w.device, dtype=w.dtype)
        if out is not None and w is out.weight and getattr(out, "bias", None) is not None:
            out.bias[idx.to(out.bias.device)] = 0.0


def extend_vocabulary(
    model, tokenizer, cfg: VocabConfig, pad_to_multiple_of: int = 64
) -> tuple[DuplexVocab, list[int]]:
    """Extend ``tokenizer`` and ``model`` with the duplex tokens; return the vocab and the new ids.

    * New ids inside the existing (padded) matrix reuse those rows.
    * New ids beyond it grow the matrix (rounded up to ``pad_to_multiple_of``).
    * Either way the new rows are initialised by ``cfg.new_row_init``.

    A tokenizer that already holds the tokens (a checkpoint of this project) is
    left as it is and no row is touched. The invariants are checked at the end.
    """
    num_text_rows = text_row_count(tokenizer)
    added = extend_tokenizer(tokenizer, cfg)
    vocab = resolve_vocab(tokenizer, cfg)
    new_ids = [tokenizer.convert_tokens_to_ids(t) for t in added]
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        model.resize_token_embeddings(
            len(tokenizer), pad_to_multiple_of=pad_to_multiple_of, mean_resizing=False
        )
    init_new_rows(model, new_ids, num_text_rows, cfg)
    check_vocab(vocab, model.get_input_embeddings().weight.shape[0])
    return vocab, new_ids
