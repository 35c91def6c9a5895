"""Read weight and checkpoint files safely: tensors only, never arbitrary pickled code."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import torch

from transferkit.errors import WeightsError


_TORCH_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation",
                      "In PyTorch 2.6", "Re-running `torch.load`", "WeightsUnpickler error:")


def _reason(exc: BaseException) -> str:
    """The informative line of a torch.load error (torch wraps it in several lines of advice), kept short."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(_TORCH_BOILERPLATE)]
    text = (useful or lines or [type(exc).__name__])[0]
    text = text.split(". ")[0].rstrip(".")
    return text[:160]


def safe_torch_load(path: str | Path) -> object:
    """torch.load with weights_only=True; WeightsError naming the file when it is missing, corrupt or unsafe.

    weights_only=True means the unpickler only rebuilds tensors and plain containers: a file whose
    pickle would import a function (os.system, a user class's __reduce__) is refused, never run.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise WeightsError(f"{path}: is a folder, not a weights file; give the path of the .pth/.pt file inside it")
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found; check the path")
    if path.stat().st_size == 0:
        raise WeightsError(f"{path}: weights file is empty (0 bytes); re-download it or save it again")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": the error below says enough
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsError(f"{path}: refused to load: the file holds objects other than tensors and plain "
                           f"data ({_reason(exc)}); only load files you trust, re-saved as a state dict "
                           f"with torch.save(model.state_dict(), path)") from None
    except (KeyError, IndexError, TypeError, AttributeError) as exc:  # random bytes or text confuse the unpickler
        raise WeightsError(f"{path}: not a PyTorch weights file (the unpickler failed: {type(exc).__name__} "
                           f"{_reason(exc)}); re-download it or re-save it with torch.save") from None
    except Exception as exc:  # RuntimeError (bad zip), EOFError (empty), OSError, ValueError, ...
        raise WeightsError(f"{path}: not a readable PyTorch file ({_reason(exc)}); re-download or re-save it") from None


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
