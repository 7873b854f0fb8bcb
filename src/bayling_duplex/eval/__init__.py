"""The behaviour evaluation: dialogues to play, metrics, running a model, reports.

``dialogues`` builds the evaluation dialogues from held-out scripts, ``metrics``
judges decoded timing (pure functions), ``runner`` decodes a model on them and
``report`` writes report.json, summary.md and the plots. The command is
``python -m bayling_duplex.eval`` (:mod:`bayling_duplex.cli.eval`).

May import: ``format``, ``audio``, ``data``, ``model``, ``decode``, ``runtime``.
"""
