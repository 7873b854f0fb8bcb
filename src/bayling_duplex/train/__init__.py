"""The training stages: SFT and DPO on transformers/TRL, their loss and collators.

``loss`` and ``collate`` are the duplex loss and batching, ``sft_trainer`` the
``transformers.Trainer`` subclass, ``hf_args`` the one mapping of our settings to
``TrainingArguments`` (precision, LoRA, launch environment), ``sft`` and ``dpo``
the stages. The command is ``python -m bayling_duplex.train``
(:mod:`bayling_duplex.cli.train`).

May import: every layer below ``cli``.
"""
