"""lossviz.losses against the reference libraries on the same inputs.

References: torch.nn.functional (cross-entropy with weights, ignore_index and label smoothing; KL divergence),
pytorch-metric-learning (triplet batch-hard / batch-all, Circle, Multi-Similarity with and without its miner,
SupCon, NT-Xent), timm's AsymmetricLossMultiLabel (its source file, loaded directly: importing the timm package
needs torchvision, which is not installed), torchvision's sigmoid_focal_loss (transcribed here in float64 from
torchvision/ops/focal_loss.py, since torchvision is not installable here), and lossviz.geometry's alignment and
uniformity (an independent, tiled implementation).

Tolerances: everything runs in float64; the references and lossviz compute the same expressions in different
orders, so agreement is to rounding. 1e-10 (absolute and relative) leaves five orders of magnitude of margin over
the ~1e-15 rounding of these O(1)-O(100) sums and still fails on any formula difference. The exception is timm's
ASL, which computes in float32 whatever the input dtype: there the tolerance is float32's (F32 below).
"""
import importlib.util
import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml, miners

import lossviz.losses as L

TOL = dict(rtol=1e-10, atol=1e-10)
F32 = dict(rtol=1e-5, atol=1e-6)   # timm's ASL casts its inputs to float32: float32 rounding (~6e-8 relative) through a few logs and powers


def close(a, b): torch.testing.assert_close(a, b, **TOL)


def gen(seed=0): return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- torch.nn.functional

@pytest.mark.parametrize("smoothing", [0.0, 0.15])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_matches_torch(smoothing, reduction, weighted):
    g = gen(1)
    z = torch.randn(5, 4, 3, 2, generator=g, dtype=torch.float64)                 # (N, C, d1, d2) segmentation-shaped logits
    y = torch.randint(0, 4, (5, 3, 2), generator=g)
    y[0, 0, 0] = y[3, 2, 1] = -1                              # ignored positions
    w = torch.rand(4, generator=g, dtype=torch.float64) + 0.5 if weighted else None
    ref = F.cross_entropy(z, y, weight=w, ignore_index=-1, label_smoothing=smoothing, reduction=reduction)
    close(L.cross_entropy(z, y, smoothing=smoothing, weight=w, ignore_index=-1, reduction=reduction), ref)
    close(L.CrossEntropyLoss(smoothing=smoothing, weight=w, ignore_index=-1, reduction=reduction)(z, y), ref)


def test_cross_entropy_gradient_matches_torch():
    g = gen(2)
    z, y, w = torch.randn(7, 5, generator=g, dtype=torch.float64), torch.randint(0, 5, (7,), generator=g), torch.rand(5, generator=g, dtype=torch.float64)
    a, b = z.clone().requires_grad_(), z.clone().requires_grad_()
    L.cross_entropy(a, y, smoothing=0.1, weight=w).backward()
    F.cross_entropy(b, y, weight=w, label_smoothing=0.1).backward()
    close(a.grad, b.grad)


def test_focal_gamma0_is_torch_ce_with_weights_and_ignore():
    g = gen(3)
    z, y, w = torch.randn(9, 4, generator=g, dtype=torch.float64), torch.randint(0, 4, (9,), generator=g), torch.rand(4, generator=g, dtype=torch.float64)
    y[2] = -100
    close(L.focal_loss(z, y, gamma=0.0, weight=w), F.cross_entropy(z, y, weight=w))


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_kd_and_reverse_kl_match_kl_div(T):
    g = gen(4)
    s, t = torch.randn(2, 6, 10, generator=g, dtype=torch.float64), torch.randn(2, 6, 10, generator=g, dtype=torch.float64)   # (B, T, V) language-model shaped
    ls, lt = (s / T).log_softmax(-1), (t / T).log_softmax(-1)
    close(L.kd_loss(s, t, temperature=T), F.kl_div(ls, lt, log_target=True, reduction="sum") / 12 * T**2)
    close(L.reverse_kl_loss(s, t, temperature=T, reduction="sum"), F.kl_div(lt, ls, log_target=True, reduction="sum") * T**2)


# ---------------------------------------------------------------- torchvision sigmoid_focal_loss (transcribed)

def torchvision_sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2.0, reduction="none"):
    "torchvision.ops.sigmoid_focal_loss, transcribed verbatim in its arithmetic"
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 0.0), (0.6, 1.3)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_sigmoid_focal_matches_torchvision(alpha, gamma, reduction):
    g = gen(5)
    z, t = torch.randn(6, 5, 3, generator=g, dtype=torch.float64) * 3, (torch.rand(6, 5, 3, generator=g, dtype=torch.float64) > 0.6).double()
    close(L.sigmoid_focal_loss(z, t, alpha=alpha, gamma=gamma, reduction=reduction),
          torchvision_sigmoid_focal_loss(z, t, alpha, gamma, reduction))


# ---------------------------------------------------------------- timm AsymmetricLossMultiLabel

def _timm_asl():
    spec = importlib.util.find_spec("timm")
    if spec is None: pytest.skip("timm is not installed (pip install timm --no-deps); the notebook checks ASL against a transcription")
    path = spec.submodule_search_locations[0] + "/loss/asymmetric_loss.py"
    mod_spec = importlib.util.spec_from_file_location("timm_asymmetric_loss", path)
    mod = importlib.util.module_from_spec(mod_spec); mod_spec.loader.exec_module(mod)
    return mod.AsymmetricLossMultiLabel


@pytest.mark.parametrize("gamma_neg,gamma_pos,clip", [(4.0, 1.0, 0.05), (2.0, 0.0, 0.0), (0.0, 0.0, 0.2)])
def test_asymmetric_matches_timm(gamma_neg, gamma_pos, clip):
    ASL = _timm_asl()
    g = gen(6)
    z = torch.randn(8, 6, generator=g, dtype=torch.float64) * 2          # moderate logits: timm clamps probabilities at eps=1e-8
    t = (torch.rand(8, 6, generator=g, dtype=torch.float64) > 0.5).double()
    w = torch.rand(6, generator=g, dtype=torch.float64) + 0.5
    ref = ASL(gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip, reduction="none", weight=w)(z, t)
    torch.testing.assert_close(L.asymmetric_loss(z, t, gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip, weight=w, reduction="none"),
                               ref.double(), **F32)
    a, b = z.clone().requires_grad_(), z.clone().requires_grad_()
    L.asymmetric_loss(a, t, gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip, reduction="sum").backward()
    ASL(gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip, reduction="sum")(b, t).backward()
    torch.testing.assert_close(a.grad, b.grad, **F32)


# ---------------------------------------------------------------- pytorch-metric-learning

def _emb(seed=7, n=12, d=5):
    g = gen(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 5])[:n]


def _both(fn_ours, fn_ref, x):
    "Values and gradients of two losses of the embeddings"
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    la, lb = fn_ours(a), fn_ref(b)
    la.backward(); lb.backward()
    close(la, lb.to(la.dtype)); close(a.grad, b.grad)


@pytest.mark.parametrize("margin", [0.05, 0.3])
def test_triplet_batch_all_matches_pml(margin):
    x, y = _emb()
    loss, miner = pml.TripletMarginLoss(margin=margin), miners.TripletMarginMiner(margin=margin, type_of_triplets="all")
    _both(lambda e: L.triplet_loss(e, y, margin=margin, mining="all"), lambda e: loss(e, y, miner(e, y)), x)


@pytest.mark.parametrize("margin", [0.05, 0.5])
def test_triplet_batch_hard_matches_pml(margin):
    x, y = _emb(8)
    loss, miner = pml.TripletMarginLoss(margin=margin), miners.BatchHardMiner()
    _both(lambda e: L.triplet_loss(e, y, margin=margin, mining="hard"), lambda e: loss(e, y, miner(e, y)), x)


@pytest.mark.parametrize("m,gamma", [(0.25, 256.0), (0.4, 80.0)])
def test_circle_matches_pml(m, gamma):
    x, y = _emb(9)
    _both(lambda e: L.circle_loss(e, y, m=m, gamma=gamma), lambda e: pml.CircleLoss(m=m, gamma=gamma)(e, y), x)


@pytest.mark.parametrize("alpha,beta,base", [(2.0, 50.0, 0.5), (1.0, 10.0, 0.2)])
def test_multi_similarity_matches_pml(alpha, beta, base):
    x, y = _emb(10)
    _both(lambda e: L.multi_similarity_loss(e, y, alpha=alpha, beta=beta, base=base),
          lambda e: pml.MultiSimilarityLoss(alpha=alpha, beta=beta, base=base)(e, y), x)


def test_multi_similarity_mining_matches_pml_miner():
    x, y = _emb(11)
    loss, miner = pml.MultiSimilarityLoss(), miners.MultiSimilarityMiner(epsilon=0.1)
    _both(lambda e: L.multi_similarity_loss(e, y, epsilon=0.1), lambda e: loss(e, y, miner(e, y)), x)


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_supcon_matches_pml(temperature):
    x, y = _emb(12)
    _both(lambda e: L.supcon_loss(e, y, temperature=temperature), lambda e: pml.SupConLoss(temperature=temperature)(e, y), x)


@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_nt_xent_matches_pml(temperature):
    g = gen(13)
    v1, v2 = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g, dtype=torch.float64)
    lab = torch.arange(6).repeat(2)
    x = torch.cat([v1, v2])
    _both(lambda e: L.nt_xent_loss(e[:6], e[6:], temperature=temperature),
          lambda e: pml.NTXentLoss(temperature=temperature)(e, lab), x)


# ---------------------------------------------------------------- lossviz.geometry (independent implementation)

def test_alignment_uniformity_match_geometry():
    geometry = pytest.importorskip("lossviz.geometry")
    g = gen(14)
    x, y = torch.randn(10, 4, generator=g, dtype=torch.float64), torch.randn(10, 4, generator=g, dtype=torch.float64)
    close(L.alignment_loss(x, y, alpha=2.0), geometry.alignment(x, y, alpha=2.0, normalize=True))
    close(L.uniformity_loss(x, t=2.0), geometry.uniformity(x, t=2.0, normalize=True))
