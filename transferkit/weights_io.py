"""Read weight and checkpoint files safely: tensors only, never arbitrary pickled code."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from transferkit.errors import WeightsError


def safe_torch_load(path: str | Path) -> object:
    """torch.load with weights_only=True; WeightsError naming the file when it is missing, corrupt or unsafe."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found; check the path")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe content"
        raise WeightsError(f"{path}: refused to load: the file holds objects other than tensors and plain "
                           f"data ({first[:160]}); only load files you trust, re-saved as a state dict") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{path}: not a readable PyTorch file ({first[:160]}); re-download or re-save it") from None


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .pth/.pt/.bin (weights_only) or .safetensors; unwraps {'state_dict'|'model': ...}."""
    path = Path(path).expanduser()
    if path.suffix.lower() == ".safetensors":
        if not path.is_file():
            raise WeightsError(f"{path}: weights file not found; check the path")
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise WeightsError(f"{path}: not a readable safetensors file ({exc}); re-download it") from None
    obj = safe_torch_load(path)
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: not a state dict (a mapping of names to tensors); "
                           f"save one with torch.save(model.state_dict(), path)")
    return obj
