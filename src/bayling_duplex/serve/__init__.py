"""Talk to a model live: the streaming full-duplex server, its browser page and client.

``wire`` is the wire format (pure), ``stream_codec`` codes a live waveform block by
block, ``voice`` renders what the assistant says as audio, ``engine`` runs one
decoding step for every due session in a shared batch
(:class:`~bayling_duplex.decode.shared.SharedBatch`), ``scheduler`` admits sessions
and batches them, ``app`` is the Starlette application (WebSocket, page, status),
``client`` streams a WAV in real time and records the session. The command is
``python -m bayling_duplex.serve`` (:mod:`bayling_duplex.cli.serve`); docs/serving.md.

May import: ``eval``, ``data``, ``decode``, ``model``, ``audio``, ``format``, ``config``,
``runtime`` (a sibling of ``train``: neither imports the other).
"""
