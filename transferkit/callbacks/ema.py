"""Exponential moving average of the weights, evaluated beside the raw weights after every epoch (in the same pass
over each split: one read of the images, two forwards)."""

from __future__ import annotations

import torch

from transferkit.engine.callbacks import Callback, RunContext


class EMA(Callback):
    """avg = decay x avg + (1 - decay) x weights after every optimizer update; buffers (batch-norm statistics)
    are copied. Each split is evaluated with the averaged weights too, as ema_<split>_*."""

    def __init__(self, decay: float):
        self.decay = decay
        self.shadow: dict[str, torch.Tensor] | None = None
        self._pairs: tuple[list, list, list, list] = ([], [], [], [])

    @classmethod
    def from_run(cls, run: RunContext) -> "EMA | None":
        """On when train.ema is set."""
        return cls(run.spec.train.ema.decay) if run.spec.train.ema else None

    def on_fit_start(self, trainer) -> None:
        state = trainer.model.state_dict()  # tensors sharing the model's storage, valid for the whole fit
        if self.shadow is None:
            self.shadow = {k: v.detach().clone() for k, v in state.items()}
        self.shadow = {k: v.to(state[k].device) for k, v in self.shadow.items()}  # a resumed one comes on the CPU
        params = {name for name, _ in trainer.model.named_parameters()}
        averaged = [name for name in state if name in params]
        copied = [name for name in state if name not in params]
        self._pairs = ([self.shadow[n] for n in averaged], [state[n] for n in averaged],
                       [self.shadow[n] for n in copied], [state[n] for n in copied])

    @torch.no_grad()
    def after_update(self, trainer, update: int) -> None:
        averaged, current, copies, buffers = self._pairs
        torch._foreach_lerp_(averaged, current, 1.0 - self.decay)
        for target, value in zip(copies, buffers):
            target.copy_(value)

    def averaged_state(self, model) -> dict[str, torch.Tensor]:
        """The averaged weights as a state dict (copies)."""
        return {k: v.clone() for k, v in self.shadow.items()}

    def evaluation_weights(self, trainer) -> dict:
        return {"ema_": self.shadow} if self.shadow is not None else {}

    def state_dict(self) -> dict:
        return {"shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.shadow = state["shadow"]
