import torch, time
from twiddle.ops import butterfly_multiply
def t(f, reps):
    for _ in range(3): f()
    best=1e9
    for r in range(7):
        t0=time.perf_counter()
        for _ in range(reps): f()
        best=min(best,(time.perf_counter()-t0)/reps)
    return best*1e6
for n in (64, 1024, 4096):
    tw = torch.randn(1,1,n.bit_length()-1,n//2,2,2, requires_grad=True)
    for b in (1, 16, 256):
        x = torch.randn(b,n); xr = x.clone().requires_grad_(True)
        reps = max(5, int(2e6 / (n * b)))
        f = t(lambda: butterfly_multiply(tw.detach(), x), reps)
        fb = t(lambda: butterfly_multiply(tw, xr).sum().backward(), max(3, reps // 4))
        print(f"n={n:5d} b={b:3d} fwd {f:8.1f} us  fwd+bwd {fb:8.1f} us", flush=True)
