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
"""
import argparse, copy, statistics, time, warnings
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lossviz.hessian import Hessian, LINEARIZE_AFTER
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
    ap.add_argument('--batch', type=int, default=512)
    ap.add_argument('--runs', type=int, default=8, help='SLQ runs')
    ap.add_argument('--steps', type=int, default=80, help='SLQ Lanczos steps')
    ap.add_argument('--trace-tol', type=float, default=0.01)
    ap.add_argument('--reps', type=int, default=7, help='round-robin repetitions of the HVP timings (median)')
    ap.add_argument('--threads', type=int, default=None, help='torch threads (default: torch default)')
    ap.add_argument('--parts', default='hvp,eig,trace,density', help='comma-separated subset of hvp,eig,trace,density')
    ap.add_argument('--train-steps', type=int, default=60,
                    help='full-batch Adam steps before measuring (0: the untrained network); curvature questions are asked about trained models')
    args = ap.parse_args()
    parts = set(args.parts.split(','))
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
        if method == 'auto': name += f" (chose {H._kernel})"
        fns[name], setup[name] = (lambda H=H: H.matvec(v)), t_setup + t_first
    Ha = Hessian(model, F.cross_entropy, (X, Y), verbose=False)
    Ha.matvec(torch.randn(LINEARIZE_AFTER, P))   # a long computation: auto then measures the kernels once more
    Ha.matvec(v)
    fns[f"lossviz auto after {LINEARIZE_AFTER} products (chose {Ha._kernel})"] = lambda: Ha.matvec(v)
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
    auto, after = next(k for k in t if k.startswith('lossviz auto (')), next(k for k in t if k.startswith('lossviz auto after'))
    print(f"-> lossviz auto HVP = {t[auto] / t['gradient']:.2f}x a gradient, {t[after] / t['gradient']:.2f}x after {LINEARIZE_AFTER} products "
          f"(target <= 1.6x); PyHessian {ph_t / t['gradient']:.2f}x\n")


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


if __name__ == '__main__':
    main()
