"""Extra peak memory of one forward + backward pass of a loss layer, measured in a fresh process.

On a GPU, torch.cuda.max_memory_allocated gives a computation's peak; on a CPU there is no such counter, and a process's
resident set only grows. `extra_peak_memory` therefore runs the pass in a fresh Python process (this file run as a
script): it builds the inputs, warms the code path up on tiny shapes (so library start-up memory is in the baseline),
resets the high-water mark to the current RSS through /proc/self/clear_refs where Linux allows it, runs the computation
and reports the growth of the maximum RSS, with the bytes of the gradients alone and the loss.

Kinds and variants (float32, one thread):
    lce   linear + cross-entropy of n tokens, hidden size d, vocabulary v: 'dense' (F.cross_entropy(h @ W.T, t))
          or 'fused' (lossviz.kernels.linear_cross_entropy)
    nce   CLIP-style InfoNCE (symmetric, temperature 0.1) of n pairs of size d: 'dense' (lossviz.losses.info_nce_loss)
          or 'tiled' (lossviz.kernels.info_nce_loss, 512-wide tiles)

    python benchmarks/memory.py lce fused 2048 256 --v 16384     # one measurement, printed as a JSON line
    python benchmarks/memory.py nce tiled 4096 64

tests/test_kernels.py and tutorial 06 load this file by path and call `extra_peak_memory`; benchmarks/fused_losses.py uses
its RSS helpers. It is a script of the repository, not part of the lossviz package.
"""
import argparse, json, resource, subprocess, sys

VARIANTS = {'lce': ('dense', 'fused'), 'nce': ('dense', 'tiled')}

def reset_peak_rss():
    "Reset the peak-RSS high-water mark to the current RSS (Linux), so `maxrss` measures from here on"
    try:
        with open('/proc/self/clear_refs', 'w') as f: f.write('5')
    except OSError: pass          # elsewhere the peak keeps earlier transients: extra memory may then read low

def maxrss() -> int:
    "Peak resident set size of this process's own image, in bytes: Linux's VmHWM, which `reset_peak_rss` resets (ru_maxrss, the fallback elsewhere, also holds the peak of the parent it was started from, inherited across exec)"
    from lossviz.core import resident_memory
    rm = resident_memory()
    return rm[1] if rm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

def _case(kind, variant, d):
    "(inputs of a size, forward + backward on them, gradient bytes of a size) for one kind and variant"
    import torch, torch.nn.functional as F
    from lossviz import kernels, losses
    g = torch.Generator().manual_seed(0)
    if kind == 'lce':
        def make(n, v): return (torch.randn(n, d, generator=g).requires_grad_(), torch.randn(v, d, generator=g).mul_(d ** -0.5).requires_grad_(),
                                torch.randint(0, v, (n,), generator=g))
        def loss(h, W, t): return F.cross_entropy(h @ W.T, t) if variant == 'dense' else kernels.linear_cross_entropy(h, W, t)
        return make, loss, lambda n, v: (n + v) * d * 4
    def make(n, v): return tuple(torch.randn(n, d, generator=g).requires_grad_() for _ in range(2))
    def loss(x, y): return losses.info_nce_loss(x, y, 0.1, symmetric=True) if variant == 'dense' else kernels.info_nce_loss(x, y, 0.1, symmetric=True, block=512)
    return make, loss, lambda n, v: 2 * n * d * 4

def measure(kind:str, variant:str, n:int, d:int, v:int=0) -> dict:
    "In this process: warm up on tiny shapes, reset the peak, run one forward + backward; `extra`, `grad_bytes` and `loss`"
    import torch
    torch.set_num_threads(1)     # memory does not depend on threads; one thread keeps the measurement cheap
    make, loss, grad_bytes = _case(kind, variant, d)
    def run(*args):
        out = loss(*args)
        out.backward()
        return out
    run(*make(64, 256))
    args = make(n, v)
    reset_peak_rss()
    base = maxrss()
    out = run(*args)
    return dict(extra=maxrss() - base, grad_bytes=grad_bytes(n, v), loss=out.item())

def _check(kind, variant, v):
    if kind not in VARIANTS: raise ValueError(f"`kind` must be one of {list(VARIANTS)}, got {kind!r}")
    if variant not in VARIANTS[kind]: raise ValueError(f"`variant` {variant!r} is not one of {kind!r}'s {VARIANTS[kind]}")
    if kind == 'lce' and v < 1: raise ValueError(f"`v` must be >= 1 for 'lce', got {v}")

def extra_peak_memory(kind:str, # 'lce' (linear + cross-entropy, float32) or 'nce' (CLIP-style InfoNCE, temperature 0.1)
                      variant:str, # 'dense' (materialised logits/similarities) or 'fused' ('lce') / 'tiled' ('nce')
                      n:int, # tokens ('lce') or pairs ('nce')
                      d:int, # hidden / embedding size
                      v:int=0, # vocabulary size ('lce')
                      timeout:float=600, # seconds before the process is stopped
                     ) -> dict:
    "Extra peak memory (bytes) of one forward+backward pass, measured in a fresh process: `extra`, `grad_bytes` (the gradients alone) and `loss`"
    _check(kind, variant, v)
    out = subprocess.run([sys.executable, __file__, kind, variant, str(n), str(d), '--v', str(v)], capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0: raise RuntimeError(f"the measuring process failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('kind', choices=list(VARIANTS)); p.add_argument('variant', help="dense, fused ('lce') or tiled ('nce')")
    p.add_argument('n', type=int, help='tokens or pairs'); p.add_argument('d', type=int, help='hidden / embedding size')
    p.add_argument('--v', type=int, default=0, help="vocabulary size ('lce')")
    a = p.parse_args(argv)
    try: _check(a.kind, a.variant, a.v)
    except ValueError as e: p.error(str(e))
    print(json.dumps(measure(a.kind, a.variant, a.n, a.d, a.v)))

if __name__ == '__main__': main()
