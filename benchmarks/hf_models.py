"""Cost of one Hessian-vector product against one gradient on a tiny HF GPT-2, for each product kernel, with the attention
kernel the analysis chose (PyTorch's math kernel: the fused SDPA kernels have no forward-mode AD or double backward), and the
same for the same weights with eager (written-out) attention, in one run.

The model is built from a config with random weights (nothing is downloaded) and analysed through the HF conventions: a dict
batch `{"input_ids", "attention_mask", "labels"}` and the model's own loss (`loss_fn=None`). Every timing is the median of
--reps round-robin repetitions (all implementations in turn, so that drifts in machine load hit all alike). Compare ratios
from the same run.

    python benchmarks/hf_models.py                    # n_layer 4, n_embd 128, vocab 2048, batch 8 x 64 tokens
    python benchmarks/hf_models.py --layers 2 --reps 3  # quicker
"""
import argparse, statistics, time, warnings
import torch
import transformers

from lossviz.core import torch_limitation
from lossviz.hessian import Hessian

KERNELS = ('double_backward', 'jvp', 'linearize', 'vjp')


def gpt2(args, attn):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=args.layers, n_embd=args.width, n_head=args.heads, vocab_size=args.vocab,
                                  n_positions=args.tokens, bos_token_id=0, eos_token_id=0)
    return transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation=attn).eval()


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--layers', type=int, default=4)
    ap.add_argument('--width', type=int, default=128)
    ap.add_argument('--heads', type=int, default=4)
    ap.add_argument('--vocab', type=int, default=2048)
    ap.add_argument('--batch', type=int, default=8)
    ap.add_argument('--tokens', type=int, default=64)
    ap.add_argument('--reps', type=int, default=7)
    ap.add_argument('--threads', type=int, default=None)
    args = ap.parse_args()
    if args.threads: torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    warnings.filterwarnings('ignore')
    ids = torch.randint(0, args.vocab, (args.batch, args.tokens), generator=torch.Generator().manual_seed(0))
    batch = {'input_ids': ids, 'attention_mask': torch.ones_like(ids), 'labels': ids}
    fns, chosen, failed = {}, {}, {}
    for attn in ('sdpa', 'eager'):
        model = gpt2(args, attn)
        params = [p for p in model.parameters() if p.requires_grad]
        P = sum(p.numel() for p in params)
        fns[(attn, 'gradient')] = lambda model=model, params=params: torch.autograd.grad(model(**batch).loss, params)
        v = torch.randn(P, generator=torch.Generator().manual_seed(1))
        for method in KERNELS + ('auto',):
            H = Hessian(model, None, batch, method=method, verbose=False)
            try: H.matvec(v)   # first product: the kernel's setup (kept graph, linearization) and the choice of `auto`
            except Exception as e:
                if not torch_limitation(e): raise
                failed[method] = str(e).split('.')[0][:60]
                continue
            chosen[(attn, method)] = (H._kernel, H.meta.get('attention', 'as the model has it'))
            fns[(attn, method)] = lambda H=H, v=v: H.matvec(v)
    print(f"GPT-2: {args.layers} layers, width {args.width}, vocab {args.vocab}, P={P:,}; batch {args.batch} x {args.tokens} tokens; "
          f"{torch.get_num_threads()} threads; medians of {args.reps} round-robin repetitions")
    times = {k: [] for k in fns}
    for _ in range(args.reps):
        for k, f in fns.items(): times[k].append(timed(f))
    t = {k: statistics.median(ts) for k, ts in times.items()}
    print(f"{'product':<30}{'attention':>22}{'sdpa ms':>10}{'x grad':>8}{'eager ms':>10}{'x grad':>8}{'sdpa/eager':>12}")
    print(f"{'gradient (fused SDPA)':<30}{'fused':>22}{t['sdpa', 'gradient'] * 1e3:>10.1f}{1:>8.2f}{t['eager', 'gradient'] * 1e3:>10.1f}{1:>8.2f}"
          f"{t['sdpa', 'gradient'] / t['eager', 'gradient']:>12.2f}")
    for method in KERNELS + ('auto',):
        if method in failed:
            print(f"{method:<30}  not available on this model: {failed[method]}")
            continue
        s, e = t['sdpa', method], t['eager', method]
        name = method if method != 'auto' else f"auto (chose {chosen['sdpa', method][0]})"
        print(f"{name:<30}{chosen['sdpa', method][1]:>22}{s * 1e3:>10.1f}{s / t['sdpa', 'gradient']:>8.2f}{e * 1e3:>10.1f}"
              f"{e / t['eager', 'gradient']:>8.2f}{s / e:>12.2f}")


if __name__ == '__main__':
    main()
