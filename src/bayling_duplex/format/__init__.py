"""The duplex format: the bottom layer, pure Python and numpy, no torch.

Time (frames, blocks, slots: ``layout``), typed dialogue records (``records``),
the vocabulary's ids (``vocab``), one format spec with its JSON form (``spec``),
timeline → interleaved sequence and back (``interleave``) and the block grid
for a person to check (``render``).

May import: nothing else of this package (``bayling_duplex.runtime`` excepted).
"""
