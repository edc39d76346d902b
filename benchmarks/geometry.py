"""Speed and peak memory of lossviz.geometry against its anchors, each case in a fresh process.

1. Uniformity of N unit vectors in 128 dimensions: the tiled `lossviz.geometry.uniformity` (forward, and forward+backward)
   against Wang & Isola's formula `torch.pdist(x).pow(2).mul(-t).exp().mean().log()`, which materialises all N(N-1)/2 pairs.
   The anchor runs at N=16,384 (about 2 GB); at N=65,536 it would need about 8 GiB per pair vector, so there it runs only
   with --full-anchor on a machine with 32+ GB free.
2. Neural-collapse metrics over 100,000 features x 512 dims x 100 classes: one streaming pass into `ClassStats` (batches
   generated on the fly and dropped) against a dense one-shot float64 computation holding all features
   (per-class means, Sigma_W from the centred matrix, torch.linalg.pinv(Sigma_B)).

Peak memory is the process's max RSS (resource.getrusage), reported in total and above the baseline after `import torch`
and the inputs. Run: python benchmarks/geometry.py [--quick] [--full-anchor]
"""
import argparse, json, os, resource, subprocess, sys, time

def _rss_mib(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def _unit_vectors(n, d):
    import torch
    return torch.nn.functional.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(0)), dim=1)

def case_uniformity(n, impl, grad):
    import torch
    from lossviz.geometry import uniformity
    x = _unit_vectors(n, 128).requires_grad_(grad)
    base = _rss_mib(); t0 = time.perf_counter()
    u = uniformity(x) if impl == 'tiled' else torch.pdist(x).pow(2).mul(-2).exp().mean().log()
    if grad: u.backward()
    return dict(value=u.item(), seconds=time.perf_counter() - t0, base_mib=base)

def _nc_batches(n, d, C, bs):
    "The same seeded features, batch by batch: class means with entries N(0, 1/4) plus unit Gaussian noise"
    import torch
    mus = 0.5 * torch.randn(C, d, generator=torch.Generator().manual_seed(0))
    for i, a in enumerate(range(0, n, bs)):
        g = torch.Generator().manual_seed(i + 1)
        y = torch.randint(0, C, (min(bs, n - a),), generator=g)
        yield mus[y] + torch.randn(len(y), d, generator=g), y

def case_nc(impl, n=100_000, d=512, C=100, bs=4096):
    import torch
    from lossviz.geometry import ClassStats, neural_collapse
    base = _rss_mib(); t0 = time.perf_counter()
    if impl == 'streamed':
        st = ClassStats()
        for h, y in _nc_batches(n, d, C, bs): st.update(h, y)
        nc1 = neural_collapse(st).nc1
    else:
        hs, ys = zip(*_nc_batches(n, d, C, bs))
        H, y = torch.cat(hs).double(), torch.cat(ys)
        del hs
        cnt = torch.bincount(y, minlength=C).double()
        mus = torch.zeros(C, d, dtype=torch.float64).index_add_(0, y, H) / cnt[:, None]
        cen = H - mus[y]
        Sw = cen.T @ cen / n
        Mc = mus - H.mean(0)
        Sb = Mc.T @ Mc / C
        nc1 = (torch.trace(Sw @ torch.linalg.pinv(Sb, hermitian=True)) / C).item()
    return dict(value=nc1, seconds=time.perf_counter() - t0, base_mib=base)

CASES = {'uniformity': case_uniformity, 'nc': case_nc}

def run(name, *args):
    "Run one case in a fresh process; returns its record with peak RSS"
    out = subprocess.run([sys.executable, __file__, '--case', name, json.dumps(args)], capture_output=True, text=True)
    if out.returncode: return dict(error=out.stderr.strip().splitlines()[-1] if out.stderr else f"exit {out.returncode}")
    return json.loads(out.stdout.strip().splitlines()[-1])

def fmt(r):
    if 'error' in r: return f"failed: {r['error']}"
    return f"{r['seconds']:7.2f} s   peak RSS {r['peak_mib']:7.0f} MiB (+{r['peak_mib'] - r['base_mib']:6.0f} over baseline)   value {r['value']:.6f}"

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--case'); ap.add_argument('args', nargs='?')
    ap.add_argument('--quick', action='store_true', help='smaller sizes (a smoke run)')
    ap.add_argument('--full-anchor', action='store_true', help='also run the pdist anchor at N=65,536 (needs 32+ GB)')
    ap.add_argument('--only', choices=['uniformity', 'nc'], help='run one of the two benchmarks')
    a = ap.parse_args()
    if a.case:
        import torch; torch.set_num_threads(int(os.environ.get('BENCH_THREADS', '2')))
        r = CASES[a.case](*json.loads(a.args))
        r['peak_mib'] = _rss_mib()
        print(json.dumps(r)); return
    import torch
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs visible, {os.environ.get('BENCH_THREADS', '2')} threads per case\n")
    if a.only != 'nc': bench_uniformity(a)
    if a.only != 'uniformity': bench_nc(a)

def bench_uniformity(a):
    big, small = (8192, 2048) if a.quick else (65_536, 16_384)
    print(f"== uniformity, d=128, float32, CPU ==")
    res = {}
    for n in (small, big):
        for grad in (False, True):
            res['tiled', n, grad] = r = run('uniformity', n, 'tiled', grad)
            print(f"tiled  N={n:6d} {'fwd+bwd' if grad else 'fwd    '}: {fmt(r)}")
            if n == small or a.full_anchor:
                res['pdist', n, grad] = r = run('uniformity', n, 'pdist', grad)
                print(f"pdist  N={n:6d} {'fwd+bwd' if grad else 'fwd    '}: {fmt(r)}")
    for grad in (False, True):
        t, p = res['tiled', small, grad], res['pdist', small, grad]
        if 'error' in t or 'error' in p: continue
        print(f"N={small} {'fwd+bwd' if grad else 'fwd'}: time tiled/pdist = {t['seconds'] / p['seconds']:.2f}, "
              f"extra memory pdist/tiled = {(p['peak_mib'] - p['base_mib']) / max(1, t['peak_mib'] - t['base_mib']):.1f}x, "
              f"|difference| = {abs(t['value'] - p['value']):.2e}")
        if not a.full_anchor:
            scale = (big / small) ** 2
            print(f"  pdist at N={big} would need about {(p['peak_mib'] - p['base_mib']) * scale / 1024:.1f} GiB extra (measured x (N ratio)^2)")

def bench_nc(a):
    n, d, C = (20_000, 256, 50) if a.quick else (100_000, 512, 100)
    print(f"\n== neural collapse, {n:,} features x {d} dims x {C} classes, CPU ==")
    s, dn = run('nc', 'streamed', n, d, C), run('nc', 'dense', n, d, C)
    print(f"streamed (ClassStats, float32): {fmt(s)}")
    print(f"dense one-shot (float64)     : {fmt(dn)}")
    if 'error' not in s and 'error' not in dn:
        print(f"time streamed/dense = {s['seconds'] / dn['seconds']:.2f}, extra memory dense/streamed = "
              f"{(dn['peak_mib'] - dn['base_mib']) / max(1, s['peak_mib'] - s['base_mib']):.1f}x, "
              f"NC1 relative difference = {abs(s['value'] - dn['value']) / dn['value']:.1e}")

if __name__ == '__main__': main()
