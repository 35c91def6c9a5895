"""Choosing the device and numeric precision a run uses."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from transferkit.errors import DeviceError


def mps_available() -> bool:
    """True on Apple silicon with a working MPS backend."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA, then MPS, then CPU; an explicit device must exist, else DeviceError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"train.device: '{name}' is not a device name; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"train.device: '{name}' asked for, but no CUDA GPU is available here; use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"train.device: '{name}' asked for, but only {torch.cuda.device_count()} CUDA device(s) "
                              f"exist; use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    elif device.type == "mps" and not mps_available():
        raise DeviceError(f"train.device: '{name}' asked for, but Apple MPS is not available here; use --device cpu or auto")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"train.device: '{name}' is not supported; use auto, cpu, cuda, cuda:N or mps")
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 on CUDA where supported, fp16 on older CUDA, fp32 elsewhere."""
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise DeviceError("train.precision: fp16 autocast is not supported on CPU; use bf16 or fp32")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def autocast(device: torch.device, precision: str):
    """The autocast context for a precision ('fp32': none)."""
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def describe_device(device: torch.device) -> str:
    """A short human description, e.g. 'cuda:0 (NVIDIA H100)' or 'cpu (2 threads)'."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(device)
