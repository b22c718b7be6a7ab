import torch, time, sys
from twiddle.ops import butterfly_multiply
n=int(sys.argv[1]) if len(sys.argv)>1 else 1024
tw = torch.randn(1,1,n.bit_length()-1,n//2,2,2); x = torch.randn(256,n)
for _ in range(3000): butterfly_multiply(tw, x)
