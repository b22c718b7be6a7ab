"""The Triton GPU kernel, checked without a GPU: its logic through Triton's interpreter (TRITON_INTERPRET=1, in a
subprocess so that the setting applies before Triton is imported), and its compilation to PTX for real GPUs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

triton = pytest.importorskip("triton")

INTERPRETER_CHECK = textwrap.dedent(
    """
    import itertools, sys, torch
    from twiddle.ops import triton_kernel as tk
    from twiddle.ops import butterfly_multiply_reference
    variant, kind, grid = sys.argv[1:]
    torch.manual_seed(0)
    # every buffer the kernels get starts as NaN, so that reading an element before writing it shows
    _empty = torch.empty
    torch.empty = lambda *a, **k: _empty(*a, **k).fill_(float("nan"))
    if kind == "real":
        wide, narrow = torch.float64, torch.float32
    else:
        wide, narrow = torch.complex128, torch.complex64
    worst = {wide: 0.0, narrow: 0.0}

    def rel(a, b):  # NaN counts as the worst error (max() would skip it)
        err = ((a.to(wide) - b).norm() / b.norm().clamp_min(1e-30)).item()
        return float("inf") if err != err else err

    def reference(t, x, g, inc, tr, out, conj, bias=None, in_perm=None, out_perm=None):
        tt, xx = t.clone().requires_grad_(), x.clone().requires_grad_()
        bb = None if bias is None else bias.clone().requires_grad_()
        y = butterfly_multiply_reference(tt, xx if in_perm is None else xx[:, in_perm], inc, out_size=out,
                                         transpose=tr, conjugate=conj)
        y = y if out_perm is None else y[:, out_perm]
        y = y if bb is None else y + bb
        y.backward(g)
        return y.detach(), tt.grad if tt.grad is not None else torch.zeros_like(t), xx.grad, bb

    if kind == "real":
        # every combination of nblocks, nstacks, stride order and transpose, at every n (grid "full") or with n
        # rotating over them (grid "quick"); 130 rows at n = 64 (and 16) are 3 tiles of 64 rows (the last of 2) for
        # the interpreter's 2 programs: tile walking, and at n = 64 2 chunks of 16 pairs per factor in the loop variant
        options = list(itertools.product([1, 2, 3], [1, 2], [True, False], [False, True]))
        sizes = [1, 2, 8, 32]
        if grid == "full":
            cases = [(n, *o, 7, False) for n in sizes for o in options]
        else:
            cases = [(sizes[i % 4], *o, 7, False) for i, o in enumerate(options)]
        cases += [(64, 1, 2, True, False, 130, False), (16, 2, 1, False, True, 130, False)]
    else:
        # every combination of stride order, transpose and conjugate, the geometry rotating among small shapes;
        # 130 rows at n = 64 (and 16): 3 tiles of 64 complex rows, 2 chunks per factor at n = 64, as above
        shapes = [(2, 1, 1), (8, 2, 2), (8, 3, 1), (4, 1, 2)]
        cases = [(*shapes[i % 4], inc, tr, 5, conj)
                 for i, (inc, tr, conj) in enumerate(itertools.product([True, False], repeat=3))]
        cases += [(64, 1, 2, True, False, 130, True), (16, 2, 1, False, True, 130, False)]
    for n, nblocks, nstacks, inc, tr, batch, conj in cases:
        t = torch.randn(nstacks, nblocks, n.bit_length() - 1, n // 2, 2, 2, dtype=wide) / 2 ** 0.5
        m = max(1, nstacks * n - 3) if tr else max(1, n - 1)
        out = max(1, n - 1) if tr else max(1, nstacks * n - 2)
        x = torch.randn(batch, m, dtype=wide)
        g = torch.randn(batch, out, dtype=wide)
        ref_y, ref_gt, ref_gx, _ = reference(t, x, g, inc, tr, out, conj)
        for dtype in worst:
            y = tk.triton_forward(t.to(dtype), x.to(dtype), inc, tr, out, variant, conjugate=conj)
            gt, gx = tk.triton_backward(t.to(dtype), x.to(dtype), g.to(dtype), inc, tr, out, variant,
                                        conjugate=conj)
            assert y.dtype == gx.dtype == gt.dtype == dtype
            for a, b in ((y, ref_y), (gx, ref_gx), (gt, ref_gt)):
                worst[dtype] = max(worst[dtype], rel(a, b))

    if kind == "complex":  # lazily conjugated tensors (x.conj() sets a bit; the kernels read memory)
        t = torch.randn(1, 1, 3, 4, 2, 2, dtype=wide)
        x = torch.randn(3, 8, dtype=wide)
        g = torch.randn(3, 8, dtype=wide)
        ref_y, ref_gt, ref_gx, _ = reference(t.conj().resolve_conj(), x.conj().resolve_conj(),
                                             g.conj().resolve_conj(), True, False, 8, False)
        y = tk.triton_forward(t.conj(), x.conj(), True, False, 8, variant)
        gt, gx = tk.triton_backward(t.conj(), x.conj(), g.conj(), True, False, 8, variant)
        for a, b in ((y, ref_y), (gx, ref_gx), (gt, ref_gt)):
            worst[wide] = max(worst[wide], rel(a, b))

    # the differentiable entry points (eager autograd.Function and the custom op), with a bias fused or not (added
    # after the stacks' sum when transposed), with input and output permutations read and written by the kernels
    # or not (transposed: an output permutation of 13 of the 16 columns of each stack's slab)
    import os
    os.environ["TWIDDLE_TRITON_VARIANT"] = variant
    conj = kind == "complex"
    for tr, permuted in itertools.product((False, True), repeat=2):
        n, out = 16, 13
        t = torch.randn(2, 1, 4, 8, 2, 2, dtype=wide)
        x = torch.randn(5, 30 if tr else 16, dtype=wide)
        g = torch.randn(5, out, dtype=wide)
        bias = torch.randn(out, dtype=wide)
        p, q = (torch.randperm(x.shape[1]), torch.randperm(out)) if permuted else (None, None)
        ref_y, ref_gt, ref_gx, ref_b = reference(t, x, g, True, tr, out, conj, bias, p, q)
        for call in ("eager", "op"):
            tt, xx, bb = (v.clone().requires_grad_() for v in (t, x, bias))
            if call == "eager":
                y = tk.triton_butterfly_multiply(tt, xx, True, out_size=out, transpose=tr, bias=bb, conjugate=conj,
                                                 in_perm=p, out_perm=q)
            else:
                y = tk._triton_op(tt, xx, bb, True, tr, out, conj, p, q)
            y.backward(g)
            for a, b in ((y, ref_y), (tt.grad, ref_gt), (xx.grad, ref_gx), (bb.grad, ref_b.grad)):
                worst[wide] = max(worst[wide], rel(a.detach(), b))
        if permuted:  # the kernels' own entry points with one of the permutations, in the narrow dtype too
            for dtype in worst:
                for pp, qq in ((p, None), (None, q)):
                    ry, rgt, rgx, _ = reference(t, x, g, True, tr, out, conj, None, pp, qq)
                    y = tk.triton_forward(t.to(dtype), x.to(dtype), True, tr, out, variant, conjugate=conj,
                                          in_perm=pp, out_perm=qq)
                    gt, gx = tk.triton_backward(t.to(dtype), x.to(dtype), g.to(dtype), True, tr, out, variant,
                                                conjugate=conj, in_perm=pp, out_perm=qq)
                    for a, b in ((y, ry), (gx, rgx), (gt, rgt)):
                        worst[dtype] = max(worst[dtype], rel(a, b))
        # nothing to differentiate (inference): the forward without the autograd wrapper
        with torch.no_grad():
            y = tk.triton_butterfly_multiply(t, x, True, out_size=out, transpose=tr, bias=bias, conjugate=conj,
                                             in_perm=p, out_perm=q)
        assert y.grad_fn is None and not y.requires_grad
        worst[wide] = max(worst[wide], rel(y, ref_y))
        # no input requires grad
        y = tk.triton_butterfly_multiply(t, x, True, out_size=out, transpose=tr, bias=bias, conjugate=conj,
                                         in_perm=p, out_perm=q)
        worst[wide] = max(worst[wide], rel(y, ref_y))
    print(worst[wide], worst[narrow])
    """
)


def _run_interpreter_check(variant: str, kind: str, grid: str) -> None:
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", INTERPRETER_CHECK, variant, kind, grid], capture_output=True,
                         text=True, env=env, timeout=1200)
    assert out.returncode == 0, out.stderr[-4000:]
    err_wide, err_narrow = map(float, out.stdout.split())
    assert err_wide < 1e-12
    assert err_narrow < 2e-5


@pytest.mark.parametrize("kind", ["real", "complex"])
@pytest.mark.parametrize("variant", ["unrolled", "loop"])
def test_triton_kernel_logic_in_the_interpreter(variant, kind):
    """Forward, backward and the differentiable entry points against the reference multiply (complex: also with
    conjugated twiddles), float64/complex128 within 1e-12 and float32/complex64 within 2e-5. Real: every
    combination of the options, n rotating over 1, 2, 8, 32 (every n for each: the slow test below)."""
    _run_interpreter_check(variant, kind, "quick")


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["unrolled", "loop"])
def test_triton_kernel_logic_in_the_interpreter_every_size(variant):
    _run_interpreter_check(variant, "real", "full")


DOUBLE_BACKWARD_CHECK = textwrap.dedent(
    """
    import itertools, torch
    from twiddle.ops import triton_kernel as tk
    from twiddle.ops import butterfly_multiply_reference
    torch.manual_seed(0)

    def derivatives(multiply, t, x, bias, g):
        # first derivatives with create_graph=True, then the gradient of a penalty on them
        t, x, bias = (v.clone().requires_grad_() for v in (t, x, bias))
        y = multiply(t, x, bias)
        gt, gx, gb = torch.autograd.grad(y, (t, x, bias), g, create_graph=True)
        penalty = gt.abs().pow(2).sum() + gx.abs().pow(2).sum() + (gx * x.detach()).real.sum()
        return (gt, gx, gb, *torch.autograd.grad(penalty, (t, x)))

    worst = 0.0
    for dtype, tr, permuted, call in itertools.product((torch.float64, torch.complex128), (False, True),
                                                      (False, True), ("eager", "op")):
        n, out, conj = 16, 13, dtype.is_complex
        t = torch.randn(2, 1, 4, 8, 2, 2, dtype=dtype)
        x = torch.randn(5, 30 if tr else 16, dtype=dtype)
        bias, g = torch.randn(out, dtype=dtype), torch.randn(5, out, dtype=dtype)
        p, q = (torch.randperm(x.shape[1]), torch.randperm(out)) if permuted else (None, None)

        def reference(t, x, bias):
            y = butterfly_multiply_reference(t, x if p is None else x[:, p], True, out_size=out, transpose=tr,
                                             conjugate=conj)
            return (y if q is None else y[:, q]) + bias

        def triton(t, x, bias):
            if call == "eager":
                return tk.triton_butterfly_multiply(t, x, True, out_size=out, transpose=tr, bias=bias,
                                                    conjugate=conj, in_perm=p, out_perm=q)
            return tk._triton_op(t, x, bias, True, tr, out, conj, p, q)

        for a, b in zip(derivatives(triton, t, x, bias, g), derivatives(reference, t, x, bias, g)):
            worst = max(worst, ((a - b).norm() / b.norm()).item())
    print(worst)
    """
)


def test_triton_double_backward_in_the_interpreter():
    """create_graph=True through both differentiable Triton entry points (eager autograd.Function and the custom
    op): the first derivatives are differentiable and the second ones equal the reference multiply's."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", DOUBLE_BACKWARD_CHECK], capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert float(out.stdout.split()[-1]) < 1e-12


def test_variant_choice():
    from twiddle.ops.triton_kernel import UNROLLED_MAX_N, choose_variant

    assert choose_variant(UNROLLED_MAX_N) == "unrolled"
    assert choose_variant(2 * UNROLLED_MAX_N) == "loop"
    assert choose_variant(16, "loop") == "loop"
    with pytest.raises(ValueError, match="variant must be one of"):
        choose_variant(16, "fast")


COMPILE_CHECK = textwrap.dedent(
    """
    import triton, triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from twiddle.ops import triton_kernel as tk
    geometry = {"N": 32, "LOG_N": 5, "NBLOCKS": 2, "INCREASING": 1, "TRANSPOSE": 1, "BLOCK_B": 16,
                "COMPUTE": tl.float32}
    sizes = ["batch", "in_size", "out_cols", "ld_x", "ld_out", "stack_out_stride"]
    maps = dict.fromkeys(["in_map_ptr", "out_map_ptr"], "*i64")
    fwd = {**dict.fromkeys(["x_ptr", "tw_ptr", "bias_ptr", "out_ptr"], "*fp32"), **maps,
           **dict.fromkeys(sizes, "i32")}
    loop_fwd = {**dict.fromkeys(["x_ptr", "tw_ptr", "bias_ptr", "out_ptr", "work_ptr"], "*fp32"), **maps,
                **dict.fromkeys(sizes + ["n_tiles"], "i32")}
    bwd = {**dict.fromkeys(["x_ptr", "tw_ptr", "g_ptr", "gx_ptr", "dtw_ptr", "acts_ptr"], "*fp32"), **maps,
           **dict.fromkeys(["batch", "in_size", "out_cols", "ld_x", "ld_g", "stack_gx_stride", "n_tiles"], "i32")}
    kernels = (
        (tk._forward_kernel, fwd, {"HAS_BIAS": 1}),
        (tk._backward_kernel, bwd, {"SLOTS": 4}),
        (tk._loop_forward_kernel, loop_fwd, {"HAS_BIAS": 1, "CHUNK": 8}),
        (tk._loop_backward_kernel, bwd, {"CHUNK": 8}),
    )
    # real without permutations, and complex with conjugated twiddles and both permutations
    for kernel, sig, extra in kernels:
        for cplx, conj, perms in ((0, 0, 0), (1, 1, 1)):
            consts = {**geometry, **extra, "CPLX": cplx, "CONJ": conj, "IN_MAP": perms, "OUT_MAP": perms}
            signature = {**sig, **dict.fromkeys(consts, "constexpr")}
            compiled = triton.compile(ASTSource(kernel, signature, consts), target=GPUTarget("cuda", 80, 32))
            assert ".entry" in compiled.asm["ptx"]
    print("ok")
    """
)


def test_triton_kernels_compile_for_a_gpu_target():
    """Compiling for sm_80 needs no GPU; it catches what the interpreter accepts but the compiler does not."""
    env = dict(os.environ, TRITON_DEFAULT_FP_FUSION="1")
    env.pop("TRITON_INTERPRET", None)
    out = subprocess.run([sys.executable, "-c", COMPILE_CHECK], capture_output=True, text=True, env=env, timeout=600)
    if out.returncode != 0 and "ptxas" in out.stderr and "not found" in out.stderr:
        pytest.skip("Triton's PTX toolchain is not available here")
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stdout.strip().endswith("ok")


def test_launch_cache_compiles_once_per_specialization_and_passes_constexprs_in_signature_order():
    """_launch's GPU fast path, with a stand-in for a JIT kernel: the first call goes through ``kernel[grid]`` with
    keyword constexprs; later calls with the same specialization call the compiled launcher positionally, constexprs
    in the kernel's signature order whatever order ``meta`` has; a new specialization compiles again."""
    import torch

    from twiddle.ops import triton_kernel as tk

    calls = []

    class Compiled:
        packed_metadata = None

        def __getitem__(self, grid):
            return lambda *args: calls.append(("compiled", grid, args))

    class Kernel:
        arg_names = ["x_ptr", "size", "N", "BLOCK", "FLAG"]

        def __getitem__(self, grid):
            def run(*args, **meta):
                calls.append(("jit", grid, args, meta))
                return Compiled()

            return run

    kernel, x = Kernel(), torch.zeros(4)
    meta = {"FLAG": 1, "N": 8, "BLOCK": 2}  # not in signature order
    tk._launch(kernel, (3, 1), (x, 32), meta)
    tk._launch(kernel, (5, 1), (x, 48), meta)  # same specialization (a multiple of 16, not 1)
    tk._launch(kernel, (5, 1), (x, 7), meta)  # a new one
    assert calls[0] == ("jit", (3, 1), (x, 32), meta)
    assert calls[1] == ("compiled", (5, 1, 1), (x, 48, 8, 2, 1))
    assert calls[2][0] == "jit"
    assert len(calls) == 3


def test_output_permutation_map_is_kept_per_tensor_and_version():
    """The Triton path's column map for ``out_perm`` (its inverse, extended by the identity for a transposed call's
    wider slabs) is computed once per permutation tensor and recomputed when that tensor changes or is replaced."""
    import gc

    import torch

    from twiddle.ops import triton_kernel as tk
    from twiddle.permutations import invert_permutation

    def expected(q, columns):
        return torch.cat([invert_permutation(q), torch.arange(q.numel(), columns)])

    q = torch.randperm(13)
    first = tk._out_map(q, 13)
    assert torch.equal(first, expected(q, 13))
    assert tk._out_map(q, 13) is first  # kept
    assert torch.equal(tk._out_map(q, 16), expected(q, 16))  # a transposed call's 16-wide slabs
    q[:] = torch.randperm(13)  # modified in place: recomputed
    assert torch.equal(tk._out_map(q, 13), expected(q, 13))
    for _ in range(3):  # new tensors (possibly at a freed tensor's address): never a stale map
        del q
        gc.collect()
        q = torch.randperm(13)
        assert torch.equal(tk._out_map(q, 13), expected(q, 13))
    with torch.inference_mode():
        r = torch.randperm(13)
    assert r.is_inference()
    assert torch.equal(tk._out_map(r, 13), expected(r, 13))
    assert tk._out_map(None, 13) is None
