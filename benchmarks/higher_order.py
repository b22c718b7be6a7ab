"""What derivatives beyond a plain backward cost: gradient penalties (``create_graph=True``), per-sample gradients
by ``torch.func.vmap(grad(...))`` and forward-mode ``torch.func.jvp``, with the library's default kernels and with
``TWIDDLE_KERNEL=reference``, beside a plain forward+backward and nn.Linear's same computations. float32, CPU.

Cases (a ``Butterfly(n, n)`` layer, input ``(batch, n)``, loss ``Σ tanh(layer(x))``):

* ``forward+backward``: the plain training step.
* ``input-gradient penalty``: ``gx = ∂L/∂x`` with ``create_graph=True``, then ``mean((‖gx‖ - 1)²)`` backward to
  the parameters (WGAN-GP): the input gradient is the multiply's adjoint on the fast kernel.
* ``penalty on every gradient``: ``‖∂L/∂x‖² + ‖∂L/∂θ‖²`` backward: the twiddles' gradient comes from the reference.
* ``per-sample gradients``: ``vmap(grad(loss))`` over the batch, detached parameters (the fused ops through their
  vmap rules; the backward one per-row call for all samples).
* ``vmap of the forward``: ``torch.vmap(layer)(x)`` under ``torch.no_grad`` (the fused op's batching rule).
* ``jvp``: ``torch.func.jvp`` of the layer along the input (forward mode alone: the fast kernel's tangent rule).

    python benchmarks/higher_order.py                       # n = 1024, batch 256 (per-sample: batch 64)
    python benchmarks/higher_order.py --n 4096 --batch 64 --out benchmarks/out
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import torch
from torch.func import functional_call, grad, jvp, vmap

import twiddle
from twiddle._timing import run_seconds
from twiddle.ops import fused_cpu


def _ms(fn, repeats: int) -> float:
    return 1e3 * statistics.median(run_seconds(fn, warmup=2, repeats=repeats, max_seconds=30.0))


def cases(layer: torch.nn.Module, x: torch.Tensor, per_sample_batch: int) -> dict:
    """The timed computations for ``layer`` on ``x``, by name."""
    params = dict(layer.named_parameters())

    def plain():
        layer.zero_grad(set_to_none=True)
        layer(x).tanh().sum().backward()

    def input_penalty():
        layer.zero_grad(set_to_none=True)
        xx = x.detach().requires_grad_()
        (gx,) = torch.autograd.grad(layer(xx).tanh().sum(), xx, create_graph=True)
        ((gx.norm(dim=1) - 1) ** 2).mean().backward()

    def full_penalty():
        xx = x.detach().requires_grad_()
        grads = torch.autograd.grad(layer(xx).tanh().sum(), [xx, *params.values()], create_graph=True)
        torch.autograd.grad(sum(g.pow(2).sum() for g in grads), list(params.values()))

    detached = {k: v.detach() for k, v in params.items()}

    def loss(p, xi):
        return functional_call(layer, p, (xi.unsqueeze(0),)).tanh().sum()

    few = x[:per_sample_batch]

    def per_sample():
        vmap(grad(loss), in_dims=(None, 0))(detached, few)

    def vmapped():
        with torch.no_grad():
            vmap(layer)(x)

    tangent = torch.randn_like(x)

    def forward_mode():
        with torch.no_grad():
            jvp(layer, (x,), (tangent,))

    return {"forward+backward": plain, "input-gradient penalty": input_penalty,
            "penalty on every gradient": full_penalty, f"per-sample gradients (batch {per_sample_batch})": per_sample,
            "vmap of the forward (no gradients)": vmapped, "jvp": forward_mode}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--per-sample-batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    if not fused_cpu.available():
        raise SystemExit("the fused CPU kernel could not be built here; nothing to compare")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.n)
    models = {"Butterfly": twiddle.Butterfly(args.n, args.n), "nn.Linear": torch.nn.Linear(args.n, args.n)}
    rows: dict[str, dict[str, float]] = {}
    previous = os.environ.get("TWIDDLE_KERNEL")
    try:
        runs = (("Butterfly", "Butterfly", "auto"), ("Butterfly, reference kernel", "Butterfly", "reference"),
                ("nn.Linear", "nn.Linear", "auto"))
        for column, model, mode in runs:
            os.environ["TWIDDLE_KERNEL"] = mode
            for name, fn in cases(models[model], x, args.per_sample_batch).items():
                rows.setdefault(name, {})[column] = _ms(fn, args.repeats)
                print(f"{column:28s} {name:36s} {rows[name][column]:9.2f} ms", flush=True)
    finally:
        if previous is None:
            os.environ.pop("TWIDDLE_KERNEL", None)
        else:
            os.environ["TWIDDLE_KERNEL"] = previous
    columns = ["Butterfly", "Butterfly, reference kernel", "nn.Linear"]
    lines = [
        f"n = {args.n}, batch {args.batch}, float32, CPU, {args.threads} threads, torch {torch.__version__}; "
        f"median ms of {args.repeats} runs",
        "",
        "| computation | " + " | ".join(columns) + " | Butterfly vs nn.Linear |",
        "|---|" + "---|" * (len(columns) + 1),
    ]
    for name, row in rows.items():
        ratio = row["nn.Linear"] / row["Butterfly"]
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.2f}" for c in columns) + f" | {ratio:.1f}× |")
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "higher_order.md").write_text(table + "\n")
    meta = {"n": args.n, "batch": args.batch, "threads": args.threads, "torch": torch.__version__}
    (args.out / "higher_order.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {args.out / 'higher_order.json'}, higher_order.md")


if __name__ == "__main__":
    main()
