"""Backbones: loading, the tiny stand-in, GLM-4-Voice conversion, the checkpoint contract.

``backbone`` loads a tokenizer or model (tiny or a local folder), ``embeddings``
initialises the added vocabulary rows, ``tiny`` builds the offline stand-in,
``chatglm`` and ``glm_tokenizer`` convert the released GLM-4-Voice files, and
``checkpoint`` is the one place where a trained checkpoint's ``duplex.json`` is
written and read.

May import: ``format``, ``runtime``.
"""
