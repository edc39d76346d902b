"Checks of lossviz.geometry that need subprocesses (peak memory) or a GPU; the numerical tests live in nbs/06_geometry.ipynb"
import json, subprocess, sys, textwrap
import pytest, torch
import torch.nn.functional as F
from lossviz.geometry import uniformity, neural_collapse, ClassStats

_PEAK = textwrap.dedent("""
    import json, resource, sys, torch
    torch.set_num_threads(2)
    mode, n, d = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    x = torch.nn.functional.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(0)), dim=1).requires_grad_()
    from lossviz.geometry import uniformity
    f = (lambda z: uniformity(z)) if mode == 'tiled' else (lambda z: torch.pdist(z).pow(2).mul(-2).exp().mean().log())
    f(x[:64].detach().clone().requires_grad_()).backward()   # warm-up: one-time BLAS and autograd-engine allocations
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    u = f(x)
    u.backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(dict(value=u.item(), extra_mib=(peak - base) / 1024)))
""")

def _peak(mode, n, d):
    "Uniformity (forward and backward) in a fresh process: its value and the growth of max RSS over the baseline, in MiB"
    out = subprocess.run([sys.executable, '-c', _PEAK, mode, str(n), str(d)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])

def test_uniformity_memory_is_bounded():
    "Tiled uniformity with its backward needs O(tile^2) memory (lossviz.kernels' default tiles: 4 MiB on CPU); the pdist formula needs O(N^2)"
    n, d = 12_288, 32
    tiled, dense = _peak('tiled', n, d), _peak('pdist', n, d)
    assert abs(tiled['value'] - dense['value']) < 1e-4          # float32 sums over 7.5e7 pairs
    pair_bytes = n * (n - 1) / 2 * 4 / 2**20                     # one float32 pdist vector: 288 MiB
    assert dense['extra_mib'] > 2 * pair_bytes                   # the formula's temporaries
    assert tiled['extra_mib'] < 32 + 16                          # a few 4 MiB tiles in flight, x's gradient (1.5 MiB) and allocator slack
    assert tiled['extra_mib'] < dense['extra_mib'] / 10

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    "Uniformity (value and gradient) and NC metrics on CUDA equal the CPU numbers; everything stays on the device"
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(3000, 64, dtype=torch.float64, generator=g), dim=1)
    xc, xg = x.clone().requires_grad_(), x.cuda().requires_grad_()
    uc, ug = uniformity(xc, tile=700), uniformity(xg, tile=700)
    assert ug.device.type == 'cuda'
    uc.backward(); ug.backward()
    torch.testing.assert_close(ug.cpu(), uc, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(xg.grad.cpu(), xc.grad, rtol=1e-9, atol=1e-12)
    y = torch.randint(0, 10, (3000,), generator=g)
    W = torch.randn(10, 64, dtype=torch.float64, generator=g)
    a, b = neural_collapse(x, y, classifier=W), neural_collapse(x.cuda(), y.cuda(), classifier=W.cuda())
    assert b.means.device.type == 'cuda'
    for k, v in a.to_dict().items():
        if isinstance(v, float): assert abs(getattr(b, k) - v) <= 1e-9 * max(1, abs(v)), k
    s = ClassStats().update(x.cuda(), y.cuda())
    torch.testing.assert_close(s.within_cov.cpu(), a.within_cov, rtol=1e-10, atol=1e-12)
