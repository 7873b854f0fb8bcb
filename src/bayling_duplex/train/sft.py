"""The SFT stage: ``python -m bayling_duplex.train sft`` (setup → train → save, in numbered steps)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from bayling_duplex.train.hf_args import (
    check_lora_targets,
    configure_wandb,
    finish_wandb,
    lora_config,
    training_kwargs,
)

log = logging.getLogger("bayling_duplex.sft")


def training_arguments(conf, run_dir: Path, has_eval: bool):
    """transformers' ``TrainingArguments`` of this run: the generic mapping and SFT's sampling."""
    from transformers import TrainingArguments

    t = conf.train
    return TrainingArguments(
        **training_kwargs(
            t,
            conf.optim,
            conf.run,
            conf.deepspeed.config,
            run_dir,
            has_eval,
            train_sampling_strategy="group_by_length" if t.group_by_length else "random",
            length_column_name="num_blocks",
        )
    )


def stop_after(step: int):
    """A callback that saves and stops at ``step``: a run that dies mid-way, for resume tests."""
    from transformers import TrainerCallback

    class StopAfter(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= step:
                control.should_save = True
                control.should_training_stop = True
            return control

    return StopAfter()


def _meta_layout(train_ds, layout, read, refusal: str) -> tuple[int, int]:
    """``(frames_per_block, slots_per_block)`` for a collator that reads each row's
    ``meta`` with ``read``; ``refusal`` (naming the key) when no row of the first 256
    records it."""
    head = train_ds.select(range(min(len(train_ds), 256)))
    if all(read(r) is None for r in head):
        raise ValueError(refusal)
    return (layout.frames_per_block, layout.slots_per_block)


def _pause_layout(conf, train_ds, layout) -> tuple[int, int] | None:
    """What the collator needs to mark hesitation-pause slots, or None when
    ``train.loss_weights.pause_silence`` is unset. Refused, naming the key, when the
    training data records no pauses (a build before they were recorded, or given
    timelines, whose pauses are not known)."""
    if conf.train.loss_weights.pause_silence is None:
        return None
    from bayling_duplex.train.collate import row_pauses

    return _meta_layout(
        train_ds,
        layout,
        row_pauses,
        "train.loss_weights.pause_silence is set, but the training data records no "
        f"hesitation pauses in its rows' meta ({conf.data.path}): rebuild it with "
        "`python -m bayling_duplex.data build ... overwrite=true`, or unset the key",
    )


def _speech_layout(conf, train_ds, layout) -> tuple[int, int] | None:
    """What the collator needs to mark the user's speech frames, or None unless
    ``train.user_unit_swap_scope`` is ``speech`` (with a swap share set). Refused, naming
    the key, when the training data records no speech segments in its rows' meta."""
    if conf.train.user_unit_swap <= 0 or conf.train.user_unit_swap_scope != "speech":
        return None
    from bayling_duplex.train.collate import row_segments

    return _meta_layout(
        train_ds,
        layout,
        row_segments,
        "train.user_unit_swap_scope=speech, but the training data records no user "
        f"speech segments in its rows' meta ({conf.data.path}): use "
        "train.user_unit_swap_scope=all, or rebuild the data",
    )


def run_sft(conf, run_dir: Path) -> dict:
    """Train; write checkpoints, ``final/`` and ``summary.json`` into ``run_dir``; return the summary."""
    from bayling_duplex.data.load import load_training_data, manifest_format
    from bayling_duplex.model.backbone import load_backbone
    from bayling_duplex.model.checkpoint import CheckpointMeta, copy_codec, write_meta
    from bayling_duplex.runtime import is_main_process, write_json
    from bayling_duplex.train.collate import DuplexCollator, pack_attention
    from bayling_duplex.train.sft_trainer import (
        DuplexTrainer,
        RunLoss,
        StopOnInterrupt,
        train_resumable,
    )

    run_dir = Path(run_dir)
    finish_wandb()  # an earlier job of this process (a sweep) may have left its run open
    configure_wandb(conf.run.wandb, run_dir)
    # 1. backbone with the duplex vocabulary (tiny one cached in the run folder)
    model, tokenizer, vocab = load_backbone(conf.model, conf.vocab, run_dir / "backbone")
    # 2. data, checked against this vocabulary, data.recipe's format and the model's positions
    train_ds, eval_ds, manifest = load_training_data(
        conf.data,
        vocab,
        tokenizer,
        conf.train.eval_dialogues,
        conf.model,
        conf.vocab,
        max_positions=getattr(model.config, "max_position_embeddings", None),
    )
    pause_layout = _pause_layout(conf, train_ds, manifest_format(manifest).layout)
    speech_layout = _speech_layout(conf, train_ds, manifest_format(manifest).layout)
    # 3. optional LoRA
    if conf.lora.enabled:
        from peft import get_peft_model

        check_lora_targets(model, conf.lora)
        # the duplex tokens' input and output rows stay trainable next to the adapters
        model = get_peft_model(model, lora_config(conf.lora, list(vocab.control_ids)))
    # 4. trainer
    args = training_arguments(conf, run_dir, eval_ds is not None)
    run_loss, interrupt = RunLoss(), StopOnInterrupt()
    callbacks = [run_loss, interrupt]
    if conf.train.stop_after_steps:
        callbacks.append(stop_after(conf.train.stop_after_steps))
    behaviour = _behaviour_callback(conf, manifest, tokenizer, vocab)
    if behaviour is not None:
        callbacks.append(behaviour)
    trainer = DuplexTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=DuplexCollator(
            pad_id=vocab.silence_id,
            pack=conf.train.pack,
            attention=pack_attention(model, conf.train.pack_attention),
            pause_layout=pause_layout,
            speech_layout=speech_layout,
        ),
        processing_class=tokenizer,
        callbacks=callbacks,
        loss_weights=conf.train.loss_weights.table(),
        loss_impl=conf.train.loss_impl,
        audio_columns=(
            (vocab.audio_start_id, vocab.audio_end_id) if conf.train.channel_softmax else None
        ),
        user_unit_swap=conf.train.user_unit_swap,
        audio_range=(vocab.audio_start_id, vocab.audio_end_id),
    )
    run_loss.trainer = trainer
    if behaviour is not None:
        behaviour.trainer = trainer
    # 5. train (Ctrl-C: the step ends, a checkpoint is saved, TrainingInterrupted)
    result, resume, seconds = train_resumable(trainer, run_dir, conf.run.resume, interrupt)
    stopped_early = (
        bool(conf.train.stop_after_steps) and trainer.state.global_step < trainer.state.max_steps
    )
    metrics = trainer.evaluate() if eval_ds is not None and not stopped_early else {}
    # 6. save (every rank: ZeRO-3 gathers the weights collectively)
    final = run_dir / "final"
    if not stopped_early:
        trainer.save_model(str(final))
    summary = {
        "stage": "sft",
        "run_dir": str(run_dir),
        "steps": trainer.state.global_step,
        "stopped_early": stopped_early,
        "resumed_from": str(resume) if resume else None,
        # the mean over every step of the run, resumed or not
        "train_loss": run_loss.train_loss(result.training_loss, trainer.state.global_step),
        "train_seconds": round(seconds, 1),
        "train_sequences": len(train_ds),
        "data": manifest["name"],
        **{k: round(v, 4) for k, v in metrics.items()},
        **(behaviour.last if behaviour is not None and not stopped_early else {}),
        "checkpoint": str(final) if not stopped_early else None,
        "log_history": trainer.state.log_history,
    }
    if is_main_process():
        if not stopped_early:
            tokenizer.save_pretrained(final)
            # what decoding needs to know about the data the model learnt
            codec = manifest.get("codec")
            if codec:  # a fitted codec travels with the checkpoint
                copy_codec(Path(conf.data.path) / codec["dir"], final)
            write_meta(
                final,
                CheckpointMeta(manifest_format(manifest), manifest["name"], "sft", codec=codec),
            )
        write_json(run_dir / "summary.json", summary)
        short = {k: v for k, v in summary.items() if k != "log_history"}
        print("SFT summary: " + json.dumps(short, indent=1))
    finish_wandb()
    return summary


def _behaviour_callback(conf, manifest: dict, tokenizer, vocab):
    """The in-training behaviour evaluation, when asked for and when held-out scripts exist."""
    n = conf.train.behaviour_dialogues
    if n <= 0:
        return None
    speech = bool(manifest.get("codec")) and conf.data.eval_scripts is None
    if conf.data.eval_scripts is None and manifest["name"] != "demo" and not speech:
        log.info("no data.eval_scripts: behaviour evaluation during training is off")
        return None
    from bayling_duplex.data.load import manifest_format
    from bayling_duplex.decode.config import DecodeConfig
    from bayling_duplex.eval.dialogues import EvalSetConfig, build_eval_items
    from bayling_duplex.eval.runner import behaviour_callback

    quarter = max(1, n // 4)
    codec = None
    if speech:  # held-out questions and voices, coded by the data's own codec
        from bayling_duplex.audio.units import UnitCodec

        codec = UnitCodec.load(Path(conf.data.path) / manifest["codec"]["dir"])
        src = {"source": "speech_demo", "recipe": conf.data.recipe}
    elif conf.data.eval_scripts is None:
        src = {"source": "demo"}
    else:
        src = {"source": "scripts_jsonl", "path": conf.data.eval_scripts}
    evalset = EvalSetConfig(
        **src,
        turn_taking=quarter,
        interruption=quarter,
        backchannel=quarter,
        hesitation=n - 3 * quarter,
    )
    spec = manifest_format(manifest)
    items = build_eval_items(
        evalset,
        spec,
        lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"],
        codec=codec,
    )
    return behaviour_callback(
        items, tokenizer, vocab, spec.layout, DecodeConfig(), conf.train.batch_size
    )
