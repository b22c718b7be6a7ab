"""Gradient factorization: the 2019 paper's algorithm (Dao et al., ICML 2019), restarts batched in one tensor.

Models (the paper's names, read right to left as matrices act): ``bp`` — a complex butterfly ``B`` (increasing
stride) after a learnable relaxed permutation ``P``; ``bpp`` — ``B P₂ P₁`` (the paper's model for the DCT and DST);
``bpbp`` — ``B₂ P₂ B₁ P₁`` (its model for convolution). Each relaxed permutation has ``log2(n) - 1`` levels
(blocks of size ``n, n/2, …, 4``; the 2-element level is the identity); each level has three logits whose
sigmoids ``p`` blend the identity with (1) separating even and odd entries, (2) reversing the first half,
(3) reversing the second half: ``x ← (1 - p) x + p · op(x)``. Thresholding the logits at 0 gives a hard
permutation. By default the three logits are shared by every level (an option of the paper's code), so the hard
permutations are the 8 BP permutations; ``share_logits=False`` gives each level its own.

Training (per the paper): loss = MSE of ``model(I)`` against the target (real targets compare the real part);
Adam with a log-uniform random learning rate per trial; every ``polish_every`` epochs the permutations are
thresholded and frozen and the twiddles polished with L-BFGS; the search stops when a trial reaches the target
RMSE or the time budget runs out. All trials train together: every tensor has a leading trial dimension, one Adam
step updates every trial.

Polish. ``polish="lbfgs"`` is the paper's: L-BFGS from the trained twiddles of the ``polish_top`` best trials.
``polish="hierarchical"`` (the default for ``bp``/``bpp``) first projects the target onto butterflies under each
trial's frozen permutation in closed form (:mod:`twiddle.factorize.hierarchical`, with the complex lifts for real
targets) — every epoch, as it costs little — and runs the same L-BFGS from the best projections. The permutation
is still learned by gradient descent; what changes is that a learned permutation is recognized as soon as the
logits have the right signs, instead of once Adam has also converged on the twiddles (a few hundred steps at
n = 128, a few thousand at n = 1024).
``bpbp`` has no closed form of its own and always uses ``lbfgs``, from the alternating start described below.

Speed. The relaxed permutations are applied by a fused kernel (``csrc/relaxed_permute_cpu.cpp``: forward and
backward a row at a time in cache) instead of a dozen full-size temporaries per level, and the per-trial butterflies
split the batch with ``unbind`` (indexing made autograd write a zero-filled copy of the whole gradient per trial). An
Adam step of BPP at n = 1024 (16 trials, 64 probes, 2 cores) went from 0.32 s to 0.09-0.11 s (the unbind: 20-30 ms
of that; ``benchmarks/relaxed_permute.py``), and the 600 s
five-transform table at n = 1024 from 93-349 s a cell to 35-94 s (29 min for n = 8...1024 to 9; README).

Restarts (closed-form polish). At n = 1024 an epoch (400 Adam steps) took ~140 s on 2 cores, and the relaxation
pulls the logits only weakly: after the first epoch of DCT-1024 (seed 0) the 16 trials held 13 distinct hard
permutations, none of them one of the exact ones among the 44 distinct BPP permutations, and by the second epoch all
sat on one wrong one (4.3e-2 after 600 s). So a trial whose learned permutation's closed-form fit still
misses the target ``restart_epochs`` (1) epochs after its start is drawn afresh — twiddles, logits, its Adam
moments and bias correction — as HyperBand, which the paper's search ran under, drops its worst runs early; the
same seed then reached 5.4e-17 in the second epoch (277 s). Each learned permutation is fitted in closed form once
per search (the fits are kept), so trials that return to a permutation cost nothing.

The L-BFGS polish does not trust the Adam loss to rank permutations: every distinct learned permutation (its
lowest-loss trial) first gets ``screen_steps`` L-BFGS iterations, and the ``polish_top`` best go on. For BPBP on a
circulant this matters: a trial with a wrong permutation pair is often ahead in the Adam loss, and only pairs that
both separate even and odd entries can be exact (measured at n = 16: 16 of the 64 pairs reach 1e-7, the others
stall at 5e-2 or worse). Convolution (BPBP) is the hard case of the table: with the logits drawn at std 0.1 (as for
BP) it reaches 4e-7 at n = 8 in 9 s, but at n >= 16 the relaxation rarely learns such a pair with 16 trials, and
even with the right pair L-BFGS on the real part stalls (2e-3 at n = 16) while fitting the whole complex output
(``compare="complex"``) converges (8e-8). Logits drawn with std 1 (the paper's code) instead of 0.1 keep more such
pairs alive (n = 16, 32 trials, after 3 epochs: 10 against 0), but the polish from those trials' Adam twiddles
still stalls (3e-2 to 1e-1): they were fitted to the blended permutation, not the hard one. Hence the BPBP
defaults: logits at std 1, and the polish restarts the twiddles at random under each learned permutation pair,
fitting the whole complex output (``polish_start="random"``). Convolution then reaches < 1e-4 at n = 8, 16, 32 for
every seed tried (2, 3, 3; 9-42 s), at n = 64 for 2 seeds of 3 (40 s, 43 s; the third 6.7e-3 in 100 s, 2.2e-4 in
300 s) and at n = 128 (seed 0: 5.6e-7 in 62 s). The permutations are still learned.

Even under the right pair, L-BFGS from a random start often stops short: at n = 64 with both permutations the bit
reversal, 4 of 6 random starts sat at RMSE ~3e-4 after 500 iterations and still did after 3000, not a local
minimum but a flat, badly conditioned valley (Gauss–Newton from there reaches 1e-10). So a BPBP start that L-BFGS
brings below ``newton_below`` (1e-2) gets up to ``newton_steps`` (100) Levenberg–Marquardt steps
(:mod:`twiddle.factorize._gauss_newton`, matrix-free), which stop early when 20 steps do not halve the error (a
real local minimum). Convolution n = 64, seed 2, 100 s budget on a slower 2-core machine (AMD EPYC, Zen 3): 3.9e-4
without, 8.6e-5 with (89 s). The other 2 of those 6 random starts end in true local minima (~7.5e-2), and at
n = 128 and 256 both random starts tried under the bit-reversal pair did (5.4e-2, 3.0e-2): at larger n the
polish's random starts, not the valleys, are what stands between the search and convolution.

Hence the BPBP default start since: ``polish_start="alternating"`` (:mod:`twiddle.factorize._alternating`). Under
each learned pair the two butterflies are fitted in turn in closed form (``B₂`` the hierarchical projection of
``M U*`` for the unitary ``U = P₂ B₁ P₁``; ``B₁`` the unitary butterfly nearest the Procrustes solution), which uses
the target and the learned permutations only. Its error ranks the pairs after a few steps (every distinct pair gets
``alternating_screen`` = 3; convolution n = 1024, seed 1: the pairs that can be exact at 2.3e-2–2.8e-2, the others
3.1e-2; after 5 steps, seed 0: 8.9e-3–1.4e-2 against 3.0e-2), and the ``polish_top`` best go on, one at a time until
the target is reached, to ``alternating_steps`` = 30 steps (RMSE ~1e-3), then L-BFGS and the
Levenberg–Marquardt steps, which from there reach 1e-10 at n = 128 and 256 (every start tried). The
Levenberg–Marquardt steps fit on ``newton_inputs`` (16 log2 n) random inputs instead of the identity's n columns
past n = 64, and a polish follows every epoch (``polish_every`` = 1: an epoch of Adam costs more than a polish).
Measured (2 cores, one process, seed 0, 600 s budget, ``twiddle factor convolution -n N --method gradient --model
bpbp``), with 5 screen steps and both best pairs continued before the polish: n = 256 7.8e-5 in 60 s, n = 1024
7.1e-6 in 568 s, of which the first Adam epoch (400 steps, two relaxed permutations on 64 probes of 16 trials: 0.6 s
a step, before the relaxed permutation was fused) took 250 s, the screen of 15 learned pairs 150 s and continuing
two pairs 90 s; n = 1024 seed 1: 7.7e-5 in 600 s (the whole budget), with 3 screen steps 3.9e-5 in 548 s (of which
72 s continued the second pair, which the lazy continuation now skips when the first reaches the target).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from .._validate import nonnegative_int, positive_int
from ..ops import _kernel_mode, butterfly_multiply, fused_cpu, prepare_kernel, transform_active
from ._alternating import AlternatingFit
from ._gauss_newton import levenberg_marquardt

__all__ = ["MODELS", "POLISHES", "POLISH_STARTS", "GradientConfig", "relaxed_permute", "hard_permutation", "fit_bp"]

MODELS = ("bp", "bpp", "bpbp")
POLISHES = ("hierarchical", "lbfgs")
COMPARES = ("real", "complex")
POLISH_STARTS = ("auto", "trained", "random", "alternating")
RANDOM_START_STEPS = 5  # a random polish start gets this many times the L-BFGS iterations
BPBP_NEWTON_STEPS = 100  # a random or alternating start then gets this many Levenberg–Marquardt steps


@dataclass
class GradientConfig:
    """Settings of :func:`fit_bp` (defaults follow the paper where it gives them)."""

    model: str = "bp"
    polish: str = "hierarchical"
    trials: int = 16
    steps_per_epoch: int = 400
    # closed-form polish (bp/bpp): a trial whose learned (thresholded) permutation's closed-form fit still misses
    # the target after this many epochs since its start is drawn afresh (twiddles, logits, Adam state), as
    # HyperBand, which the paper searched with, drops its worst runs early; a trial stuck on a wrong permutation
    # otherwise holds its slot for the whole budget (DCT-1024, seed 0: 13 distinct learned permutations after the
    # first epoch, 1 after the second, none of them one of the exact ones; 4.3e-2 after 600 s). None: never
    restart_epochs: int | None = 1
    max_epochs: int = 200
    # epochs between polishes; None: 1 for bpbp (its alternating start ranks the learned pairs itself, and an epoch
    # of Adam costs more than a polish: convolution n = 64, 13 s against 5 s), 5 otherwise
    polish_every: int | None = None
    polish_top: int = 2
    polish_steps: int = 100  # L-BFGS iterations per polish
    # L-BFGS polish: every distinct learned permutation (its lowest-loss trial) first gets this many L-BFGS
    # iterations, and the polish_top best go on; 0 ranks the trials by their Adam loss alone
    screen_steps: int = 20
    lr_min: float = 1e-4
    lr_max: float = 0.5
    target_rmse: float = 1e-4
    time_budget: float = 600.0  # seconds; when it runs out, one last L-BFGS polish of the best trial still runs
    seed: int = 0
    # Adam steps see the target through `probes` fresh Gaussian vectors (an unbiased estimate of the MSE,
    # O(T probes n log n) a step) instead of the identity (O(T n^2 log n)); None: the identity, as in the paper,
    # which is what happens anyway while n <= probes. The L-BFGS polish always uses the identity.
    probes: int | None = 64
    # one set of 3 logits shared by every level (the paper's code offers both): the hard permutations are then
    # the 8 BP permutations; False gives every level its own logits (8^(log2 n - 1) hard permutations)
    share_logits: bool = True
    # standard deviation of the permutation logits' Gaussian initialization; None: 1 for bpbp (the paper's code:
    # trials start spread over the permutation pairs), 0.1 otherwise
    logit_std: float | None = None
    # where the L-BFGS polish starts: "trained" (the trial's Adam twiddles, as in the paper), "random" (fresh random
    # unitary twiddles under the trial's learned permutations, the whole complex output fitted — a real target's
    # imaginary part to zero — with 5x the iterations), "alternating" (bpbp only: alternating closed-form fits of
    # the two butterflies under the learned permutations, twiddle.factorize._alternating; the whole complex output
    # fitted), or "auto" (alternating for bpbp, trained otherwise)
    polish_start: str = "auto"
    # alternating start: every distinct learned permutation pair gets `alternating_screen` alternating steps (their
    # error ranks the pairs), and the `polish_top` best go on to `alternating_steps` steps before L-BFGS
    alternating_screen: int = 3
    alternating_steps: int = 30
    # precision of the Adam phase (float32: about twice as fast; the polish and the result are float64)
    adam_dtype: torch.dtype = torch.float32
    # what of the complex model a real target is compared with: "real" (the paper's: its real part) or "complex"
    # (the whole output: the imaginary part is fitted to zero). With the right permutations, "complex" lets L-BFGS
    # converge where the real part alone stalls (BPBP on a circulant, n = 16: 8e-8 against 2e-3), but it makes the
    # permutation harder to learn; see the module notes.
    compare: str = "real"
    # Levenberg–Marquardt (matrix-free Gauss–Newton) steps after a start's L-BFGS polish, for starts whose RMSE
    # is then below `newton_below`: L-BFGS crawls along the badly conditioned valleys of a two-butterfly fit
    # (BPBP on a circulant, n = 64: 3e-4 after 500 iterations, 2.9e-4 after 3000) where Gauss–Newton goes down
    # them (1e-10 in ~70 steps). None: 100 for a random or alternating polish start (bpbp), 0 (off) otherwise.
    newton_steps: int | None = None
    newton_below: float = 1e-2
    # the Levenberg–Marquardt steps fit the model on this many random input vectors instead of the identity's n
    # columns, when fewer (None: 16 log2 n): k / n of the work, and the same fit where the target is exactly a
    # model (convolution from an alternating start: 20 steps on the identity took 98 s at n = 512, on 64 random
    # inputs 40 s at n = 1024)
    newton_inputs: int | None = None

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        if self.polish not in POLISHES:
            raise ValueError(f"polish must be one of {POLISHES}, got {self.polish!r}")
        self.screen_steps = nonnegative_int(self.screen_steps, "screen_steps")
        if self.restart_epochs is not None:
            self.restart_epochs = positive_int(self.restart_epochs, "restart_epochs")
        if self.polish_every is not None:
            self.polish_every = positive_int(self.polish_every, "polish_every")
        if self.logit_std is not None and not self.logit_std >= 0:
            raise ValueError(f"logit_std must be >= 0 or None, got {self.logit_std!r}")
        if self.polish_start not in POLISH_STARTS:
            raise ValueError(f"polish_start must be one of {POLISH_STARTS}, got {self.polish_start!r}")
        if self.polish_start == "random" and self.polish == "hierarchical" and self.model != "bpbp":
            raise ValueError("polish_start='random' applies to the L-BFGS polish: pass polish='lbfgs' (bp and bpp "
                             "start from the closed-form fit by default)")
        if self.polish_start == "alternating" and self.model != "bpbp":
            raise ValueError(f"polish_start='alternating' fits two butterflies: it needs model='bpbp', got "
                             f"{self.model!r}")
        self.alternating_screen = nonnegative_int(self.alternating_screen, "alternating_screen")
        self.alternating_steps = nonnegative_int(self.alternating_steps, "alternating_steps")
        if self.newton_inputs is not None:
            self.newton_inputs = positive_int(self.newton_inputs, "newton_inputs")
        if self.compare not in COMPARES:
            raise ValueError(f"compare must be one of {COMPARES}, got {self.compare!r}")
        if self.newton_steps is not None:  # None: the default per polish start
            self.newton_steps = nonnegative_int(self.newton_steps, "newton_steps")
        if not self.newton_below > 0:
            raise ValueError(f"newton_below must be > 0, got {self.newton_below!r}")
        if self.adam_dtype not in (torch.float32, torch.float64):
            raise ValueError(f"adam_dtype must be torch.float32 or torch.float64, got {self.adam_dtype}")


def _levels(n: int) -> list[int]:
    sizes, size = [], n
    while size >= 4:
        sizes.append(size)
        size //= 2
    return sizes


def relaxed_permute(x: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Apply the relaxed permutation. ``x``: ``(T, B, n)`` real or complex; ``probs``: ``(T, levels, 3)`` in
    ``[0, 1]``. The weights are real, so a complex ``x`` is permuted as its real and imaginary parts.

    Level by level (block sizes n, n/2, ..., 4): blend the block with its even/odd separation by ``p₀``, then each
    half with its reversal by ``p₁`` and ``p₂``. Real float32/float64 CPU tensors use the fused kernel
    (``csrc/relaxed_permute_cpu.cpp``, a row at a time in cache), everything else the PyTorch composition
    (:func:`_relaxed_permute_reference`; also under ``TWIDDLE_KERNEL=reference`` and ``torch.func`` transforms).
    Differentiable to any order (a backward under ``create_graph=True`` differentiates the composition)."""
    if x.is_complex():
        T, B, n = x.shape
        parts = torch.view_as_real(x).permute(0, 1, 3, 2).reshape(T, 2 * B, n)
        out = relaxed_permute(parts, probs).reshape(T, B, 2, n).permute(0, 1, 3, 2)
        return torch.view_as_complex(out.contiguous())
    if (
        x.is_cpu
        and probs.is_cpu
        and x.dtype in (torch.float32, torch.float64)
        and x.shape[-1] >= 4
        and _kernel_mode() != "reference"
        and not transform_active()
        # (while torch.compile traces, never build or take the build lock: the kernel only if already loaded)
        and (fused_cpu.is_loaded() if torch.compiler.is_compiling() else fused_cpu.available())
    ):
        return fused_cpu.fused_relaxed_permute(x, probs)
    return _relaxed_permute_reference(x, probs)


def _relaxed_permute_reference(x: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """:func:`relaxed_permute` of a real ``x`` as PyTorch operations (any device and dtype; higher derivatives)."""
    T, B, n = x.shape
    for level, size in enumerate(_levels(n)):
        half = size // 2
        p = probs[:, level].reshape(T, 1, 1, 3)
        xb = x.reshape(T, B, n // size, size)
        separated = xb.reshape(T, B, n // size, half, 2).transpose(-1, -2).reshape(xb.shape)
        xb = torch.lerp(xb, separated, p[..., 0:1])
        # reversing the first half and reversing the second half touch disjoint halves: one flip, one blend
        halves = xb.reshape(T, B, n // size, 2, half)
        x = torch.lerp(halves, halves.flip(-1), p[..., 1:3].unsqueeze(-1)).reshape(T, B, n)
    return x


def hard_permutation(logits: torch.Tensor, n: int) -> torch.Tensor:
    """Index permutations ``(T, n)`` (gather convention) of thresholded logits ``(T, levels, 3)``."""
    probs = (logits > 0).to(torch.float64)
    idx = torch.arange(n, dtype=torch.float64).expand(logits.shape[0], 1, n)
    return relaxed_permute(idx, probs).round().long().squeeze(1)


def _butterfly_trials(tw: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``x (T, B, n)`` through per-trial butterflies ``tw (T, L, n/2, 2, 2)`` (increasing stride): one fused
    kernel call per trial (twiddle's layout is the library's, one stack and one block)."""
    # unbind, not x[t]: the backward of T selects would write T zero-filled copies of the whole (T, B, n) gradient
    pairs = zip(tw.unbind(0), x.unbind(0), strict=True)
    return torch.stack([butterfly_multiply(tw_t.unsqueeze(0).unsqueeze(0), x_t) for tw_t, x_t in pairs])


def _model_trials(model: str, twiddles: list[torch.Tensor], perms: list, x: torch.Tensor) -> torch.Tensor:
    """``x (T, B, n)`` through ``model`` (``bp``/``bpp``/``bpbp``, applied right to left). ``perms`` are relaxed
    ``(T, levels, 3)`` probabilities, or hard ``(T, n)`` index permutations."""
    tw_i = perm_i = 0
    for op in reversed(model):
        if op == "p":
            perm = perms[perm_i]
            perm_i += 1
            x = relaxed_permute(x, perm) if perm.is_floating_point() else torch.gather(
                x, -1, perm.unsqueeze(1).expand(x.shape))
        else:
            if not x.is_complex():
                x = x.to(twiddles[tw_i].dtype)
            x = _butterfly_trials(twiddles[tw_i], x)
            tw_i += 1
    return x


def _per_trial_mse(out: torch.Tensor, target_t: torch.Tensor, real_target: bool) -> torch.Tensor:
    diff = (out.real - target_t) if real_target else (out - target_t)
    return diff.abs().pow(2).mean(dim=(1, 2))


def _model_mse(model: str, twiddles: list[torch.Tensor], perms: list[torch.Tensor], target_t: torch.Tensor,
               real_target: bool) -> float:
    """The MSE of one trial's model (twiddles ``[(L, n/2, 2, 2)]``, hard permutations ``[(n,)]``) against
    ``target_t`` (the target's transpose; its real part only when ``real_target``)."""
    eye = torch.eye(target_t.shape[0], dtype=torch.float64).unsqueeze(0)
    with torch.no_grad():
        out = _model_trials(model, [tw.unsqueeze(0) for tw in twiddles], [p.unsqueeze(0) for p in perms], eye)
        return float(_per_trial_mse(out, target_t.unsqueeze(0), real_target)[0])


def _haar_unitary(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    g = torch.complex(torch.randn(shape, generator=generator, dtype=torch.float64),
                      torch.randn(shape, generator=generator, dtype=torch.float64))
    q, r = torch.linalg.qr(g)
    d = torch.diagonal(r, dim1=-2, dim2=-1)
    return q * (d / d.abs()).unsqueeze(-2)


def _polish(model: str, twiddles: list[torch.Tensor], perms: list[torch.Tensor], target_t: torch.Tensor,
            real_target: bool, steps: int, deadline: float) -> tuple[list[torch.Tensor], float]:
    """L-BFGS on one trial's twiddles ``[(L, n/2, 2, 2)]`` with its hard permutations ``[(n,)]`` frozen;
    returns (twiddles, mse)."""
    n = perms[0].numel()
    eye = torch.eye(n, dtype=torch.float64).unsqueeze(0)  # model(I) = M^T
    hard = [p.unsqueeze(0) for p in perms]
    params = [torch.view_as_real(tw.detach().to(torch.complex128)).clone().requires_grad_(True)
              for tw in twiddles]
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-14, tolerance_change=1e-16)

    def mse() -> torch.Tensor:
        out = _model_trials(model, [torch.view_as_complex(p).unsqueeze(0) for p in params], hard, eye)
        return _per_trial_mse(out, target_t.unsqueeze(0), real_target).sum()

    def closure():
        opt.zero_grad()
        loss = mse()
        loss.backward()
        for p in params:
            p.grad = p.grad.contiguous()  # L-BFGS flattens gradients with view()
        return loss

    if time.perf_counter() < deadline:
        opt.step(closure)
    with torch.no_grad():
        final = float(mse())
    return [torch.view_as_complex(p.detach()).clone() for p in params], final


def _screen(model: str, twiddles: list[torch.Tensor], perms: list[torch.Tensor], loss: torch.Tensor,
            target_t: torch.Tensor, real_target: bool, config: GradientConfig, deadline: float, consider,
            restart=None, steps_factor: int = 1) -> list:
    """The L-BFGS polish's starting points: one trial per distinct learned permutation (the lowest Adam loss),
    each given ``config.screen_steps`` L-BFGS iterations; the ``config.polish_top`` best as ``(mse, twiddles,
    perms)``. The Adam loss alone does not rank permutations well: a trial with the wrong permutation can be ahead
    until the twiddles are polished. ``restart`` (optional) maps a trial's twiddles to the polish's starting ones;
    the screen then runs ``steps_factor`` times the iterations."""
    chosen: dict[tuple, int] = {}
    for t in torch.argsort(loss).tolist():
        chosen.setdefault(tuple(tuple(p[t].tolist()) for p in perms), t)
    starts = []
    for t in chosen.values():
        trial_twiddles, trial_perms = [tw.detach()[t] for tw in twiddles], [p[t] for p in perms]
        mse = float(loss[t])
        if config.screen_steps > 0 and time.perf_counter() < deadline:
            if restart is not None:
                trial_twiddles = restart(trial_twiddles)
            trial_twiddles, mse = _polish(model, trial_twiddles, trial_perms, target_t, real_target,
                                          config.screen_steps * steps_factor, deadline)
            consider(trial_twiddles, trial_perms, mse)
        starts.append((mse, trial_twiddles, trial_perms))
        if mse <= config.target_rmse**2:
            break  # this one is done; the others need not be screened
    return sorted(starts, key=lambda start: start[0])[: config.polish_top]


def _closed_form(target: torch.Tensor, perm: torch.Tensor, lifts: dict) -> tuple[torch.Tensor, float]:
    """The hierarchical fit of ``target`` under the frozen permutation ``perm`` (lifts included for a real
    target, cached in ``lifts`` across calls): complex twiddles ``(L, n/2, 2, 2)`` and the MSE of (the real part
    of) ``B P`` against ``target``."""
    from . import _hierarchical_search  # the package imports this module first

    candidates = [[("learned", perm, "all")]]
    (_, err, _, _, module, _), _, _ = _hierarchical_search(target, candidates, "right", None, True, lifts)
    n = target.shape[0]
    tw = module.butterfly.twiddle.detach()[0, 0].to(torch.complex128)
    return tw, (err / n) ** 2


def fit_bp(target: torch.Tensor, config: GradientConfig, progress=None) -> dict:
    """Learn ``target ≈ model`` (``config.model``) by gradient descent.

    Returns a dict with ``twiddles`` (a list of complex ``(L, n/2, 2, 2)``, one per butterfly, in the order they
    act), ``perms`` (the hard permutations before each butterfly, gather convention; ``bpp``'s two are composed
    into one), ``mse``, ``epochs``, ``trials``, ``model`` and the per-trial learning rates.
    ``progress`` (optional) is called as ``progress(epoch, best_rmse)`` after every epoch.
    """
    n = target.shape[0]
    L = n.bit_length() - 1
    T = config.trials
    model = config.model
    n_butterflies, n_perms = model.count("b"), model.count("p")
    if not target.is_complex() and config.compare == "complex":
        target = target.to(torch.complex128)  # the imaginary part of the model is fitted to zero
    real_target = not target.is_complex()
    target_t = target.T.to(torch.float64 if real_target else torch.complex128)  # model(I) = rows M e_j = M^T
    start = config.polish_start
    if start == "auto":
        start = "alternating" if model == "bpbp" else "trained"
    random_start = start == "random"
    # a random or alternating start is fitted on the whole complex output: on the real part alone L-BFGS stalls
    fresh_start = start in ("random", "alternating")
    polish_t, polish_real = (target_t.to(torch.complex128), False) if fresh_start else (target_t, real_target)
    steps_factor = RANDOM_START_STEPS if random_start else 1
    newton_steps = config.newton_steps if config.newton_steps is not None else (
        BPBP_NEWTON_STEPS if fresh_start else 0)
    restart_gen = torch.Generator().manual_seed(config.seed + 1)
    newton_count = config.newton_inputs if config.newton_inputs is not None else 16 * L
    newton_x = None  # the Levenberg–Marquardt steps' inputs: None is the identity
    if newton_count < n:
        shape = (newton_count, n)
        newton_x = (torch.randn(shape, generator=restart_gen, dtype=torch.float64) / math.sqrt(n) if polish_real
                    else torch.complex(torch.randn(shape, generator=restart_gen, dtype=torch.float64),
                                       torch.randn(shape, generator=restart_gen, dtype=torch.float64))
                    / math.sqrt(2 * n))

    def random_twiddles(twiddles: list[torch.Tensor]) -> list[torch.Tensor]:
        return [_haar_unitary(tuple(tw.shape), restart_gen) for tw in twiddles]
    restart = random_twiddles if random_start else None
    gen = torch.Generator().manual_seed(config.seed)
    # the fused kernel builds itself on its first use (~40 s, once per machine): not out of this fit's budget (a
    # 60 s DST-128 fit that paid for the build ended at RMSE 0.11; with the kernel built it takes 31 s)
    prepare_kernel()
    deadline = time.perf_counter() + config.time_budget
    real_dtype = config.adam_dtype
    complex_dtype = torch.complex64 if real_dtype == torch.float32 else torch.complex128
    tw_params = [torch.view_as_real(_haar_unitary((T, L, n // 2, 2, 2), gen).to(complex_dtype)).clone()
                 .requires_grad_(True) for _ in range(n_butterflies)]
    levels = len(_levels(n))
    logit_std = config.logit_std if config.logit_std is not None else (1.0 if model == "bpbp" else 0.1)
    logit_params = [(logit_std * torch.randn(T, 1 if config.share_logits else levels, 3, generator=gen,
                                       dtype=torch.float64)).to(real_dtype).requires_grad_(True)
                    for _ in range(n_perms)]

    def level_logits(lg: torch.Tensor) -> torch.Tensor:
        return lg.expand(T, levels, 3)
    lr = torch.exp(torch.empty(T, dtype=torch.float64).uniform_(math.log(config.lr_min), math.log(config.lr_max),
                                                                generator=gen)).to(real_dtype)
    params = tw_params + logit_params
    m1 = [torch.zeros_like(p) for p in params]
    m2 = [torch.zeros_like(p) for p in params]
    trial_steps = torch.zeros(T, dtype=torch.float64)  # Adam's bias correction per trial (restarts reset it)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    use_probes = config.probes is not None and config.probes < n
    target_ct = target.T.to(complex_dtype)  # probes X (rows): X M^T
    target_adam = target_t.to(real_dtype if real_target else complex_dtype)
    eye = torch.eye(n, dtype=real_dtype).expand(T, n, n)
    closed_form = config.polish == "hierarchical" and model != "bpbp"
    lifts: dict = {}  # the target's complex lifts, computed once for every closed-form fit
    hard_model = "bp" if model == "bpp" else model  # bpp's two hard permutations are composed into one
    best = {"mse": math.inf, "twiddles": None, "perms": None}
    epoch = 0
    target_mse = config.target_rmse**2
    polish_every = config.polish_every if config.polish_every is not None else (1 if model == "bpbp" else 5)

    def twiddles_now() -> list[torch.Tensor]:
        return [torch.view_as_complex(p) for p in tw_params]

    def hard_perms() -> list[torch.Tensor]:
        hard = [hard_permutation(level_logits(lg.detach()), n) for lg in logit_params]
        if model == "bpp":  # P₂ P₁ x = x[p₁][p₂] = x[p₁[p₂]]
            hard = [torch.gather(hard[0], 1, hard[1])]
        return hard

    def consider(twiddles: list[torch.Tensor], perms: list[torch.Tensor], mse: float) -> None:
        nonlocal best
        if mse < best["mse"]:
            best = {"mse": mse, "twiddles": [t.clone() for t in twiddles], "perms": [p.clone() for p in perms]}

    closed_fits: dict[bytes, tuple[torch.Tensor, float]] = {}  # learned permutation -> its closed-form fit

    trial_epochs = torch.zeros(T, dtype=torch.long)  # epochs since each trial's (re)start

    def restart_stuck(perms_now: torch.Tensor) -> None:
        """Draw afresh the trials that have had ``restart_epochs`` epochs and whose learned permutation's
        closed-form fit misses the target."""
        nonlocal restarts
        stuck = [t for t in range(T) if trial_epochs[t] >= config.restart_epochs
                 and closed_fits.get(perms_now[t].numpy().tobytes(), (None, 0.0))[1] > target_mse]
        if not stuck:
            return
        idx = torch.tensor(stuck)
        with torch.no_grad():
            for p in tw_params:
                fresh = _haar_unitary((len(stuck),) + tuple(p.shape[1:-1]), gen).to(complex_dtype)
                p[idx] = torch.view_as_real(fresh)
            for lg in logit_params:
                lg[idx] = (logit_std * torch.randn((len(stuck),) + tuple(lg.shape[1:]), generator=gen,
                                                   dtype=torch.float64)).to(real_dtype)
            for a, b in zip(m1, m2, strict=True):
                a[idx] = 0
                b[idx] = 0
            trial_steps[idx] = 0
            trial_epochs[idx] = 0
        restarts += len(stuck)

    restarts = 0  # trials drawn afresh so far

    # per learned permutation pair, screened and not yet polished (a polished pair's fit is dropped, so the pair
    # gets a fresh start when it is learned again)
    alternating_fits: dict[tuple, AlternatingFit] = {}

    def alternating_starts(perms: list[torch.Tensor], loss: torch.Tensor):
        """The polish's starts for ``polish_start="alternating"``: every distinct learned pair (in the order of
        its best trial's Adam loss) gets ``alternating_screen`` alternating steps from a random unitary ``B₁``
        (kept across epochs; a pair whose start was polished gets a fresh one), and the ``polish_top`` lowest
        errors go on to ``alternating_steps`` steps, lazily: an iterator of ``(mse, twiddles, perms)`` that
        continues the next pair only when asked for it and the target is not yet reached (at n = 1024 continuing a
        pair costs ~70 s)."""
        pairs: dict[tuple, list[torch.Tensor]] = {}
        for t in torch.argsort(loss).tolist():
            pairs.setdefault(tuple(tuple(p[t].tolist()) for p in perms), [p[t] for p in perms])
        for key, pair in pairs.items():
            if key not in alternating_fits:
                if time.perf_counter() > deadline and alternating_fits:
                    break
                fit = AlternatingFit(polish_t.T, pair, restart_gen)
                fit.run(max(config.alternating_screen, 1), deadline)
                alternating_fits[key] = fit
                consider(fit.twiddles, pair, fit.mse)
        ranked = sorted((key for key in pairs if key in alternating_fits), key=lambda key: alternating_fits[key].mse)

        def continued():
            for key in ranked[: config.polish_top]:
                if best["mse"] <= target_mse:
                    return
                fit = alternating_fits.pop(key)
                fit.run(config.alternating_steps - len(fit.history), deadline)
                consider(fit.twiddles, pairs[key], fit.mse)
                yield fit.mse, fit.twiddles, pairs[key]
        return continued()

    for epoch in range(1, config.max_epochs + 1):
        for _ in range(config.steps_per_epoch):
            probs = [torch.sigmoid(level_logits(lg)) for lg in logit_params]
            if use_probes:
                # rows x of X: model(x) vs M x; E|(model - M) x|^2 / n^2 over x ~ N(0, I) is the MSE
                if real_target:
                    X = torch.randn(T, config.probes, n, generator=gen, dtype=real_dtype)
                    want = X @ target_ct.real  # real part only: the model's real part is compared
                else:
                    X = torch.complex(torch.randn(T, config.probes, n, generator=gen, dtype=real_dtype),
                                      torch.randn(T, config.probes, n, generator=gen, dtype=real_dtype))
                    X = X / math.sqrt(2)
                    want = X @ target_ct
                out = _model_trials(model, twiddles_now(), probs, X)
                loss = _per_trial_mse(out, want, real_target) / n
            else:
                out = _model_trials(model, twiddles_now(), probs, eye)
                loss = _per_trial_mse(out, target_adam, real_target)
            grads = torch.autograd.grad(loss.sum(), params)
            with torch.no_grad():
                trial_steps += 1
                fix1 = (1 - beta1**trial_steps).to(real_dtype)
                fix2 = (1 - beta2**trial_steps).to(real_dtype)
                for p, g, a, b in zip(params, grads, m1, m2, strict=True):
                    a.mul_(beta1).add_(g, alpha=1 - beta1)
                    b.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                    shape = (T,) + (1,) * (p.dim() - 1)
                    update = (a / fix1.reshape(shape)) / ((b / fix2.reshape(shape)).sqrt() + eps)
                    p.sub_(lr.reshape(shape) * update)
            if time.perf_counter() > deadline:
                break
        final = time.perf_counter() > deadline
        polish_now = epoch % polish_every == 0 or final
        if closed_form:
            # every epoch (cheap): each distinct learned permutation projected in closed form (once: the fits are
            # kept); the best go on to L-BFGS at the polish epochs
            fits = []
            perms_now = hard_perms()[0]
            for row in torch.unique(perms_now, dim=0):
                key = row.numpy().tobytes()
                if key not in closed_fits:
                    closed_fits[key] = _closed_form(target, row, lifts)
                    consider([closed_fits[key][0]], [row], closed_fits[key][1])
                tw, mse = closed_fits[key]
                fits.append((mse, [tw], [row]))
                if mse <= target_mse or time.perf_counter() > deadline:
                    break
            starts = sorted(fits, key=lambda fit: fit[0])[: config.polish_top]
            trial_epochs += 1
            if (config.restart_epochs is not None and best["mse"] > target_mse and not final
                    and epoch < config.max_epochs):
                restart_stuck(perms_now)
        elif polish_now and start == "alternating":
            starts = alternating_starts(hard_perms(), loss.detach())
        elif polish_now:
            perms = hard_perms()
            starts = _screen(hard_model, twiddles_now(), perms, loss.detach(), polish_t, polish_real, config,
                             deadline, consider, restart, steps_factor)
        for i, (_, twiddles, trial_perms) in enumerate(starts if polish_now else ()):
            if best["mse"] <= target_mse or (final and i > 0) or (not final and time.perf_counter() > deadline):
                break
            # out of time: the best start still gets one L-BFGS run (the budget is exceeded by that much)
            polished, mse = _polish(hard_model, twiddles, trial_perms, polish_t, polish_real,
                                    config.polish_steps * steps_factor, math.inf if final else deadline)
            consider(polished, trial_perms, mse)
            if newton_steps and target_mse < mse < config.newton_below**2:
                polished, mse = levenberg_marquardt(hard_model, polished, trial_perms, polish_t, polish_real,
                                                    max_steps=newton_steps, deadline=deadline,
                                                    target_mse=target_mse / 4 if newton_x is not None else
                                                    target_mse, inputs=newton_x)  # margin for the estimate
                if newton_x is not None:  # the MSE on the inputs estimates it; the result reports the real one
                    mse = _model_mse(hard_model, polished, trial_perms, polish_t, polish_real)
                consider(polished, trial_perms, mse)
        if progress is not None:
            progress(epoch, math.sqrt(best["mse"]) if best["mse"] < math.inf else float("nan"))
        if best["mse"] <= target_mse or time.perf_counter() > deadline:
            break
    if best["twiddles"] is None:  # no polish happened: harden the best trial as it is
        perms = hard_perms()
        t = int(torch.argmin(loss.detach()))
        best = {"mse": math.nan, "twiddles": [tw.detach()[t].clone() for tw in twiddles_now()],
                "perms": [p[t] for p in perms]}
    best.update(epochs=epoch, trials=T, model=model, learning_rates=lr.tolist(), restarts=restarts)
    return best
