"""Benchmark lossviz.hessian against PyHessian, hessian-eigenthings and scipy ARPACK on the same model and data.

The small CNN on scikit-learn's digits (conv 1->32, BN, ReLU, conv 32->64, BN, ReLU, maxpool 2, linear 1024->114, ReLU,
linear 114->10; about 137k parameters), trained for --train-steps full-batch Adam steps (default 60: curvature questions
are asked about trained models, whose spectra have a few dominant eigenvalues; 0 measures the untrained network), one batch
of 512 images, eval-mode semantics (PyHessian forces eval mode, so every library sees the same operator). Everything runs in one process; the script prints values side by side with an
ARPACK reference and time ratios. Timings on a shared machine are noisy: compare ratios from the same run.

    python benchmarks/hessian.py                      # the issue's settings (density 8 runs x 80 steps)
    python benchmarks/hessian.py --steps 20 --reps 2  # quicker

PyHessian's `density` calls `torch.eig`, removed from PyTorch; it is shimmed here with `torch.linalg.eig`.
hessian-eigenthings is optional (`pip install hessian-eigenthings`); it is skipped if missing.

Curvature at the size people train (--model gpt2-10m | gpt2-30m | gpt2-124m): a GPT-2 built from a config with random weights
(vocabulary 50257, 64 positions, eager attention; gpt2-10m: 6 layers of width 160, 9.9M parameters; gpt2-30m: 6 layers of
width 384, 30.0M; gpt2-124m: GPT-2 small, 12 layers of width 768, 124M), one batch of 2 x 16 random tokens, the model's own loss.
Each tool runs in a fresh subprocess: the model and its gradients are built first (as in training), the peak RSS then is the
baseline, and "extra GiB" is the peak RSS during the tool's run above it (Linux `VmHWM`). Per product, each tool's CPU time (the
process's: other processes sharing the machine count less; use --threads 1 for steadier figures) is set against that of one
bare HVP (a backward pass through the gradient's kept graph, PyHessian's product), timed in a fresh process of its own as a user's
loop would run it, the median of 5; that process also times it inside `lossviz.core.reusing_memory` (freed buffers reused instead
of page-faulted in again, as lossviz's products run on the CPU). For lossviz's eigenvalues, the run's time over its products'
(the overhead of Lanczos around the products: Gram-Schmidt, restarts) and the products' over the bare HVP in `reusing_memory`. "seconds" is
wall-clock. Values are compared with ARPACK (scipy's eigsh on lossviz's products, tol 1e-6) where ARPACK's float64 basis (20
vectors) fits; PyHessian's top eigenvalues are the largest in magnitude, so they are compared with ARPACK's which="LM". lossviz's
eigenpairs are also checked without any reference solver, at every size: the float64 Rayleigh quotient of each vector against its
value, and the relative residual ||Hx - qx|| / |q|, which bounds the relative distance from q to an eigenvalue of H.

    python benchmarks/hessian.py --model gpt2-30m --threads 1            # eigenvalues, trace, density; lossviz, PyHessian, ARPACK
    python benchmarks/hessian.py --model gpt2-124m --tools lossviz --parts eig
"""
import argparse, copy, json, statistics, subprocess, sys, time, warnings
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lossviz.core import available_memory, resident_memory, reusing_memory
from lossviz.hessian import Hessian
from landscape import train   # benchmarks/landscape.py: a few full-batch Adam steps, then eval mode


def cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(1024, 114), nn.ReLU(), nn.Linear(114, 10))


def digits_batch(n):
    from sklearn.datasets import load_digits
    d = load_digits()
    return torch.tensor(d.images[:n] / 16, dtype=torch.float32)[:, None], torch.tensor(d.target[:n])


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def shim_torch_eig():
    "PyHessian's density calls the removed `torch.eig(a, eigenvectors=True)` -> ((n, 2) real/imag, vectors)"
    def eig(a, eigenvectors=False):
        w, v = torch.linalg.eig(a)
        return torch.stack([w.real, w.imag], 1), (v.real if eigenvectors else torch.empty(0))
    torch.eig = eig


def row(name, *cols): print(f"{name:<44}" + "".join(f"{c:>16}" for c in cols))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--model', default='cnn', choices=['cnn', *GPT2], help='the small CNN on digits, or a GPT-2 (see the docstring)')
    ap.add_argument('--tools', default='lossviz,pyhessian,arpack', help='GPT-2: comma-separated subset of lossviz,pyhessian,arpack')
    ap.add_argument('--tol', type=float, default=1e-3, help='GPT-2: tolerance of the top-3 eigenvalues')
    ap.add_argument('--trace-max', type=int, default=400, help='GPT-2: product budget of the trace')
    ap.add_argument('--budget-gib', type=float, default=None, help='GPT-2: lossviz `budget` in GiB (default: half the free memory)')
    ap.add_argument('--worker', default=None, help=argparse.SUPPRESS)
    ap.add_argument('--batch', type=int, default=512)
    ap.add_argument('--runs', type=int, default=8, help='SLQ runs')
    ap.add_argument('--steps', type=int, default=None, help='SLQ Lanczos steps (CNN: 80; GPT-2: 40)')
    ap.add_argument('--trace-tol', type=float, default=0.01)
    ap.add_argument('--reps', type=int, default=7, help='round-robin repetitions of the HVP timings (median)')
    ap.add_argument('--threads', type=int, default=None, help='torch threads (default: torch default)')
    ap.add_argument('--parts', default=None, help='comma-separated subset of hvp,eig,trace,density (CNN: all; GPT-2: eig,trace,density)')
    ap.add_argument('--train-steps', type=int, default=60,
                    help='full-batch Adam steps before measuring (0: the untrained network); curvature questions are asked about trained models')
    args = ap.parse_args()
    args.steps = args.steps or (80 if args.model == 'cnn' else 40)
    if args.worker: return print('RESULT ' + json.dumps(worker(args)), flush=True)
    if args.model in GPT2: return gpt2_main(args)
    parts = set((args.parts or 'hvp,eig,trace,density').split(','))
    if args.threads: torch.set_num_threads(args.threads)
    warnings.simplefilter('ignore')
    shim_torch_eig()
    X, Y = digits_batch(args.batch)
    model = train(cnn(), X, Y, args.train_steps) if args.train_steps else cnn().eval()
    P = sum(p.numel() for p in model.parameters())
    with torch.no_grad(): loss = F.cross_entropy(model(X), Y).item()
    print(f"small CNN on digits: P={P:,}, batch {len(X)}, {args.train_steps} training steps (loss {loss:.4f}), torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}\n")

    from pyhessian import hessian as PyHessian
    he = None
    try:
        import hessian_eigenthings as he
        op = he.HessianOperator(model, [(X, Y)], he.supervised_loss(F.cross_entropy))
    except ImportError:
        print("hessian-eigenthings not installed: skipped")
    V8 = torch.randn(8, P)
    if 'hvp' in parts: bench_hvp(model, X, Y, P, V8, args.reps, PyHessian)
    if 'eig' in parts: bench_eig(model, X, Y, P, PyHessian, he, op if he else None)
    H = Hessian(model, F.cross_entropy, (X, Y), verbose=False)
    H.matvec(V8)  # setup and method choice, as any first use does
    if 'trace' in parts: bench_trace(model, X, Y, H, PyHessian, he, op if he else None, args.trace_tol)
    if 'density' in parts: bench_density(model, X, Y, H, PyHessian, he, op if he else None, args.runs, args.steps)


def bench_hvp(model, X, Y, P, V8, reps, PyHessian):
    "One product per implementation, in units of one gradient; all timed round-robin, so that drifts in machine load hit all alike"
    from pyhessian.utils import hessian_vector_product
    v = torch.randn(P)
    params = list(model.parameters())
    fns, setup, chosen = {'gradient': lambda: torch.autograd.grad(F.cross_entropy(model(X), Y), params)}, {}, {}
    for method in ('linearize', 'jvp', 'vjp', 'double_backward', 'auto'):
        H, t_setup = timed(lambda: Hessian(model, F.cross_entropy, (X, Y), method=method, verbose=False))
        _, t_first = timed(lambda: H.matvec(v))
        name = f"lossviz {method}"
        if method == 'auto': name += f" (chose {H._kernel})"   # the first product was computed by both kernels, timed: the faster is kept
        fns[name], setup[name] = (lambda H=H: H.matvec(v)), t_setup + t_first
    Hb = Hessian(model, F.cross_entropy, (X, Y), method='linearize', batched=True, verbose=False)
    Hb.matvec(V8)
    fns['lossviz linearize, vmap over 8, per vector'] = lambda: Hb.matvec(V8)
    ph, setup['PyHessian (double backward, graph kept)'] = timed(lambda: PyHessian(copy.deepcopy(model), F.cross_entropy, data=(X, Y), cuda=False))
    vl = [torch.randn_like(p) for p in ph.params]
    fns['PyHessian (double backward, graph kept)'] = lambda: hessian_vector_product(ph.gradsH, ph.params, vl)
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items(): times[k].append(timed(f)[1] / (8 if 'over 8' in k else 1))
    t = {k: statistics.median(ts) for k, ts in times.items()}
    print(f"one gradient: {t['gradient'] * 1e3:.1f} ms (median of {reps}, timed round-robin with the products below)")
    row('HVP implementation', 'setup s', 'ms / product', 'x gradient', 'x PyHessian')
    ph_t = t['PyHessian (double backward, graph kept)']
    for k in fns:
        if k != 'gradient': row(k, f"{setup[k]:.2f}" if k in setup else '', f"{t[k] * 1e3:.1f}", f"{t[k] / t['gradient']:.2f}", f"{t[k] / ph_t:.2f}")
    auto = next(k for k in t if k.startswith('lossviz auto ('))
    print(f"-> lossviz auto HVP = {t[auto] / t['gradient']:.2f}x a gradient (target <= 1.6x); PyHessian {ph_t / t['gradient']:.2f}x\n")


def bench_eig(model, X, Y, P, PyHessian, he, op):
    "Top-3 eigenvalues: lossviz, PyHessian and hessian-eigenthings against ARPACK"
    from scipy.sparse.linalg import LinearOperator, eigsh
    Href = Hessian(model, F.cross_entropy, (X, Y), verbose=False)
    counter = [0]
    def mv(x):
        counter[0] += 1
        return Href.matvec(torch.as_tensor(np.asarray(x).reshape(-1), dtype=torch.float32)).double().numpy()
    (ref, _), t_arpack = timed(lambda: eigsh(LinearOperator((P, P), matvec=mv, dtype=np.float64), k=3, which='LA', tol=1e-6,
                                             v0=np.ones(P)))
    ref = np.sort(ref)[::-1]
    n_arpack = counter[0]

    def lv_eigs():
        return Hessian(model, F.cross_entropy, (X, Y), verbose=False).eigenvalues(k=3, tol=1e-4)
    lv_ev, t_lv_ev = timed(lv_eigs)

    import sys
    phmod = sys.modules['pyhessian.hessian']
    hvp, ph_count = phmod.hessian_vector_product, [0]
    def counted(*a):
        ph_count[0] += 1
        return hvp(*a)
    phmod.hessian_vector_product = counted   # count PyHessian's products

    def ph_eigs():
        ph = PyHessian(copy.deepcopy(model), F.cross_entropy, data=(X, Y), cuda=False)
        return ph.eigenvalues(top_n=3, tol=1e-4)[0]
    torch.manual_seed(0)
    ph_ev, t_ph_ev = timed(ph_eigs)
    phmod.hessian_vector_product = hvp

    rel = lambda vals: max(abs(a - b) / abs(b) for a, b in zip(vals, ref))
    row('top-3 eigenvalues', 'lambda_1', 'lambda_2', 'lambda_3', 'max rel err', 'time s', 'products')
    row('ARPACK (eigsh, tol 1e-6) reference', *[f"{x:.6g}" for x in ref], '-', f"{t_arpack:.2f}", f"{n_arpack}")
    row('lossviz eigenvalues(k=3, tol=1e-4)', *[f"{x:.6g}" for x in lv_ev.values.tolist()], f"{rel(lv_ev.values.tolist()):.1e}",
        f"{t_lv_ev:.2f}", f"{lv_ev.n_matvecs}")
    row('PyHessian eigenvalues(top_n=3, tol=1e-4)', *[f"{x:.6g}" for x in ph_ev], f"{rel(ph_ev):.1e}", f"{t_ph_ev:.2f}", f"{ph_count[0]}")
    blk, t_blk = timed(lambda: Hessian(model, F.cross_entropy, (X, Y), verbose=False).eigenvalues(k=3, tol=1e-4, block_size=2))
    row('lossviz eigenvalues(..., block_size=2)', *[f"{x:.6g}" for x in blk.values.tolist()], f"{rel(blk.values.tolist()):.1e}",
        f"{t_blk:.2f}", f"{blk.n_matvecs}")
    if he is not None:
        he_ev, t_he_ev = timed(lambda: he.lanczos(op, k=3, which='LA', seed=0))
        he_vals = sorted(he_ev.eigenvalues.tolist(), reverse=True)
        row('hessian-eigenthings lanczos(k=3) default', *[f"{x:.6g}" for x in he_vals], f"{rel(he_vals):.1e}", f"{t_he_ev:.2f}", '')
    print(f"-> lossviz top-3: {t_ph_ev / t_lv_ev:.1f}x faster than PyHessian including setup (target >= 5x), "
          f"max rel err vs ARPACK {rel(lv_ev.values.tolist()):.1e} (target <= 1e-4)\n")



def bench_trace(model, X, Y, H, PyHessian, he, op, tol):
    "Trace to a relative standard error `tol`; the others get the same number of products"
    tr, t_tr = timed(lambda: H.trace(tol=tol, seed=0))
    n = tr.n_matvecs
    row('trace', 'value', 'stderr', 'rel stderr', 'time s', 'products', 's to 1% (*)')
    need = lambda t, rse, n: t * max(1.0, (rse / tol) ** 2)   # stderr ~ 1/sqrt(samples): time to reach `tol`
    row(f'lossviz trace(tol={tol}) Hutch++', f"{tr.value:.6g}", f"{tr.stderr:.3g}", f"{tr.stderr / tr.value:.2%}", f"{t_tr:.2f}", f"{n}",
        f"{need(t_tr, tr.stderr / tr.value, n):.2f}")
    xt, t_xt = timed(lambda: H.trace(tol=tol, seed=0, method='xtrace'))
    row(f'lossviz trace(tol={tol}) XTrace', f"{xt.value:.6g}", f"{xt.stderr:.3g}", f"{xt.stderr / xt.value:.2%}", f"{t_xt:.2f}",
        f"{xt.n_matvecs}", f"{need(t_xt, xt.stderr / xt.value, xt.n_matvecs):.2f}")
    ph = PyHessian(copy.deepcopy(model), F.cross_entropy, data=(X, Y), cuda=False)
    torch.manual_seed(0)
    samples, t_ph_tr = timed(lambda: ph.trace(maxIter=n, tol=0.0))
    s = np.array(samples)
    rse = s.std(ddof=1) / np.sqrt(len(s)) / s.mean()
    others = {'PyHessian': need(t_ph_tr, rse, n)}
    row(f'PyHessian trace, {n} Hutchinson samples', f"{s.mean():.6g}", f"{s.std(ddof=1) / np.sqrt(len(s)):.3g}", f"{rse:.2%}",
        f"{t_ph_tr:.2f}", f"{len(s)}", f"{others['PyHessian']:.2f}")
    if he is not None:
        he_tr, t_he_tr = timed(lambda: he.trace(op, num_matvecs=n, method='hutch++', seed=0))
        rse = he_tr.stderr / he_tr.estimate
        others['hessian-eigenthings'] = need(t_he_tr, rse, n)
        row(f'hessian-eigenthings Hutch++, {n} products', f"{he_tr.estimate:.6g}", f"{he_tr.stderr:.3g}", f"{rse:.2%}",
            f"{t_he_tr:.2f}", f"{n}", f"{others['hessian-eigenthings']:.2f}")
    best = min(others, key=others.get)
    print(f"(*) time to reach {tol:.0%} relative standard error, extrapolated from the samples drawn (stderr ~ 1/sqrt(samples))")
    print(f"-> lossviz trace to {tol:.0%}: {others[best] / need(t_tr, tr.stderr / tr.value, n):.1f}x faster than the fastest other library ({best}) (target >= 3x)\n")

def bench_density(model, X, Y, H, PyHessian, he, op, r, m):
    "SLQ with r runs x m steps in each library"
    sd, t_sd = timed(lambda: H.density(n_iter=m, n_runs=r, seed=0))
    row(f'density, {r} runs x {m} steps', 'mean eig', 'min node', 'max node', 'time s')
    row('lossviz density (all runs batched)', f"{sd.moment(1)[0]:.4g}", f"{float(sd.nodes.min()):.4g}", f"{float(sd.nodes.max()):.4g}", f"{t_sd:.2f}")
    ph = PyHessian(copy.deepcopy(model), F.cross_entropy, data=(X, Y), cuda=False)
    (ph_nodes, ph_w), t_ph_sd = timed(lambda: ph.density(iter=m, n_v=r))
    ph_mean = np.mean([np.dot(a, b) for a, b in zip(ph_nodes, ph_w)])
    row('PyHessian density (torch.eig shimmed)', f"{ph_mean:.4g}", f"{min(map(min, ph_nodes)):.4g}", f"{max(map(max, ph_nodes)):.4g}", f"{t_ph_sd:.2f}")
    fastest = t_ph_sd
    if he is not None:
        he_sd, t_he_sd = timed(lambda: he.spectral_density(op, num_runs=r, lanczos_steps=m, seed=0))
        row('hessian-eigenthings spectral_density', '', '', '', f"{t_he_sd:.2f}")
        fastest = min(fastest, t_he_sd)
    print(f"-> lossviz density: {fastest / t_sd:.1f}x faster than the fastest other library (target >= 3x)")


# ---------------------------------------------------------------------------------------------------------------------------
# Curvature at the size people train: GPT-2s, each tool in a fresh subprocess

GPT2 = {'gpt2-10m': dict(n_layer=6, n_embd=160, n_head=5), 'gpt2-30m': dict(n_layer=6, n_embd=384, n_head=6),
        'gpt2-124m': dict(n_layer=12, n_embd=768, n_head=12)}
GIB = 2 ** 30


def gpt2(name):
    "The GPT-2 `name` with random weights (eager attention, eval mode) and one batch of 2 x 16 random tokens"
    import transformers
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=50257, n_positions=64, bos_token_id=0, eos_token_id=0, **GPT2[name])
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation='eager').eval()
    ids = torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(0))
    return model, {'input_ids': ids, 'labels': ids}


def maxrss() -> int: return resident_memory()[1]   # VmHWM: the worker's own peak (ru_maxrss would include the parent's, inherited across exec)


def clocked(fn):
    "fn(), its wall-clock seconds and the process's CPU seconds (robust to other processes sharing the machine)"
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def bare_hvp(model, batch, reps=5):
    "Median CPU seconds of one bare HVP: a backward pass through the gradient's kept graph (PyHessian's product)"
    params = [p for p in model.parameters() if p.requires_grad]
    vs = [torch.randn_like(p) for p in params]
    gs = torch.autograd.grad(model(**batch).loss, params, create_graph=True)
    one = lambda: torch.autograd.grad(gs, params, vs, retain_graph=True)
    one()
    return statistics.median(clocked(one)[2] for _ in range(reps))


def dot64(a, b, chunk=1 << 20) -> float:
    "a . b accumulated in float64, chunk by chunk (no float64 copy of a whole vector)"
    return sum(float(a[i:i + chunk].double() @ b[i:i + chunk].double()) for i in range(0, len(a), chunk))


def rayleigh_check(H, r) -> dict:
    "A check of the eigenpairs that needs no reference solver (where ARPACK does not fit): one more product per vector, then in float64 the "
    "Rayleigh quotient x.Hx / x.x against the value reported, and the residual ||Hx - q x|| / |q|, which bounds the distance from q to an "
    "eigenvalue (relative)"
    HX = H.matvec(r.vectors)
    rq, res = [], []
    for x, hx, v in zip(r.vectors, HX, r.values.tolist()):
        q = dot64(x, hx) / dot64(x, x)
        d = hx - q * x
        rq.append(abs(q - v) / abs(q)); res.append(dot64(d, d) ** 0.5 / abs(q))
    return dict(rayleigh=max(rq), residual=max(res))


class Logits(nn.Module):
    "The language model as PyHessian wants it: inputs -> logits of the next tokens, flat (the model's own loss is their cross-entropy)"
    def __init__(self, lm): super().__init__(); self.lm = lm
    def forward(self, ids): return self.lm(input_ids=ids).logits[:, :-1].flatten(0, 1)


def worker(args):
    "One tool on one GPT-2, in this (fresh) process: extra peak RSS over the model and its gradients, time, products, values"
    warnings.simplefilter('ignore')
    if args.threads: torch.set_num_threads(args.threads)
    model, batch = gpt2(args.model)
    model(**batch).loss.backward()   # the gradients exist, as in training
    P = sum(p.numel() for p in model.parameters() if p.requires_grad)
    budget = None if args.budget_gib is None else int(args.budget_gib * GIB)
    tool, part = args.worker.split(':')
    base = maxrss()
    out = dict(P=P)
    if tool == 'bare':   # the user's own HVP loop, in a process of its own: default malloc, then inside lossviz's reusing_memory
        out['bare_cpu'] = bare_hvp(model, batch)
        with reusing_memory(): out['reusing_cpu'] = bare_hvp(model, batch)
        return out
    if tool == 'lossviz':
        H, t_init = timed(lambda: Hessian(model, None, batch, budget=budget, verbose=False))
        if part == 'eig': r, t, c = clocked(lambda: H.eigenvalues(k=3, tol=args.tol))
        elif part == 'trace': r, t, c = clocked(lambda: H.trace(tol=0.05, max_matvecs=args.trace_max))
        else: r, t, c = clocked(lambda: H.density(n_iter=args.steps, n_runs=args.runs))
        out.update(seconds=t, cpu=c, init_seconds=t_init, products=r.n_matvecs, kernel=r.meta['kernel'],
                   meta={k: v for k, v in r.meta.items() if k not in ('probe',)})
        if part == 'eig': out.update(values=r.values.tolist(), converged=r.converged.tolist())
        elif part == 'trace': out.update(value=r.value, stderr=r.stderr)
        else: out.update(mean=r.moment(1)[0], lo=float(r.nodes.min()), hi=float(r.nodes.max()))
    elif tool == 'pyhessian':
        from pyhessian import hessian as PyHessian
        phmod, counter = sys.modules['pyhessian.hessian'], [0]
        hvp = phmod.hessian_vector_product
        def counted(*a):
            counter[0] += 1
            return hvp(*a)
        phmod.hessian_vector_product = counted
        ids = batch['input_ids']
        torch.manual_seed(0)
        def run():
            ph = PyHessian(Logits(model), F.cross_entropy, data=(ids, ids[:, 1:].flatten()), cuda=False)
            return ph.eigenvalues(top_n=3, tol=args.tol)[0]
        vals, t, c = clocked(run)
        out.update(seconds=t, cpu=c, products=counter[0], kernel='double_backward', values=[float(v) for v in vals])
    else:   # ARPACK on lossviz's products, float64 vectors
        from scipy.sparse.linalg import LinearOperator, eigsh
        H, counter = Hessian(model, None, batch, verbose=False), [0]
        def mv(x):
            counter[0] += 1
            return H.matvec(torch.as_tensor(np.asarray(x, dtype=np.float32).reshape(-1))).double().numpy()
        (vals, _), t, c = clocked(lambda: eigsh(LinearOperator((P, P), matvec=mv, dtype=np.float64), k=3, which=part, tol=1e-6, v0=np.ones(P)))
        key = (lambda v: -v) if part == 'LA' else (lambda v: -abs(v))
        out.update(seconds=t, cpu=c, products=counter[0], kernel=H._kernel, values=sorted(vals.tolist(), key=key))
    out['extra'] = maxrss() - base
    if tool == 'lossviz' and part == 'eig': out['check'] = rayleigh_check(H, r)
    return out


def run_worker(args, job):
    "`job` ('tool:part') in a fresh subprocess; its result, or the reason it gave none"
    cmd = [sys.executable, __file__, '--model', args.model, '--worker', job, '--tol', str(args.tol), '--trace-max', str(args.trace_max),
           '--steps', str(args.steps), '--runs', str(args.runs)]
    if args.threads: cmd += ['--threads', str(args.threads)]
    if args.budget_gib is not None: cmd += ['--budget-gib', str(args.budget_gib)]
    p = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    line = next((l for l in p.stdout.splitlines() if l.startswith('RESULT ')), None)
    if line is None: return {'error': (p.stderr.strip().splitlines() or ['exit code %d' % p.returncode])[-1][:100]}
    return json.loads(line[7:])


def gpt2_main(args):
    "Each tool on the GPT-2 in its own process; one table"
    parts, tools = (args.parts or 'eig,trace,density').split(','), args.tools.split(',')
    args.steps, args.runs = (40, 8) if (args.steps, args.runs) == (80, 8) else (args.steps, args.runs)   # the 8 x 40 SLQ
    model, _ = gpt2(args.model)
    P = sum(p.numel() for p in model.parameters() if p.requires_grad)
    del model
    arpack_fits = 20 * 8 * P < 0.5 * (available_memory('cpu') or 0)   # eigsh's default basis: 20 float64 vectors
    jobs = ['bare:hvp'] + [f"lossviz:{p}" for p in parts if 'lossviz' in tools]
    if 'pyhessian' in tools and 'eig' in parts: jobs.append('pyhessian:eig')
    if 'arpack' in tools and 'eig' in parts and arpack_fits: jobs += ['arpack:LA', 'arpack:LM']
    res = {}
    for job in jobs:
        res[job] = run_worker(args, job)
        print(f"  {job}: {res[job]}", file=sys.stderr, flush=True)
    print(f"\n{args.model}: P={P:,}, eager attention, batch 2 x 16 tokens, model's own loss, threads {args.threads or torch.get_num_threads()}, "
          f"torch {torch.__version__}; each tool in a fresh process; tol {args.tol:g}")
    if 'arpack' in tools and not arpack_fits: print(f"ARPACK skipped: its 20 float64 vectors ({20 * 8 * P / GIB:.1f} GiB) do not fit half the free memory")
    ref = {w: res.get(f'arpack:{w}', {}).get('values') for w in ('LA', 'LM')}
    bare = res.pop('bare:hvp')
    if 'error' in bare: print(f"bare HVP failed: {bare['error']}"); return
    print(f"one bare HVP (double backward through the kept graph, in a fresh process, median of 5): {bare['bare_cpu']:.3f} CPU s; "
          f"inside lossviz.core.reusing_memory (freed buffers reused, no page faults): {bare['reusing_cpu']:.3f} CPU s")
    head = ('extra GiB', 'seconds', 'products', 'cpu s/prod', 'x bare', 'values', 'rel err')
    print(f"{'tool':<40}" + ''.join(f"{h:>12}" for h in head[:-2]) + f"  {'values':<36}{'max rel err (vs ARPACK)':>24}")
    for job, r in res.items():
        name = {'lossviz:eig': f'lossviz eigenvalues(k=3, tol={args.tol:g})', 'lossviz:trace': 'lossviz trace(tol=0.05)',
                'lossviz:density': f'lossviz density({args.runs} x {args.steps})', 'pyhessian:eig': f'PyHessian eigenvalues(top_n=3, tol={args.tol:g})',
                'arpack:LA': 'ARPACK eigsh(k=3, LA, tol=1e-6)', 'arpack:LM': 'ARPACK eigsh(k=3, LM, tol=1e-6)'}[job]
        if 'error' in r: print(f"{name:<40}  failed: {r['error']}"); continue
        per = r['cpu'] / r['products']
        cols = [f"{r['extra'] / GIB:.2f}", f"{r['seconds']:.1f}", f"{r['products']}", f"{per:.3f}", f"{per / bare['bare_cpu']:.2f}"]
        if 'values' in r: vals = ', '.join(f"{v:.5g}" for v in r['values'])
        elif 'value' in r: vals = f"trace {r['value']:.5g} +- {r['stderr']:.2g}"
        else: vals = f"mean {r['mean']:.4g}, nodes [{r['lo']:.4g}, {r['hi']:.4g}]"
        against = ref['LM'] if job == 'pyhessian:eig' else ref['LA'] if job == 'lossviz:eig' else None
        mine = sorted(r['values'], key=lambda v: -abs(v)) if job == 'pyhessian:eig' else r.get('values')   # PyHessian's, by magnitude as ARPACK's LM
        err = f"{max(abs(a - b) / abs(b) for a, b in zip(mine, against)):.1e}" if against and mine else ''
        print(f"{name:<40}" + ''.join(f"{c:>12}" for c in cols) + f"  {vals:<36}{err:>24}")
        if job.startswith('lossviz'):
            m = r['meta']
            if 'check' in r: print(f"{'':<40}  check without a reference solver (float64, one more product per vector): |Rayleigh quotient - value| / value "
                                   f"{r['check']['rayleigh']:.1e}, residual ||Hx - qx|| / q {r['check']['residual']:.1e} (bounds the distance to an eigenvalue)")
            if 'orth_seconds' in m: print(f"{'':<40}  run / its products {m['seconds'] / m['product_seconds']:.2f} (Gram-Schmidt {m['orth_seconds'] / m['product_seconds']:.2f}); "
                                          f"products {m['product_seconds'] / r['products'] / bare['reusing_cpu']:.2f} x the bare HVP in reusing_memory; "
                                          f"full reorthogonalisations {m['full_reorthogonalizations']} of {r['products']} steps")
            peak = f"{m['memory_peak'] / GIB:.2f} GiB" if m.get('memory_peak') else 'n/a'
            print(f"{'':<40}  kernel {m['kernel']}, budget {m['budget'] / GIB if m['budget'] else float('nan'):.2f} GiB, estimate "
                  f"{m.get('memory_estimate', 0) / GIB:.2f} GiB, meta peak {peak}, " + ', '.join(f"{k} {m[k]}" for k in ('basis_size', 'restarts', 'sketch', 'chunk', 'runs_together', 'window') if k in m))


if __name__ == '__main__':
    main()
