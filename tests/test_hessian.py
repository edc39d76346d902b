"""lossviz.hessian against reference libraries: PyHessian, hessian-eigenthings, scipy ARPACK.

The dense-Hessian checks live in nbs/03_hessian.ipynb; these tests need the reference libraries. PyHessian works in
float32 only (it draws float32 probe vectors), so comparisons with it use float32 tolerances, stated per test.
"""
import copy
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lossviz.hessian import Hessian

torch.set_num_threads(1)


def small_cnn(dtype=torch.float32):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(8 * 16, 10)).to(dtype)
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.1, 0.1); net[1].running_var.uniform_(0.8, 1.2)
    return net


def digits(n=128, dtype=torch.float32):
    from sklearn.datasets import load_digits
    d = load_digits()
    return torch.tensor(d.images[:n] / 16, dtype=dtype)[:, None], torch.tensor(d.target[:n])


@pytest.fixture(scope='module')
def problem():
    X, Y = digits()
    return small_cnn().eval(), X, Y


@pytest.fixture(scope='module')
def pyhessian_obj(problem):
    from pyhessian import hessian
    model, X, Y = problem
    return hessian(copy.deepcopy(model), F.cross_entropy, data=(X, Y), cuda=False)   # PyHessian calls model.eval(): give it a copy


def rel(a, b): return float((a - b).norm() / b.norm())


def test_matvec_matches_pyhessian(problem, pyhessian_obj):
    "Same product as PyHessian's double backward; float32 rounding of two different derivative orders: 1e-5 relative"
    from pyhessian.utils import hessian_vector_product
    model, X, Y = problem
    H = Hessian(model, F.cross_entropy, (X, Y), method='jvp', verbose=False)
    torch.manual_seed(1)
    V = torch.randn(3, H.P)
    ph = torch.stack([torch.cat([h.reshape(-1) for h in hessian_vector_product(
        pyhessian_obj.gradsH, pyhessian_obj.params, list(H.spec.unflatten(v).values()))]) for v in V])
    assert rel(H.matvec(V), ph) < 1e-5


def test_top_eigenvalues_match_pyhessian_and_arpack(problem, pyhessian_obj):
    """Top-2 against PyHessian's power iteration (tol 1e-6 on the relative change of the estimate, so 1e-3 relative
    leaves room for its slow convergence on close eigenvalues) and against ARPACK on our own products (1e-4, the tol asked)"""
    from scipy.sparse.linalg import LinearOperator, eigsh
    model, X, Y = problem
    H = Hessian(model, F.cross_entropy, (X, Y), verbose=False)
    ours = H.eigenvalues(k=2, tol=1e-5)
    assert ours.converged.all()
    torch.manual_seed(0)
    ph, _ = pyhessian_obj.eigenvalues(maxIter=1000, tol=1e-6, top_n=2)
    np.testing.assert_allclose(ours.values.numpy(), ph, rtol=1e-3)
    op = LinearOperator((H.P, H.P), dtype=np.float64,
                        matvec=lambda x: H.matvec(torch.as_tensor(np.asarray(x).reshape(-1), dtype=torch.float32)).double().numpy())
    ref = np.sort(eigsh(op, k=2, which='LA', tol=1e-6, v0=np.ones(H.P))[0])[::-1]
    np.testing.assert_allclose(ours.values.numpy(), ref, rtol=1e-4)


HARD_SPECTRA = [(p, ncv, k) for p in (4, 8, 16) for ncv, k in ((12, 3), (16, 3), (40, 3), (24, 10), (40, 10))]


@pytest.mark.parametrize('power,ncv,k', HARD_SPECTRA)
def test_restarted_lanczos_needs_no_more_products_than_arpack(power, ncv, k):
    """Clustered top eigenvalues (the diagonal linspace(0, 1, 4000) ** power: relative gaps of about power / 4000) with small
    bases, so that thick restarts and full reorthogonalisations alternate for hundreds of steps. lossviz's Lanczos, float64,
    tol 1e-8, against ARPACK's eigsh with the same basis size and tol: the same values (to 1e-8 of the largest, the tol asked),
    true residuals within 1.1 tol (the reported ones are exact up to the allowed loss of orthogonality, at most tol / 10 of
    the wanted eigenvalue) and at most 1.25 times ARPACK's products (measured: 0.69 to 1.11 times, 3326 against 3694 in
    all). Before the restarted vectors' inner products were measured and the reorthogonalisation coefficients kept in T,
    13 of these 15 failed: up to 5000 products without converging, or pairs reported converged with true residuals up to
    58000 tol and values off by up to 2.5e-5."""
    from scipy.sparse.linalg import LinearOperator, eigsh
    from lossviz.hessian import lanczos
    P = 4000
    d = torch.linspace(0, 1, P, dtype=torch.float64) ** power
    vals, vecs, res, conv, n = lanczos(lambda V, out=None: torch.mul(V, d, out=out), P, torch.float64, 'cpu', k=k, tol=1e-8,
                                       ncv=ncv, max_matvecs=5000, verbose=False)
    count = [0]
    def mv(x):
        count[0] += 1
        return d.numpy() * np.asarray(x).reshape(-1)
    ref = np.sort(eigsh(LinearOperator((P, P), matvec=mv, dtype=np.float64), k=k, which='LA', ncv=ncv, tol=1e-8, v0=np.ones(P))[0])[::-1]
    assert conv.all()
    np.testing.assert_allclose(vals.numpy(), ref, rtol=0, atol=1e-8)
    np.testing.assert_allclose(vals.numpy(), d.flip(0)[:k].numpy(), rtol=0, atol=1e-8)
    assert ((vecs * d - vals[:, None] * vecs).norm(dim=1) <= 1.1e-8 * vals).all()
    assert n <= 1.25 * count[0], (n, count[0])


def test_trace_agrees_with_pyhessian(problem, pyhessian_obj):
    "Two independent unbiased estimates of the same trace: within 3 combined standard errors"
    model, X, Y = problem
    H = Hessian(model, F.cross_entropy, (X, Y), method='jvp', verbose=False)
    ours = H.trace(tol=0.02, seed=0)
    torch.manual_seed(0)
    s = np.array(pyhessian_obj.trace(maxIter=200, tol=0.0))
    se = s.std(ddof=1) / np.sqrt(len(s))
    assert abs(ours.value - s.mean()) <= 3 * np.hypot(ours.stderr, se)


def test_density_agrees_with_pyhessian(problem, pyhessian_obj, monkeypatch):
    """PyHessian's density needs the removed torch.eig: shimmed from torch.linalg.eig for this test only. The first moments
    (mean eigenvalue) agree within 3 combined standard errors; the largest nodes both converge to the top eigenvalue (1e-3)"""
    def eig(a, eigenvectors=False):
        w, v = torch.linalg.eig(a)
        return torch.stack([w.real, w.imag], 1), v.real
    monkeypatch.setattr(torch, 'eig', eig, raising=False)
    model, X, Y = problem
    H = Hessian(model, F.cross_entropy, (X, Y), method='jvp', verbose=False)
    ours = H.density(n_iter=30, n_runs=6, seed=0)
    torch.manual_seed(0)
    nodes, weights = pyhessian_obj.density(iter=30, n_v=6)
    per_run = np.array([np.dot(a, b) for a, b in zip(nodes, weights)])
    m, se = ours.moment(1)
    assert abs(m - per_run.mean()) <= 3 * np.hypot(se, per_run.std(ddof=1) / np.sqrt(len(per_run)))
    top = float(H.eigenvalues(k=1, tol=1e-6).values[0])
    assert abs(float(ours.nodes.max()) - top) <= 1e-3 * top
    assert abs(max(map(max, nodes)) - top) <= 1e-3 * top


def test_model_left_as_it_was_unlike_pyhessian(problem):
    "PyHessian switches the user's model to eval mode; lossviz leaves flags and state untouched"
    from pyhessian import hessian
    model, X, Y = problem
    net = copy.deepcopy(model).train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    Hessian(net, F.cross_entropy, (X, Y), verbose=False).eigenvalues(k=1)
    assert net.training and all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    hessian(net, F.cross_entropy, data=(X, Y), cuda=False)
    assert not net.training


def test_hessian_eigenthings_lanczos_and_batch_weighting():
    """hessian-eigenthings with a generous max_iter and reorthogonalisation agrees with our top-3 (float64, 1e-8 relative;
    without reorthogonalisation, its default above 50 steps, it returns ghost copies of the top eigenvalue). On uneven batches its
    plain mean of batch Hessians differs from the full-data Hessian, while ours equals it (1e-10 relative)"""
    he = pytest.importorskip('hessian_eigenthings')
    X, Y = digits(50, torch.float64)
    model = small_cnn(torch.float64).eval()
    H = Hessian(model, F.cross_entropy, (X, Y), method='jvp', verbose=False)
    ours = H.eigenvalues(k=3, tol=1e-10)
    op = he.HessianOperator(model, [(X, Y)], he.supervised_loss(F.cross_entropy))
    theirs = np.sort(he.lanczos(op, k=3, max_iter=120, reorthogonalize=True, which='LA', seed=0).eigenvalues.numpy())[::-1]
    np.testing.assert_allclose(ours.values.numpy(), theirs, rtol=1e-8)

    batches = [(X[:5], Y[:5]), (X[5:], Y[5:])]
    v = torch.randn(H.P, dtype=torch.float64)
    full = H.matvec(v)
    assert rel(Hessian(model, F.cross_entropy, batches, method='jvp', verbose=False).matvec(v), full) < 1e-10
    plain_mean = he.HessianOperator(model, batches, he.supervised_loss(F.cross_entropy)).matvec(v)
    assert rel(plain_mean, full) > 1e-3
