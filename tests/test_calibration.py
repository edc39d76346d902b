"""lossviz.calibration against the reference libraries on shared inputs: torchmetrics (binned ECE/RMS-CE/MCE), netcal
(ECE with equal-width and equal-mass bins), relplot (smooth ECE) and uncertainty-calibration (debiased L2-ECE, top-label
and marginal/classwise). Inputs are float64 and kept away from bin edges so that no reference's edge convention matters."""
import numpy as np
import pytest
import torch

from lossviz import calibration as cal

torchmetrics = pytest.importorskip("torchmetrics")
from torchmetrics.functional.classification import binary_calibration_error, multiclass_calibration_error


def _inputs(n=4000, k=5, seed=0, temp=2.0, n_bins=15):
    "Random softmax predictions and labels, float64, with top-label confidences at least 1e-6 away from the bin edges b/n_bins"
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(temp * torch.randn(n, k, generator=g, dtype=torch.float64), 1)
    y = torch.randint(0, k, (n,), generator=g)
    c = p.max(1).values * n_bins
    keep = (c - c.round()).abs() > 1e-6 * n_bins
    return p[keep], y[keep]


def _direct(conf, hit, edges, norm):
    "Float64 transcription of the binned calibration error: loop over bins, [a, b) with the last bin closed"
    errs, ws = [], []
    for b in range(len(edges) - 1):
        last = b == len(edges) - 2
        m = (conf >= edges[b]) & ((conf <= edges[b + 1]) if last else (conf < edges[b + 1]))
        if m.any():
            errs.append(abs(conf[m].mean() - hit[m].mean())); ws.append(m.mean())
    errs, ws = np.array(errs), np.array(ws)
    return {"l1": (ws * errs).sum(), "l2": np.sqrt((ws * errs ** 2).sum()), "max": errs.max()}[norm]


@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
def test_torchmetrics_multiclass(norm):
    # torchmetrics accumulates its bins in float32 (measured ~4e-6 off an exact float64 computation): 1e-5.
    p, y = _inputs()
    ours = cal.ece(p, y, n_bins=15, norm=norm)
    ref = multiclass_calibration_error(p, y, num_classes=5, n_bins=15, norm=norm)
    assert abs(float(ours) - float(ref)) < 1e-5
    conf, pred = p.max(1)
    direct = _direct(conf.numpy(), (pred == y).double().numpy(), np.arange(16) / 15, norm)
    assert abs(float(ours) - direct) < 1e-12


@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
def test_torchmetrics_binary(norm):
    g = torch.Generator().manual_seed(1)
    f = torch.rand(3000, generator=g, dtype=torch.float64)
    f = f[((f * 10) - (f * 10).round()).abs() > 1e-5]
    y = (torch.rand(len(f), generator=g, dtype=torch.float64) < f ** 1.3).long()
    ours = cal.ece(f, y, n_bins=10, norm=norm, mode="binary")
    ref = binary_calibration_error(f, y, n_bins=10, norm=norm)
    assert abs(float(ours) - float(ref)) < 1e-5
    assert abs(float(ours) - _direct(f.numpy(), y.double().numpy(), np.arange(11) / 10, norm)) < 1e-12


@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
def test_torchmetrics_token_level_ignore_index(norm):
    # Next-token logits (B, T, V) with (B, T) labels, -100 at random positions and wherever the top-label confidence
    # is within 1e-6 of a bin edge. torchmetrics (classes in dim 1, its own ignore_index, fed in two batches) is the
    # independent reference on the unflattened input; its float32 bins: 1e-5, as above.
    from torchmetrics.classification import MulticlassCalibrationError
    g = torch.Generator().manual_seed(10)
    z = 2.0 * torch.randn(6, 300, 20, generator=g, dtype=torch.float64)
    y = torch.randint(0, 20, (6, 300), generator=g)
    c = torch.softmax(z, -1).max(-1).values * 15
    y[(torch.rand(6, 300, generator=g) < 0.3) | ((c - c.round()).abs() <= 1e-6 * 15)] = -100
    ours = cal.ece(z, y, n_bins=15, norm=norm, logits=True)
    metric = MulticlassCalibrationError(num_classes=20, n_bins=15, norm=norm, ignore_index=-100)
    for b in (slice(0, 2), slice(2, 6)):
        metric.update(z[b].movedim(-1, 1), y[b])
    assert abs(float(ours) - float(metric.compute())) < 1e-5
    keep = y != -100
    conf, pred = torch.softmax(z[keep], 1).max(1)
    direct = _direct(conf.numpy(), (pred == y[keep]).double().numpy(), np.arange(16) / 15, norm)
    assert abs(float(ours) - direct) < 1e-12


def test_confidence_one_lands_in_last_bin():
    # torchmetrics issue #3510: a confidence of exactly 1.0 goes to a phantom 16th bin there. Ours: the last bin, closed.
    p = torch.tensor([[1.0, 0.0], [0.97, 0.03], [0.0, 1.0], [0.6, 0.4]], dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 1])
    # bin 15 holds {1.0 hit, 0.97 miss, 1.0 hit}: gap |0.99 - 2/3|; bin 9 holds {0.6 miss}: gap 0.6
    expected = (3 * abs((1 + 0.97 + 1) / 3 - 2 / 3) + 0.6) / 4
    assert abs(float(cal.ece(p, y)) - expected) < 1e-15
    rel = cal.reliability(p, y)
    assert rel.count[-1] == 3 and rel.count.sum() == 4


netcal = pytest.importorskip("netcal")


@pytest.mark.parametrize("equal_intervals", [True, False])
def test_netcal_ece(equal_intervals):
    from netcal.metrics import ECE
    p, y = _inputs(seed=2)
    ref = ECE(bins=15, equal_intervals=equal_intervals).measure(p.numpy(), y.numpy())
    ours = cal.ece(p, y, n_bins=15, binning="uniform" if equal_intervals else "quantile")
    assert abs(float(ours) - float(ref)) < 1e-10   # both float64; differences are summation order only


def test_netcal_binary():
    from netcal.metrics import ECE
    g = torch.Generator().manual_seed(3)
    f = torch.rand(2000, generator=g, dtype=torch.float64) * 0.98 + 0.01
    y = (torch.rand(2000, generator=g, dtype=torch.float64) < f).long()
    for eq in (True, False):
        ref = ECE(bins=10, equal_intervals=eq).measure(f.numpy(), y.numpy())
        ours = cal.ece(f, y, n_bins=10, binning="uniform" if eq else "quantile", mode="binary")
        assert abs(float(ours) - float(ref)) < 1e-10


def test_two_labels_present_is_still_multiclass():
    # netcal reads a 5-class batch with only labels {0, 1} present as binary; lossviz never guesses
    p, y = _inputs(seed=4)
    y = y % 2
    conf, pred = p.max(1)
    direct = _direct(conf.numpy(), (pred == y).double().numpy(), np.arange(16) / 15, "l1")
    assert abs(float(cal.ece(p, y)) - direct) < 1e-12


relplot = pytest.importorskip("relplot")


@pytest.mark.parametrize("seed", [0, 1])
def test_relplot_smece_binary(seed):
    # relplot discretises its kernel (and truncates it at +-0.5): 1e-3, as the issue states
    rng = np.random.default_rng(seed)
    f = rng.uniform(0.02, 0.98, 3000)
    y = (rng.uniform(size=3000) < f ** 1.5).astype(float)
    ref = relplot.smECE(f, y)
    ours = cal.smooth_ece(torch.tensor(f), torch.tensor(y).long(), mode="binary")
    assert abs(float(ours) - ref) < 1e-3


@pytest.mark.parametrize("labels", ["random", "sharpened"])
def test_relplot_smece_top_label(labels):
    # random labels: a badly calibrated model (sigma* ~ 0.44); labels drawn from a sharpened copy of the predictions:
    # a mildly miscalibrated one (sigma* ~ 0.05)
    p, y = _inputs(n=3000, seed=5)
    if labels == "sharpened":
        y = torch.multinomial(torch.softmax(1.5 * p.log(), 1), 1, generator=torch.Generator().manual_seed(5))[:, 0]
    f, hit = relplot.multiclass_logits_to_confidences(p.numpy(), y.numpy(), probs=True)
    ref = relplot.smECE(f, hit)
    assert abs(float(cal.smooth_ece(p, y)) - ref) < 1e-3


calibration = pytest.importorskip("calibration")   # the uncertainty-calibration package


def _uc_edges(col, n_bins):
    "uncertainty-calibration's equal-mass bin edges for one column, as a (B+1,) edge list for lossviz"
    from calibration.utils import get_equal_bins
    return [0.0] + list(get_equal_bins(list(col), num_bins=n_bins))


def test_uncertainty_calibration_debiased_top_label():
    # Same bins on both sides (theirs are right-closed, ours left-closed; no confidence sits on an edge: edges are
    # midpoints between distinct neighbours); both float64: 1e-10
    p, y = _inputs(n=3000, seed=6)
    ref = calibration.get_calibration_error(p.numpy(), y.numpy(), p=2, debias=True, mode="top-label")
    edges = _uc_edges(p.max(1).values.numpy(), 15)
    ours = cal.ece(p, y, binning=torch.tensor(edges), norm="l2", debias=True)
    assert abs(float(ours) - ref) < 1e-10
    plug = calibration.get_calibration_error(p.numpy(), y.numpy(), p=2, debias=False, mode="top-label")
    assert abs(float(cal.ece(p, y, binning=torch.tensor(edges), norm="l2")) - plug) < 1e-10


def test_uncertainty_calibration_marginal():
    p, y = _inputs(n=3000, seed=7, temp=1.0)
    edges = torch.tensor([_uc_edges(p[:, k].numpy(), 15) for k in range(p.shape[1])])
    for debias in (True, False):
        ref = calibration.get_calibration_error(p.numpy(), y.numpy(), p=2, debias=debias, mode="marginal")
        ours = cal.classwise_ece(p, y, binning=edges, norm="l2", debias=debias)
        assert abs(float(ours) - ref) < 1e-10


def test_uncertainty_calibration_ece_uniform():
    # their `get_ece`: equal-width bins (right-closed), plug-in l1, top-label
    p, y = _inputs(n=3000, seed=8)
    ref = calibration.get_ece(p.numpy(), y.numpy(), num_bins=15)
    assert abs(float(cal.ece(p, y)) - ref) < 1e-10


def test_meter_float32_bit_identical():
    p, y = _inputs(n=5000, seed=9)
    p = p.float()
    m = cal.CalibrationMeter(n_bins=15)
    for a, b in [(0, 1), (1, 1000), (1000, 1003), (1003, len(y))]:
        m.update(p[a:b], y[a:b])
    for norm in ("l1", "l2", "max"):
        assert torch.equal(m.compute(norm), cal.ece(p, y, norm=norm))


def test_bad_inputs_name_the_argument():
    p, y = _inputs(n=100)
    cases = [
        (lambda: cal.ece(p * 0.9, y), "sum to 1"),
        (lambda: cal.ece(p.masked_fill(p > 0.9, float("nan")), y), "NaN"),
        (lambda: cal.ece(p, y + 5), "`labels`"),
        (lambda: cal.ece(p, y[:-1]), "length mismatch"),
        (lambda: cal.ece(p[:0], y[:0]), "empty"),
        (lambda: cal.ece(p, y, n_bins=0), "`n_bins`"),
        (lambda: cal.ece(p, y, mode="marginal"), "`mode`"),
        (lambda: cal.ece(p, y, binning="log"), "`binning`"),
        (lambda: cal.ece(p, y, ci=95), "`ci`"),
        (lambda: cal.smooth_ece(p, y, mode="classwise"), "`mode`"),
        (lambda: cal.nll(torch.randn(100, 5).double(), y), "logits=True"),
        (lambda: cal.ece(p, y, logits="yes"), "`logits`"),
    ]
    for fn, msg in cases:
        with pytest.raises((ValueError, TypeError), match=None) as e:
            fn()
        assert msg in str(e.value), (msg, str(e.value))
