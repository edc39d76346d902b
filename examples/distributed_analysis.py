"""lossviz on torch.distributed: each process holds a shard of the data, and every number equals the single-process one.

Run with
    torchrun --nproc_per_node=2 examples/distributed_analysis.py
(gloo on CPU; nccl with one GPU per process). Prints, on rank 0, the top Hessian eigenvalues, the Hessian trace,
the test ECE, NC1 of the penultimate features and a landscape slice's minimum, all computed data-parallel.
"""
import argparse

import torch
import torch.distributed as dist
import torch.nn.functional as F

from lossviz import calibration, geometry, hessian, landscape
from lossviz.core import dist_info
from lossviz.demo import SmallCNN, digits, train
from lossviz.distributed import merge_over_ranks, shard


def main(epochs=3, seed=0):
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    try:
        rank, world = dist_info()
        device = torch.device("cuda", rank % torch.cuda.device_count()) if backend == "nccl" else torch.device("cpu")
        torch.manual_seed(seed)                       # the same model on every rank
        data, model = digits(seed=seed), SmallCNN()
        train(model, data, epochs=epochs, seed=seed, verbose=rank == 0)   # (a real job would train with DDP)
        model.to(device).eval()
        mine = list(shard(len(data.y_train)))         # this rank's block of the training data
        x, y = data.x_train[mine].to(device), data.y_train[mine].to(device)
        batches = [(x[i:i + 256], y[i:i + 256]) for i in range(0, len(y), 256)]

        H = hessian.Hessian(model, F.cross_entropy, batches)       # products are summed over ranks, weighted by samples
        top = H.eigenvalues(k=3)
        tr = H.trace(tol=0.05, seed=seed)                           # the same probes on every rank (shared seed)

        meter = calibration.CalibrationMeter(logits=True)
        test = list(shard(len(data.y_test)))
        with torch.no_grad(): meter.update(model(data.x_test[test].to(device)), data.y_test[test].to(device))
        ece = merge_over_ranks(meter).compute()

        stats = geometry.class_stats(model, "features.9", batches, verbose=False)
        nc = geometry.neural_collapse(merge_over_ranks(stats))

        d1, d2 = landscape.random_directions(model, 2, seed=seed)
        surf = landscape.slice_2d(model, F.cross_entropy, batches, (d1, d2), steps=(9, 9), shard="data", verbose=False)

        if rank == 0:
            print(f"{world} processes ({backend}), {sum(len(b[1]) for b in batches)} training samples on rank 0")
            print("top Hessian eigenvalues:", [round(float(v), 4) for v in top.values])
            print(f"Hessian trace: {float(tr.value):.2f} +- {float(tr.stderr):.2f}")
            print(f"test ECE: {float(ece):.4f}")
            print(f"NC1: {nc.nc1:.4f}")
            print(f"landscape minimum: {surf.values['loss'].min().item():.4f}")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    main(**vars(p.parse_args()))
