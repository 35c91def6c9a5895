"""Grad-CAM (the grad-cam package): where in an image a PyTorch checkpoint's answer comes from.

The target layer is the backbone's last module whose output is still a spatial map (N, C, H, W), H x W > 1: the
last convolutional stage of a torchvision or timm network (`layer4` of a ResNet, `features` of a torchvision
EfficientNet, `bn2` of a timm one), found by one forward pass, or the one named. What is explained: single_label,
the predicted class; multi_label, the label with the highest probability; regression, the first target (heat
where the image raises its value); or the class, label or target named.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from transferkit.errors import TransferkitError
from transferkit.inference.batches import ImagePreparer, read_batches
from transferkit.inference.predictor import Predictor, describe_item

INSTALL = "pip install 'transferkit[explain]'"


@dataclass
class Explanation:
    """One image's Grad-CAM: the model's view of it, the heat (0-1) over that view, what was explained, and the
    model's answer; or the reason it could not be read."""

    source: str
    image: np.ndarray | None = None  # (H, W, 3) uint8: resized and centre-cropped as the model sees it
    heatmap: np.ndarray | None = None  # (H, W) float32 in [0, 1]
    explained: str = ""  # the class, label or target the heat is for
    score: float = float("nan")  # its probability, or (regression) its predicted value
    answer: str = ""  # the model's answer in one line
    error: str | None = None

    @property
    def overlay(self) -> np.ndarray:
        """The heat drawn over the image (JET colours, half and half), (H, W, 3) uint8."""
        from pytorch_grad_cam.utils.image import show_cam_on_image

        return show_cam_on_image(self.image.astype(np.float32) / 255.0, self.heatmap, use_rgb=True)


def _grad_cam():
    try:
        from pytorch_grad_cam import GradCAM
    except ImportError:
        raise TransferkitError(f"Grad-CAM needs the grad-cam package; {INSTALL}") from None
    return GradCAM


def grad_cam_installed() -> bool:
    """True when the grad-cam package can be imported."""
    try:
        _grad_cam()
    except TransferkitError:
        return False
    return True


def spatial_layers(backbone: torch.nn.Module, input_size: int) -> dict[str, tuple[int, ...]]:
    """Every backbone module whose output is a spatial map (N, C, H, W with H x W > 1) -> that shape, in the order
    the modules finish in one forward pass of a blank image."""
    finished: dict[str, tuple[int, ...]] = {}
    hooks = []

    def record(name):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[-1] * output.shape[-2] > 1:
                finished.pop(name, None)  # a module run twice counts where it last finished
                finished[name] = tuple(output.shape)
        return hook

    for name, module in backbone.named_modules():
        if name:
            hooks.append(module.register_forward_hook(record(name)))
    parameter = next(backbone.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    try:
        with torch.no_grad():
            backbone(torch.zeros(1, 3, input_size, input_size, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    return finished


def target_layer(model, input_size: int, name: str | None = None, backbone_name: str = "the backbone"
                 ) -> tuple[str, torch.nn.Module]:
    """(name, module) of the layer Grad-CAM reads: `name` (in the backbone, `backbone.` optional) or the last
    spatial map. TransferkitError naming --layer and the candidates when there is none or the name is wrong."""
    backbone = model.backbone
    layers = spatial_layers(backbone, input_size)
    last = list(layers)[-4:]
    if name is None:
        if not layers or not getattr(model, "is_convolutional", True):
            raise TransferkitError(f"{backbone_name} is not a convolutional network, so it has no last feature map "
                                   f"to explain on its own; pass --layer NAME of a layer with a (N, C, H, W) output")
        chosen = last[-1]
    else:
        chosen = name.removeprefix("backbone.")
        modules = dict(backbone.named_modules())
        if chosen not in modules or not chosen:
            from transferkit.registry import suggest

            raise TransferkitError(f"--layer {name}: {backbone_name} has no such layer{suggest(chosen, list(modules))}; "
                                   f"its last spatial layers are {', '.join(last) or 'none'}")
        if chosen not in layers:
            raise TransferkitError(f"--layer {name}: its output is not a spatial map (N, C, H, W); choose a "
                                   f"convolutional layer, e.g. {', '.join(last) or 'none'}")
    return chosen, backbone.get_submodule(chosen)


def _explained_index(predictor: Predictor, target: str | None) -> int | None:
    """The output index `target` names (None: chosen per image)."""
    if target is None:
        return None
    if target not in predictor.classes:
        from transferkit.registry import suggest

        raise TransferkitError(f"--target {target}: the model has no {predictor.task.output_kind[:-1]} of that "
                               f"name{suggest(target, predictor.classes)}; it has {', '.join(predictor.classes)}")
    return predictor.classes.index(target)


def _answer_line(predictor: Predictor, answers: np.ndarray) -> str:
    fields = predictor.task.answer(answers, 3)
    if fields.get("values") is not None:
        return ", ".join(f"{name} {value:.3g}" for name, value in fields["values"].items())
    if fields.get("labels") is not None:
        return f"labels: {fields['label'] or 'none'}"
    return f"predicted {fields['label']} ({fields['probability']:.2f})"


def explain(predictor: Predictor, items: list, layer: str | None = None, target: str | None = None,
            batch_size: int = 8) -> tuple[str, list[Explanation]]:
    """(the layer's name, one Explanation per item in order) for a PyTorch checkpoint's predictor."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    GradCAM = _grad_cam()
    if not hasattr(predictor, "model") or not hasattr(predictor.model, "backbone"):
        raise TransferkitError(f"{predictor.source}: Grad-CAM needs the PyTorch checkpoint (its gradients); give "
                               f"the run directory or its best.pt, not an exported model")
    model = predictor.model
    name, module = target_layer(model, predictor.preprocessing.input_size, layer,
                                predictor.recipe.get("backbone", {}).get("name", "the backbone"))
    fixed = _explained_index(predictor, target)
    device = next(model.parameters()).device
    cam = GradCAM(model=model, target_layers=[module])
    found: dict[int, Explanation] = {}
    try:
        for batch in read_batches(items, ImagePreparer(predictor.preprocessing), batch_size, predictor.decode_threads):
            for position, error in batch.errors.items():
                found[position] = Explanation(describe_item(items[position], position), error=error)
            if not batch.positions:
                continue
            images = batch.images.to(device).float()
            with torch.no_grad():
                logits = model(images).float().cpu().numpy()
            chosen = [fixed if fixed is not None else predictor.task.explained_output(row) for row in logits]
            try:
                with torch.enable_grad():
                    heat = cam(input_tensor=images, targets=[ClassifierOutputTarget(c) for c in chosen])
            except RuntimeError as exc:  # e.g. the network changes the layer's output in place after it
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise TransferkitError(f"Grad-CAM at layer {name} of {predictor.source} failed ({first}); choose "
                                       f"another layer with --layer NAME") from None
            answers = predictor.task.answers(logits)
            for row, position in enumerate(batch.positions):
                found[position] = Explanation(
                    describe_item(items[position], position), batch.images[row].permute(1, 2, 0).numpy(),
                    heat[row].astype(np.float32), predictor.classes[chosen[row]], float(answers[row, chosen[row]]),
                    _answer_line(predictor, answers[row]))
    finally:
        cam.activations_and_grads.release()
    return name, [found[p] for p in sorted(found)]


def explainable(path: str | Path, device: str = "auto") -> Predictor:
    """The PyTorch predictor of a run directory or checkpoint; an exported file (ONNX, OpenVINO, TorchScript) is refused
    (it carries no gradients), as is a missing grad-cam package."""
    from transferkit.inference.backends import is_export
    from transferkit.inference.checkpoint_io import read_checkpoint
    from transferkit.inference.torch_predictor import TorchPredictor

    path = Path(path).expanduser()
    if is_export(path):
        kind = {".onnx": "ONNX", ".xml": "OpenVINO"}.get(path.suffix.lower(), "TorchScript")
        raise TransferkitError(f"{path}: an exported {kind} model cannot be explained (Grad-CAM needs PyTorch's "
                               f"gradients); give the run directory it was exported from, or its best.pt")
    _grad_cam()
    return TorchPredictor(read_checkpoint(path), device)


def top_loss_heatmaps(predictor: Predictor, paths: list[str]) -> list[Explanation] | None:
    """Grad-CAM of the predicted class for `paths` (evaluate's top losses), or None where it cannot be made: no
    files, an exported model, a network without a spatial map, grad-cam not installed."""
    if not paths or not hasattr(predictor, "model") or not grad_cam_installed():
        return None
    try:
        return explain(predictor, paths)[1]
    except TransferkitError:
        return None
