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
    import itertools, torch
    from twiddle.ops.triton_kernel import triton_forward, triton_backward
    from twiddle.ops import butterfly_multiply_reference
    torch.manual_seed(0)
    worst = {torch.float64: 0.0, torch.float32: 0.0}
    cases = itertools.product([1, 2, 8, 32], [1, 2, 3], [1, 2], [True, False], [False, True])
    for n, nblocks, nstacks, inc, tr in cases:
        t = torch.randn(nstacks, nblocks, n.bit_length() - 1, n // 2, 2, 2, dtype=torch.float64) / 2 ** 0.5
        m = max(1, nstacks * n - 3) if tr else max(1, n - 1)
        out = max(1, n - 1) if tr else max(1, nstacks * n - 2)
        x = torch.randn(7, m, dtype=torch.float64)
        g = torch.randn(7, out, dtype=torch.float64)
        tt, xx = t.clone().requires_grad_(), x.clone().requires_grad_()
        ref = butterfly_multiply_reference(tt, xx, inc, out_size=out, transpose=tr)
        (ref * g).sum().backward()
        ref_gt = tt.grad if tt.grad is not None else torch.zeros_like(t)
        for dtype in worst:
            y = triton_forward(t.to(dtype), x.to(dtype), inc, tr, out)
            gt, gx = triton_backward(t.to(dtype), x.to(dtype), g.to(dtype), inc, tr, out)
            assert y.dtype == gx.dtype == gt.dtype == dtype
            for a, b in ((y, ref), (gx, xx.grad), (gt, ref_gt)):
                err = ((a.double() - b).norm() / b.norm().clamp_min(1e-30)).item()
                worst[dtype] = max(worst[dtype], err)
    print(worst[torch.float64], worst[torch.float32])
    """
)


def test_triton_kernel_logic_in_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", INTERPRETER_CHECK], capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    err64, err32 = map(float, out.stdout.split())
    assert err64 < 1e-12
    assert err32 < 2e-5


COMPILE_CHECK = textwrap.dedent(
    """
    import triton, triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from twiddle.ops import triton_kernel as tk
    common = {"N": "constexpr", "LOG_N": "constexpr", "NBLOCKS": "constexpr", "INCREASING": "constexpr",
              "TRANSPOSE": "constexpr", "BLOCK_B": "constexpr", "COMPUTE": "constexpr"}
    consts = {"N": 32, "LOG_N": 5, "NBLOCKS": 2, "INCREASING": 1, "TRANSPOSE": 1, "BLOCK_B": 16,
              "COMPUTE": tl.float32}
    fwd = dict.fromkeys(["x_ptr", "tw_ptr", "out_ptr"], "*fp32")
    fwd.update(dict.fromkeys(["batch", "in_size", "out_cols", "ld_x", "ld_out", "stack_out_stride"], "i32"))
    bwd = dict.fromkeys(["x_ptr", "tw_ptr", "g_ptr", "gx_ptr", "dtw_ptr", "acts_ptr"], "*fp32")
    bwd.update(dict.fromkeys(["batch", "in_size", "out_cols", "ld_x", "ld_g", "stack_gx_stride"], "i32"))
    for kernel, sig in ((tk._forward_kernel, fwd), (tk._backward_kernel, bwd)):
        compiled = triton.compile(ASTSource(kernel, {**sig, **common}, consts), target=GPUTarget("cuda", 80, 32))
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
