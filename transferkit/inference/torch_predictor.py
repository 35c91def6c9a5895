"""The PyTorch backend: a transferkit checkpoint's TransferModel, rebuilt without weight downloads."""

from __future__ import annotations

import numpy as np
import torch

from transferkit.data.loading import default_eval_batch_size
from transferkit.device import resolve_device
from transferkit.errors import TransferkitError
from transferkit.inference.batches import default_decode_threads
from transferkit.inference.predictor import Predictor
from transferkit.model.checkpoint_format import SavedModel
from transferkit.tasks import build_task


def channels_last_pays(model, device: torch.device) -> bool:
    """channels_last for convolutional models on CPU and CUDA, as training's `auto` chooses."""
    return bool(getattr(model, "is_convolutional", False)) and device.type in ("cpu", "cuda")


class TorchPredictor(Predictor):
    """A transferkit checkpoint's TransferModel, rebuilt without weight downloads, in eval mode on `device`."""

    def __init__(self, checkpoint: SavedModel, device: str | torch.device = "auto", batch_size: int | None = None,
                 decode_threads: int | None = None):
        from transferkit.model.build import build_model
        from transferkit.plugins import load_plugins
        from transferkit.recipe.spec import ExperimentSpec

        load_plugins()  # a plugin may register the backbone
        self.checkpoint = checkpoint
        self.source = checkpoint.path
        self.classes = checkpoint.classes
        self.preprocessing = checkpoint.preprocessing
        self.recipe = checkpoint.recipe
        self.spec = ExperimentSpec.model_validate(checkpoint.recipe)
        self.task = build_task(self.spec, self.classes, (checkpoint.task or {}).get("state"))
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        model = build_model(self.spec, len(self.classes), pretrained=False).model
        try:
            model.load_state_dict(checkpoint.state_dict)
        except RuntimeError as exc:
            first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
            raise TransferkitError(f"{self.source}: weights do not fit the recipe's model ({first}); "
                                   f"the checkpoint may come from another version of the recipe") from None
        self.channels_last = channels_last_pays(model, self.device)
        memory_format = torch.channels_last if self.channels_last else torch.preserve_format
        self.model = model.to(self.device, memory_format=memory_format).eval()
        self.batch_size = batch_size or default_eval_batch_size(self.device, 64, self.preprocessing.input_size)
        self.decode_threads = decode_threads or default_decode_threads(self.device)

    def logits(self, images: torch.Tensor) -> np.ndarray:
        """The head's outputs (N, C) of uint8 (N, 3, S, S) images, in fp32."""
        with torch.inference_mode():
            x = images.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return self.model(x).float().cpu().numpy()
