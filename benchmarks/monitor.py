"""Cost of watching a model learn with lossviz.monitor, and the products a warm-started sharpness measurement saves.

The digits CNN (lossviz.demo.SmallCNN, 137k parameters) trained by Adam for --epochs epochs of mini-batches of 64 on
scikit-learn's digits, once without the monitor and once with the default probes: Sharpness (k=1, tol 1e-3, two fixed
training batches of 128), Calibration (ECE with a 95% bootstrap interval on the test split) and Collapse (NC1-NC4 of the
penultimate layer on the test split), every --every steps, without a budget (so every measurement is taken and the overhead
is what they all cost). It prints the overhead as a fraction of the training time (target <= 10%), then, at each
measurement step of a third run, the products of the warm-started sharpness against a cold Lanczos at the same tolerance
and against PyHessian's `eigenvalues(top_n=1, tol=1e-3)` (power iteration) on the same model and batches.

    python benchmarks/monitor.py                  # 6 epochs, every 50 steps
    python benchmarks/monitor.py --epochs 2       # quicker
"""
import argparse, copy, statistics, sys, time, warnings
import torch
import torch.nn.functional as F

from lossviz.demo import SmallCNN, digits
from lossviz.hessian import Hessian
from lossviz.monitor import Calibration, Collapse, Monitor, Sharpness


def train(data, epochs, step_hook=None, seed=0):
    "Adam over seeded mini-batches; `step_hook(step, model, optimizer)` after each step; returns (model, seconds, steps)"
    torch.manual_seed(seed)
    model = SmallCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    step, t0 = 0, time.perf_counter()
    for ep in range(epochs):
        for x, y in data.batches(64, train=True, seed=seed + ep):
            opt.zero_grad(); F.cross_entropy(model(x), y).backward(); opt.step()
            if step_hook is not None: step_hook(step, model, opt)
            step += 1
    return model, time.perf_counter() - t0, step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--epochs', type=int, default=6)
    ap.add_argument('--every', type=int, default=50)
    ap.add_argument('--threads', type=int, default=None)
    args = ap.parse_args()
    if args.threads: torch.set_num_threads(args.threads)
    warnings.filterwarnings('ignore')
    data = digits()
    fixed = [(data.x_train[i:i + 128], data.y_train[i:i + 128]) for i in (0, 128)]
    test = (data.x_test, data.y_test)

    _, t_plain, steps = train(data, args.epochs)
    print(f"{steps} training steps, measurements every {args.every}, {torch.get_num_threads()} threads; training alone {t_plain:.2f} s")
    for budget in (None, 0.1):
        monitors = []
        def watch(step, model, opt):
            if not monitors:
                monitors.append(Monitor(model, [Sharpness(fixed, k=1), Calibration(test), Collapse('features.9', test, classifier='head')],
                                        every=args.every, budget=budget, loss_fn=F.cross_entropy, optimizer=opt))
            monitors[0].step(step)
        _, t_watched, _ = train(data, args.epochs, watch)
        hist = monitors[0].history
        per_probe = {p: sum(r['seconds'] for r in hist.records if r['probe'] == p) for p in ('sharpness', 'calibration', 'collapse')}
        spent = sum(per_probe.values())
        print(f"budget {budget}: {len(hist.records) - len(hist.skipped)} measurements taken, {len(hist.skipped)} skipped; with the monitor "
              f"{t_watched:.2f} s, of which {spent:.2f} s measuring ({', '.join(f'{p} {s:.2f} s' for p, s in per_probe.items())})")
        print(f"-> overhead {spent / (t_watched - spent):.1%} of the training time (target <= 10%); wall time ratio {t_watched / t_plain:.2f}")
    print()

    from pyhessian import hessian as PyHessian
    phmod = sys.modules['pyhessian.hessian']   # the module (the package exports the class under the same name)
    hvp, ph_count = phmod.hessian_vector_product, [0]
    def counted(*a):
        ph_count[0] += 1
        return hvp(*a)
    phmod.hessian_vector_product = counted
    rows, probe = [], Sharpness(fixed, k=1)
    whole = (torch.cat([x for x, _ in fixed]), torch.cat([y for _, y in fixed]))
    def compare(step, model, opt):
        if step % args.every: return
        mon = Monitor(model, [probe], every=1, budget=None, loss_fn=F.cross_entropy)
        mon.step(step)
        warm = mon.history.records[-1]
        cold = Hessian(model, F.cross_entropy, fixed, verbose=False).eigenvalues(k=1, tol=1e-3)
        ph_count[0] = 0
        ph = PyHessian(copy.deepcopy(model).eval(), F.cross_entropy, data=whole, cuda=False)   # one batch: the same mean loss
        ph_val = ph.eigenvalues(top_n=1, tol=1e-3)[0][0]
        rows.append((step, warm['sharpness'], warm['products'], float(cold.values[0]), cold.n_matvecs, ph_val, ph_count[0]))
    train(data, args.epochs, compare)
    phmod.hessian_vector_product = hvp
    print(f"{'step':>6}{'warm value':>14}{'warm prod':>11}{'cold value':>14}{'cold prod':>11}{'PyHessian':>14}{'PyH prod':>10}")
    for r in rows: print(f"{r[0]:>6}{r[1]:>14.6g}{r[2]:>11}{r[3]:>14.6g}{r[4]:>11}{r[5]:>14.6g}{r[6]:>10}")
    later = rows[1:]
    if later:
        w, c, p = (statistics.mean(r[i] for r in later) for i in (2, 4, 6))
        print(f"-> after the first measurement: warm {w:.1f} products per measurement, cold {c:.1f} ({c / w:.2f}x), PyHessian {p:.1f} ({p / w:.2f}x)")


if __name__ == '__main__':
    main()
