"""Speed and memory of lossviz.kernels against the materialised losses and PyTorch's chunked linear_cross_entropy.

Every variant runs forward + backward in a fresh process. Extra peak memory is the max RSS after the computation minus
the RSS just before it (the high-water mark is reset through /proc/self/clear_refs after the inputs are built and
every code path is warmed up on tiny shapes; the RSS helpers are benchmarks/memory.py's), or
torch.cuda.max_memory_allocated above the inputs on a GPU. InfoNCE (CLIP: symmetric, temperature 0.07) is the
catalogue's lossviz.losses.info_nce_loss ('dense', materialised) or its tiled twin lossviz.kernels.info_nce_loss
('tiled'). The parent checks that all variants give the same loss and gradients and prints time and memory ratios
against the materialised reference.

    python benchmarks/fused_losses.py                                  # N=8192, d=1024, V=32768 (minutes on a CPU)
    python benchmarks/fused_losses.py --n 2048 --v 16384 --d 512       # a smaller run
    python benchmarks/fused_losses.py --skip-lce --nce-n 32768 --nce-d 512 --nce-variants tiled   # InfoNCE at 32k
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time
from memory import maxrss, reset_peak_rss       # benchmarks/memory.py, beside this file

MiB = 1 << 20

def _inputs_lce(a, torch, dev):
    g = torch.Generator(device=dev).manual_seed(0)
    dt = getattr(torch, a.dtype)
    h = torch.randn(a.n, a.d, generator=g, device=dev, dtype=dt).requires_grad_()
    W = torch.randn(a.v, a.d, generator=g, device=dev, dtype=dt).mul_(a.d ** -0.5).requires_grad_()
    t = torch.randint(0, a.v, (a.n,), generator=g, device=dev)
    return h, W, t

def _run_lce(variant, h, W, t, torch, F):
    if variant == 'dense': loss = F.cross_entropy(h @ W.T, t)
    elif variant == 'torch':
        from torch.nn.modules.linear_cross_entropy_options import LinearCrossEntropyOptions
        loss = F.linear_cross_entropy(h, W, t, options=LinearCrossEntropyOptions())
    elif variant in ('lossviz', 'lossviz_torch'):                   # lossviz_torch: the PyTorch blocks also on CUDA
        from lossviz.kernels import linear_cross_entropy
        loss = linear_cross_entropy(h, W, t, backend='torch' if variant == 'lossviz_torch' else 'auto')
    elif variant == 'liger':
        from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss
        loss = LigerFusedLinearCrossEntropyLoss()(W, h, t)          # (lin_weight, input, target)
    elif variant == 'cce':
        from cut_cross_entropy import linear_cross_entropy as cce
        loss = cce(h, W, t)
    else: raise ValueError(f"unknown variant {variant!r}")
    if isinstance(loss, tuple): loss = loss[0]                      # some versions also return the z-loss
    loss.backward()
    return loss

def _inputs_nce(a, torch, dev):
    g = torch.Generator(device=dev).manual_seed(0)
    dt = getattr(torch, a.dtype)
    mk = lambda: torch.randn(a.nce_n, a.nce_d, generator=g, device=dev, dtype=dt).requires_grad_()
    return mk(), mk()

def _run_nce(variant, x, y, torch, F):
    if variant == 'dense':
        from lossviz.losses import info_nce_loss
        loss = info_nce_loss(x, y, 0.07, symmetric=True)
    elif variant == 'tiled':
        from lossviz.kernels import info_nce_loss
        loss = info_nce_loss(x, y, 0.07, symmetric=True)
    else: raise ValueError(f"unknown variant {variant!r}")
    loss.backward()
    return loss

def worker(a):
    "Run one variant in this (fresh) process and print a JSON line; save the gradients for the parent's check"
    import torch, torch.nn.functional as F
    if a.threads: torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    make, run = (_inputs_lce, _run_lce) if a.kind == 'lce' else (_inputs_nce, _run_nce)
    small = argparse.Namespace(**{**vars(a), 'n': 64, 'v': 256, 'nce_n': 64})
    run(a.variant, *make(small, torch, dev), torch, F)                    # warm-up: library start-up memory goes in the baseline
    inputs = make(a, torch, dev)
    cuda = dev.type == 'cuda'
    if cuda: torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
    else: reset_peak_rss(); base = maxrss()
    t0 = time.perf_counter()
    loss = run(a.variant, *inputs, torch, F)
    if cuda: torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if cuda else maxrss()
    grads = [x.grad for x in inputs if getattr(x, 'grad', None) is not None]
    if a.save: torch.save([loss.detach().cpu()] + [g.cpu() for g in grads], a.save)
    print(json.dumps(dict(variant=a.variant, seconds=seconds, extra=peak - base, peak=peak,
                          grad_bytes=sum(g.numel() * g.element_size() for g in grads), loss=loss.item())))

def spawn(a, kind, variant, save):
    cmd = [sys.executable, __file__, '--worker', '--kind', kind, '--variant', variant, '--save', save]
    for k in ('n', 'd', 'v', 'nce_n', 'nce_d', 'dtype', 'device', 'threads'): cmd += [f"--{k.replace('_', '-')}", str(getattr(a, k))]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
    if out.returncode != 0:
        print(f"  {variant}: failed ({out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode})")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])

def compare(a, kind, variants, ref):
    import torch
    tmp = tempfile.mkdtemp()
    res, times = {}, {}
    for rep in range(a.repeat):                  # round-robin, so slow phases of a shared machine hit every variant
        for v in variants:
            if rep and v not in res: continue
            r = spawn(a, kind, v, os.path.join(tmp, f"{v}.pt") if rep == 0 else '')
            if r is None: continue
            res.setdefault(v, r)
            times.setdefault(v, []).append(r['seconds'])
    for v in res: res[v]['seconds'] = statistics.median(times[v])
    if a.repeat > 1: print(f"  times are medians of {a.repeat} runs: " + ", ".join(f"{v} {['%.1f' % x for x in times[v]]}" for v in res))
    if ref not in res: return res
    saved = {v: torch.load(os.path.join(tmp, f"{v}.pt")) for v in res}
    R = res[ref]
    print(f"  {'variant':9s} {'time s':>8s} {'x ref':>6s} {'extra MiB':>10s} {'x ref':>6s} {'peak MiB':>9s}  max rel. diff (loss, grads)")
    for v, r in res.items():
        diffs = [((x.double() - y.double()).norm() / y.double().norm().clamp_min(1e-30)).item() for x, y in zip(saved[v], saved[ref])]
        print(f"  {v:9s} {r['seconds']:8.2f} {r['seconds'] / R['seconds']:6.2f} {r['extra'] / MiB:10.0f} {r['extra'] / R['extra']:6.3f} "
              f"{r['peak'] / MiB:9.0f}  {max(diffs):.1e}")
    print(f"  (gradients alone: {R['grad_bytes'] / MiB:.0f} MiB)")
    return res

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--n', type=int, default=8192, help='tokens')
    p.add_argument('--d', type=int, default=1024, help='hidden size')
    p.add_argument('--v', type=int, default=32768, help='vocabulary size')
    p.add_argument('--variants', default='dense,torch,lossviz', help='comma list of dense,torch,lossviz,lossviz_torch,liger,cce (liger/cce: GPU only, where installed)')
    p.add_argument('--nce-n', type=int, default=8192, help='InfoNCE batch size')
    p.add_argument('--nce-d', type=int, default=512, help='InfoNCE embedding size')
    p.add_argument('--nce-variants', default='dense,tiled', help='comma list of dense,tiled')
    p.add_argument('--skip-lce', action='store_true'); p.add_argument('--skip-nce', action='store_true')
    p.add_argument('--dtype', default='float32'); p.add_argument('--device', default='cpu')
    p.add_argument('--threads', type=int, default=0, help='torch threads per worker (0: torch default)')
    p.add_argument('--timeout', type=int, default=1800, help='seconds per variant')
    p.add_argument('--repeat', type=int, default=1, help='runs per variant (round-robin); the median time is reported')
    p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--kind', default='lce', help=argparse.SUPPRESS); p.add_argument('--variant', help=argparse.SUPPRESS)
    p.add_argument('--save', default='', help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker: return worker(a)
    if not a.skip_lce:
        print(f"linear + cross-entropy, N={a.n} d={a.d} V={a.v} {a.dtype} on {a.device}, forward + backward, reference: dense")
        compare(a, 'lce', a.variants.split(','), 'dense')
    if not a.skip_nce:
        variants = a.nce_variants.split(',')
        print(f"InfoNCE/CLIP, N={a.nce_n} d={a.nce_d} {a.dtype} on {a.device}, forward + backward (dense similarities: {a.nce_n ** 2 * 4 / MiB:.0f} MiB)")
        res = compare(a, 'nce', variants, 'dense' if 'dense' in variants else variants[0])
        for v, r in res.items(): print(f"  {v}: peak RSS {r['peak'] / MiB:.0f} MiB, extra {r['extra'] / MiB:.0f} MiB, {r['seconds']:.1f} s")

if __name__ == '__main__': main()
