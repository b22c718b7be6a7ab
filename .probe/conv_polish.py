import sys, time, math, torch
from twiddle.factorize.targets import target_matrix
from twiddle.factorize import gradient as G
n = int(sys.argv[1]); R = int(sys.argv[2]); steps = int(sys.argv[3]) if len(sys.argv) > 3 else 500
torch.manual_seed(0)
M = target_matrix("convolution", n)
L = n.bit_length() - 1
br = torch.tensor([int(format(i, f"0{L}b")[::-1], 2) for i in range(n)])
target_t = M.T.to(torch.complex128)
gen = torch.Generator().manual_seed(5)
ok = 0
for r in range(R):
    tw = [G._haar_unitary((L, n // 2, 2, 2), gen) for _ in range(2)]
    t0 = time.perf_counter()
    _, mse = G._polish("bpbp", tw, [br, br], target_t, False, steps, math.inf)
    dt = time.perf_counter() - t0
    ok += math.sqrt(mse) < 1e-4
    print(f"restart {r}: rmse {math.sqrt(mse):.2e} in {dt:.1f}s", flush=True)
print("ok", ok, "of", R)
