import sys, time, math, torch
from twiddle.factorize.targets import target_matrix
from twiddle.factorize import gradient as G
from twiddle.factorize.hierarchical import hierarchical_twiddle
from twiddle.ops import butterfly_multiply
n = int(sys.argv[1]); R = int(sys.argv[2]); iters = int(sys.argv[3])
M = target_matrix("convolution", n).to(torch.complex128)
L = n.bit_length() - 1
br = torch.tensor([int(format(i, f"0{L}b")[::-1], 2) for i in range(n)])
P = torch.zeros(n, n, dtype=torch.complex128); P[torch.arange(n), br] = 1
eye = torch.eye(n, dtype=torch.complex128)
def dense(tw): return butterfly_multiply(tw[None, None], eye).T
gen = torch.Generator().manual_seed(5)
for r in range(R):
    B1, B2 = [dense(G._haar_unitary((L, n // 2, 2, 2), gen)) for _ in range(2)]
    t0 = time.perf_counter()
    for it in range(iters):
        t1 = hierarchical_twiddle(P.T @ torch.linalg.solve(B2, M @ P.T))[0, 0]
        B1 = dense(t1)
        t2 = hierarchical_twiddle(M @ P.T @ torch.linalg.inv(P @ B1))[0, 0]
        B2 = dense(t2)
        err = (B2 @ P @ B1 @ P - M).abs().pow(2).mean().sqrt()
        if it % 10 == 0 or it == iters - 1:
            print(f"r{r} it {it}: rmse {err:.2e} {time.perf_counter()-t0:.1f}s", flush=True)
