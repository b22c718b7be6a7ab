"""Compare the Triton kernel's variants on a GPU: correctness, compile time, registers, GPU time and host overhead.

    python benchmarks/triton_variants.py --sizes 256 1024 4096 --batches 1 256 16384 --out benchmarks/results/cuda

For every n and variant (``unrolled``: every factor compiled in, tile in registers; ``loop``: a run-time loop over
the factors through an on-chip scratch tile) it reports

* the first forward+backward call's time (compilation included),
* the worst relative error of forward, input gradient and twiddle gradient against the float64 reference
  multiply (float32 inputs, two batch sizes, one of them spanning more tiles than programs),
* registers and spills of the compiled kernels,
* per batch: GPU time (``triton.testing.do_bench``, median of CUDA events; the host's launch cost is hidden behind
  the cache flush do_bench runs between calls) of forward and forward+backward, beside ``nn.functional.linear``
  (its backward through autograd) and ``torch.fft.fft`` on complex64.

Then, per n, the host's cost per call at batch 1 (300 calls queued, then one synchronize: when the GPU work is
shorter than the launch path, this is the launch path) for the layers of the stack: the kernel launch
(``triton_forward``), ``butterfly_multiply``, a ``Butterfly`` module forward, a forward+backward, and nn.Linear.

Prints one line per measurement as it goes, a markdown table at the end, and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _kernel_resources(tk) -> dict[str, dict[str, int]]:
    """Registers and spills of every compiled variant kernel (Triton's per-device cache; empty if unavailable)."""
    found: dict[str, dict[str, int]] = {}
    for name in ("_forward_kernel", "_backward_kernel", "_loop_forward_kernel", "_loop_backward_kernel"):
        for cache in getattr(getattr(tk, name), "device_caches", {}).values():
            kernels = cache[0] if isinstance(cache, tuple) else cache
            for i, kernel in enumerate(kernels.values()):
                found[f"{name}[{i}]"] = {"regs": int(getattr(kernel, "n_regs", -1)),
                                         "spills": int(getattr(kernel, "n_spills", -1))}
    return found


def _host_us(fn: Callable[[], object], calls: int = 300) -> float:
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / calls * 1e6


def _check(tk, reference, t64: torch.Tensor, n: int, variant: str) -> float:
    """Worst relative error (forward, both gradients, with a bias) of the float32 kernel against float64."""
    worst = 0.0
    t32 = t64.float()
    for batch in (37, 3000):
        x = torch.randn(batch, n, device=t64.device)
        g = torch.randn(batch, n, device=t64.device)
        bias = torch.randn(n, device=t64.device)
        tt = t64.clone().requires_grad_()
        xx = x.double().requires_grad_()
        ref = reference(tt, xx, True, out_size=n)
        (ref * g.double()).sum().backward()
        y = tk.triton_forward(t32, x, True, False, n, variant, bias=bias)
        gt, gx = tk.triton_backward(t32, x, g, True, False, n, variant)
        worst = max(worst, _rel(y, ref + bias.double()), _rel(gx, xx.grad), _rel(gt, tt.grad))
    return worst


def _measure_size(n: int, args: argparse.Namespace, gpu_ms: Callable[[Callable[[], object]], float]) -> list[dict]:
    """Every measurement for one n: each variant's check and GPU times, the baselines, the host costs."""
    from twiddle import Butterfly
    from twiddle.ops import butterfly_multiply, butterfly_multiply_reference
    from twiddle.ops import triton_kernel as tk

    dev = "cuda"
    records: list[dict] = []
    log_n = n.bit_length() - 1
    t64 = torch.randn(1, 1, log_n, n // 2, 2, 2, device=dev, dtype=torch.float64) / 2**0.5
    t32 = t64.float()
    for variant in args.variants:
        if variant == "unrolled" and n > tk.UNROLLED_MAX_N:
            print(f"n={n} unrolled: skipped (minutes to compile above n = {tk.UNROLLED_MAX_N})", flush=True)
            continue
        rec: dict = {"n": n, "variant": variant}
        x, g = torch.randn(8, n, device=dev), torch.randn(8, n, device=dev)
        start = time.perf_counter()
        tk.triton_forward(t32, x, True, False, n, variant)
        tk.triton_backward(t32, x, g, True, False, n, variant)
        torch.cuda.synchronize()
        rec["first_call_s"] = time.perf_counter() - start
        rec["worst_rel_error_fp32"] = _check(tk, butterfly_multiply_reference, t64, n, variant)
        print(f"n={n} {variant}: first call {rec['first_call_s']:.2f} s, worst fp32 error "
              f"{rec['worst_rel_error_fp32']:.2e}", flush=True)
        for batch in args.batches:
            x, g = torch.randn(batch, n, device=dev), torch.randn(batch, n, device=dev)

            def fwd(x=x, v=variant):
                return tk.triton_forward(t32, x, True, False, n, v)

            def both(x=x, g=g, v=variant):
                return tk.triton_forward(t32, x, True, False, n, v), tk.triton_backward(t32, x, g, True, False,
                                                                                       n, v)

            row = {**rec, "batch": batch, "forward_ms": gpu_ms(fwd), "forward_backward_ms": gpu_ms(both)}
            records.append(row)
            print(f"  batch {batch}: fwd {row['forward_ms']:.4f} ms, fwd+bwd {row['forward_backward_ms']:.4f} ms",
                  flush=True)
    for batch in args.batches:
        w = torch.randn(n, n, device=dev, requires_grad=True)
        x = torch.randn(batch, n, device=dev, requires_grad=True)
        xc = torch.randn(batch, n, device=dev, dtype=torch.complex64)
        row = {"n": n, "variant": "nn.Linear", "batch": batch,
               "forward_ms": gpu_ms(lambda x=x, w=w: torch.nn.functional.linear(x, w)),
               "forward_backward_ms": gpu_ms(lambda x=x, w=w: torch.nn.functional.linear(x, w).sum().backward()),
               "fft_ms": gpu_ms(lambda xc=xc: torch.fft.fft(xc))}
        records.append(row)
        print(f"n={n} batch {batch}: linear fwd {row['forward_ms']:.4f} ms, fwd+bwd "
              f"{row['forward_backward_ms']:.4f} ms, fft {row['fft_ms']:.4f} ms", flush=True)
    # host cost per call, batch 1, the default variant for this n
    os.environ.pop("TWIDDLE_TRITON_VARIANT", None)
    x1 = torch.randn(1, n, device=dev)
    layer = Butterfly(n, n, device=dev)
    linear = torch.nn.Linear(n, n, device=dev)
    xg = torch.randn(1, n, device=dev, requires_grad=True)
    host = {
        "triton_forward": _host_us(lambda: tk.triton_forward(t32, x1, True, False, n)),
        "butterfly_multiply": _host_us(lambda: butterfly_multiply(t32, x1)),
        "Butterfly forward": _host_us(lambda: layer(x1)),
        "Butterfly fwd+bwd": _host_us(lambda: layer(xg).sum().backward()),
        "nn.Linear forward": _host_us(lambda: linear(x1)),
        "nn.Linear fwd+bwd": _host_us(lambda: linear(xg).sum().backward()),
    }
    records.append({"n": n, "host_us_per_call_batch1": host})
    print(f"n={n} host us/call at batch 1: " + ", ".join(f"{k} {v:.1f}" for k, v in host.items()), flush=True)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 256, 16384])
    parser.add_argument("--variants", nargs="+", default=["unrolled", "loop"])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cuda"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    import triton.testing

    from twiddle.ops import triton_kernel as tk

    def gpu_ms(fn: Callable[[], object]) -> float:
        return triton.testing.do_bench(fn, return_mode="median")

    torch.manual_seed(0)
    records = [r for n in args.sizes for r in _measure_size(n, args, gpu_ms)]
    resources = _kernel_resources(tk)
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "records": records,
               "kernels": resources}
    (args.out / "triton-variants.json").write_text(json.dumps(payload, indent=1))
    print("kernels (registers, spills): " + ", ".join(f"{k} {v['regs']}/{v['spills']}" for k, v in resources.items()))
    print("\n| n | batch | variant | forward ms | fwd+bwd ms |\n|---|---|---|---|---|")
    for r in records:
        if "forward_ms" in r:
            print(f"| {r['n']} | {r['batch']} | {r['variant']} | {r['forward_ms']:.4f} | "
                  f"{r['forward_backward_ms']:.4f} |")


if __name__ == "__main__":
    main()
