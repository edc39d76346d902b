"""Every CUDA code path of lossviz, once, timed against its anchor in the same run (minutes on one GPU).

    python benchmarks/gpu.py                    # on a GPU: the sizes below; prints ratios and peak memory
    python benchmarks/gpu.py --tiny             # the same code paths at tiny sizes (what tests/test_gpu_script.py runs on CPU)
    python benchmarks/gpu.py --only lce,nce --json out.json

Sections (each checks its numbers against the reference before it reports a time, and the script exits with status 1
if any check fails, so a broken path cannot hide behind a fast time):

- `hvp`: Hessian-vector products of a GPT-2-shaped transformer (random weights, eager attention), k vectors in one
  vmapped call (`Hessian(batched=True)`) against k looped products (`batched=False`), for double backward and jvp.
- `landscape`: a 2D slice of a small CNN, the vmap strategy against the loop.
- `lce`: linear + cross-entropy without the logits, `lossviz.kernels.linear_cross_entropy` with the torch and Triton
  backends, against the materialised `F.cross_entropy(h @ W.T)` and torch's own chunked `F.linear_cross_entropy`,
  and against Liger-Kernel and cut-cross-entropy where they are installed.
- `nce`: the tiled InfoNCE (`lossviz.kernels.info_nce_loss`) against the catalogue's dense one (`lossviz.losses`).

Times are medians of `--repeat` runs after one warm-up (CUDA synchronised). Memory is the peak of
`torch.cuda.max_memory_allocated` above what was allocated before the call; on a CPU it is not measured (`-`),
because a process's resident set has no per-call peak counter (benchmarks/fused_losses.py measures it in fresh processes).
"""
from __future__ import annotations
import argparse, importlib.util, json, statistics, sys, time

import torch
import torch.nn.functional as F

MiB = 1 << 20
SIZES = {  # section -> (GPU sizes, --tiny sizes)
    'hvp': (dict(n_layer=6, n_embd=512, n_head=8, vocab=32768, batch=8, seq=128, k=8),
            dict(n_layer=1, n_embd=32, n_head=2, vocab=64, batch=2, seq=8, k=3)),
    'landscape': (dict(n=2048, steps=33), dict(n=64, steps=5)),
    'lce': (dict(n=16384, d=2048, v=131072), dict(n=64, d=16, v=96)),
    'nce': (dict(n=32768, d=512), dict(n=48, d=8)),
}


class CheckFailed(AssertionError):
    "A code path gave numbers that disagree with its reference"


def sync(device):
    if device.type == 'cuda': torch.cuda.synchronize(device)


def measure(fn, device, repeat):
    "Median seconds of `fn()` after one warm-up, peak extra CUDA memory of one call (None on CPU), and its result"
    out = fn(); sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter(); fn(); sync(device); times.append(time.perf_counter() - t0)
    peak = None
    if device.type == 'cuda':
        torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats(device); base = torch.cuda.memory_allocated(device)
        fn(); sync(device)
        peak = torch.cuda.max_memory_allocated(device) - base
    return statistics.median(times), peak, out


def rel_diff(a, b) -> float:
    "Largest relative difference (in norm) between two tensors or two sequences of tensors"
    if isinstance(a, torch.Tensor): a, b = [a], [b]
    return max(((x.double() - y.double()).norm() / y.double().norm().clamp_min(1e-30)).item() for x, y in zip(a, b))


def report(section, rows, ref, tol, failures):
    "Print one section's table (time and memory ratios against `ref`) and record values outside `tol`"
    R = rows[ref]
    print(f"\n[{section}] reference: {ref}")
    print(f"  {'variant':24s} {'time ms':>9s} {'x ref':>6s} {'peak MiB':>9s} {'x ref':>6s}  rel. diff")
    for name, r in rows.items():
        mem = '-' if r['peak'] is None else f"{r['peak'] / MiB:9.1f}"
        mem_x = '-' if r['peak'] is None or not R['peak'] else f"{r['peak'] / R['peak']:6.2f}"
        print(f"  {name:24s} {r['seconds'] * 1e3:9.2f} {r['seconds'] / R['seconds']:6.2f} {mem:>9s} {mem_x:>6s}  {r['diff']:.1e}")
        if not r['diff'] <= tol: failures.append(f"{section}/{name}: relative difference {r['diff']:.2e} > {tol:.0e}")


def run_variants(variants, ref, device, repeat, compare):
    "Time every variant, and its result's difference from the reference's"
    rows, ref_out = {}, None
    for name in [ref] + [v for v in variants if v != ref]:
        try: seconds, peak, out = measure(variants[name], device, repeat)
        except Exception as e:  # an optional backend that fails here is reported, not fatal; the reference must run
            if name == ref: raise
            print(f"  {name}: skipped ({type(e).__name__}: {str(e).splitlines()[0][:120]})"); continue
        if ref_out is None: ref_out = out
        rows[name] = dict(seconds=seconds, peak=peak, diff=compare(out, ref_out))
    return rows


# ------------------------------------------------------------------------------------------------------------ sections
def section_hvp(s, device, dtype, repeat):
    "Batched (vmap) against looped Hessian-vector products of a GPT-2-shaped model, per product kernel"
    from transformers import GPT2Config, GPT2LMHeadModel
    from lossviz.hessian import Hessian
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=s['n_layer'], n_embd=s['n_embd'], n_head=s['n_head'], vocab_size=s['vocab'], n_positions=s['seq'],
                     attn_implementation='eager', resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg).to(device).eval()
    ids = torch.randint(0, s['vocab'], (s['batch'], s['seq']), device=device)
    batch = {'input_ids': ids, 'labels': ids}
    P = sum(p.numel() for p in model.parameters())
    V = torch.randn(s['k'], P, device=device, dtype=torch.float32)
    print(f"\n[hvp] GPT-2 {s['n_layer']} layers x {s['n_embd']}, vocab {s['vocab']}, P = {P / 1e6:.2f}M, batch {s['batch']} x {s['seq']}, "
          f"k = {s['k']} vectors")
    out = {}
    for method in ('double_backward', 'jvp'):
        ops = {f"{method} vmap": Hessian(model, None, batch, method=method, batched=True, verbose=False),
               f"{method} loop": Hessian(model, None, batch, method=method, batched=False, verbose=False)}
        rows = run_variants({n: (lambda H=H: H.matvec(V)) for n, H in ops.items()}, f"{method} loop", device, repeat, rel_diff)
        out[method] = rows
    return out, 1e-4   # float32 sums in another order across k products: 1e-4 relative


def section_landscape(s, device, dtype, repeat):
    "A 2D slice of a small CNN: the vmap strategy against the loop"
    from lossviz.demo import SmallCNN
    from lossviz.landscape import random_directions, slice_2d
    torch.manual_seed(0)
    model = SmallCNN().to(device)
    x, y = torch.randn(s['n'], 1, 8, 8, device=device), torch.randint(0, 10, (s['n'],), device=device)
    d = random_directions(model, 2, seed=0)
    run = lambda strategy: slice_2d(model, F.cross_entropy, (x, y), d, steps=s['steps'], strategy=strategy, verbose=False).values['loss']
    rows = run_variants({'vmap': lambda: run('vmap'), 'loop': lambda: run('loop')}, 'loop', device, repeat, rel_diff)
    return {'slice_2d': rows}, 1e-5   # the same float32 forward per point, batched: 1e-5 relative


def _lce_variants(h, W, t):
    "Loss and gradients of every linear + cross-entropy implementation available here"
    from lossviz.kernels import linear_cross_entropy
    def run(f):
        def go():
            h.grad = W.grad = None
            loss = f(); loss = loss[0] if isinstance(loss, tuple) else loss
            loss.backward()
            return [loss.detach(), h.grad, W.grad]
        return go
    variants = {'materialised': run(lambda: F.cross_entropy((h @ W.T).float(), t)),
                'torch linear_cross_entropy': run(lambda: F.linear_cross_entropy(h, W, t, options=_torch_lce_options())),
                'lossviz (torch backend)': run(lambda: linear_cross_entropy(h, W, t, backend='torch'))}
    if h.is_cuda and importlib.util.find_spec('triton'):
        variants['lossviz (triton backend)'] = run(lambda: linear_cross_entropy(h, W, t, backend='triton'))
    if h.is_cuda and importlib.util.find_spec('liger_kernel'):
        from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss
        variants['liger-kernel'] = run(lambda: LigerFusedLinearCrossEntropyLoss()(W, h, t))
    if h.is_cuda and importlib.util.find_spec('cut_cross_entropy'):
        from cut_cross_entropy import linear_cross_entropy as cce
        variants['cut-cross-entropy'] = run(lambda: cce(h, W, t))
    return variants


def _torch_lce_options():
    from torch.nn.modules.linear_cross_entropy_options import LinearCrossEntropyOptions
    return LinearCrossEntropyOptions()


def section_lce(s, device, dtype, repeat):
    "Linear + cross-entropy: lossviz's backends against the materialised loss, torch's chunked one, Liger and CCE"
    g = torch.Generator(device=device).manual_seed(0)
    h = torch.randn(s['n'], s['d'], generator=g, device=device, dtype=dtype).requires_grad_()
    W = (torch.randn(s['v'], s['d'], generator=g, device=device, dtype=dtype) * s['d'] ** -0.5).requires_grad_()
    t = torch.randint(0, s['v'], (s['n'],), generator=g, device=device)
    print(f"\n[lce] {s['n']} tokens, hidden {s['d']}, vocabulary {s['v']}, {dtype} (logits would take "
          f"{s['n'] * s['v'] * 4 / MiB:.0f} MiB in float32)")
    rows = run_variants(_lce_variants(h, W, t), 'materialised', device, repeat, rel_diff)
    return {'linear_cross_entropy': rows}, (1e-5 if dtype == torch.float32 else 2e-2)  # float32 blocks; bf16 inputs round to 2^-8


def section_nce(s, device, dtype, repeat):
    "The tiled InfoNCE against the catalogue's dense InfoNCE (CLIP: both directions)"
    from lossviz import kernels, losses
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(s['n'], s['d'], generator=g, device=device, dtype=dtype).requires_grad_()
    k = torch.randn(s['n'], s['d'], generator=g, device=device, dtype=dtype).requires_grad_()
    def run(f):
        def go():
            q.grad = k.grad = None
            loss = f(q, k, temperature=0.07, symmetric=True); loss.backward()
            return [loss.detach(), q.grad, k.grad]
        return go
    print(f"\n[nce] batch {s['n']}, embedding {s['d']}, {dtype} (similarities would take {s['n'] ** 2 * 4 / MiB:.0f} MiB)")
    rows = run_variants({'dense (losses)': run(losses.info_nce_loss), 'tiled (kernels)': run(kernels.info_nce_loss)},
                        'dense (losses)', device, repeat, rel_diff)
    return {'info_nce_loss': rows}, (1e-5 if dtype == torch.float32 else 2e-2)


SECTIONS = {'hvp': section_hvp, 'landscape': section_landscape, 'lce': section_lce, 'nce': section_nce}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--tiny', action='store_true', help='tiny sizes (the default without CUDA)')
    p.add_argument('--device', default=None, help="'cuda' or 'cpu' (default: cuda when available)")
    p.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'], help='dtype of the loss-layer inputs (lce, nce)')
    p.add_argument('--only', default=','.join(SECTIONS), help=f"comma list of sections: {','.join(SECTIONS)}")
    p.add_argument('--repeat', type=int, default=None, help='timed runs per variant (default 5, 1 with --tiny)')
    p.add_argument('--json', default=None, help='write the figures to this file')
    a = p.parse_args(argv)
    device = torch.device(a.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    tiny = a.tiny or device.type != 'cuda'
    repeat = a.repeat or (1 if tiny else 5)
    only = [x.strip() for x in a.only.split(',') if x.strip()]
    unknown = sorted(set(only) - SECTIONS.keys())
    if unknown: p.error(f"--only: unknown sections {unknown}; choose from {sorted(SECTIONS)}")
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'
    print(f"lossviz GPU paths on {name} ({'tiny sizes' if tiny else 'full sizes'}, torch {torch.__version__}, {repeat} timed runs)")
    start, failures, figures = time.perf_counter(), [], {}
    for sec in only:
        t0 = time.perf_counter()
        results, tol = SECTIONS[sec](SIZES[sec][tiny], device, getattr(torch, a.dtype), repeat)
        for label, rows in results.items(): report(f"{sec}/{label}", rows, next(iter(rows)), tol, failures)
        figures[sec] = results
        print(f"  ({time.perf_counter() - t0:.1f} s)")
    print(f"\ntotal {time.perf_counter() - start:.1f} s")
    if a.json:
        with open(a.json, 'w') as f: json.dump(dict(device=name, tiny=tiny, sections=figures), f, indent=1)
    if failures:
        print("CHECKS FAILED:\n  " + "\n  ".join(failures))
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
