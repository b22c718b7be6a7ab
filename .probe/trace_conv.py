import sys, time, math, torch
from twiddle.factorize.targets import target_matrix
from twiddle.factorize import gradient as G
n = int(sys.argv[1]); seed = int(sys.argv[2]); budget = float(sys.argv[3]); ns = None if sys.argv[4] == "none" else int(sys.argv[4])
T0 = time.perf_counter()
orig_p, orig_lm = G._polish, G.levenberg_marquardt
def tp(model, tw, perms, t, real, steps, dl):
    t0 = time.perf_counter(); out = orig_p(model, tw, perms, t, real, steps, dl)
    key = "".join(str(int(p[1])) + str(int(p[-1])) for p in perms)
    print(f"  [{time.perf_counter()-T0:6.1f}] lbfgs {steps:4d} perms {key}: {math.sqrt(out[1]):.2e} ({time.perf_counter()-t0:.1f}s)", flush=True); return out
def tl(*a, **k):
    t0 = time.perf_counter(); out = orig_lm(*a, **k)
    print(f"  [{time.perf_counter()-T0:6.1f}] LM: {math.sqrt(out[1]):.2e} ({time.perf_counter()-t0:.1f}s)", flush=True); return out
G._polish, G.levenberg_marquardt = tp, tl
M = target_matrix("convolution", n)
cfg = G.GradientConfig(model="bpbp", polish="lbfgs", time_budget=budget, seed=seed, newton_steps=ns)
r = G.fit_bp(M, cfg, progress=lambda e, b: print(f"epoch {e} best {b:.2e} t {time.perf_counter()-T0:.1f}", flush=True))
print("final", math.sqrt(r["mse"]), time.perf_counter() - T0)
