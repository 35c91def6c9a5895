"""OpenVINO IR (.xml with its .bin) converted from the fp32 ONNX export; the metadata goes into the IR's rt_info."""

from __future__ import annotations

from pathlib import Path

from transferkit.errors import TransferkitError

INSTALL = "pip install 'transferkit[openvino]'"
RT_SECTION = "transferkit"  # rt_info/transferkit/<key> holds metadata key transferkit.<key>


def openvino():
    """The openvino module, or a one-line error saying how to install it."""
    try:
        import openvino as ov
    except ImportError:
        raise TransferkitError(f"OpenVINO is not installed; {INSTALL}") from None
    return ov


def write_openvino(fp32: Path, path: Path, metadata: dict[str, str]) -> None:
    """`path` (.xml) and its weights beside it (.bin), fp32 weights (not the fp16 compression save_model defaults to)."""
    ov = openvino()
    model = ov.convert_model(str(fp32))
    for key, value in metadata.items():
        model.set_rt_info(value, [RT_SECTION, key.removeprefix(f"{RT_SECTION}.")])
    ov.save_model(model, str(path), compress_to_fp16=False)


def read_rt_metadata(model) -> dict[str, str]:
    """The transferkit metadata an IR carries in its rt_info (empty when it has none)."""
    if not model.has_rt_info([RT_SECTION]):
        return {}
    section = model.get_rt_info()[RT_SECTION]
    return {f"{RT_SECTION}.{key}": model.get_rt_info([RT_SECTION, key]).astype(str) for key in section}
