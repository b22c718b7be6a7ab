"""torch.func transforms (grad, vmap, jvp, jacrev, jacfwd, hessian), forward-mode AD and higher derivatives through
the modules, checked against their dense matrices and the reference multiply in float64.

The fast kernels' C++ autograd is opaque to functorch, so while a transform is active the multiply runs the
reference (``twiddle.ops.transform_active``), except forward mode alone on real tensors, which runs the fast kernel
with a tangent rule (``twiddle.ops._functorch``); outside transforms the fast kernel runs as before. Before this,
``torch.func.jvp`` through the fused CPU op returned a zero tangent without an error.
"""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.func import functional_call, grad, hessian, jacfwd, jacrev, jvp, vmap

from twiddle import Butterfly, TruncatedButterflyLinear, transforms
from twiddle.factorize.gradient import _relaxed_permute_reference, relaxed_permute
from twiddle.ops import fused_cpu, kernel_for, transform_active

D = torch.float64


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().norm() / b.abs().norm().clamp_min(1e-300)).item()


def modules():
    """(name, module, input dtype) for a module of each family, small sizes that are not powers of two included."""
    torch.manual_seed(0)
    return [
        ("butterfly", Butterfly(12, 20, nblocks=2, dtype=D), D),
        ("complex butterfly", Butterfly(8, 8, complex=True, dtype=torch.complex128), torch.complex128),
        ("fft", transforms.fft(16, norm="ortho", dtype=D), torch.complex128),
        ("dst", transforms.dst(16, type=2, dtype=D), D),
        ("truncated", TruncatedButterflyLinear(16, 6, dtype=D), D),
    ]


@pytest.mark.parametrize("index", range(5), ids=[m[0] for m in modules()])
def test_jvp_jacrev_and_forward_ad_match_the_dense_matrix(index):
    name, module, dtype = modules()[index]
    m = module.in_features if hasattr(module, "in_features") else module.in_shape[-1]
    W = module.to_dense().to(dtype if dtype.is_complex else D)
    x = torch.randn(3, m, dtype=dtype)
    v = torch.randn(3, m, dtype=dtype)
    _, tangent = jvp(module, (x,), (v,))
    assert rel(tangent, v @ W.T) < 1e-12
    if dtype.is_complex:  # the Jacobian of the real and imaginary parts at a real input: Re W and Im W
        jac = jacrev(lambda z: torch.view_as_real(module(z.to(dtype))))(x[0].real)
        expected = torch.view_as_real(W).permute(0, 2, 1)
    else:
        jac, expected = jacrev(module)(x[0]), W
        assert rel(jacfwd(module)(x[0]), W) < 1e-12
    assert rel(jac, expected) < 1e-12
    with fwAD.dual_level():
        y = module(fwAD.make_dual(x, v))
        assert rel(fwAD.unpack_dual(y).tangent, v @ W.T) < 1e-12


def test_per_sample_gradients_by_vmap_of_grad_equal_a_loop_over_samples():
    """The Opacus / functorch recipe: vmap(grad(loss)) over samples, against one autograd backward per sample (which
    runs the fused kernel)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(Butterfly(12, 16, dtype=D), torch.nn.Tanh(), TruncatedButterflyLinear(16, 3, dtype=D))
    params = {k: v.detach() for k, v in model.named_parameters()}
    x, target = torch.randn(5, 12, dtype=D), torch.randn(5, 3, dtype=D)

    def loss(p, xi, ti):
        return (functional_call(model, p, (xi.unsqueeze(0),)) - ti).pow(2).sum()

    seen = []

    def spied(p, xi, ti):
        seen.append(kernel_for(p["0.twiddle"], xi))
        return loss(p, xi, ti)

    per_sample = vmap(grad(spied), in_dims=(None, 0, 0))(params, x, target)
    assert seen == ["fused-cpu"]  # (detached parameters: the fused op, batched by its vmap rules)
    for i in range(5):
        model.zero_grad()
        (model(x[i : i + 1]) - target[i]).pow(2).sum().backward()
        for name, p in model.named_parameters():
            assert rel(per_sample[name][i], p.grad) < 1e-12, name


@pytest.mark.parametrize("transpose", [False, True])
def test_per_sample_gradients_of_the_functional_multiply_with_permutations(transpose):
    from twiddle.ops import butterfly_multiply

    torch.manual_seed(0)
    t = torch.randn(2, 2, 3, 4, 2, 2, dtype=D)
    m, out = (13, 7) if transpose else (7, 13)
    x, w = torch.randn(6, m, dtype=D), torch.randn(6, out, dtype=D)
    p, q = torch.randperm(m), torch.randperm(out)

    def loss(tw, xi, wi):
        y = butterfly_multiply(tw, xi[None], out_size=out, transpose=transpose, in_perm=p, out_perm=q)
        return (y.sin() * wi).sum()

    per_sample = vmap(grad(loss, argnums=(0, 1)), in_dims=(None, 0, 0))(t, x, w)
    for i in range(6):
        tt, xx = t.clone().requires_grad_(), x[i].clone().requires_grad_()
        expected = torch.autograd.grad(loss(tt, xx, w[i]), (tt, xx))
        assert rel(per_sample[0][i], expected[0]) < 1e-12 and rel(per_sample[1][i], expected[1]) < 1e-12


@pytest.mark.parametrize("dtype,n,real_input", [
    (torch.float32, 64, False),  # the AVX row layout for small groups
    (torch.float64, 16, False),
    (torch.complex64, 32, False),
    (torch.complex128, 8, True),  # a real input to complex twiddles
])
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("group_rows", [1, 3])
def test_the_grouped_backward_op_gives_each_group_the_gradients_of_a_call_on_it_alone(dtype, n, real_input, transpose,
                                                                                        group_rows):
    """twiddle::butterfly_multiply_backward_grouped (per-sample gradients in one call) against the backward op called
    on every group of rows by itself: the same bits, with stacks, bias, input and output permutations."""
    if not fused_cpu.available():
        pytest.skip("no fused CPU kernel")
    torch.manual_seed(0)
    complex_ = dtype.is_complex
    real = torch.float32 if dtype in (torch.float32, torch.complex64) else torch.float64
    in_size, out_size = (2 * n + 3, n - 1) if transpose else (n - 3, 2 * n + 1)
    shape = (3, 1, n.bit_length() - 1, n // 2, 2, 2) + ((2,) if complex_ else ())
    twiddle = torch.randn(shape, dtype=real)
    rows = 6 * group_rows
    x = torch.randn((rows, in_size) + ((2,) if complex_ and not real_input else ()), dtype=real)
    grad_out = torch.randn((rows, out_size) + ((2,) if complex_ else ()), dtype=real)
    in_perm, out_perm = torch.randperm(in_size), torch.randperm(out_size)
    op = torch.ops.twiddle.butterfly_multiply_backward_grouped
    flags = (True, transpose, False, out_size)
    args = (True, in_perm, out_perm)
    g_tw, g_x, g_bias = op(twiddle, x, grad_out, *flags, group_rows, *args)
    assert g_tw.shape == (6, *shape) and g_x.shape == x.shape and g_bias.shape[:2] == (6, out_size)
    for q in range(6):
        part = slice(q * group_rows, (q + 1) * group_rows)
        one = torch.ops.twiddle.butterfly_multiply_backward(twiddle, x[part], grad_out[part], *flags, *args)
        assert torch.equal(g_tw[q], one[0]) and torch.equal(g_x[part], one[1]) and torch.equal(g_bias[q], one[2])
    # a broadcast incoming gradient (stride-0 rows); a batch that is not a multiple of the groups
    expanded = grad_out[:1].expand(rows, *grad_out.shape[1:])
    g_tw2 = op(twiddle, x, expanded, *flags, group_rows, *args)[0]
    alone = torch.ops.twiddle.butterfly_multiply_backward(twiddle, x[:group_rows], expanded[:group_rows], *flags,
                                                          *args)[0]
    assert torch.equal(g_tw2[0], alone)
    with pytest.raises(RuntimeError, match="multiple"):
        op(twiddle, x[:-1], grad_out[:-1], *flags, 2 * group_rows + 1 if group_rows > 1 else 4, *args)
    with pytest.raises(RuntimeError, match="group_rows must be positive"):
        op(twiddle, x, grad_out, *flags, 0, *args)


def test_per_sample_gradients_of_entries_with_several_rows_and_jacrev():
    """vmap(grad) where each sample is several rows (a group of the grouped backward op), nested vmaps, and
    jacrev (the incoming gradient batched, the input shared), against loops of ordinary backward passes."""
    torch.manual_seed(0)
    layer = Butterfly(20, 24, dtype=D)
    params = {k: v.detach() for k, v in layer.named_parameters()}
    x = torch.randn(4, 3, 20, dtype=D)  # 4 samples of 3 rows

    def loss(p, xi):
        return functional_call(layer, p, (xi,)).sin().sum()

    per_sample = vmap(grad(loss), in_dims=(None, 0))(params, x)
    for i in range(4):
        layer.zero_grad()
        loss(dict(layer.named_parameters()), x[i]).backward()
        assert rel(per_sample["twiddle"][i], layer.twiddle.grad) < 1e-12
        assert rel(per_sample["bias"][i], layer.bias.grad) < 1e-12
    nested = vmap(vmap(grad(lambda p, z: loss(p, z[None])), in_dims=(None, 0)), in_dims=(None, 0))(params, x)
    for i, j in ((0, 0), (3, 2)):  # (the grouped op's own vmap rule runs for the outer level)
        layer.zero_grad()
        loss(dict(layer.named_parameters()), x[i, j][None]).backward()
        assert rel(nested["twiddle"][i, j], layer.twiddle.grad) < 1e-12
    jac = jacrev(lambda p: functional_call(layer, p, (x[0],)))(params)  # d(3 x 24 outputs) / d(twiddle)
    assert jac["twiddle"].shape == (3, 24, *layer.twiddle.shape)
    for row, col in ((0, 0), (2, 17), (1, 23)):
        layer.zero_grad()
        layer(x[0])[row, col].backward()
        assert rel(jac["twiddle"][row, col], layer.twiddle.grad) < 1e-12


def test_torch_func_grad_of_parameters_tracked_outside_keeps_the_outer_graph(monkeypatch):
    """MAML written with torch.func: grad(loss)(params) with parameters that require grad, the gradients used in an
    update, the meta-loss differentiated from outside: the reference runs (the fused op's gradients under a grad
    transform are not differentiable again), and the meta-gradient equals the reference kernel's."""
    torch.manual_seed(0)
    model = Butterfly(16, 16, dtype=D)
    x, x2 = torch.randn(3, 16, dtype=D), torch.randn(3, 16, dtype=D)

    def loss(p, z):
        return functional_call(model, p, (z,)).pow(2).sum()

    def meta_gradient():
        params = dict(model.named_parameters())
        g = grad(loss)(params, x)
        adapted = {k: params[k] - 0.1 * g[k] for k in params}
        return torch.autograd.grad(loss(adapted, x2), list(params.values()))

    fast = meta_gradient()
    monkeypatch.setenv("TWIDDLE_KERNEL", "reference")
    for a, b in zip(fast, meta_gradient(), strict=True):
        assert rel(a, b) < 1e-12


def test_hessian_with_respect_to_the_input_matches_the_closed_form():
    """f(x) = Σ sin(W x + b): H = Wᵀ diag(-sin(W x + b)) W."""
    torch.manual_seed(0)
    layer = Butterfly(10, 10, dtype=D)
    W, b = layer.to_dense(), layer.bias.detach()
    x = torch.randn(10, dtype=D)
    H = hessian(lambda z: layer(z).sin().sum())(x)
    assert rel(H, W.T @ torch.diag(-torch.sin(W @ x + b)) @ W) < 1e-12


def test_the_fast_kernel_runs_outside_transforms_and_the_reference_inside(monkeypatch):
    t = torch.randn(1, 1, 3, 4, 2, 2, dtype=D, requires_grad=True)  # (vmap with no gradient needed: see below)
    x = torch.randn(2, 8, dtype=D)
    assert fused_cpu.available() and not transform_active()
    assert kernel_for(t, x) == "fused-cpu"
    seen = []
    vmap(lambda row: seen.append((transform_active(), kernel_for(t, row))) or row)(x)
    grad(lambda row: seen.append((transform_active(), kernel_for(t, row))) or row.sum())(x)
    vmap(lambda row: jvp(lambda r: seen.append((transform_active(), kernel_for(t, r))) or r, (row,), (row,)))(x)
    assert seen == [(True, "reference")] * 3
    seen.clear()  # forward mode alone: the fast kernel, through its tangent rule
    jvp(lambda row: seen.append((transform_active(), kernel_for(t, row))) or row, (x,), (x,))
    with fwAD.dual_level():
        seen.append((transform_active(), kernel_for(t, x)))
    assert seen == [(True, "fused-cpu")] * 2
    assert kernel_for(t, x) == "fused-cpu"
    monkeypatch.setenv("TWIDDLE_KERNEL", "fused")  # the fused kernel cannot run there: an error, as elsewhere
    with pytest.raises(RuntimeError, match="torch.func transform"):
        vmap(lambda row: kernel_for(t, row))(x)


@pytest.mark.parametrize("dtype", [D, torch.complex128])
@pytest.mark.parametrize("transpose", [False, True])
def test_forward_mode_through_the_fast_kernel_equals_the_reference(dtype, transpose, monkeypatch):
    """Tangents along the input and the twiddles (torch.func.jvp and forward_ad), permutations and truncation, and
    a reverse-mode backward of primal and tangent taken inside a dual level: the fast kernel's tangent rule (real
    dtypes; complex ones run the reference) against the reference multiply's forward mode."""
    from twiddle.ops import butterfly_multiply

    torch.manual_seed(0)
    t = torch.randn(2, 2, 3, 4, 2, 2, dtype=dtype, requires_grad=True)
    m, out = (13, 7) if transpose else (7, 13)
    x = torch.randn(5, m, dtype=dtype, requires_grad=True)
    p, q = torch.randperm(m), torch.randperm(out)
    dt, dx = torch.randn_like(t), torch.randn_like(x)

    def f(tw, z):
        return butterfly_multiply(tw, z, out_size=out, transpose=transpose, conjugate=dtype.is_complex, in_perm=p,
                                  out_perm=q)

    def results():
        primal, along_both = jvp(f, (t, x), (dt, dx))
        along_x = jvp(lambda z: f(t, z), (x,), (dx,))[1]
        with fwAD.dual_level():
            y = f(fwAD.make_dual(t, dt), fwAD.make_dual(x, dx))
            value, tangent = fwAD.unpack_dual(y)
            loss = value.abs().pow(2).sum() + (tangent * tangent.conj()).real.sum()
            g = torch.autograd.grad(loss, (t, x))
        return (primal, along_both, along_x, tangent, *g)

    fast = results()
    with fwAD.dual_level():
        assert kernel_for(t, x) == ("reference" if dtype.is_complex else "fused-cpu")
    monkeypatch.setenv("TWIDDLE_KERNEL", "reference")
    reference = results()
    for a, b in zip(fast, reference, strict=True):
        assert rel(a.detach(), b.detach()) < 1e-12


def test_relaxed_permutation_under_transforms_and_double_backward():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, dtype=D, requires_grad=True)
    probs = torch.rand(2, 3, 3, dtype=D, requires_grad=True)
    v = torch.randn_like(x)
    _, tangent = jvp(lambda z: relaxed_permute(z, probs.detach()), (x.detach(),), (v,))
    assert rel(tangent, _relaxed_permute_reference(v, probs.detach())) < 1e-12  # linear in x
    # the fused op under create_graph=True, once and applied twice with the same weights (the second input depends
    # on them): first derivatives equal to the kernel's, second ones by finite differences
    for f in (fused_cpu.fused_relaxed_permute,
              lambda x, p: fused_cpu.fused_relaxed_permute(fused_cpu.fused_relaxed_permute(x, p).sin(), p)):
        y = f(x, probs)
        w = torch.randn_like(y)
        plain = torch.autograd.grad(y, (x, probs), w, retain_graph=True)
        graph = torch.autograd.grad(y, (x, probs), w, create_graph=True)
        assert all(rel(a.detach(), b) < 1e-12 for a, b in zip(graph, plain, strict=True))
        assert torch.autograd.gradgradcheck(f, (x, probs))


def test_vmap_without_gradients_runs_the_fused_kernel_through_its_batching_rule():
    """torch.vmap alone where nothing needs a gradient (inference, ensembles): the fused op's batching rule, one call
    for a batched input (nested vmaps too, a transform's permutations included), a call per member for batched
    twiddles; the same values as plain calls. With gradients needed the reference runs (and is still right)."""
    from torch.func import stack_module_state

    torch.manual_seed(0)
    layer = Butterfly(12, 20, nblocks=2, dtype=D)
    fft = transforms.fft(16, dtype=D)
    x = torch.randn(4, 3, 12, dtype=D)
    z = torch.randn(5, 16, dtype=torch.complex128)
    seen = []

    def spy(t, row):
        seen.append(kernel_for(t, row))
        return row

    with torch.no_grad():
        assert rel(vmap(layer)(x), layer(x)) < 1e-14
        assert rel(vmap(vmap(layer))(x), layer(x)) < 1e-14
        assert rel(vmap(fft)(z), torch.fft.fft(z)) < 1e-12
        vmap(lambda row: spy(layer.twiddle, row))(x)
        # an ensemble: three layers' parameters stacked, one input for all (x not batched) or one each
        members = [Butterfly(12, 20, dtype=D) for _ in range(3)]
        params, buffers = stack_module_state(members)

        def run(p, b, inputs):
            return functional_call(members[0], (p, b), (inputs,))

        shared = vmap(run, in_dims=(0, 0, None))(params, buffers, x[0])
        each = vmap(run)(params, buffers, x[:3])
        for i, member in enumerate(members):
            assert rel(shared[i], member(x[0])) < 1e-14
            assert rel(each[i], member(x[i])) < 1e-14
    vmap(lambda row: spy(layer.twiddle, row))(x)  # the twiddles require grad: the reference
    assert seen == ["fused-cpu", "reference"]
    assert rel(vmap(layer)(x), layer(x)) < 1e-12
    # frozen parameters, an input that requires grad outside vmap: the batching rule's call records the graph below
    frozen = Butterfly(12, 20, dtype=D).requires_grad_(False)
    xx = x.clone().requires_grad_()
    vmap(frozen)(xx).pow(2).sum().backward()
    W = frozen.to_dense()
    assert rel(xx.grad, 2 * (x @ W.T + frozen.bias) @ W) < 1e-12


def test_transforms_inside_torch_compile():
    """torch.compile around a transform: the routing still applies (dynamo breaks the graph at the transform check,
    so the transform's body runs eagerly); before, a compiled jvp returned a zero tangent without an error."""
    torch.manual_seed(0)
    layer = Butterfly(16, 16, dtype=D)
    x, v = torch.randn(4, 16, dtype=D), torch.randn(4, 16, dtype=D)
    W = layer.to_dense()
    tangent = torch.compile(lambda z: jvp(layer, (z,), (v,))[1], backend="aot_eager")(x)
    assert rel(tangent, v @ W.T) < 1e-12
    params = {k: p.detach() for k, p in layer.named_parameters()}
    g = torch.compile(grad(lambda p, z: functional_call(layer, p, (z,)).pow(2).sum()), backend="aot_eager")(params, x)
    assert rel(g["bias"], 2 * (x @ W.T + layer.bias).sum(0)) < 1e-12
