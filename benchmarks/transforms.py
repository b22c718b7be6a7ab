"""Transforms benchmark: each twiddle.transforms module against its library counterpart (torch.fft, scipy.fft,
a dense matmul where no fast library routine exists), float32, batch 256; then each transform's largest relative
error against scipy/numpy over n = 1…4096 in float64 and float32. Prints markdown tables, writes JSON.

    python benchmarks/transforms.py                         # n = 256, 1000, 1024, 4096, 16384 (a few minutes)
    python benchmarks/transforms.py --sizes 1024 --out benchmarks/out

n = 1000 is there to show the cost of a size that is not a power of two (Bluestein / circulant embedding).
"""

from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.fft
import scipy.linalg
import torch
from tqdm import tqdm

from twiddle import transforms
from twiddle._timing import median_seconds

Case = tuple[str, Callable[[int], Callable[[], object]], str, Callable[[int], Callable[[], object]]]


def _cases(batch: int, workers: int) -> list[Case]:
    """(name, build twiddle call, reference name, build reference call), each builder taking ``n``."""

    def complex_input(n: int) -> torch.Tensor:
        return torch.randn(batch, n, dtype=torch.complex64)

    def real_input(n: int) -> torch.Tensor:
        return torch.randn(batch, n)

    def ours(build: Callable[[int], torch.nn.Module], make_input: Callable[[int], torch.Tensor]):
        def setup(n: int) -> Callable[[], object]:
            module, x = build(n), make_input(n)
            return lambda: module(x)

        return setup

    def scipy_call(fn: Callable[..., np.ndarray], **kwargs):
        def setup(n: int) -> Callable[[], object]:
            x = real_input(n).numpy()
            return lambda: fn(x, axis=-1, workers=workers, **kwargs)

        return setup

    def torch_fft(n: int) -> Callable[[], object]:
        x = complex_input(n)
        return lambda: torch.fft.fft(x)

    def torch_hartley(n: int) -> Callable[[], object]:
        x = real_input(n)

        def run() -> torch.Tensor:
            f = torch.fft.fft(x)
            return f.real - f.imag

        return run

    def torch_circular(n: int) -> Callable[[], object]:
        x, col = real_input(n), torch.randn(n)
        spectrum = torch.fft.rfft(col)
        return lambda: torch.fft.irfft(torch.fft.rfft(x) * spectrum, n=n)

    def dense_hadamard(n: int) -> Callable[[], object]:
        x, h = real_input(n), torch.from_numpy(scipy.linalg.hadamard(n)).float()
        return lambda: x @ h.T

    def pow2_only(setup):
        return lambda n: setup(n) if n & (n - 1) == 0 else None

    return [
        ("fft", ours(transforms.fft, complex_input), "torch.fft.fft", torch_fft),
        ("dct-2", ours(transforms.dct, real_input), "scipy.fft.dct", scipy_call(scipy.fft.dct, type=2)),
        ("dst-2", ours(transforms.dst, real_input), "scipy.fft.dst", scipy_call(scipy.fft.dst, type=2)),
        ("dct-4", ours(lambda n: transforms.dct(n, 4), real_input), "scipy.fft.dct", scipy_call(scipy.fft.dct, type=4)),
        ("hartley", ours(transforms.hartley, real_input), "torch.fft (re - im)", torch_hartley),
        (
            "circulant",
            ours(lambda n: transforms.circulant(torch.randn(n)), real_input),
            "torch.fft.rfft/irfft",
            torch_circular,
        ),
        ("hadamard", pow2_only(ours(transforms.hadamard, real_input)), "dense matmul", pow2_only(dense_hadamard)),
    ]


def run(sizes: list[int], batch: int) -> list[dict]:
    workers = torch.get_num_threads()
    rows = []
    cases = _cases(batch, workers)
    with tqdm(total=len(cases) * len(sizes), desc="transforms", unit="case") as bar:
        for name, ours_setup, ref_name, ref_setup in cases:
            for n in sizes:
                bar.set_postfix_str(f"{name} n={n}")
                ours_call, ref_call = ours_setup(n), ref_setup(n)
                if ours_call is not None:
                    with torch.no_grad():
                        ours_s = median_seconds(ours_call)
                    ref_s = median_seconds(ref_call)
                    rows.append(
                        {
                            "transform": name,
                            "n": n,
                            "batch": batch,
                            "reference": ref_name,
                            "reference_ms": ref_s * 1e3,
                            "twiddle_ms": ours_s * 1e3,
                            "ratio": ours_s / ref_s,
                        }
                    )
                bar.update()
    return rows


ACCURACY_SIZES = [1, 2, 3, 5, 8, 13, 64, 100, 1000, 1024, 4096]


def _accuracy_cases() -> list[
    tuple[str, Callable[[int, torch.dtype], torch.nn.Module], Callable[[np.ndarray], np.ndarray], bool]
]:
    """(name, build(n, dtype), reference on a float64/complex128 batch, complex input?)."""
    rng = np.random.default_rng(0)
    cols = {n: rng.standard_normal(n) for n in ACCURACY_SIZES}

    def hartley_ref(x: np.ndarray) -> np.ndarray:
        f = np.fft.fft(x)
        return f.real - f.imag

    cases = [
        ("fft", lambda n, d: transforms.fft(n, dtype=d), np.fft.fft, True),
        ("ifft", lambda n, d: transforms.ifft(n, dtype=d), np.fft.ifft, True),
        ("hartley", lambda n, d: transforms.hartley(n, dtype=d), hartley_ref, False),
        (
            "circulant",
            lambda n, d: transforms.circulant(cols[n], dtype=d),
            lambda x: x @ scipy.linalg.circulant(cols[x.shape[-1]]).T,
            False,
        ),
    ]
    for kind in ("dct", "dst"):
        for t in (2, 3, 4):
            cases.append(
                (
                    f"{kind}-{t}",
                    lambda n, d, kind=kind, t=t: getattr(transforms, kind)(n, t, dtype=d),
                    lambda x, kind=kind, t=t: getattr(scipy.fft, kind)(x, type=t),
                    False,
                )
            )
    return cases


def accuracy(sizes: list[int]) -> list[dict]:
    """Largest relative error (‖y − ref‖ / ‖ref‖ over a batch of 4) across ``sizes``, float64 and float32."""
    rows = []
    rng = np.random.default_rng(1)
    for name, build, reference, is_complex in _accuracy_cases():
        worst = {}
        for dtype in (torch.float64, torch.float32):
            errors = []
            for n in sizes:
                x = rng.standard_normal((4, n)) + (1j * rng.standard_normal((4, n)) if is_complex else 0)
                ref = reference(x)
                xt = torch.from_numpy(x)
                xt = (
                    xt.to(torch.complex128 if dtype == torch.float64 else torch.complex64)
                    if is_complex
                    else xt.to(dtype)
                )
                with torch.no_grad():
                    y = build(n, dtype)(xt).numpy().astype(np.complex128)
                errors.append(float(np.linalg.norm(y - ref) / np.linalg.norm(ref)))
            worst[str(dtype).removeprefix("torch.")] = max(errors)
        rows.append({"transform": name, "sizes": sizes, **{f"max_rel_error_{k}": v for k, v in worst.items()}})
    return rows


def format_accuracy(rows: list[dict]) -> str:
    sizes = ", ".join(str(n) for n in rows[0]["sizes"])
    lines = [f"Largest relative error over n = {sizes}:", "", "| transform | float64 | float32 |", "|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['transform']} | {r['max_rel_error_float64']:.1e} | {r['max_rel_error_float32']:.1e} |")
    return "\n".join(lines)


def format_table(rows: list[dict]) -> str:
    lines = [
        "| transform | n | reference | reference ms | twiddle ms | twiddle / reference |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['transform']} | {r['n']} | {r['reference']} | {r['reference_ms']:.3f} | {r['twiddle_ms']:.3f} | "
            f"{r['ratio']:.2f}× |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1000, 1024, 4096, 16384])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    rows = run(args.sizes, args.batch)
    accuracy_rows = accuracy(ACCURACY_SIZES)
    header = f"float32, batch {args.batch}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    table = f"{header}\n\n{format_table(rows)}\n\n{format_accuracy(accuracy_rows)}"
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine()}
    payload = {"meta": meta, "rows": rows, "accuracy": accuracy_rows}
    (args.out / "transforms.json").write_text(json.dumps(payload, indent=2) + "\n")
    (args.out / "transforms.md").write_text(f"{table}\n")
    print(f"\nwrote {args.out}/transforms.json, transforms.md")


if __name__ == "__main__":
    main()
