"""``transformers.Trainer`` with the duplex loss and per-channel held-out losses.

Two methods are overridden, nothing else:

* :meth:`DuplexTrainer.compute_loss` — the class-weighted loss of format §5
  instead of the model's plain CE (the collator passes ``classes``).
* :meth:`DuplexTrainer.evaluate` — held-out loss split by channel (text
  channel vs assistant audio), which the stock loop cannot report.
"""

from __future__ import annotations

import torch
from transformers import Trainer

from bayling_duplex.train.loss import channel_loss_sums, weighted_loss


class DuplexTrainer(Trainer):
    def __init__(self, *args, loss_weights: torch.Tensor, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.loss_weights = loss_weights
        # our loss is a per-micro-batch mean: let the Trainer divide by the accumulation steps
        self.model_accepts_loss_kwargs = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        classes = inputs.pop("classes")
        outputs = model(**inputs, use_cache=False)
        loss = weighted_loss(outputs.logits, inputs["input_ids"], classes, self.loss_weights)
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
            with self.compute_loss_context_manager():
                logits = model(**inputs, use_cache=False).logits
            for k, v in channel_loss_sums(logits, inputs["input_ids"], classes).items():
                totals[k] = totals.get(k, 0) + v.detach().float()
            weighted += (
                weighted_loss(logits, inputs["input_ids"], classes, self.loss_weights)
                .detach()
                .float()
            )
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
