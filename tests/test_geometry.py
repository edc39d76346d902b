"Checks of lossviz.geometry that need subprocesses (peak memory) or a GPU; the numerical tests live in nbs/06_geometry.ipynb"
import json, subprocess, sys, textwrap
import pytest, torch
import torch.nn.functional as F
from lossviz.geometry import uniformity, neural_collapse, ClassStats

_PEAK = textwrap.dedent("""
    import json, sys, torch
    from lossviz.core import resident_memory   # VmHWM in bytes: this process's own peak (ru_maxrss would start at the pytest worker's)
    torch.set_num_threads(2)
    mode, n, d = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    x = torch.nn.functional.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(0)), dim=1).requires_grad_()
    from lossviz.geometry import uniformity
    f = (lambda z: uniformity(z)) if mode == 'tiled' else (lambda z: torch.pdist(z).pow(2).mul(-2).exp().mean().log())
    f(x[:64].detach().clone().requires_grad_()).backward()   # warm-up: one-time BLAS and autograd-engine allocations
    base = resident_memory()[1] / 1024
    u = f(x)
    u.backward()
    peak = resident_memory()[1] / 1024
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

def _hf_models():
    "A GPT-2 language model and a BERT classifier (3 classes) built from configs with random weights, in training mode as `from_config` leaves them"
    tr = pytest.importorskip("transformers")
    torch.manual_seed(0)
    gpt = tr.GPT2LMHeadModel(tr.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50, n_positions=32, bos_token_id=0, eos_token_id=0))
    bert = tr.BertForSequenceClassification(tr.BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                                                          intermediate_size=64, vocab_size=50, num_labels=3))
    return gpt, bert

class _TokenData(torch.utils.data.Dataset):
    "Tokenised sequences, each item a dict (the DataLoader's default collate stacks them into a dict batch)"
    def __init__(self, ids, mask, labels): self.ids, self.mask, self.labels = ids, mask, labels
    def __len__(self): return len(self.ids)
    def __getitem__(self, i): return {'input_ids': self.ids[i], 'attention_mask': self.mask[i], 'labels': self.labels[i]}

def _sequences(left=False):
    "11 sequences of up to 7 tokens, right- (or left-) padded, with causal-LM labels (-100 at padding and at two further tokens) and sequence labels"
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([7, 4, 2, 7, 5, 1, 6, 3, 7, 4, 5])
    pos = torch.arange(7)
    mask = ((pos >= 7 - lengths[:, None]) if left else (pos < lengths[:, None])).long()
    ids = torch.randint(1, 50, (11, 7), generator=g) * mask
    lm = torch.where(mask.bool(), ids, -100)
    lm[0, 3] = lm[4, 0] = -100
    return ids, mask, lm, torch.arange(11) % 3

def _state(model):
    "Everything the guard must leave as it was"
    return ({k: v.clone() for k, v in model.state_dict().items()}, [(n, m.training) for n, m in model.named_modules()],
            model.config._attn_implementation, [list(m._forward_hooks) for m in model.modules()])

def _same_state(model, before):
    sd, flags, attn, hooks = _state(model)
    assert sd.keys() == before[0].keys() and all(torch.equal(sd[k], before[0][k]) for k in sd)
    assert flags == before[1] and attn == before[2] and hooks == before[3]

def _ref(model, ids, mask, **kw):
    "The model's own hidden states and outputs, batch by batch as the loader gives them, in eval mode (as `features` runs)"
    from lossviz.core import eval_semantics
    outs = []
    with eval_semantics(model), torch.no_grad():
        for a in range(0, len(ids), 4): outs.append(model(input_ids=ids[a:a + 4], attention_mask=mask[a:a + 4], output_hidden_states=True, **kw))
    return outs

def test_transformers_features_tokens_and_guard():
    "Per-token and pooled features of HF GPT-2 and BERT over a DataLoader of dict items, their labels and logits, and the state guard"
    from lossviz.geometry import features, class_stats, ncc_agreement
    from lossviz.core import Batches
    gpt, bert = _hf_models()
    gpt.transformer.h[1].eval()                                  # mixed training flags: each must come back as it was
    gpt.lm_head.weight.grad = torch.ones_like(gpt.lm_head.weight)
    ids, mask, lm, cls = _sequences()
    lm_loader = torch.utils.data.DataLoader(_TokenData(ids, mask, lm), batch_size=4)   # batches of 4, 4 and 3
    cls_loader = torch.utils.data.DataLoader(_TokenData(ids, mask, cls), batch_size=4)
    ref, bref = _ref(gpt, ids, mask), _ref(bert, ids, mask)    # first: output_hidden_states makes transformers install hooks of its own
    g0, b0 = _state(gpt), _state(bert)
    grad0 = gpt.lm_head.weight.grad.clone()

    # GPT-2: one row per token with attention_mask 1 and a label other than -100; labels and logits at the same positions
    keep = lm != -100
    f, y, o = features(gpt, ['transformer.h.0', 'transformer.h.1.attn', 'transformer'], lm_loader, pool='tokens', logits=True, verbose=False)
    hs = lambda i: torch.cat([r.hidden_states[i] for r in ref])
    assert torch.equal(f['transformer.h.0'], hs(1)[keep])
    assert torch.equal(f['transformer'], hs(-1)[keep])      # the ModelOutput's last_hidden_state
    assert f['transformer.h.1.attn'].shape == (int(keep.sum()), 32)   # the first tensor of (output, weights)
    assert torch.equal(y, lm[keep]) and torch.equal(o, torch.cat([r.logits for r in ref])[keep])
    # the ignore_index of a Batches passed as data is the one used
    f_all, y_all = features(gpt, 'transformer.h.0', Batches(lm_loader, ignore_index=-1), pool='tokens', verbose=False)
    assert torch.equal(f_all, hs(1)[mask.bool()]) and torch.equal(y_all, lm[mask.bool()])
    # per-sequence pools
    fm, ym = features(gpt, 'transformer', lm_loader, pool='mean_tokens', verbose=False)
    w = mask[..., None].float()
    torch.testing.assert_close(fm, (hs(-1) * w).sum(1) / w.sum(1), rtol=1e-6, atol=1e-6)
    assert torch.equal(ym, lm)                                # sequence pools leave the labels as they are
    fl, _ = features(gpt, 'transformer.h.0', lm_loader, pool='last_token', verbose=False)
    assert torch.equal(fl, hs(1)[torch.arange(11), mask.sum(1) - 1])

    # BERT: sequence labels repeated per token, logits likewise; the pooler output by name
    bh = torch.cat([r.hidden_states[-1] for r in bref]); blog = torch.cat([r.logits for r in bref])
    fb, yb, ob = features(bert, 'bert', cls_loader, pool='tokens', logits=True, verbose=False)
    assert torch.equal(fb, bh[mask.bool()])
    assert torch.equal(yb, cls.repeat_interleave(mask.sum(1))) and torch.equal(ob, blog.repeat_interleave(mask.sum(1), 0))
    fl2, yl2, ol2 = features(bert, 'bert.encoder.layer.1', cls_loader, pool='last_token', logits=True, verbose=False)
    assert torch.equal(fl2, bh[torch.arange(11), mask.sum(1) - 1]) and torch.equal(yl2, cls) and torch.equal(ol2, blog)
    fp, yp, op = features(bert, 'bert', cls_loader, output='pooler_output', logits=True, verbose=False)
    assert fp.shape == (11, 32) and torch.equal(op, blog)
    st = class_stats(bert, 'bert.pooler', cls_loader, verbose=False)
    torch.testing.assert_close(st.means[1], fp[cls == 1].mean(0))
    from lossviz.geometry import neural_collapse
    assert ncc_agreement(bert, 'bert.pooler', cls_loader, st, verbose=False) == neural_collapse(fp, yp, logits=op).ncc_agreement

    # train_mode=True: dropout is on during the pass (features differ), and everything still comes back
    ft, _ = features(bert, 'bert', cls_loader, pool='tokens', train_mode=True, verbose=False)
    assert not torch.equal(ft, fb)
    features(gpt, 'transformer.h.0', lm_loader, pool='tokens', train_mode=True, verbose=False)
    _same_state(gpt, g0); _same_state(bert, b0)
    assert torch.equal(gpt.lm_head.weight.grad, grad0)

    # errors name the argument and leave the model as it was
    with pytest.raises(ValueError, match="'bert.pooler' outputs shape"): features(bert, 'bert.pooler', cls_loader, pool='tokens', verbose=False)
    with pytest.raises(TypeError, match='`output`=1 finds no tensor'): features(bert, 'bert.encoder.layer.0.attention', cls_loader, output=1, verbose=False)
    with pytest.raises(TypeError, match="`output`='x' selects a part"): features(bert, 'bert.pooler', cls_loader, output='x', verbose=False)
    _same_state(bert, b0)

def test_transformers_left_padding_and_all_ignored():
    "'last_token' reads the last position with attention_mask 1 under left padding too; 'tokens' with nothing kept is an error"
    from lossviz.geometry import features
    gpt, _ = _hf_models()
    ids, mask, lm, _ = _sequences(left=True)
    loader = torch.utils.data.DataLoader(_TokenData(ids, mask, lm), batch_size=4)
    ref = torch.cat([r.hidden_states[1] for r in _ref(gpt, ids, mask)])
    fl, _ = features(gpt, 'transformer.h.0', loader, pool='last_token', verbose=False)
    assert torch.equal(fl, ref[:, -1])
    ft, yt = features(gpt, 'transformer.h.0', loader, pool='tokens', verbose=False)
    assert torch.equal(ft, ref[lm != -100]) and torch.equal(yt, lm[lm != -100])
    none = torch.utils.data.DataLoader(_TokenData(ids, mask, torch.full_like(lm, -100)), batch_size=4)
    with pytest.raises(ValueError, match="kept no token"): features(gpt, 'transformer.h.0', none, pool='tokens', verbose=False)

def test_half_precision_statistics():
    "bfloat16 and float16 features are computed on in float32 (the numbers of their float32 copy); float64 stays float64"
    from lossviz.geometry import effective_rank, neural_collapse, alpha_req, spectrum, uniformity, alignment, diffusion_spectral_entropy
    g = torch.Generator().manual_seed(0)
    h, y = torch.randn(90, 12, generator=g), torch.arange(90) % 3
    for dt in (torch.bfloat16, torch.float16):
        hh = h.to(dt); hf = hh.float()
        assert effective_rank(hh) == effective_rank(hf) and alpha_req(hh) == alpha_req(hf)
        assert spectrum(hh, gram=True).values.dtype == torch.float32
        a, b = neural_collapse(hh, y, classifier=torch.randn(3, 12).to(dt)), neural_collapse(hf, y, classifier=torch.randn(3, 12))
        assert a.means.dtype == torch.float32 and a.nc1 == b.nc1
        assert ClassStats(dtype=dt).update(hh, y).dtype == torch.float32
        assert uniformity(hh, normalize=True).dtype == torch.float32 and alignment(hh, hh, normalize=True).dtype == torch.float32
        assert diffusion_spectral_entropy(hh) == diffusion_spectral_entropy(hf)
    assert spectrum(h.double()).values.dtype == torch.float64 and neural_collapse(h.double(), y).means.dtype == torch.float64
