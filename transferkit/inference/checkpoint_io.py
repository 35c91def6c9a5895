"""Find a trained model's checkpoint: a run directory, a run root with one variant, or a checkpoint file."""

from __future__ import annotations

from pathlib import Path

from transferkit.errors import TransferkitError
from transferkit.model.checkpoint_format import SavedModel
from transferkit.rundir import RunDir


def _checkpoint_in(variant_dir: Path) -> Path | None:
    return RunDir(variant_dir).checkpoint()


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint file `path` names: itself, `<variant>/best.pt` (else last.pt), or the one variant of a run root."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if not path.exists():
        raise TransferkitError(f"{path}: no such run directory or checkpoint; give runs/<name>/<variant>, "
                               f"its best.pt, or an exported .onnx file")
    found = _checkpoint_in(path)
    if found:
        return found
    variants = sorted(p.name for p in path.iterdir() if p.is_dir() and _checkpoint_in(p))
    if len(variants) == 1:
        return _checkpoint_in(path / variants[0])
    if variants:
        raise TransferkitError(f"{path}: holds {len(variants)} variants ({', '.join(variants)}); "
                               f"name one, e.g. {path / variants[0]}")
    raise TransferkitError(f"{path}: no best.pt or last.pt here or in a variant folder below; "
                           f"give a run directory of a finished `transferkit run`")


def read_checkpoint(path: str | Path) -> SavedModel:
    """The model a run directory or checkpoint file holds, read by the checkpoint format's one reader."""
    return SavedModel.read(resolve_checkpoint(path))
