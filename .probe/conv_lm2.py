import sys, time, math, torch
from twiddle.factorize.targets import target_matrix
from twiddle.factorize import gradient as G
from twiddle.factorize._gauss_newton import levenberg_marquardt
n = int(sys.argv[1]); R = int(sys.argv[2]); pre = int(sys.argv[3]); cg = int(sys.argv[4]) if len(sys.argv) > 4 else 50
M = target_matrix("convolution", n)
L = n.bit_length() - 1
br = torch.tensor([int(format(i, f"0{L}b")[::-1], 2) for i in range(n)])
target_t = M.T.to(torch.complex128)
gen = torch.Generator().manual_seed(5)
for r in range(R):
    tw = [G._haar_unitary((L, n // 2, 2, 2), gen) for _ in range(2)]
    t0 = time.perf_counter()
    if pre:
        tw, mse = G._polish("bpbp", tw, [br, br], target_t, False, pre, math.inf)
        print(f"  lbfgs {pre}: {math.sqrt(mse):.2e} {time.perf_counter()-t0:.1f}s")
    for k in range(8):
        tw, mse = levenberg_marquardt("bpbp", tw, [br, br], target_t, False, max_steps=10, deadline=math.inf, target_mse=1e-20, cg_steps=cg)
        print(f"  lm {10*(k+1)}: {math.sqrt(mse):.2e} {time.perf_counter()-t0:.1f}s", flush=True)
        if mse < 1e-20: break
