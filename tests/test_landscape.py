"""lossviz.landscape against the loss-landscapes library (PyPI 3.0.6) and against point-by-point references, in float64.

loss-landscapes evaluates one point at a time by adding a step to the model's parameters in place; its grid semantics are
matched explicitly below (see each test). Tolerances: 1e-10 relative, because both sides compute the same float64 forward
passes and differ only by the rounding of the parameter arithmetic (its in-place accumulation over up to n steps adds
about n * 1e-16 relative to the parameters).
"""
import copy
import pytest
import torch
from torch import nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
import loss_landscapes
from loss_landscapes.metrics import Loss
from loss_landscapes.model_interface.model_parameters import ModelParameters
from lossviz.landscape import (random_directions, normalize_direction, slice_2d, slice_1d, interpolate, param_spec,
                               GridEvaluator)

RTOL = 1e-10


def cnn(seed):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                      nn.Linear(6 * 16, 12), nn.ReLU(), nn.Linear(12, 4)).double()
    with torch.no_grad(): m[1].running_mean.normal_(0, 0.1); m[1].running_var.uniform_(0.5, 1.5)
    return m.eval()


@pytest.fixture(scope='module')
def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(48, 1, 8, 8, dtype=torch.float64, generator=g), torch.randint(0, 4, (48,), generator=g)


def same_model(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_linear_interpolation_matches_loss_landscapes(data):
    "loss-landscapes evaluates alpha = 1/n, 2/n, ..., 1 (not 0); lossviz's (0, 1) grid with n+1 steps holds these points"
    x, y = data
    a, b = cnn(0), cnn(1)
    b.load_state_dict({**b.state_dict(), **{k: v for k, v in a.state_dict().items() if 'running' in k or 'num_batches' in k}})
    n = 10
    ll = loss_landscapes.linear_interpolation(a, b, Loss(F.cross_entropy, x, y), steps=n, deepcopy_model=True)
    ours = interpolate(a, b, F.cross_entropy, (x, y), steps=n + 1, span=(0, 1), verbose=False).values['loss'][1:]
    torch.testing.assert_close(ours, torch.tensor(ll, dtype=torch.float64), rtol=RTOL, atol=0)


def test_planar_interpolation_matches_loss_landscapes_zigzag(data):
    """planar_interpolation evaluates start + i*(e1-start)/n + j*(e2-start)/n with j = 1..n on even rows, 0..n-1 on odd rows.
    With start = theta - d1 - d2 and e_k = start + d_k*2n/(n-1), point (i, j) is (xs[i], ys[j]) of our grid on (-1, 1)."""
    x, y = data
    m = cnn(0)
    d1, d2 = random_directions(m, 2, seed=0)
    n = 5
    start, e1, e2 = (copy.deepcopy(m) for _ in range(3))
    with torch.no_grad():
        for (k, p0), p1, p2 in zip(start.named_parameters(), e1.parameters(), e2.parameters()):
            p0.sub_(d1[k] + d2[k]); p1.copy_(p0 + 2 * n / (n - 1) * d1[k]); p2.copy_(p0 + 2 * n / (n - 1) * d2[k])
    ll = torch.tensor(loss_landscapes.planar_interpolation(start, e1, e2, Loss(F.cross_entropy, x, y), steps=n, deepcopy_model=True))
    ys_ext = (-1, 1 + 2 / (n - 1))  # one extra column, where loss-landscapes' even rows end
    ours = slice_2d(m, F.cross_entropy, (x, y), (d1, d2), span=(-1, 1, *ys_ext), steps=(n, n + 1), verbose=False).values['loss']
    for i in range(n):
        torch.testing.assert_close(ll[i], ours[i, 1:] if i % 2 == 0 else ours[i, :n], rtol=RTOL, atol=0)


def test_filter_normalisation_matches_loss_landscapes():
    """loss-landscapes' filter_normalize_ on the multi-dimensional weights. Only those are passed to it: its 1-d handling
    differs (it rescales each entry to the weight's magnitude) and divides by zero for an all-zero bias such as BatchNorm's."""
    m = cnn(0)
    w = {k: p.detach() for k, p in m.named_parameters() if p.dim() > 1}
    g = torch.Generator().manual_seed(3)
    raw = {k: torch.randn(t.shape, generator=g, dtype=t.dtype) for k, t in w.items()}
    ll = ModelParameters([t.clone() for t in raw.values()])
    ll.filter_normalize_(ModelParameters(list(w.values())))
    ours = normalize_direction(raw, w, norm='filter', ignore=None)
    assert len(ll.parameters) == len(ours) == 3
    for t, l in zip(ours.values(), ll.parameters): torch.testing.assert_close(t, l, rtol=RTOL, atol=0)


def test_loss_landscapes_mutates_model_lossviz_does_not(data):
    "The fault named in the issue: loss-landscapes without deepcopy leaves the model at the last point with requires_grad off"
    x, y = data
    m, m2 = cnn(0), cnn(1)
    ref = copy.deepcopy(m)
    loss_landscapes.linear_interpolation(m, m2, Loss(F.cross_entropy, x, y), steps=3)
    assert not same_model(m, ref) and not any(p.requires_grad for p in m.parameters())
    m = copy.deepcopy(ref).train()
    interpolate(m, m2, F.cross_entropy, (x, y), steps=3, verbose=False)
    slice_1d(m, F.cross_entropy, (x, y), random_directions(m, 1)[0], steps=3, bn='recompute', verbose=False)
    assert same_model(m, ref) and all(p.requires_grad for p in m.parameters()) and m.training


def test_vmap_auto_and_loop_agree(data):
    "The vmap strategy (chunked to a tiny budget to force several chunks) and auto give the loop's values"
    x, y = data
    m = cnn(0)
    dl = DataLoader(TensorDataset(x, y), batch_size=20)  # uneven batches: weighting by batch size
    d = random_directions(m, 2, seed=1)
    kw = dict(span=(-1, 1, -0.5, 0.5), steps=(7, 8), metrics=['loss', 'accuracy'], verbose=False)
    loop = slice_2d(m, F.cross_entropy, dl, d, strategy='loop', **kw)
    vm = slice_2d(m, F.cross_entropy, dl, d, strategy='vmap', budget=3 * 2**20, **kw)
    auto = slice_2d(m, F.cross_entropy, dl, d, strategy='auto', **kw)
    assert auto.meta['strategy'] in ('loop', 'vmap')
    for k in ('loss', 'accuracy'):
        torch.testing.assert_close(vm.values[k], loop.values[k], rtol=RTOL, atol=0)
        torch.testing.assert_close(auto.values[k], loop.values[k], rtol=RTOL, atol=0)


def test_probe_times_every_candidate(data):
    x, y = data
    m = cnn(0)
    ev = GridEvaluator(m, F.cross_entropy, (x, y), strategy='auto')
    theta = ev.spec.flatten(dict(m.named_parameters())).detach()
    D = torch.stack([ev.spec.flatten(d) for d in random_directions(m, 2)])
    C = torch.cartesian_prod(torch.linspace(-1, 1, 9, dtype=torch.float64), torch.linspace(-1, 1, 9, dtype=torch.float64))
    v = ev.evaluate(theta, D, C, verbose=False)
    t = ev.timings   # (strategy, memory format, first-layer shortcut): the CNN starts with a convolution, so both shortcut settings
    assert list(t) == [('loop', 'contiguous', True), ('loop', 'contiguous', False), ('loop', 'channels_last', True),
                       ('loop', 'channels_last', False), ('vmap', 'contiguous', True)]
    best = ('loop', 'contiguous', True)
    for cand in t:   # later candidates win only by a margin: 5% for the loop's variants, 10% for vmap
        if t[cand] < (0.9 if cand[0] == 'vmap' else 0.95) * t[best]: best = cand
    assert (ev.chosen, ev.chosen_format, ev.used_first_layer) == best
    ref = torch.stack([ev.point(theta + c @ D) for c in C])
    torch.testing.assert_close(v, ref, rtol=RTOL, atol=0)


def test_bn_recompute_on_first_batches(data):
    "bn='recompute' with bn_batches=1 equals a deep copy whose statistics were reset and recomputed on the first batch"
    x, y = data
    m = cnn(0)
    dl = [(x[:16], y[:16]), (x[16:], y[16:])]
    d = random_directions(m, 1, seed=2)[0]
    s = slice_1d(m, F.cross_entropy, dl, d, span=(-0.5, 0.5), steps=3, bn='recompute', bn_batches=1, verbose=False)
    for a, v in zip(s.xs, s.values['loss']):
        r = copy.deepcopy(m)
        with torch.no_grad():
            for k, p in r.named_parameters(): p.add_(a * d[k])
            r[1].reset_running_stats(); r[1].momentum = None; r.train(); r(x[:16]); r.eval()
            ref = (F.cross_entropy(r(x[:16]), y[:16]) * 16 + F.cross_entropy(r(x[16:]), y[16:]) * 32) / 48
        torch.testing.assert_close(v, ref, rtol=RTOL, atol=0)


def mlp(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4)).double()


def test_plane_through_three_models(data):
    "The plane a + x (b - a) + y (c - a): its corners (1, 0) and (0, 1) are the models b and c (to the rounding of a + (b - a))"
    from lossviz.landscape import direction_between
    from lossviz.core import FunctionalLoss
    x, y = data
    a, b, c = mlp(0), mlp(1), mlp(2)
    s = slice_2d(a, F.cross_entropy, (x, y), (direction_between(a, b), direction_between(a, c)), span=(0, 1, 0, 1), steps=(3, 2),
                 verbose=False)
    for (i, j), m in [((0, 0), a), ((2, 0), b), ((0, 1), c)]:
        torch.testing.assert_close(s.values['loss'][i, j], FunctionalLoss(m, F.cross_entropy, (x, y)).loss(), rtol=RTOL, atol=0)


def test_autocast_bfloat16(data):
    """autocast=torch.bfloat16 runs the forward passes in bfloat16 (8-bit mantissa, relative rounding 2^-8 per operation):
    the losses agree with float32 to 5e-2 relative, a bound set by that precision, not by the grid engine."""
    x, y = data
    m = mlp(0).float()
    d = random_directions(m, 1, seed=0)[0]
    kw = dict(span=(-1, 1), steps=5, strategy='loop', verbose=False)
    ref = slice_1d(m, F.cross_entropy, (x.float(), y), d, **kw).values['loss']
    bf = slice_1d(m, F.cross_entropy, (x.float(), y), d, autocast=torch.bfloat16, **kw).values['loss']
    assert not torch.equal(bf, ref)
    torch.testing.assert_close(bf, ref, rtol=5e-2, atol=0)
