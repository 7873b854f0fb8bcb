"""Speech in and out of 12.5 Hz codes.

The codec interface and silence patterns (``codec``), GLM-4-Voice's Whisper-VQ
speech tokenizer (``whisper_vq``), manifests of audio dialogues (``manifest``),
the batch tokenizing pipeline (``tokenize``) and GLM-4-Voice's decoder hook
(``vocoder``).

May import: ``format``.
"""
