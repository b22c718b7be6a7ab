import sys, time, math, torch
from torch.func import jacrev
from twiddle.factorize.targets import target_matrix
from twiddle.factorize import gradient as G
from twiddle.ops.reference import apply_factor
n = int(sys.argv[1]); R = int(sys.argv[2]); pre = int(sys.argv[3])
M = target_matrix("convolution", n)
L = n.bit_length() - 1
br = torch.tensor([int(format(i, f"0{L}b")[::-1], 2) for i in range(n)])
target_t = M.T.to(torch.complex128)
eye = torch.eye(n, dtype=torch.complex128)
def bfly(tw, x):
    x = x.unsqueeze(1)
    for l in range(L):
        x = apply_factor(x, tw[l].unsqueeze(0), 1 << l)
    return x.squeeze(1)
P = L * (n // 2) * 4
def resid(theta):
    c = torch.view_as_complex(theta.reshape(2, L, n // 2, 2, 2, 2))
    x = eye[:, br]
    x = bfly(c[0], x)
    x = x[:, br]
    x = bfly(c[1], x)
    return torch.view_as_real(x - target_t).reshape(-1)
gen = torch.Generator().manual_seed(5)
for r in range(R):
    tw = [G._haar_unitary((L, n // 2, 2, 2), gen) for _ in range(2)]
    t0 = time.perf_counter()
    if pre:
        tw, mse = G._polish("bpbp", tw, [br, br], target_t, False, pre, math.inf)
        print(f"  lbfgs {pre}: {math.sqrt(mse):.2e}")
    theta = torch.cat([torch.view_as_real(t).reshape(-1) for t in tw])
    lam = 1e-3
    res = resid(theta); cost = float(res.pow(2).sum())
    for it in range(200):
        J = jacrev(resid)(theta)
        g = J.T @ res
        H = J.T @ J
        while True:
            d = torch.linalg.solve(H + lam * torch.diag(torch.diagonal(H)).clamp_min(1e-12) + lam * 1e-6 * torch.eye(H.shape[0], dtype=H.dtype), -g)
            new = theta + d
            rn = resid(new); cn = float(rn.pow(2).sum())
            if cn < cost:
                theta, res, cost = new, rn, cn; lam = max(lam / 3, 1e-12); break
            lam *= 4
            if lam > 1e12: break
        rmse = math.sqrt(cost / (2 * n * n) * 2)  # complex mse = sum|r|^2 / n^2
        if it % 10 == 0 or rmse < 1e-10:
            print(f"  it {it} rmse {rmse:.2e} lam {lam:.1e} t {time.perf_counter()-t0:.1f}", flush=True)
        if rmse < 1e-10 or lam > 1e12: break
    print(f"restart {r}: rmse {rmse:.2e} in {time.perf_counter()-t0:.1f}s", flush=True)
