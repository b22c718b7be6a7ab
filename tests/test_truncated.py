"""Truncated butterflies, FJLT, the J2ᵀ·W̃·J1 layer and replace_linear (Ailon, Leibovitz, Nair 2021)."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

import twiddle
from twiddle import Butterfly, TruncatedButterfly, TruncatedButterflyLinear, fjlt, replace_linear
from twiddle.truncated import fjlt_failure_bound


@pytest.fixture(autouse=True)
def _float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.mark.parametrize(("n", "ell"), [(1, 1), (2, 1), (7, 3), (64, 8), (100, 20), (1024, 10), (256, 256)])
@pytest.mark.parametrize("init", ["fjlt", "ortho", "randn"])
def test_forward_equals_dense_and_transpose_is_adjoint(n, ell, init):
    j = TruncatedButterfly(n, ell, seed=5, init=init)
    dense = j.to_dense()
    assert dense.shape == (ell, n)
    x, y = torch.randn(4, n), torch.randn(4, ell)
    torch.testing.assert_close(j(x), x @ dense.T, rtol=1e-12, atol=1e-12)
    jt = j.transpose()
    torch.testing.assert_close(jt(y), y @ dense, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close((j(x) * y).sum(), (x * jt(y)).sum(), rtol=1e-12, atol=1e-12)  # <Jx, y> = <x, Jᵀy>
    assert jt.to_dense().shape == (n, ell)


def test_transpose_shares_parameters_and_gradients_flow():
    j = TruncatedButterfly(32, 6, seed=1)
    jt = j.transpose()
    assert jt.source.twiddle is j.twiddle
    jt(torch.randn(3, 6)).pow(2).sum().backward()
    assert j.twiddle.grad is not None and j.twiddle.grad.abs().sum() > 0


def test_kept_subset_is_seeded_uniform_and_survives_save_load():
    a, b = TruncatedButterfly(64, 10, seed=3), TruncatedButterfly(64, 10, seed=3)
    assert torch.equal(a.kept, b.kept) and torch.equal(a.twiddle, b.twiddle)
    other = TruncatedButterfly(64, 10, seed=4)
    assert not torch.equal(a.kept, other.kept)
    assert len(set(a.kept.tolist())) == 10 and a.kept.max() < 64
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    other.load_state_dict(torch.load(buffer))
    assert torch.equal(other.kept, a.kept)
    x = torch.randn(2, 64)
    assert torch.equal(other(x), a(x))
    # every position is kept about equally often over seeds (uniform subset)
    counts = torch.zeros(16)
    for seed in range(400):
        counts[TruncatedButterfly(16, 4, seed=seed).kept] += 1
    assert counts.min() > 60 and counts.max() < 140  # expected 100 each


@pytest.mark.parametrize(("n", "ell"), [(64, 1), (64, 5), (256, 16), (1024, 10), (1024, 1024)])
def test_alive_weights_are_bounded_and_pruning_keeps_the_map(n, ell):
    j = TruncatedButterfly(n, ell, seed=2, init="randn")
    alive = j.alive_parameters()
    assert alive <= 2 * n * math.log2(max(ell, 1)) + 6 * n
    dense = j.to_dense()
    j.prune_()
    torch.testing.assert_close(j.to_dense(), dense, rtol=0, atol=0)
    mask = j.alive_mask()
    assert torch.all(j.twiddle[~mask] == 0)
    # dead weights get zero gradient: they reach no kept output
    j(torch.randn(3, n)).sum().backward()
    assert torch.all(j.twiddle.grad[~mask] == 0)
    assert TruncatedButterfly(n, ell, seed=2, prune=True).alive_parameters() == alive


def test_fjlt_is_unbiased_and_spreads_a_spike_exactly():
    n, k = 256, 32
    x = torch.randn(n)
    ratios = torch.stack([fjlt(n, k, seed=s)(x).pow(2).sum() / x.pow(2).sum() for s in range(300)])
    assert abs(ratios.mean().item() - 1) < 4 * ratios.std().item() / math.sqrt(300)
    spike = torch.zeros(n)
    spike[17] = 3.0
    for s in range(5):  # H D e_i has all entries ±1/√n: any subset rescaled keeps the norm exactly
        assert fjlt(n, k, seed=s)(spike).norm().item() == pytest.approx(3.0, rel=1e-12)


@pytest.mark.parametrize(("n", "k", "eps"), [(1024, 256, 0.5), (512, 128, 0.6)])
def test_fjlt_keeps_norms_within_the_documented_bound(n, k, eps):
    delta = 0.01
    bound = fjlt_failure_bound(n, k, eps, delta)
    assert bound < 0.5  # a meaningful guarantee at these sizes
    vectors = [torch.randn(n), torch.ones(n), torch.linspace(-1, 1, n) ** 3]
    draws = 200
    for x in vectors:
        failures = sum(
            abs(fjlt(n, k, seed=s)(x).pow(2).sum().item() / x.pow(2).sum().item() - 1) >= eps for s in range(draws)
        )
        # the observed rate stays below the bound (plus 3 binomial standard deviations)
        assert failures / draws <= bound + 3 * math.sqrt(bound * (1 - bound) / draws)


def test_fjlt_is_fixed_unless_trainable():
    assert not any(p.requires_grad for p in fjlt(16, 4).parameters())
    assert all(p.requires_grad for p in fjlt(16, 4, trainable=True).parameters())


# ------------------------------------------------------------------------------------------- the J2ᵀ W̃ J1 layer


@pytest.mark.parametrize(("n_in", "n_out"), [(1, 1), (64, 64), (300, 50), (10, 1000)])
def test_truncated_linear_equals_its_dense_formula(n_in, n_out):
    layer = TruncatedButterflyLinear(n_in, n_out)
    assert layer.k_in == max(1, math.ceil(math.log2(n_in))) and layer.k_out == max(1, math.ceil(math.log2(n_out)))
    x = torch.randn(5, n_in)
    torch.testing.assert_close(layer(x), x @ layer.to_dense().T + layer.bias, rtol=1e-10, atol=1e-12)
    dense = layer.j_out.to_dense().T @ layer.inner.weight @ layer.j_in.to_dense()
    torch.testing.assert_close(layer.to_dense(), dense)


def test_truncated_linear_fit_dense_solves_least_squares():
    layer = TruncatedButterflyLinear(40, 30, k_in=8, k_out=6, seed=2)
    w = torch.randn(30, 40)
    layer.fit_dense_(w)
    j1, j2t = layer.j_in.to_dense(), layer.j_out.to_dense().T
    residual = j2t @ layer.inner.weight @ j1 - w
    # normal equations of min ‖J2ᵀ W̃ J1 − W‖: J2 · residual · J1ᵀ = 0
    torch.testing.assert_close(j2t.T @ residual @ j1.T, torch.zeros(6, 8), atol=1e-10, rtol=0)


@pytest.mark.parametrize("prune", [False, True])
def test_reset_parameters_restores_the_seeded_state_and_completes_meta_device_init(prune):
    """As nn.Linear: build on the meta device (no memory), ``to_empty`` then ``reset_parameters`` gives the module
    that direct construction gives (J from its seed; W̃ and the bias from the global random state); after training,
    ``reset_parameters`` restores J's seeded values, pruned again where the module was made pruned."""
    torch.manual_seed(0)
    direct = TruncatedButterflyLinear(50, 30, seed=2)
    j = TruncatedButterfly(100, 20, seed=3, prune=prune)
    with torch.device("meta"):
        lazy = TruncatedButterflyLinear(50, 30, seed=2)
        lazy_j = TruncatedButterfly(100, 20, seed=3, prune=prune)
    assert lazy.j_in.kept.is_meta and lazy.inner.weight.is_meta
    lazy, lazy_j = lazy.to_empty(device="cpu"), lazy_j.to_empty(device="cpu")
    torch.manual_seed(0)
    lazy.reset_parameters()
    lazy_j.reset_parameters()
    for a, b in ((direct, lazy), (j, lazy_j)):
        state = a.state_dict()
        assert state.keys() == b.state_dict().keys()
        assert all(torch.equal(v, state[k]) for k, v in b.state_dict().items())
    saved = {k: v.clone() for k, v in j.state_dict().items()}
    with torch.no_grad():
        j.twiddle.add_(1.0)
        j.kept.zero_()
    j.reset_parameters()
    assert all(torch.equal(v, saved[k]) for k, v in j.state_dict().items())
    if prune:
        assert not j.alive_mask().all() and (j.twiddle[~j.alive_mask()] == 0).all()


def test_truncated_linear_trains_like_a_linear_layer():
    torch.manual_seed(0)
    layer = TruncatedButterflyLinear(32, 16, k_in=8, k_out=8)
    target = TruncatedButterflyLinear(32, 16, k_in=8, k_out=8, seed=7)
    x = torch.randn(256, 32)
    with torch.no_grad():
        y = target(x)
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-2)
    first = None
    for _ in range(200):
        loss = (layer(x) - y).pow(2).mean()
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.2 * first


# ------------------------------------------------------------------------------------------- replace_linear


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 64), nn.ReLU(), nn.Linear(64, 4)
    )


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 150) -> tuple[float, float]:
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses[0], losses[-1]


@pytest.mark.parametrize("kind", ["butterfly", "truncated"])
@pytest.mark.parametrize("make", [_mlp, _cnn])
def test_replace_linear_keeps_models_trainable(kind, make, capsys):
    torch.manual_seed(0)
    model = make()
    x = torch.randn(128, 32) if make is _mlp else torch.randn(128, 1, 8, 8)
    y = torch.randint(0, 4, (128,))
    before = sum(p.numel() for p in model.parameters())
    out = replace_linear(model, kind, filter=lambda name, m: m.out_features > 4, verbose=True)
    assert out is model
    layers = list(model.children())
    replaced = [m for m in layers if isinstance(m, (Butterfly, TruncatedButterflyLinear))]
    assert len(replaced) == (2 if make is _mlp else 1)
    assert sum(type(m) is nn.Linear for m in layers) == 1  # the filtered-out output layer stays
    assert "parameters:" in capsys.readouterr().err
    assert sum(p.numel() for p in model.parameters()) < before
    first, last = _train(model, x, y)
    assert last < 0.5 * first


def test_replace_linear_from_dense_recovers_a_butterfly_weight():
    source = Butterfly(64, 64, init="ortho")
    linear = nn.Linear(64, 64)
    with torch.no_grad():
        linear.weight.copy_(source.to_dense())
    model = nn.Sequential(linear)
    replace_linear(model, "butterfly", init_from_dense=True, polish_steps=0)
    torch.testing.assert_close(model[0].to_dense(), source.to_dense(), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(model[0].bias, linear.bias)


def test_replace_linear_from_dense_least_squares_improves_rectangular_fit():
    torch.manual_seed(0)
    linear = nn.Linear(48, 20)
    plain = replace_linear(nn.Sequential(nn.Linear(48, 20)), "butterfly", init_from_dense=False)[0]
    fitted = replace_linear(nn.Sequential(linear), "butterfly", init_from_dense=True, polish_steps=30)[0]
    err = (fitted.to_dense() - linear.weight).norm() / linear.weight.norm()
    err_plain = (plain.to_dense() - linear.weight).norm() / linear.weight.norm()
    assert err < 0.9 < err_plain


def test_replace_linear_on_a_bare_linear_returns_the_replacement():
    # (at n = 16 the truncated layer has more parameters than the dense one: min_compression=0 replaces it anyway)
    new = replace_linear(nn.Linear(16, 16), "truncated", k_in=4, k_out=4, seed=1, min_compression=0)
    assert isinstance(new, TruncatedButterflyLinear) and new.k_in == 4


def test_replace_linear_keeps_layers_a_butterfly_would_make_larger(capsys):
    """A narrow head (512 -> 10: 5,130 dense parameters, 9,226 as a butterfly) stays dense by default;
    ``min_compression`` sets the saving a replacement must bring (0: replace everything selected)."""
    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 10))

    m = replace_linear(model(), verbose=True)
    assert isinstance(m[0], Butterfly) and type(m[2]) is nn.Linear
    err = capsys.readouterr().err
    assert "1 layer(s) replaced by butterfly, 1 kept by min_compression=1.0" in err
    assert "2: Linear(512, 10) 5130 parameters kept (Butterfly would have 9226)" in err
    m = replace_linear(model(), min_compression=0)
    assert isinstance(m[0], Butterfly) and isinstance(m[2], Butterfly)
    # Linear(784, 512): 401,920 parameters, its butterfly 20,992 (19.1x fewer): kept when asking for 20x
    m = replace_linear(model(), min_compression=20)
    assert type(m[0]) is nn.Linear and type(m[2]) is nn.Linear
    m = replace_linear(model(), min_compression=19)
    assert isinstance(m[0], Butterfly)
    # a kept layer is not fitted (init_from_dense is skipped with it) and keeps its weights
    head = model()[2]
    before = head.weight.clone()
    assert replace_linear(head, init_from_dense=True) is head
    torch.testing.assert_close(head.weight, before, rtol=0, atol=0)


def test_replace_linear_replaces_a_shared_layer_everywhere_by_one_shared_layer(capsys):
    """A layer that sits at several places (tied blocks) becomes one layer at all of them: before, only its first
    place was replaced, the model kept the dense layer elsewhere (more parameters than before) and lost the tie."""
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first = nn.Linear(64, 64)
            self.block = nn.Sequential(self.first, nn.ReLU())
            self.again = self.first

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.again(self.block(x))

    model = Tied()
    asked = []
    replace_linear(model, filter=lambda name, m: asked.append(name) or True, verbose=True)
    assert asked == ["first"]
    assert isinstance(model.first, Butterfly) and model.block[0] is model.first and model.again is model.first
    assert sum(p.numel() for p in model.parameters()) == model.first.parameter_count().structured == 832
    assert "(also at block.0, again)" in capsys.readouterr().err
    model = Tied()
    replace_linear(model, filter=lambda name, m: name != "first")  # asked once: stays at all places
    assert type(model.first) is nn.Linear and model.block[0] is model.first and model.again is model.first


@pytest.mark.parametrize("kind", ["butterfly", "truncated"])
def test_replaced_transformer_encoders_run_in_eval_mode_as_in_training(kind):
    """torch's encoder layer takes a fused inference path in eval mode without gradients that reads
    linear1.weight (an AttributeError for a butterfly), and the encoder turns a padded batch into a nested tensor
    for it; replace_linear keeps such modules on their module path."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True)
    replace_linear(encoder, kind, min_compression=0)
    assert all(not isinstance(m.linear1, nn.Linear) for m in encoder.layers)
    assert type(encoder.layers[0].self_attn.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear  # stays
    x = torch.randn(3, 7, 64)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[1, 5:] = True
    train_out = encoder(x, src_key_padding_mask=pad)
    one_layer = encoder.layers[0](x)
    encoder.eval()
    with torch.no_grad():
        eval_out = encoder(x, src_key_padding_mask=pad)
        eval_layer = encoder.layers[0](x)
    keep = ~pad
    torch.testing.assert_close(eval_out[keep], train_out[keep].detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(eval_layer, one_layer.detach(), rtol=1e-5, atol=1e-5)
    # a layer on its own
    alone = replace_linear(nn.TransformerEncoderLayer(32, 2, 64, dropout=0.0, batch_first=True), kind,
                           min_compression=0).eval()
    with torch.no_grad():
        assert alone(torch.randn(2, 3, 32)).shape == (2, 3, 32)


def test_replace_linear_passes_layer_options():
    model = replace_linear(nn.Sequential(nn.Linear(16, 16)), "butterfly", nblocks=2, init="ortho")
    assert model[0].nblocks == 2 and model[0].init == "ortho"


@pytest.mark.parametrize("kind", ["butterfly", "truncated"])
def test_replace_linear_keeps_eval_mode_and_works_on_the_meta_device(kind):
    model = nn.Sequential(nn.Linear(64, 64), nn.Dropout(0.5), nn.Linear(64, 64)).eval()
    replace_linear(model, kind)
    assert not any(m.training for m in model.modules())  # a model in eval mode stays so: no module switched back
    with torch.device("meta"):
        meta = replace_linear(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64)), kind)
    assert all(p.is_meta for p in meta.parameters())
    meta.to_empty(device="cpu")
    torch.manual_seed(0)
    meta.apply(lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None)
    torch.manual_seed(0)
    cpu = replace_linear(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64)), kind)
    torch.manual_seed(0)
    cpu.apply(lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None)
    x = torch.randn(3, 64)
    torch.testing.assert_close(meta(x), cpu(x), rtol=0, atol=0)
    with torch.device("meta"):
        frozen = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    with pytest.raises(ValueError, match="init_from_dense needs the dense weights' values, but 0 is on the meta"):
        replace_linear(frozen, kind, init_from_dense=True)
    assert type(frozen[0]) is nn.Linear and type(frozen[2]) is nn.Linear  # nothing replaced


# ------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: TruncatedButterfly(100, 200), ValueError, r"out_features \(ℓ=200\) must be at most n = 128"),
        (lambda: TruncatedButterfly(16, 0), ValueError, "out_features must be a positive integer"),
        (lambda: TruncatedButterfly(0, 1), ValueError, "in_features must be a positive integer"),
        (lambda: TruncatedButterfly(16, 4, seed=1.5), ValueError, "seed must be an int"),
        (lambda: TruncatedButterfly(16, 4, seed="a"), ValueError, "seed must be an int"),
        (lambda: TruncatedButterfly(16, 4, init="identity"), ValueError, "init must be one of"),
        (lambda: TruncatedButterfly(16, 4).transpose()(torch.randn(2, 5)), ValueError, "last dimension 4"),
        (lambda: TruncatedButterflyLinear(16, 16, k_in=0), ValueError, "k_in must be a positive integer"),
        (lambda: TruncatedButterflyLinear(16, 16)(torch.randn(2, 15)), ValueError, "last dimension 16"),
        (lambda: TruncatedButterflyLinear(16, 8).fit_dense_(torch.randn(16, 8)), ValueError, r"shape \(8, 16\)"),
        (lambda: replace_linear(_mlp(), "dense"), ValueError, "kind must be one of"),
        (lambda: replace_linear([], "butterfly"), TypeError, "model must be an nn.Module"),
        (lambda: replace_linear(_mlp(), filter=3), TypeError, "filter must be a callable"),
        (lambda: replace_linear(_mlp(), min_compression=-1), ValueError, "min_compression must be a number >= 0"),
        (lambda: replace_linear(_mlp(), min_compression="2"), ValueError, "min_compression must be a number"),
        (lambda: fjlt(16, 32), ValueError, "must be at most n = 16"),
    ],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_public_names():
    assert twiddle.TruncatedButterfly is TruncatedButterfly and twiddle.fjlt is fjlt
    assert twiddle.replace_linear is replace_linear
