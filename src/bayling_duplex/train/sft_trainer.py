"""``transformers.Trainer`` with the duplex loss and per-channel held-out losses, and the
callbacks both stages add to their trainer.

Two methods of :class:`DuplexTrainer` are overridden, nothing else:

* :meth:`DuplexTrainer.compute_loss` — the class-weighted loss of format §5
  instead of the model's plain CE (the collator passes ``classes``), by default
  without the full logits (:class:`~bayling_duplex.train.loss.DuplexLoss`); with
  ``train.user_unit_swap`` > 0, on user codes noised first (``train/augment.py``).
* :meth:`DuplexTrainer.evaluate` — held-out loss split by channel (text
  channel vs assistant audio), which the stock loop cannot report.

The callbacks (SFT and DPO): :class:`RunLoss` carries the sum of the training
losses in every checkpoint, so a resumed run reports the mean over all its steps;
:class:`StopOnInterrupt` turns Ctrl-C into "finish the step, save, stop"
(:class:`TrainingInterrupted`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import threading

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import ExportableState

from bayling_duplex.train.augment import swap_user_units
from bayling_duplex.train.loss import DuplexLoss, resolve_impl
from bayling_duplex.train.output_layer import check_hidden_state_forward

log = logging.getLogger("bayling_duplex.train")


class DuplexTrainer(Trainer):
    """``loss_impl`` is ``train.loss_impl`` (chunked, liger, full); ``audio_columns`` the
    audio ids ``(start, end)`` when ``train.channel_softmax`` is on, else None."""

    def __init__(
        self,
        *args,
        loss_weights: torch.Tensor,
        loss_impl: str = "chunked",
        audio_columns: tuple[int, int] | None = None,
        user_unit_swap: float = 0.0,
        audio_range: tuple[int, int] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.loss_weights = loss_weights
        if user_unit_swap > 0 and audio_range is None:
            raise ValueError("train.user_unit_swap needs the audio id range")
        self.user_unit_swap = user_unit_swap
        self.audio_range = audio_range
        self._swap_rng = torch.Generator()
        self._swap_at = (-1, 0)  # (global step, micro-batch within it) of the last noise
        impl = resolve_impl(loss_impl, self.args.device, audio_columns)
        if impl != "full":
            check_hidden_state_forward(self.model)
        self.duplex_loss = DuplexLoss(loss_weights, impl, audio_columns)
        # our loss is a per-micro-batch mean: let the Trainer divide by the accumulation steps
        self.model_accepts_loss_kwargs = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        classes = inputs.pop("classes")
        region = inputs.pop("user_speech", None)
        if self.user_unit_swap > 0 and model.training:
            # seeded by (run.seed, rank, step, micro-batch): a resumed run draws the same
            # noise, and no two ranks, steps or micro-batches share a stream
            step = self.state.global_step
            micro = self._swap_at[1] + 1 if self._swap_at[0] == step else 0
            self._swap_at = (step, micro)
            key = f"{self.args.seed}|{self.args.process_index}|{step}|{micro}".encode()
            self._swap_rng.manual_seed(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))
            inputs["input_ids"] = swap_user_units(
                inputs["input_ids"],
                classes,
                self.user_unit_swap,
                self.audio_range,
                self._swap_rng,
                region,
            )
        loss, outputs = self.duplex_loss(model, inputs, classes)
        return (loss, outputs) if return_outputs else loss

    @torch.no_grad()
    def evaluate(
        self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        dataloader = self.get_eval_dataloader(eval_dataset)
        model = self.model_wrapped if self.is_deepspeed_enabled else self.model
        model.eval()
        totals: dict[str, torch.Tensor] = {}
        weighted, batches = torch.zeros((), device=self.args.device), 0
        for inputs in dataloader:
            inputs = self._prepare_inputs(inputs)
            classes = inputs.pop("classes")
            inputs.pop("user_speech", None)
            with self.compute_loss_context_manager():
                figures = self.duplex_loss.figures(model, inputs, classes)
            weighted += figures.pop("weighted").detach().float()
            for k, v in figures.items():
                totals[k] = totals.get(k, 0) + v.detach().float()
            batches += 1
        keys = sorted(totals)
        stacked = torch.stack(
            [totals[k] for k in keys]
            + [weighted, torch.tensor(float(batches), device=weighted.device)]
        )
        stacked = self.accelerator.reduce(stacked, reduction="sum")
        t = dict(zip([*keys, "weighted", "batches"], stacked.tolist(), strict=True))
        metrics = {
            f"{metric_key_prefix}_loss": t["weighted"] / max(t["batches"], 1),
            f"{metric_key_prefix}_text_loss": t["text_sum"] / max(t["text_count"], 1),
            f"{metric_key_prefix}_audio_loss": t["audio_sum"] / max(t["audio_count"], 1),
        }
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(
            self.args, self.state, self.control, metrics
        )
        model.train()
        return metrics


# ----------------------------------------------------------------------------- both stages


class RunLoss(TrainerCallback, ExportableState):
    """The sum of the per-step training losses since step 0, saved in each checkpoint's
    ``trainer_state.json`` (``stateful_callbacks.RunLoss``).

    The Trainer's own ``training_loss`` is the mean over the steps of one ``train()``
    call; :meth:`train_loss` is the mean over every step of the run, the same whether
    the run was resumed or not. Set :attr:`trainer` after building the trainer.
    """

    def __init__(self) -> None:
        self.trainer = None
        self.before: float | None = 0.0  # loss sum of the steps before this train() call
        self.start_step = 0

    def loss_sum(self) -> float | None:
        t = self.trainer
        if self.before is None or t is None or not hasattr(t, "_total_loss_scalar"):
            return self.before
        # logged losses so far, plus those since the last log (the Trainer's own bookkeeping)
        return self.before + t._total_loss_scalar + float(t._tr_loss.item())

    def state(self) -> dict:
        return {"args": {}, "attributes": {"loss_sum": self.loss_sum()}}

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_step = state.global_step
        stored = state.stateful_callbacks.get(type(self).__name__)
        if state.global_step == 0:
            self.before = 0.0
        elif (
            isinstance(stored, dict)
            and (stored.get("attributes") or {}).get("loss_sum") is not None
        ):
            self.before = float(stored["attributes"]["loss_sum"])
        else:  # a checkpoint saved without this callback
            self.before = None
            log.warning(
                "the resumed checkpoint holds no loss sum: train_loss covers the resumed steps"
            )
        state.stateful_callbacks[type(self).__name__] = self.state()
        return control

    def train_loss(self, training_loss: float, global_step: int) -> float:
        """The mean loss over all ``global_step`` steps, given ``train()``'s ``training_loss``."""
        if self.before is None or global_step <= self.start_step:
            return training_loss
        return (self.before + training_loss * (global_step - self.start_step)) / global_step


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training at ``step``; ``checkpoint`` is what ``run.resume=true`` uses."""

    def __init__(self, step: int, checkpoint) -> None:
        self.step, self.checkpoint = step, checkpoint
        super().__init__(interrupt_message(step, checkpoint))


def interrupt_message(step: int | None, checkpoint) -> str:
    at = f"stopped at step {step}" if step is not None else "stopped"
    if checkpoint is None:
        return f"{at}, before any checkpoint was saved: a rerun starts from scratch"
    return f"{at}; resume with run.resume=true (it continues from {checkpoint})"


class StopOnInterrupt(TrainerCallback):
    """Ctrl-C (SIGINT) during training: finish the current step, save a checkpoint, stop.

    Used as a context manager around ``trainer.train()``; a second Ctrl-C stops at
    once. Only in a single process: the ranks of a launch would each see the signal
    at another step and save out of step, so there Ctrl-C interrupts as usual.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> StopOnInterrupt:
        single = int(os.environ.get("WORLD_SIZE", "1")) == 1
        if single and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)  # next: at once
        log.warning("Ctrl-C: saving a checkpoint after this step, then stopping (again: at once)")

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested:
            control.should_save = True
            control.should_training_stop = True
        return control


def train_resumable(trainer, run_dir, resume: bool, interrupt: StopOnInterrupt):
    """``trainer.train()`` for a stage: from the run's last complete checkpoint when
    ``resume``; a Ctrl-C caught by ``interrupt`` ends as :class:`TrainingInterrupted`
    naming the checkpoint a resume will use. Returns ``(result, resumed_from, seconds)``."""
    import time

    from bayling_duplex.model.checkpoint import last_trainer_checkpoint
    from bayling_duplex.train.hf_args import finish_wandb

    start = last_trainer_checkpoint(run_dir) if resume else None
    if resume and start is None:
        log.warning("run.resume=true but %s holds no checkpoint: starting from scratch", run_dir)
    t0 = time.perf_counter()
    with interrupt:
        result = trainer.train(resume_from_checkpoint=str(start) if start else None)
    seconds = time.perf_counter() - t0
    if interrupt.requested:
        finish_wandb()
        raise TrainingInterrupted(trainer.state.global_step, last_trainer_checkpoint(run_dir))
    return result, start, seconds
