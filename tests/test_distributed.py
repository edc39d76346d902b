"""lossviz under torch.distributed: 2 processes on the gloo backend (CPU), each holding a shard of the data,
checked against the single-process results (float64)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lossviz.core import Batches, FunctionalLoss, dist_info, preserved
from lossviz.distributed import RankError, launch, merge_over_ranks, shard, gather_blocks


def data_and_model():
    g = torch.Generator().manual_seed(0)
    X, Y = torch.randn(37, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (37,), generator=g)
    torch.manual_seed(0)
    return X, Y, nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def my_shard(X, Y):
    "Uneven shards (rank 0: 21 samples in two batches, rank 1: 16) to check weighting by sample counts"
    rank, _ = dist_info()
    if rank == 0: return [(X[:9], Y[:9]), (X[9:21], Y[9:21])]
    return [(X[21:], Y[21:])]


def _loss_worker():
    X, Y, model = data_and_model()
    params = {n: p.detach() for n, p in model.named_parameters()}
    full_loss = lambda p: F.cross_entropy(torch.func.functional_call(model, p, X), Y)  # single-process reference
    ddp = nn.parallel.DistributedDataParallel(model)
    with preserved(ddp):
        f = FunctionalLoss(ddp, F.cross_entropy, my_shard(X, Y))
        assert f.batches.n_samples == 37
        torch.testing.assert_close(f.loss(), full_loss(params), rtol=1e-12, atol=0)
        # gradients taken per batch and averaged over ranks equal the single-process full-data gradient
        grad = torch.func.grad(f.batch_loss)
        g = f.batches.weighted_mean(lambda x, y: grad(f.params, x, y))
        g_full = torch.func.grad(full_loss)(params)
        for n in g: torch.testing.assert_close(g[n], g_full[n], rtol=1e-12, atol=1e-15)
        # differentiating through the distributed mean would keep only this rank's part: it raises instead
        with pytest.raises(RuntimeError, match="cannot be differentiated through"):
            torch.func.grad(f.loss)(f.params)
    return dist_info()


def _class_stats_worker():
    from lossviz.geometry import ClassStats, neural_collapse
    X, Y, _ = data_and_model()
    rank, world = dist_info()
    s = ClassStats()
    for i in shard(len(Y)):  # one sample at a time: the most merges
        s.update(X[i:i + 1], Y[i:i + 1])
    return neural_collapse(merge_over_ranks(s)).nc1, neural_collapse(X, Y).nc1


def _ece_worker():
    from lossviz.calibration import CalibrationMeter, ece
    g = torch.Generator().manual_seed(1)
    logits, y = torch.randn(101, 4, generator=g, dtype=torch.float64), torch.randint(0, 4, (101,), generator=g)
    idx = list(shard(len(y)))
    meter = CalibrationMeter(logits=True).update(logits[idx], y[idx])
    return merge_over_ranks(meter).compute(), ece(logits, y, logits=True)


def _landscape_worker(mode):
    from lossviz.landscape import random_directions, slice_2d
    X, Y, model = data_and_model()
    d1, d2 = random_directions(model, 2, seed=0)
    data = (X, Y) if mode == 'points' else my_shard(X, Y)
    dist_grid = slice_2d(model, F.cross_entropy, data, (d1, d2), span=(-1, 1, -0.5, 0.5), steps=(5, 3), shard=mode, verbose=False)
    return dist_grid.values['loss']


def _single_landscape():
    from lossviz.landscape import random_directions, slice_2d
    X, Y, model = data_and_model()
    d1, d2 = random_directions(model, 2, seed=0)
    return slice_2d(model, F.cross_entropy, (X, Y), (d1, d2), span=(-1, 1, -0.5, 0.5), steps=(5, 3), verbose=False).values['loss']


def _hessian_worker():
    from lossviz.hessian import Hessian
    X, Y, model = data_and_model()
    H = Hessian(model, F.cross_entropy, my_shard(X, Y), verbose=False)
    return H.eigenvalues(k=3, tol=1e-8).values, H.trace(tol=None, max_matvecs=60, seed=3).value


def _blocks_worker():
    rank, world = dist_info()
    return gather_blocks(torch.arange(10.)[list(shard(10))] * 2)


def _failing_worker():
    rank, _ = dist_info()
    if rank == 1: raise ValueError("rank 1 failed on purpose")
    X, Y, model = data_and_model()
    with torch.no_grad():   # (with grad, the guard against differentiating through the all-reduce would raise here first)
        Batches(my_shard(X, Y)).weighted_mean(lambda x, y: F.cross_entropy(model(x), y))  # waits for rank 1, which is gone


def test_loss_and_gradient_over_ranks_equal_single_process():
    assert launch(_loss_worker, nprocs=2) == (0, 2)


def test_class_stats_merged_over_ranks_give_single_process_nc1():
    nc1_dist, nc1_single = launch(_class_stats_worker, nprocs=2)
    torch.testing.assert_close(torch.as_tensor(nc1_dist), torch.as_tensor(nc1_single), rtol=1e-6, atol=0)


def test_calibration_meters_merged_over_ranks_give_single_process_ece():
    dist_ece, single = launch(_ece_worker, nprocs=2)
    assert torch.equal(dist_ece, single)   # exact integer bin sums: bit for bit


@pytest.mark.parametrize("mode", ["points", "data"])
def test_landscape_grid_over_ranks_equals_single_process(mode):
    torch.testing.assert_close(launch(_landscape_worker, nprocs=2, args=(mode,)), _single_landscape(), rtol=1e-6, atol=0)


def test_hessian_eigenvalues_and_trace_over_ranks_equal_single_process():
    from lossviz.hessian import Hessian
    X, Y, model = data_and_model()
    H = Hessian(model, F.cross_entropy, (X, Y), verbose=False)
    top, tr = launch(_hessian_worker, nprocs=2)
    torch.testing.assert_close(top, H.eigenvalues(k=3, tol=1e-8).values, rtol=1e-6, atol=0)
    torch.testing.assert_close(tr, H.trace(tol=None, max_matvecs=60, seed=3).value, rtol=1e-6, atol=0)


def test_gathered_blocks_are_in_rank_order():
    torch.testing.assert_close(launch(_blocks_worker, nprocs=3), torch.arange(10.) * 2)


def test_a_failing_rank_fails_the_run_with_its_own_error():
    with pytest.raises(RankError, match="rank 1 failed first") as e:
        launch(_failing_worker, nprocs=2, timeout=30)
    assert "rank 1 failed on purpose" in str(e.value)


def test_torchrun_example_runs():
    "examples/distributed_analysis.py, launched the way users launch it"
    import subprocess, sys
    from pathlib import Path
    from lossviz.distributed import free_port
    root = Path(__file__).resolve().parents[1]
    torchrun = Path(sys.executable).with_name("torchrun")
    r = subprocess.run([str(torchrun), "--nproc_per_node=2", f"--master_port={free_port()}", str(root / "examples" / "distributed_analysis.py"),
                        "--epochs", "1"], capture_output=True, text=True, timeout=600, cwd=root)
    assert r.returncode == 0, r.stderr[-4000:]
    for line in ("2 processes (gloo)", "top Hessian eigenvalues:", "Hessian trace:", "test ECE:", "NC1:", "landscape minimum:"):
        assert line in r.stdout


def _monitor_worker():
    from lossviz.monitor import Monitor, Sharpness, GradNorm
    X, Y, model = data_and_model()
    m = Monitor(model, [Sharpness(my_shard(X, Y), k=1, tol=1e-8, method='jvp'), GradNorm(my_shard(X, Y))], every=2, budget=0.5,
                loss_fn=F.cross_entropy)
    for s in range(5): m.step(s)
    mine, every_rank = [{k: v for k, v in r.items() if k != 'seconds'} for r in m.history.records], [None, None]
    torch.distributed.all_gather_object(every_rank, mine)
    return every_rank


def test_monitor_over_ranks_records_the_single_process_values():
    from lossviz.hessian import eigenvalues
    r0, r1 = launch(_monitor_worker, nprocs=2)
    assert [r['skipped'] for r in r0] == [r['skipped'] for r in r1]   # the ranks took the same decisions
    X, Y, model = data_and_model()
    top = float(eigenvalues(model, F.cross_entropy, (X, Y), k=1, tol=1e-8, method='jvp', verbose=False).values[0])
    for a, b in zip(r0, r1):
        assert a.keys() == b.keys()
        if not a['skipped'] and a['probe'] == 'sharpness':
            assert abs(a['sharpness'] - b['sharpness']) <= 1e-12 * abs(top) and abs(a['sharpness'] - top) <= 1e-7 * abs(top)
