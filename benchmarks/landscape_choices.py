"""Benchmark: the choices `GridEvaluator`'s probe makes on a CPU, measured one by one on the benchmark models.

Run:  python benchmarks/landscape_choices.py [--points 300] [--repeats 3]

1. The first-layer shortcut on and off (`first_layer=True/False`), for the loop in both memory layouts, on the CNN and the
   MLP of benchmarks/landscape.py (nn.Sequential) and on the same MLP written as a class (`forward` with `x.flatten(1)`),
   which gets the shortcut through the torch.fx cut. Points are real grid points of a 31x31 slice; repeats are
   interleaved, so drifts of the machine's speed affect every variant alike; each cell shows min-max over the repeats.
2. vmap's cost per point by chunk size (2, 8, 32 points): on a CPU it falls little or not at all as chunks grow, which is why
   the probe skips vmap's timed window when its 2-point warm-up is already twice as slow as the best loop.
3. The MLP's loop against its floor: what every point must pay with the first-layer shortcut (the combine of the cached
   first-layer outputs, the rest of the network, the user's F.cross_entropy), in a bare Python loop, and lossviz's loop on
   the same points (its setup and probe excluded).
Milliseconds per point, process CPU time, one thread.
"""
import argparse, time
import torch
import torch.nn.functional as F
from torch import nn
from lossviz.landscape import GridEvaluator, random_directions, param_spec
from lossviz.grid import Choice, _laid_out
from landscape import models, train, digits


class ClassMLP(nn.Module):
    "The benchmark MLP written as a class: the torch.fx cut, not the nn.Sequential structure, finds its first layer"
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(64, 128), nn.Linear(128, 128), nn.Linear(128, 10)
    def forward(self, x): return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x.flatten(1))))))


def setup(model, x, y, points):
    "Trained model, flat origin, two filter-normalised directions and the first `points` points of a 31x31 grid"
    m = train(model, x, y)
    spec = param_spec(m)
    D = torch.stack([spec.flatten(d) for d in random_directions(m, 2, seed=0)])
    xs = torch.linspace(-1, 1, 31)
    return m, spec.flatten(dict(m.named_parameters())).detach(), D, torch.cartesian_prod(xs, xs)[:points]


def shortcut(name, model, x, y, points, repeats, layouts):
    m, theta, D, C = setup(model, x, y, points)
    t = {}
    for _ in range(repeats):
        for fmt in layouts:
            for fl in (True, False):
                ev = GridEvaluator(m, F.cross_entropy, (x, y), strategy='loop', memory_format=fmt, first_layer=fl)
                t0 = time.process_time(); ev.evaluate(theta, D, C, verbose=False)
                t.setdefault((fmt, fl), []).append((time.process_time() - t0) / len(C) * 1e3)
                assert ev.used_first_layer == fl, (name, fmt, fl)
    for fmt in layouts:
        on, off = t[(fmt, True)], t[(fmt, False)]
        print(f"{name:<10} {fmt:<14} {min(on):8.3f}-{max(on):<8.3f} {min(off):8.3f}-{max(off):<8.3f} {min(off) / min(on):9.2f}x")


def vmap_chunks(name, model, x, y, repeats):
    m, theta, D, C = setup(model, x, y, 64)
    ev = GridEvaluator(m, F.cross_entropy, (x, y), strategy='vmap')
    t = {}
    with ev._mode():
        cache = ev._first_layer_cache(theta, D)
        vm, affine = Choice('vmap', 'contiguous', cache is not None), cache and _laid_out(cache, 'contiguous')
        ev._timed(vm, theta, D, C[:2], affine)   # first call: warm-up
        for _ in range(repeats):
            for n in (2, 8, 32): t.setdefault(n, []).append(ev._timed(vm, theta, D, C[:n], affine)[1] * 1e3)
    print(f"{name:<10} " + "".join(f"{min(v):9.2f}-{max(v):<9.2f}" for v in t.values()))


def floor(repeats, points=400):
    "The bare per-point work of the MLP with the shortcut, against lossviz's loop on the same points"
    x, y = digits(512, 'cpu', torch.float32)
    x = x.flatten(1)
    m, theta, D, C = setup(models()['mlp'], x, y, points)
    rest, first = m[2:], m[1]
    d1, d2 = (param_spec(m).unflatten(d) for d in D)
    with torch.inference_mode():
        a0, a1, a2 = first(x), F.linear(x, d1['1.weight'], d1['1.bias']), F.linear(x, d2['1.weight'], d2['1.bias'])
    def bare():
        with torch.inference_mode():
            for a, b in C.tolist():
                h = torch.add(a0, a1, alpha=a); h.add_(a2, alpha=b)
                F.cross_entropy(rest(h), y)
    ev = GridEvaluator(m, F.cross_entropy, (x, y), strategy='loop', memory_format='contiguous', first_layer=True)
    with ev._mode(): affine = _laid_out(ev._first_layer_cache(theta, D), 'contiguous')
    def ours():   # the loop itself, as `evaluate` runs a plan with the shortcut after the probe (setup and probe excluded)
        with ev._mode(): ev._loop(theta, D, C, 'contiguous', affine)
    t = {}
    for _ in range(repeats):
        for name, fn in (('bare floor', bare), ('lossviz loop', ours)):
            t0 = time.process_time(); fn(); t.setdefault(name, []).append((time.process_time() - t0) / points * 1e3)
    for name, v in t.items(): print(f"{name:<14} {min(v):.3f}-{max(v):.3f}")
    print(f"lossviz loop / floor: {min(t['lossviz loop']) / min(t['bare floor']):.2f}x (best of each)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--points', type=int, default=300, help='grid points per evaluation')
    ap.add_argument('--repeats', type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    x, y = digits(512, 'cpu', torch.float32)
    print(f"torch {torch.__version__}, CPU, one thread, process CPU time, {args.points} points of a 31x31 grid, 512 samples a point\n")
    print("1. first-layer shortcut, loop strategy (ms/point, min-max over the repeats)")
    print(f"{'model':<10} {'layout':<14} {'shortcut on':<17} {'shortcut off':<17} {'on faster by'}")
    shortcut('cnn', models()['cnn'], x, y, args.points, args.repeats, ('contiguous', 'channels_last'))
    shortcut('mlp', models()['mlp'], x.flatten(1), y, args.points, args.repeats, ('contiguous',))
    torch.manual_seed(0)
    shortcut('class mlp', ClassMLP(), x, y, args.points, args.repeats, ('contiguous',))
    print("\n2. vmap strategy, ms/point by chunk size (min-max over the repeats)")
    print(f"{'model':<10} " + "".join(f"{f'{n} points':<19}" for n in (2, 8, 32)))
    vmap_chunks('cnn', models()['cnn'], x, y, args.repeats)
    vmap_chunks('mlp', models()['mlp'], x.flatten(1), y, args.repeats)
    print("\n3. MLP loop against its floor, ms/point (min-max over the repeats; 400 points)")
    floor(args.repeats)


if __name__ == '__main__':
    main()
