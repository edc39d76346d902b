"""The remaining real-user traps: wrapped models (torch.compile, DataParallel, DDP), bf16 weights in the landscape, random layers in
train mode, and the memory estimate before a long call. Every comparison is against the plain float32 model or a copy of it."""
import copy, os, random, socket, warnings
import numpy as np, pytest, torch, torch.nn.functional as F
from torch import nn
import lossviz as lv


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))


def data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 20, generator=g)
    return X, (X[:, :3].sum(1) > 0).long() + (X[:, 3] > 1).long()


def trained(steps=150):
    model, (X, Y) = mlp(), data()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(steps):
        opt.zero_grad(); F.cross_entropy(model(X), Y).backward(); opt.step()
    return model


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def wrappers(model):
    "The wrapped forms users bring; DDP needs a (one-process gloo) group, which the test opens and closes"
    yield "compiled", torch.compile(model)
    yield "DataParallel", nn.DataParallel(model)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try: yield "DDP", nn.parallel.DistributedDataParallel(model)
    finally: torch.distributed.destroy_process_group()


def test_wrapped_models_give_the_plain_models_results():
    model, batch = trained(), data()
    d1, d2 = lv.landscape.random_directions(model, 2, seed=0)
    ev = lv.hessian.eigenvalues(model, F.cross_entropy, batch, k=2, method="jvp", verbose=False)
    plane = lv.landscape.slice_2d(model, F.cross_entropy, batch, (d1, d2), steps=(5, 4), strategy="loop", verbose=False)
    for name, w in wrappers(model):
        wev = lv.hessian.eigenvalues(w, F.cross_entropy, batch, k=2, method="jvp", verbose=False)
        torch.testing.assert_close(wev.values, ev.values, rtol=0, atol=0, msg=name)   # the same computation on the same module
        prefix = dict(compiled="_orig_mod.", DataParallel="module.", DDP="module.")[name]
        eigen_dirs = tuple(wev.as_dicts())
        eigen_plane = lv.landscape.slice_2d(model, F.cross_entropy, batch, eigen_dirs, steps=(5, 4), strategy="loop", verbose=False)
        # plain names, the wrapper's names, the wrapped model's eigenvectors
        for dirs, ref in (((d1, d2), plane), (({prefix + n: t for n, t in d1.items()}, d2), plane), (eigen_dirs, eigen_plane)):
            got = lv.landscape.slice_2d(w, F.cross_entropy, batch, dirs, steps=(5, 4), strategy="loop", verbose=False)
            torch.testing.assert_close(got.values["loss"], ref.values["loss"], rtol=0, atol=0, msg=name)
        wd = lv.landscape.random_direction(w, seed=0)
        assert list(wd) == list(d1) and all(torch.equal(wd[n], d1[n]) for n in d1)
        feats, _ = lv.geometry.features(w, "2", batch, verbose=False)   # layer names of the plain model
        torch.testing.assert_close(feats, model[:3](batch[0]).detach(), rtol=0, atol=0)


def test_bf16_slice_is_not_quantised():
    m32_orig, (X, Y) = trained(), data()
    m16 = copy.deepcopy(m32_orig).to(torch.bfloat16)
    m32 = copy.deepcopy(m16).float()            # the float32 copy of the same (bf16-rounded) weights
    d = lv.landscape.random_direction(m32, seed=0)
    kw = dict(steps=51, verbose=False, strategy="loop")   # the loop evaluates each point as a copy would (vmap batches its bf16 matmuls)
    s16 = lv.landscape.slice_1d(m16, F.cross_entropy, (X.bfloat16(), Y), d, **kw).values["loss"]
    s32 = lv.landscape.slice_1d(m32, F.cross_entropy, (X, Y), d, **kw).values["loss"]
    s16_vmap = lv.landscape.slice_1d(m16, F.cross_entropy, (X.bfloat16(), Y), d, **{**kw, "strategy": "vmap"}).values["loss"]
    sac = lv.landscape.slice_1d(m32, F.cross_entropy, (X, Y), d, autocast=torch.bfloat16, **kw).values["loss"]
    assert len(set(s16.tolist())) >= 45 and len(set(sac.tolist())) >= 45   # reduced in float32: no longer 2-3 distinct values
    copies = []
    for a in torch.linspace(-1, 1, 51).tolist():   # each point by hand: bf16 weights moved in float32, rounded once, float32 loss
        c16, c32 = copy.deepcopy(m16), copy.deepcopy(m32)
        with torch.no_grad():
            for n, p in c16.named_parameters(): p.copy_((p.float() + a * d[n]).to(torch.bfloat16))
            for n, p in c32.named_parameters(): p.add_(a * d[n])
            copies.append((float(F.cross_entropy(c16(X.bfloat16()).float(), Y)), float(F.cross_entropy(c32(X), Y))))
    c16, c32 = torch.tensor(copies, dtype=torch.float64).T
    # the slice's bf16 points can round their last bit differently from the copies' (float32 sums in another order): the loss then
    # moves by about one bf16 rounding of the logits, 0.1% measured; 2^-6 = 1.6% bounds it
    assert ((s16 - c16).abs() <= 2 ** -6 * c16.abs()).all()
    # against float32: the slice adds nothing to the model's own bf16 error (the bf16 copy against the float32 copy, point by point)
    assert (s16 - s32).abs().max() <= 1.25 * (c16 - c32).abs().max()
    # vmap rounds its batched bf16 matmuls otherwise (up to 3.7% from the copies measured), but is no further from float32
    assert (s16_vmap - s32).abs().max() <= 1.25 * (c16 - c32).abs().max()


def bert_with_dropout():
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = transformers.BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64, vocab_size=50,
                                  num_labels=3, max_position_embeddings=16, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    model = transformers.AutoModelForSequenceClassification.from_config(cfg)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (8, 10), generator=g)
    return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 3, (8,), generator=g)}


def rng_states(): return torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()


def test_dropout_in_train_mode_with_a_seed():
    model, batch = bert_with_dropout()
    before = rng_states()
    runs = [lv.hessian.eigenvalues(model, None, batch, k=2, tol=1e-4, train_mode=True, seed=seed, method=method, verbose=False).values
            for seed, method in ((0, "double_backward"), (0, "double_backward"), (0, "jvp"), (1, "double_backward"))]
    after = rng_states()
    assert torch.equal(before[0], after[0]) and before[1] == after[1] and np.array_equal(before[2], after[2])
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)   # the same masks, the same operator: the same numbers
    torch.testing.assert_close(runs[0], runs[2], rtol=1e-4, atol=0)   # two kernels on the same operator, each converged to 1e-4
    assert not torch.allclose(runs[0], runs[3], rtol=1e-3)   # another seed draws other masks: another operator
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        lv.hessian.Hessian(model, None, batch, train_mode=True, verbose=False)
    assert any("pass `seed=`" in str(x.message) for x in w)
    eval_mode = lv.hessian.eigenvalues(model, None, batch, k=1, verbose=False)   # eval mode: no dropout, no warning, no seed needed
    assert eval_mode.converged.all()


def test_memory_estimate_before_a_long_call():
    model, batch = mlp(), data()
    H = lv.hessian.Hessian(model, F.cross_entropy, batch, budget=1 << 20, verbose=False)   # P = 1,891 float32: 7.6 KB a vector
    with pytest.raises(MemoryError, match="lower `ncv`"): H.eigenvalues(k=1, ncv=200)
    tight, free = H.density(n_iter=80, n_runs=8), lv.hessian.Hessian(model, F.cross_entropy, batch, verbose=False).density(n_iter=80, n_runs=8)
    assert tight.meta['runs_together'] == 1 < free.meta['runs_together'] == 8 and tight.meta['memory_estimate'] <= 1 << 20, tight.meta
    # one run at a time, each with its whole basis: the same Rademacher probes and the same recurrences, so the same quadrature up to
    # float32 rounding of the products (the nodes lie in [-1, 1] here; 1e-5 is about 100 float32 epsilons)
    torch.testing.assert_close(tight.nodes, free.nodes, rtol=0, atol=1e-5)
    with pytest.raises(MemoryError, match="raise `budget`"):
        lv.hessian.Hessian(model, F.cross_entropy, batch, budget=80_000, verbose=False).density()   # not even 3 vectors
    assert H.eigenvalues(k=1).converged.all()   # the default basis of 40 vectors fits
