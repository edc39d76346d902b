"""Benchmark: 31x31 loss-landscape slices with lossviz vs an in-place loop vs the loss-landscapes library.

Run:  python benchmarks/landscape.py [--steps 31] [--repeats 2] [--device cpu|cuda] [--threads N] [--models cnn,mlp]

Models (on scikit-learn's digits, 512 samples a point, eval mode):
  cnn: conv 1->32 3x3 pad1, BN, ReLU, conv 32->64 3x3 pad1, BN, ReLU, maxpool2, flatten, linear 1024->114, ReLU, linear 114->10
  mlp: 64 -> 128 -> 128 -> 10 with ReLU
Methods, all in one process on the same directions and grid:
  inplace  the anchor: one model copy, write theta + a*d1 + b*d2 into its parameters in place, evaluate, one point at a time
  lossviz  lossviz.landscape.slice_2d with strategy, memory format and first-layer shortcut "auto" (and, for reference, the
           loop in the contiguous and the channels-last layout, and vmap, forced; the shortcut still measured)
  ll       loss_landscapes.planar_interpolation (PyPI 3.0.6), its plane placed so its grid points coincide with ours
Reported: milliseconds per grid point (best of --repeats; on CPU by default process CPU time with one thread, which is robust
to other processes sharing the machine; --clock wall for elapsed time), ratio anchor/method (>1 = faster than the anchor), peak memory
(CUDA: torch.cuda.max_memory_allocated; CPU: peak RSS above the level before the method, sampled every 2 ms) and the
largest relative difference of the values to the in-place loop. Value identity is also checked in float64 on a 7x7 grid.

loss-landscapes semantics, and how they are matched: planar_interpolation evaluates start + i*(e1-start)/n + j*(e2-start)/n
for row i = 0..n-1, but walks the rows zig-zag so that even rows get j = 1..n and odd rows j = 0..n-1 (the centre is off by
one step on half of the rows). We choose start = theta - d1 - d2 and e_k = start + d_k * 2n/(n-1), so row i is x = xs[i] and
column offset j is y = ys[j]; its even rows are compared with our columns 1..n-1 (its last column lies outside our grid),
its odd rows with our columns 0..n-1. Its in-place accumulation (start_point.add_ on every step) adds float32 rounding drift,
so float32 values agree to about 1e-5 relative, float64 to about 1e-12. (random_plane cannot be matched: it draws uniform
[0, 1) directions from the global RNG and divides by `distance`.)
"""
import argparse, copy, gc, threading, time
import numpy as np
import torch
from torch import nn
import torch.nn.functional as F
from sklearn.datasets import load_digits
import loss_landscapes
from loss_landscapes.metrics import Loss
from lossviz.landscape import random_directions, slice_2d, param_spec


def models():
    cnn = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(1024, 114), nn.ReLU(), nn.Linear(114, 10))
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    return {'cnn': cnn, 'mlp': mlp}


def digits(n, device, dtype):
    d = load_digits()
    x = torch.tensor(d.images[:n], dtype=dtype).unsqueeze(1) / 16
    return x.to(device), torch.tensor(d.target[:n]).to(device)


def train(model, x, y, steps=60):
    "A few Adam steps so the slice is around a trained point (BN statistics from training)"
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    model.train()
    for _ in range(steps):
        opt.zero_grad(); F.cross_entropy(model(x), y).backward(); opt.step()
    return model.eval()


def inplace_loop(model, x, y, d1, d2, xs, ys):
    "The anchor: write theta + a*d1 + b*d2 into one copy's parameters in place and evaluate, point by point"
    m = copy.deepcopy(model).eval()
    ps = list(m.named_parameters())
    theta = [p.detach().clone() for _, p in ps]
    out = torch.empty(len(xs), len(ys), dtype=torch.float64)
    with torch.inference_mode():
        for i, a in enumerate(xs.tolist()):
            for j, b in enumerate(ys.tolist()):
                for (n, p), t in zip(ps, theta): p.copy_(t + a * d1[n] + b * d2[n])
                out[i, j] = F.cross_entropy(m(x), y).item()
    return out


def ll_plane(model, x, y, d1, d2, n):
    "loss_landscapes.planar_interpolation placed on our grid (see the module docstring)"
    start, e1, e2 = (copy.deepcopy(model).eval() for _ in range(3))
    s = 2 * n / (n - 1)
    with torch.no_grad():
        for (k, p0), p1, p2 in zip(start.named_parameters(), e1.parameters(), e2.parameters()):
            p0.sub_(d1[k] + d2[k]); p1.copy_(p0 + s * d1[k]); p2.copy_(p0 + s * d2[k])
    return torch.tensor(loss_landscapes.planar_interpolation(start, e1, e2, Loss(F.cross_entropy, x, y), steps=n, deepcopy_model=True),
                        dtype=torch.float64)


def ll_matched(ll, ours):
    "Our values at loss-landscapes' zig-zag points, and its values there"
    n = ll.shape[0]
    a, b = [], []
    for i in range(n):
        if i % 2 == 0: a.append(ll[i, :n - 1]); b.append(ours[i, 1:])
        else: a.append(ll[i]); b.append(ours[i])
    return torch.cat(a), torch.cat(b)


class Peak:
    "Peak memory during a block: CUDA allocator peak, or sampled RSS above the starting level on CPU"
    def __init__(self, device): self.device = device
    def __enter__(self):
        gc.collect()
        if self.device.type == 'cuda':
            torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); self.base = torch.cuda.memory_allocated()
            return self
        import psutil
        self.proc, self.stop = psutil.Process(), threading.Event()
        self.base = self.peak = self.proc.memory_info().rss
        def sample():
            while not self.stop.is_set():
                self.peak = max(self.peak, self.proc.memory_info().rss); time.sleep(0.002)
        self.thread = threading.Thread(target=sample, daemon=True); self.thread.start()
        return self
    def __exit__(self, *a):
        if self.device.type == 'cuda':
            torch.cuda.synchronize(); self.mib = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        else:
            self.stop.set(); self.thread.join(); self.mib = (self.peak - self.base) / 2**20


def timed(fn, device, clock):
    with Peak(device) as pk:
        if device.type == 'cuda': torch.cuda.synchronize()
        t = clock(); v = fn()
        if device.type == 'cuda': torch.cuda.synchronize()
        dt = clock() - t
    return v, dt, pk.mib


def lv(strategy, model, x, y, d1, d2, n, memory_format='auto'):
    ls = slice_2d(model, F.cross_entropy, (x, y), (d1, d2), span=(-1, 1, -1, 1), steps=(n, n), strategy=strategy,
                  memory_format=memory_format, verbose=False)
    lv.last = ls
    return ls.values['loss']


def check_float64(model, x, y, device):
    "Values of lossviz (both strategies, both layouts), the in-place loop and loss-landscapes agree in float64 on a 7x7 grid"
    m = copy.deepcopy(model).double()
    x = x.double()
    d1, d2 = random_directions(m, 2, seed=1)
    xs = torch.linspace(-1, 1, 7, dtype=torch.float64)
    ref = inplace_loop(m, x, y, d1, d2, xs, xs)
    for s, f in (('loop', 'contiguous'), ('loop', 'channels_last'), ('vmap', 'contiguous')):
        v = lv(s, m, x, y, d1, d2, 7, f)
        assert torch.allclose(v, ref, rtol=1e-10, atol=0), (s, f, (v - ref).abs().max())
    a, b = ll_matched(ll_plane(m, x, y, d1, d2, 7), ref)
    assert torch.allclose(a, b, rtol=1e-10, atol=0), (a - b).abs().max()
    return float((v - ref).abs().max())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--steps', type=int, default=31)
    ap.add_argument('--repeats', type=int, default=2)
    ap.add_argument('--samples', type=int, default=512)
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--models', default='cnn,mlp')
    ap.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: 1 with --clock cpu, else torch default)')
    ap.add_argument('--clock', choices=['cpu', 'wall'], default=None,
                    help='cpu: process CPU time (robust on a shared machine; default on CPU), wall: elapsed time (default on CUDA)')
    args = ap.parse_args()
    on_cpu = torch.device(args.device).type == 'cpu'
    args.clock = args.clock or ('cpu' if on_cpu else 'wall')
    if args.threads or args.clock == 'cpu': torch.set_num_threads(args.threads or 1)
    clock = time.process_time if args.clock == 'cpu' else time.perf_counter
    device, n = torch.device(args.device), args.steps
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, clock {args.clock}, grid {n}x{n}, "
          f"{args.samples} samples a point")
    for name, model in models().items():
        if name not in args.models.split(','): continue
        x, y = digits(args.samples, device, torch.float32)
        if name == 'mlp': x = x.flatten(1)
        model = train(model.to(device), x, y)
        before = copy.deepcopy(model.state_dict())
        print(f"\n== {name}: P={param_spec(model).size:,}; float64 7x7 check: lossviz(loop, loop cl, vmap) == in-place == loss-landscapes "
              f"to 1e-10 relative (max abs diff {check_float64(model, x, y, device):.1e})")
        d1, d2 = random_directions(model, 2, seed=0)
        xs = torch.linspace(-1, 1, n, dtype=torch.float64)
        methods = {'inplace': lambda: inplace_loop(model, x, y, d1, d2, xs, xs),
                   'lossviz auto': lambda: lv('auto', model, x, y, d1, d2, n),
                   'lossviz loop': lambda: lv('loop', model, x, y, d1, d2, n, 'contiguous'),
                   'lossviz loop cl': lambda: lv('loop', model, x, y, d1, d2, n, 'channels_last'),
                   'lossviz vmap': lambda: lv('vmap', model, x, y, d1, d2, n),
                   'loss-landscapes': lambda: ll_plane(model, x, y, d1, d2, n)}
        best, mem, vals, chosen = {}, {}, {}, None
        for r in range(args.repeats):  # interleaved repeats: machine load drifts affect all methods alike
            for k, fn in methods.items():
                v, dt, mib = timed(fn, device, clock)
                if k == 'lossviz auto': chosen = (lv.last.meta['strategy'], lv.last.meta['memory_format'], lv.last.meta['first_layer'])
                best[k], mem[k], vals[k] = min(best.get(k, 1e9), dt / n**2), max(mem.get(k, 0), mib), v
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "a method changed the model"
        ref = vals['inplace']
        print(f"{'method':<16} {'ms/point':>9} {'vs inplace':>11} {'vs LL':>7} {'peak MiB':>9} {'max rel diff':>13}")
        for k in methods:
            if k == 'loss-landscapes': a, b = ll_matched(vals[k], ref)
            else: a, b = vals[k], ref
            diff = float(((a - b).abs() / b.abs()).max())
            print(f"{k:<16} {best[k] * 1e3:9.3f} {best['inplace'] / best[k]:10.2f}x {best['loss-landscapes'] / best[k]:6.2f}x "
                  f"{mem[k]:9.1f} {diff:13.1e}")
        print(f"auto chose: {chosen[0]}, {chosen[1]} layout, first-layer shortcut {'on' if chosen[2] else 'off'}")


if __name__ == '__main__':
    main()
