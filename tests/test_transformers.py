"""lossviz on transformers models as users bring them: HF GPT-2 and BERT built from configs (random weights, nothing downloaded),
their default SDPA attention, dict batches from a real DataLoader, the model's own loss, `ModelOutput`s with caches, bf16 weights.

References: ARPACK (`scipy.sparse.linalg.eigsh`) on `torch.autograd` double-backward products of an eager-attention copy; slices
against copy-and-evaluate; the loss of the concatenated data for both weightings.
"""
import copy, warnings
import numpy as np, pytest, torch, torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
import lossviz as lv

V, T = 64, 12


def gpt2(attn=None, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=V, n_positions=32, bos_token_id=0, eos_token_id=0,
                                  resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    kw = {} if attn is None else dict(attn_implementation=attn)
    return transformers.AutoModelForCausalLM.from_config(cfg, **kw).eval()


def bert(attn=None, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64, vocab_size=V,
                                  num_labels=3, max_position_embeddings=32)
    kw = {} if attn is None else dict(attn_implementation=attn)
    return transformers.AutoModelForSequenceClassification.from_config(cfg, **kw).eval()


def eager_copy(model, make):
    "The same weights with eager (written-out) attention"
    ref = make(attn="eager")
    ref.load_state_dict(model.state_dict())
    assert ref.config._attn_implementation == "eager"
    return ref


class Tokenised(Dataset):
    "Items are dicts, as a tokenised HF dataset yields; labels are -100 where the sequence is padded"
    def __init__(self, n=12, seq_labels=False, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, V, (n, T), generator=g)
        lengths = torch.randint(T // 2, T + 1, (n,), generator=g)
        self.mask = (torch.arange(T)[None] < lengths[:, None]).long()
        self.labels = torch.randint(0, 3, (n,), generator=g) if seq_labels else torch.where(self.mask.bool(), self.ids, -100)
    def __len__(self): return len(self.ids)
    def __getitem__(self, i): return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


def lm_loader(**kw): return DataLoader(Tokenised(**kw), batch_size=4)
def cls_loader(): return DataLoader(Tokenised(seq_labels=True), batch_size=4)


def snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()],
            [p.requires_grad for p in model.parameters()], model.config._attn_implementation)


def assert_unchanged(model, snap):
    sd, flags, rg, attn = snap
    now = model.state_dict()
    assert all(torch.equal(now[k], v) for k, v in sd.items())
    assert [m.training for m in model.modules()] == flags
    assert [p.requires_grad for p in model.parameters()] == rg
    assert model.config._attn_implementation == attn


def arpack_top(model, loss_of, k):
    "Top-k eigenvalues by ARPACK on torch.autograd double-backward products (float64 accumulation in ARPACK)"
    from scipy.sparse.linalg import LinearOperator, eigsh
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss_of(model), params, create_graph=True)
    P = sum(p.numel() for p in params)
    def mv(v):
        vs = torch.as_tensor(np.asarray(v, dtype=np.float32)).reshape(-1).split([p.numel() for p in params])
        hv = torch.autograd.grad(grads, params, [u.view_as(p) for u, p in zip(vs, params)], retain_graph=True)
        return torch.cat([h.reshape(-1) for h in hv]).double().numpy()
    vals = eigsh(LinearOperator((P, P), matvec=mv, dtype=np.float64), k=k, which="LA", tol=1e-6, return_eigenvectors=False)
    return np.sort(vals)[::-1]


def own_loss_of(loader):
    "Full-data loss with the model's own loss, weighted by sequences (the default), by plain autograd"
    def f(model):
        tot, n = 0, 0
        for b in loader:
            tot = tot + model(**b).loss * len(b["input_ids"]); n += len(b["input_ids"])
        return tot / n
    return f


# Lanczos stops at a relative Ritz residual `tol`, which bounds each eigenvalue's relative error by `tol`; ARPACK's by 1e-6; both
# apply float32 products whose rounding (about 1e-6 relative over these small sums) differs between the two attention kernels.
# 1e-4 relative covers the sum with a margin of 10.
TOL, RTOL = 1e-5, 1e-4


@pytest.mark.parametrize("method", ["double_backward", "jvp"])
def test_gpt2_sdpa_eigenvalues_match_eager_and_arpack(method):
    model, loader = gpt2(), lm_loader()
    assert model.config._attn_implementation == "sdpa"
    snap = snapshot(model)
    r = lv.hessian.eigenvalues(model, None, loader, k=2, tol=TOL, method=method, verbose=False)
    assert_unchanged(model, snap)
    assert r.meta["attention"] == "math" and r.meta["kernel"] == method and r.converged.all()
    ref_model = eager_copy(model, gpt2)
    eager = lv.hessian.eigenvalues(ref_model, None, loader, k=2, tol=TOL, method=method, verbose=False)
    assert "attention" not in eager.meta
    np.testing.assert_allclose(r.values.numpy(), eager.values.numpy(), rtol=RTOL)
    np.testing.assert_allclose(r.values.numpy(), arpack_top(ref_model, own_loss_of(loader), 2), rtol=RTOL)


def test_bert_sdpa_hessian_ggn_and_trace():
    model, loader = bert(), cls_loader()
    ce = lambda out, y: F.cross_entropy(out.logits, y)
    snap = snapshot(model)
    ref_model = eager_copy(model, bert)
    eager = {}
    for curvature in ("hessian", "ggn"):
        r = lv.hessian.eigenvalues(model, ce, loader, k=2, tol=TOL, curvature=curvature, verbose=False)
        eager[curvature] = lv.hessian.eigenvalues(ref_model, ce, loader, k=2, tol=TOL, curvature=curvature, verbose=False).values
        assert r.meta["attention"] == "math"
        np.testing.assert_allclose(r.values.numpy(), eager[curvature].numpy(), rtol=RTOL)
    own = lv.hessian.eigenvalues(model, None, loader, k=2, tol=TOL, verbose=False)   # BERT's own loss is the same cross-entropy
    np.testing.assert_allclose(own.values.numpy(), eager["hessian"].numpy(), rtol=RTOL)
    tr = lv.hessian.trace(model, ce, loader, tol=None, max_matvecs=64, verbose=False)
    tre = lv.hessian.trace(ref_model, ce, loader, tol=None, max_matvecs=64, verbose=False)   # same seed, same probes
    assert tr.meta["attention"] == "math" and abs(tr.value - tre.value) <= 1e-4 * abs(tre.value) + 1e-5
    assert_unchanged(model, snap)


def test_sdpa_module_all_kernels():
    "A module that calls F.scaled_dot_product_attention itself, against the same attention written out"
    class Attn(torch.nn.Module):
        def __init__(self, naive=False):
            super().__init__(); self.qkv, self.out, self.naive = torch.nn.Linear(8, 24), torch.nn.Linear(8, 3), naive
        def forward(self, x):
            q, k, v = self.qkv(x)[:, None].chunk(3, -1)
            if self.naive:
                s = (q @ k.transpose(-1, -2)) / 8 ** 0.5
                a = torch.softmax(s.masked_fill(torch.ones_like(s, dtype=torch.bool).triu(1), float("-inf")), -1) @ v
            else: a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.out(a[:, 0].mean(1))
    torch.manual_seed(0)
    fused, naive = Attn(), Attn(naive=True)
    naive.load_state_dict(fused.state_dict())
    X, Y = torch.randn(16, 5, 8), torch.randint(0, 3, (16,))
    Vs = torch.randn(3, sum(p.numel() for p in fused.parameters()))
    for curvature, methods in (("hessian", ("jvp", "double_backward", "linearize", "vjp")), ("ggn", ("jvp", "double_backward"))):
        for method in methods:
            H = lv.hessian.Hessian(fused, F.cross_entropy, (X, Y), curvature=curvature, method=method, verbose=False)
            ref = lv.hessian.Hessian(naive, F.cross_entropy, (X, Y), curvature=curvature, method=method, verbose=False)
            assert H.meta == {"attention": "math"} and ref.meta == {}
            torch.testing.assert_close(H.matvec(Vs), ref.matvec(Vs), rtol=1e-4, atol=1e-5)


def test_slices_against_copy_and_evaluate():
    for make, loader, loss_fn in ((gpt2, lm_loader(), None), (bert, cls_loader(), lambda o, y: F.cross_entropy(o.logits, y))):
        model = make()
        snap = snapshot(model)
        d1, d2 = lv.landscape.random_direction(model, seed=0), lv.landscape.random_direction(model, seed=1)
        grids = [lv.landscape.slice_2d(model, loss_fn, loader, (d1, d2), span=(-0.5, 0.5, -0.5, 0.5), steps=(3, 2), strategy=s,
                                       metrics=["loss", "accuracy"], verbose=False) for s in ("loop", "vmap")]
        assert_unchanged(model, snap)
        for i, a in enumerate(grids[0].xs.tolist()):
            for j, b in enumerate(grids[0].ys.tolist()):
                moved = copy.deepcopy(model)
                with torch.no_grad():
                    for n, p in moved.named_parameters(): p.add_(a * d1[n] + b * d2[n])
                    tot, hits, cnt, n_seq = 0.0, 0, 0, 0
                    for batch in loader:
                        out = moved(**batch)
                        y = batch["labels"]
                        loss = out.loss if loss_fn is None else loss_fn(out, y)
                        tot += float(loss) * len(y); n_seq += len(y)
                        keep = y != -100
                        hits_b = ((out.logits.argmax(-1) == y) & keep).sum(); cnt_b = keep.sum()
                        hits, cnt = hits + float(hits_b / cnt_b) * len(y), cnt + len(y)   # accuracy per batch, weighted by sequences
                for g in grids:   # float32 forward passes in a different order of operations: 1e-5 relative
                    assert abs(float(g.values["loss"][i, j]) - tot / n_seq) <= 1e-5 * tot / n_seq
                    assert abs(float(g.values["accuracy"][i, j]) - hits / cnt) <= 1e-6


def test_token_weighting_equals_the_token_mean_of_the_data():
    model, data = gpt2(), Tokenised()
    loader = DataLoader(data, batch_size=4)
    shifted = lambda b: int((b["labels"][:, 1:] != -100).sum())   # GPT-2 shifts its labels: these are the tokens it scores
    with torch.no_grad(): whole = model(input_ids=data.ids, attention_mask=data.mask, labels=data.labels).loss
    fl = lv.core.FunctionalLoss(model, None, lv.core.Batches(loader, weighting=shifted))
    torch.testing.assert_close(fl.loss(), whole, rtol=1e-6, atol=0)   # float32 means of the same terms in another order
    by_sequence = lv.core.FunctionalLoss(model, None, loader).loss()
    assert abs(float(by_sequence - whole)) > 1e-4   # the default weighs batches by sequences: another quantity with uneven padding
    ev = lv.landscape.GridEvaluator(model, None, lv.core.Batches(loader, weighting=shifted))
    torch.testing.assert_close(ev.point(ev.spec.flatten({n: p.detach() for n, p in model.named_parameters()}))[0].float(), whole, rtol=1e-6, atol=0)


def test_user_exception_propagates():
    "A loss that raises once must not be taken for a kernel limitation: no fallback, no warning, the user's error"
    model, loader = gpt2(), lm_loader()
    calls = {"n": 0}   # calls 1-3: the loss check on the three batches; call 4: the first product, where the kernel is chosen
    def flaky(out, y):
        calls["n"] += 1
        if calls["n"] == 4: raise RuntimeError("transient failure in the user's loss")
        return F.cross_entropy(out.logits[:, :-1].flatten(0, 1), y[:, 1:].flatten())
    snap = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeError, match="transient failure"):
            lv.hessian.eigenvalues(model, flaky, loader, k=1, verbose=False)
    assert_unchanged(model, snap)


def test_bf16_model():
    "bf16 weights: vectors and sums in float32; results against the float32 copy of the same (bf16-rounded) weights"
    model = gpt2()
    m16 = copy.deepcopy(model).to(torch.bfloat16)
    m32 = copy.deepcopy(m16).float()
    loader = lm_loader()
    r16 = lv.hessian.eigenvalues(m16, None, loader, k=1, tol=1e-3, verbose=False)
    r32 = lv.hessian.eigenvalues(m32, None, loader, k=1, tol=1e-3, verbose=False)
    assert r16.vectors.dtype == torch.float32
    # bf16 rounds every operation to 2^-9 = 0.2% relative, and a product goes through about 20 rounded layers (forward, backward and
    # their derivatives) whose errors partly cancel: the top eigenvalue differed by 0.4% from the float32 copy's here. 2% bounds it
    # with a margin of 5, and is 20x the float32-vs-float32 agreement of the other tests.
    assert abs(float(r16.values[0] - r32.values[0])) <= 0.02 * abs(float(r32.values[0]))
    t16 = lv.hessian.trace(m16, None, loader, tol=None, max_matvecs=48, verbose=False)   # float32 QR: no bf16 geqrf
    t32 = lv.hessian.trace(m32, None, loader, tol=None, max_matvecs=48, verbose=False)
    # the same seed draws the same probes, so each sample z^T H z differs only by bf16 rounding: 0.9% of the largest sample here,
    # bounded by 3% (the trace itself is a sum with cancellations, so its relative error is no meaningful bound)
    assert float((t16.samples - t32.samples).abs().max()) <= 0.03 * float(t32.samples.abs().max())
    assert abs(t16.exact_part - t32.exact_part) <= 0.03 * abs(t32.exact_part)
    d16 = lv.hessian.density(m16, None, loader, n_iter=10, n_runs=2, verbose=False)
    assert torch.isfinite(d16.nodes).all()


def test_guard_in_train_mode_with_dropout():
    model = gpt2(dropout=0.1).train()
    snap = snapshot(model)
    lv.hessian.eigenvalues(model, None, lm_loader(), k=1, tol=1e-2, train_mode=True, seed=0, max_matvecs=30, verbose=False)
    assert_unchanged(model, snap)
    d = lv.landscape.random_direction(model, seed=0)
    lv.landscape.slice_1d(model, None, lm_loader(), d, steps=3, verbose=False)
    assert_unchanged(model, snap)


def test_token_ece_on_gpt2_logits():
    model, data = gpt2(), Tokenised()
    with torch.no_grad(): logits = model(input_ids=data.ids, attention_mask=data.mask).logits
    z, y = logits[:, :-1], data.labels[:, 1:]
    keep = y != -100
    got = lv.calibration.ece(z, y, logits=True)
    torch.testing.assert_close(got, lv.calibration.ece(z[keep], y[keep], logits=True), rtol=0, atol=0)


def test_interpolation_curve_and_barrier_with_the_models_own_loss():
    a, b, loader = gpt2(seed=0), gpt2(seed=1), lm_loader()
    snaps = snapshot(a), snapshot(b)
    path = lv.landscape.interpolate(a, b, None, loader, steps=5, verbose=False)
    ends = [float(own_loss_of(loader)(m).detach()) for m in (a, b)]
    # float32 forward passes of the same weights (alpha 0 and 1 are exact combinations): 1e-6 relative
    np.testing.assert_allclose(path.values["loss"][[0, -1]].numpy(), ends, rtol=1e-6)
    barrier = lv.landscape.loss_barrier(path)
    assert np.isfinite(barrier.value) and (barrier.start, barrier.end) == tuple(float(v) for v in path.values["loss"][[0, -1]])
    curve = lv.landscape.fit_curve(a, b, None, loader, epochs=1, verbose=False)
    along = curve.evaluate(a, None, loader, steps=3, verbose=False)
    np.testing.assert_allclose(along.values["loss"][[0, -1]].numpy(), ends, rtol=1e-6)
    for m, s in zip((a, b), snaps): assert_unchanged(m, s)
