"""Benchmark lossviz.calibration against torchmetrics on CPU: top-label ECE, classwise ECE, and bootstrap confidence intervals.

    python benchmarks/calibration_metrics.py                       # default: N=100,000 x K=100 (under a minute of CPU)
    python benchmarks/calibration_metrics.py --n 1000000 --k 100   # the issue's size

Times are the minimum over `--repeats` runs, interleaved, in one process; ratios are what to read. By default torch runs
on one thread (`--threads 1`) for both libraries: on a shared, oversubscribed machine OpenMP's thread barriers make every
small op cost milliseconds and the numbers measure the scheduler, not the code. Peak memory is the growth of the peak
resident set size (Linux `VmHWM`, reset through `/proc/self/clear_refs` after the inputs are loaded) of a fresh child
process per task, over its resident size before the task.

The anchor for the top-label ECE is torchmetrics' `multiclass_calibration_error` (its default `validate_args=True`, and
also `validate_args=False`); lossviz always validates its inputs. torchmetrics has no classwise ECE: its anchor is a loop
of `binary_calibration_error` over the K one-vs-rest problems, which computes the same number.
"""
import argparse, json, os, re, subprocess, sys, tempfile, time

import torch


def make_inputs(n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(n, k, generator=g)
    p = torch.softmax(logits, 1)
    y = torch.multinomial(torch.softmax(logits / 1.5, 1), 1, generator=g)[:, 0]
    return p, y


def tasks(p, y, k, n_boot):
    from lossviz import calibration as cal
    from torchmetrics.functional.classification import binary_calibration_error, multiclass_calibration_error
    return {
        "lossviz ece": lambda: cal.ece(p, y, n_bins=15),
        "torchmetrics ece": lambda: multiclass_calibration_error(p, y, k, n_bins=15, norm="l1"),
        "torchmetrics ece (no validation)": lambda: multiclass_calibration_error(p, y, k, n_bins=15, norm="l1", validate_args=False),
        "lossviz classwise ece": lambda: cal.classwise_ece(p, y, n_bins=15),
        "torchmetrics classwise (loop of binary)": lambda: torch.stack([binary_calibration_error(p[:, c].contiguous(), (y == c).long(), n_bins=15, validate_args=False) for c in range(k)]).mean(),
        f"lossviz ece + {n_boot}-resample CI (cells)": lambda: cal.ece(p, y, n_bins=15, ci=0.95, n_boot=n_boot, bootstrap="cells"),
        "lossviz ece + 20-resample CI (exact)": lambda: cal.ece(p, y, n_bins=15, ci=0.95, n_boot=20, bootstrap="exact"),
    }


def child(name, path, k, n_boot):
    "Peak RSS growth (MiB) of one task over the inputs, in this fresh process"
    p, y = torch.load(path)
    fn = tasks(p, y, k, n_boot)[name]
    status = lambda key: int(re.search(key + r":\s+(\d+)", open("/proc/self/status").read()).group(1))  # kB
    base = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f: f.write("5")  # reset the peak to the current size
    fn()
    print(json.dumps((status("VmHWM") - base) / 1024))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000); ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--n-boot", type=int, default=1000); ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1, see above)")
    ap.add_argument("--no-memory", action="store_true", help="skip the per-task memory children")
    ap.add_argument("--child", help=argparse.SUPPRESS); ap.add_argument("--inputs", help=argparse.SUPPRESS)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.child: return child(a.child, a.inputs, a.k, a.n_boot)

    from lossviz import calibration as cal
    p, y = make_inputs(a.n, a.k)
    ts = tasks(p, y, a.k, a.n_boot)
    # same numbers first (float32 inputs: torchmetrics sums in float32, lossviz exactly)
    ours, ref = float(ts["lossviz ece"]()), float(ts["torchmetrics ece"]())
    cw, cw_ref = float(ts["lossviz classwise ece"]()), float(ts["torchmetrics classwise (loop of binary)"]())
    print(f"N={a.n:,} K={a.k} threads={torch.get_num_threads()}  ECE lossviz {ours:.6f} torchmetrics {ref:.6f}; "
          f"classwise lossviz {cw:.6f} torchmetrics loop {cw_ref:.6f}")
    best = {name: float("inf") for name in ts}
    for _ in range(a.repeats):
        for name, fn in ts.items():
            t = time.perf_counter(); fn(); best[name] = min(best[name], time.perf_counter() - t)
    mem = {}
    if not a.no_memory:
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "inputs.pt"); torch.save((p, y), path)
            for name in ts:
                out = subprocess.run([sys.executable, __file__, "--child", name, "--inputs", path, "--k", str(a.k),
                                      "--n-boot", str(a.n_boot), "--threads", str(a.threads)], capture_output=True, text=True, check=True)
                mem[name] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{'task':45s} {'time (s)':>9s} {'peak RSS growth (MiB)':>22s}")
    for name in ts: print(f"{name:45s} {best[name]:9.4f} {mem.get(name, float('nan')):22.1f}")
    e = best["lossviz ece"]
    boot = best[f"lossviz ece + {a.n_boot}-resample CI (cells)"]
    print("\nratios")
    print(f"  torchmetrics ece / lossviz ece:                      {best['torchmetrics ece'] / e:6.2f}x  (>1: lossviz faster)")
    print(f"  torchmetrics ece (no validation) / lossviz ece:      {best['torchmetrics ece (no validation)'] / e:6.2f}x")
    print(f"  torchmetrics classwise loop / lossviz classwise:     {best['torchmetrics classwise (loop of binary)'] / best['lossviz classwise ece']:6.2f}x")
    print(f"  lossviz classwise / lossviz top-label ece:           {best['lossviz classwise ece'] / e:6.2f}x")
    print(f"  ece + {a.n_boot} cells resamples / one ece:            {boot / e:6.2f}x  (target < 10x)")
    print(f"  ece + 20 exact resamples / one ece:                  {best['lossviz ece + 20-resample CI (exact)'] / e:6.2f}x")
    print(f"  input size: {p.numel() * p.element_size() / 2**20:.0f} MiB (probs) + {y.numel() * 8 / 2**20:.0f} MiB (labels)")


if __name__ == "__main__":
    main()
