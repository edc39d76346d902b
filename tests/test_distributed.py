"""lossviz under torch.distributed: 2 processes on the gloo backend (CPU), each holding a shard of the data."""
import datetime, os, socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from lossviz.core import Batches, FunctionalLoss, dist_info, preserved


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def data_and_model():
    g = torch.Generator().manual_seed(0)
    X, Y = torch.randn(37, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (37,), generator=g)
    torch.manual_seed(0)
    return X, Y, nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def shard(X, Y, rank):
    "Uneven shards (the first rank gets 21 samples in two batches, the second 16) to check weighting by sample counts"
    if rank == 0: return [(X[:9], Y[:9]), (X[9:21], Y[9:21])]
    return [(X[21:], Y[21:])]


def run_ranks(fn, port, world=2):
    mp.spawn(fn, args=(world, port), nprocs=world, join=True)


def _init(rank, world, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))


def _loss_worker(rank, world, port):
    _init(rank, world, port)
    try:
        X, Y, model = data_and_model()
        params = {n: p.detach() for n, p in model.named_parameters()}
        full_loss = lambda p: F.cross_entropy(torch.func.functional_call(model, p, X), Y)  # single-process reference
        full = full_loss(params)
        ddp = nn.parallel.DistributedDataParallel(model)
        with preserved(ddp):
            f = FunctionalLoss(ddp, F.cross_entropy, shard(X, Y, rank))
            assert dist_info() == (rank, world)
            assert f.batches.n_samples == 37
            torch.testing.assert_close(f.loss(), full, rtol=1e-12, atol=0)
            # gradients taken per batch and averaged over ranks equal the single-process full-data gradient
            grad = torch.func.grad(f.batch_loss)
            g = f.batches.weighted_mean(lambda x, y: grad(f.params, x, y))
            g_full = torch.func.grad(full_loss)(params)
            for n in g: torch.testing.assert_close(g[n], g_full[n], rtol=1e-12, atol=1e-15)
            # differentiating through the distributed mean would keep only this rank's part: it raises instead
            with pytest.raises(RuntimeError, match="cannot be differentiated through"):
                torch.func.grad(f.loss)(f.params)
    finally:
        dist.destroy_process_group()


def test_weighted_mean_over_ranks_equals_single_process():
    run_ranks(_loss_worker, free_port())
