"""A small classifier training loop for the experiments: SGD or Adam, per-epoch test accuracy and timings."""

from __future__ import annotations

import time

import torch
from torch import nn

from .._timing import median_seconds
from ._data import ImageData

__all__ = ["train_classifier", "accuracy", "inference_ms", "parameter_count"]


def parameter_count(module: nn.Module) -> int:
    """Trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    model.eval()
    correct = 0
    for start in range(0, x.shape[0], batch_size):
        correct += int((model(x[start:start + batch_size]).argmax(-1) == y[start:start + batch_size]).sum())
    return correct / max(x.shape[0], 1)


@torch.no_grad()
def inference_ms(module: nn.Module, x: torch.Tensor) -> float:
    """Median milliseconds of ``module(x)`` in eval mode."""
    module.eval()
    return 1e3 * median_seconds(lambda: module(x))


def train_classifier(model: nn.Module, data: ImageData, *, epochs: int, lr: float, batch_size: int = 128,
                     optimizer: str = "adam", seed: int = 0, bar=None) -> dict:
    """Train ``model`` with cross-entropy and a cosine learning-rate schedule; returns per-epoch test accuracy,
    per-epoch training seconds and the final train/test accuracy. ``bar`` (a tqdm bar) advances once an epoch."""
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    else:
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    steps_per_epoch = -(-data.train_x.shape[0] // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs * steps_per_epoch, 1))
    loss_fn = nn.CrossEntropyLoss()
    history = {"test_accuracy": [], "epoch_seconds": [], "train_loss": []}
    for _ in range(epochs):
        model.train()
        order = torch.randperm(data.train_x.shape[0], generator=gen)
        start = time.perf_counter()
        total = 0.0
        for i in range(0, order.numel(), batch_size):
            idx = order[i:i + batch_size]
            loss = loss_fn(model(data.train_x[idx]), data.train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
            total += loss.item() * idx.numel()
        history["epoch_seconds"].append(time.perf_counter() - start)
        history["train_loss"].append(total / order.numel())
        history["test_accuracy"].append(accuracy(model, data.test_x, data.test_y))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(acc=f"{history['test_accuracy'][-1]:.3f}")
    history["train_accuracy"] = accuracy(model, data.train_x, data.train_y)
    return history


def compare_hidden_layers(sets: list[ImageData], variants: tuple[str, ...], build, *, key: str, epochs: int,
                          seed: int, desc: str, layer_index: int = 7) -> list[dict]:
    """Train ``build(channels, variant, seed)`` on every data set for every variant and measure it.

    The network's module ``layer_index`` is the hidden layer under study; its inference time is measured on the
    features the layers before it produce for 256 test images. One row per (data set, variant), the variant under
    ``key``.
    """
    import sys

    from tqdm import tqdm

    rows = []
    bar = tqdm(total=len(sets) * len(variants) * epochs, desc=desc, file=sys.stderr)
    for ds in sets:
        probe = ds.test_x[:256]
        for variant in variants:
            model = build(ds.shape[0], variant, seed)
            history = train_classifier(model, ds, epochs=epochs, lr=1e-3, seed=seed, bar=bar)
            layer = model[layer_index]
            features = model[:layer_index](probe).detach()
            rows.append({
                "dataset": ds.name, key: variant, "epochs": epochs, "train": ds.train_x.shape[0],
                "test": ds.test_x.shape[0], "test_accuracy": accuracy(model, ds.test_x, ds.test_y),
                "accuracy_per_epoch": history["test_accuracy"], "train_accuracy": history["train_accuracy"],
                "train_loss": history["train_loss"], "epoch_seconds": sum(history["epoch_seconds"]) / epochs,
                "layer_params": parameter_count(layer), "network_params": parameter_count(model),
                "layer_ms": inference_ms(layer, features), "network_ms": inference_ms(model, probe),
            })
    bar.close()
    return rows
