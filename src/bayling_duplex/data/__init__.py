"""Data: from scripts and recipes to built, fingerprinted datasets.

The demo corpus and its toy codec (``demo``), scenario synthesis (``synthesis``),
waveform-level mixing (``mixer``), typed recipes and fingerprints (``recipe``),
the sharded build (``build``), loading a build for training (``load``), preference
pairs at decision points (``pairs``) and their build (``pair_build``). The
command is ``python -m bayling_duplex.data`` (:mod:`bayling_duplex.cli.data`).

May import: ``format``, ``audio``, ``model`` (tokenizers), ``runtime``.
"""
