"""The target model: backbone + new head, with input normalisation folded in."""

from __future__ import annotations

import torch
from torch import nn


class TransferModel(nn.Module):
    """Backbone features -> head logits; takes images as 0-255 values (uint8 or float) and normalises them."""

    def __init__(self, backbone: nn.Module, head: nn.Module, mean, std, convolutional: bool = True):
        super().__init__()
        self.is_convolutional = convolutional  # channels_last pays for convolutions, not for patch-embed transformers
        self.backbone = backbone
        self.head = head
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("input_scale", 1.0 / (255.0 * std_t))
        self.register_buffer("input_shift", -mean_t / std_t)
        self.freeze_backbone = False
        self.freeze_norm_statistics = False  # batch-norm layers kept in eval mode while their weights train

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """(x / 255 - mean) / std as one multiply-add, keeping the input's memory format."""
        return images.float() * self.input_scale + self.input_shift

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features of 0-255 images."""
        return self.backbone(self.normalize(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits of 0-255 images."""
        return self.head(self.features(images))

    def set_backbone_frozen(self, frozen: bool) -> None:
        """Freeze (or thaw) backbone weights and batch-norm statistics."""
        self.freeze_backbone = frozen
        for p in self.backbone.parameters():
            p.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True):
        """Like nn.Module.train, but a frozen backbone stays in eval mode, and with frozen statistics so do the
        backbone's batch-norm layers."""
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        elif self.freeze_norm_statistics:
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def set_norm_statistics_frozen(self, frozen: bool) -> None:
        """Keep the backbone's batch-norm running statistics (the pretrained ones) while its weights train."""
        self.freeze_norm_statistics = frozen
        self.train(self.training)
