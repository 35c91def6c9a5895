"""The plain PyTorch loop every benchmark compares transferkit with, importing nothing of transferkit.

d2l's fine-tuning chapter as a user writes it: torchvision ImageFolder + Compose on PIL images +
DataLoader + SGD, fp32, the default memory format, a test pass after each epoch. throughput.py feeds it
transferkit's network and file list (same initial weights and files); folder_scale.py runs it in a
process of its own with torchvision's network, so that process holds nothing a plain script would not.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms as T


def transforms(input_size: int, resize_size: int, interpolation: str, mean, std) -> tuple[T.Compose, T.Compose]:
    """(train, test) transforms: RandomResizedCrop + flip, and Resize + CenterCrop, on PIL images, normalised."""
    mode = T.InterpolationMode(interpolation)
    normalize = T.Normalize(mean, std)
    train = T.Compose([T.RandomResizedCrop(input_size, interpolation=mode), T.RandomHorizontalFlip(), T.ToTensor(),
                       normalize])
    test = T.Compose([T.Resize(resize_size, interpolation=mode), T.CenterCrop(input_size), T.ToTensor(), normalize])
    return train, test


def folder(split_dir: Path, transform, samples=None) -> torchvision.datasets.ImageFolder:
    """torchvision's ImageFolder over `split_dir`; with `samples` ((path, label) pairs) kept to those files."""
    dataset = torchvision.datasets.ImageFolder(str(split_dir), transform=transform)
    if samples is not None:
        dataset.samples = [(str(path), label) for path, label in samples]
        dataset.targets = [label for _, label in samples]
    return dataset


def plain_loop(net: nn.Module, param_groups, train_set, test_set, epochs: int, batch_size: int, lr: float,
               momentum: float, weight_decay: float, workers: int = 0) -> dict:
    """Train `net` for `epochs` (SGD, cross-entropy), testing after each; training images/s, accuracy, seconds."""
    train_iter = DataLoader(train_set, batch_size=batch_size, shuffle=True, num_workers=workers)
    test_iter = DataLoader(test_set, batch_size=batch_size, num_workers=workers)
    loss_fn = nn.CrossEntropyLoss()
    trainer = torch.optim.SGD(param_groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    train_seconds = test_seconds = accuracy = 0.0
    seen = 0
    for _ in range(epochs):
        net.train()
        start = time.perf_counter()
        for X, y in train_iter:
            loss = loss_fn(net(X), y)
            trainer.zero_grad()
            loss.backward()
            trainer.step()
            seen += len(y)
        train_seconds += time.perf_counter() - start
        net.eval()
        start = time.perf_counter()
        correct = total = 0
        with torch.no_grad():
            for X, y in test_iter:
                correct += (net(X).argmax(1) == y).sum().item()
                total += len(y)
        test_seconds += time.perf_counter() - start
        accuracy = correct / total
    return {"train_images_per_s": seen / train_seconds, "test_accuracy": accuracy, "train_seconds": train_seconds,
            "test_seconds": test_seconds}
