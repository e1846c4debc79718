"""Where the time of a GPT-2 pre-training update goes: ours, nanoGPT's model and loop, transformers', side by side.

Each implementation makes --warmup updates, then --updates profiled ones (torch.profiler, CPU), on the same random
windows as bench_gpt2.py. The self time of every op is put in one category (the matmuls of the blocks and of the LM
decoder, attention, layer norms, GELU, embeddings, the loss's softmax, the optimizer, gradient clipping, copies and
the rest) and reported in milliseconds an update; the wall time an update and the time no op accounts for (Python,
the profiler's own) close the table.

    python benchmarks/profile_gpt2.py --nanogpt ../shared/reference/nanogpt              # 4 x 256, fp32
    python benchmarks/profile_gpt2.py --nanogpt ../shared/reference/nanogpt --n_ctx 1024 --n_batch 2
"""
import argparse
import importlib.util
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the library at the repository root

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

import bench_gpt2

# (category, substrings of aten op names), the first match wins
CATEGORIES = (
    ('layer norm', ('layer_norm',)),
    ('clipping', ('_foreach_norm', 'vector_norm', 'clip_grad', 'clamp')),
    ('optimizer', ('_foreach_', 'adam', 'lerp', 'addcdiv', 'addcmul', 'sqrt')),
    ('attention', ('scaled_dot_product', 'flash', '_efficient_attention')),
    ('matmul', ('addmm', 'aten::mm', 'bmm', 'aten::linear', 'aten::matmul')),
    ('gelu', ('gelu', 'tanh')),
    ('loss (softmax)', ('log_softmax', 'nll_loss', 'cross_entropy', 'logsumexp', 'softmax')),
    ('embedding', ('embedding',)),
    ('copies and casts', ('copy_', 'clone', 'contiguous', 'aten::to', '_to_copy', 'cat', 'stack')),
)


def parse_args(argv=None):
    """Return the parsed command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--nanogpt', default=None, help="nanoGPT's folder (its model.py; default: none, left out)")
    p.add_argument('--n_ctx', type=int, default=256, help='tokens per window (default: 256)')
    p.add_argument('--n_batch', type=int, default=4, help='windows per update (default: 4)')
    p.add_argument('--precision', default='fp32', help='fp32 or bf16 (default: fp32)')
    p.add_argument('--warmup', type=int, default=2, help='updates before profiling (default: 2)')
    p.add_argument('--updates', type=int, default=2, help='profiled updates (default: 2)')
    p.add_argument('--only', default=None, choices=('ours', 'transformers', 'nanogpt'),
                   help='profile this implementation alone, in a process of its own (default: all three in turn)')
    p.add_argument('--quick', action='store_true', help='a tiny model: a smoke test')
    args = p.parse_args(argv)
    args.micro_batch, args.size = args.n_batch, '124M'
    args.compile = False  # the models profiled run eagerly: a profile names each op
    return args


class NanoGPT:
    """nanoGPT's GPT (its model.py) trained as its train.py does with one micro-batch: model(X, Y)'s loss, backward,
    clip_grad_norm_(1.0), its configure_optimizers' AdamW (foreach on a CPU), zero_grad(set_to_none=True)."""

    def __init__(self, folder, cfg, n_batch, device):
        spec = importlib.util.spec_from_file_location('nanogpt_model', os.path.join(folder, 'model.py'))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        torch.manual_seed(0)
        config = module.GPTConfig(block_size=cfg.n_ctx, vocab_size=50304, n_layer=cfg.n_layer, n_head=cfg.n_head,
                                  n_embd=cfg.n_embd, dropout=0.0, bias=True)
        self.model = module.GPT(config).to(device).train()
        self.opt = self.model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), device.type)
        self.device, self.n_ctx, self.n_batch = device, cfg.n_ctx, n_batch

    def step(self, stream, update_no):
        """Make one update on update_no's windows (nanoGPT's get_batch: X the window, Y shifted by one)."""
        starts = np.random.default_rng([0, update_no]).integers(0, len(stream) - self.n_ctx - 1, self.n_batch)
        x = torch.from_numpy(np.stack([stream[s:s + self.n_ctx] for s in starts]).astype(np.int64))
        y = torch.from_numpy(np.stack([stream[s + 1:s + 1 + self.n_ctx] for s in starts]).astype(np.int64))
        _, loss = self.model(x.to(self.device), y.to(self.device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def category(name):
    """Return the category of an op's name."""
    lowered = name.lower()
    for label, keys in CATEGORIES:
        if any(key in lowered for key in keys):
            return label
    return 'other ops'


def profile_updates(impl, stream, args):
    """Return ({category: ms an update}, wall ms an update, [(ms an update, op)] of the largest uncategorized ops)
    of args.updates profiled updates of impl."""
    for k in range(args.warmup):
        impl.step(stream, 1 + k)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for k in range(args.updates):
            impl.step(stream, 1 + args.warmup + k)
        wall = (time.perf_counter() - start) * 1e3 / args.updates
    out, others = {}, []
    for event in prof.key_averages():  # every event's self time: together, the profiled CPU time
        label, ms = category(event.key), event.self_cpu_time_total / 1e3 / args.updates
        out[label] = out.get(label, 0.0) + ms
        if label == 'other ops':
            others.append((ms, event.key))
    return out, wall, sorted(others, reverse=True)[:4]


def main(argv=None):
    """Profile each implementation; print the table; return the exit code."""
    args = parse_args(argv)
    if args.quick:
        args.n_ctx, args.n_batch, args.micro_batch, args.warmup, args.updates = 32, 2, 2, 1, 1
    device = torch.device('cpu')
    cfg = bench_gpt2.bench_config(args)
    stream = bench_gpt2.make_stream(max(8 * args.n_batch * (args.n_ctx + 1) * 8, 100_000))
    impls = {}
    if args.only in (None, 'ours'):
        impls['ours'] = bench_gpt2.Ours(args, cfg, args.precision, device)
    if args.only in (None, 'transformers'):
        impls['transformers'] = bench_gpt2.Transformers(args, cfg, args.precision, device)
    if args.nanogpt and args.only in (None, 'nanogpt'):
        if args.precision != 'fp32':
            raise SystemExit('profile_gpt2.py: nanoGPT computes in fp32 on a CPU (its autocast is CUDA only): '
                             'leave --nanogpt out with --precision bf16')
        impls['nanogpt'] = NanoGPT(args.nanogpt, cfg, args.n_batch, device)
    results = {name: profile_updates(impl, stream, args) for name, impl in impls.items()}
    labels = [label for label, _ in CATEGORIES] + ['other ops']
    print(f'GPT-2 {cfg.n_embd}/{cfg.n_layer}/{cfg.n_head}, {args.n_batch} x {args.n_ctx} tokens an update, '
          f'{args.precision}, torch {torch.__version__}; ms an update (self time of the ops, {args.updates} updates '
          f'after {args.warmup})')
    print(f"{'':18}" + ''.join(f'{name:>14}' for name in results))
    for label in labels:
        print(f'{label:18}' + ''.join(f'{results[name][0].get(label, 0.0):14.1f}' for name in results))
    print(f"{'all ops':18}" + ''.join(f'{sum(results[name][0].values()):14.1f}' for name in results))
    print(f"{'wall':18}" + ''.join(f'{results[name][1]:14.1f}' for name in results))
    for name, (_, _, others) in results.items():
        print(f'{name}: the largest other ops: ' + ', '.join(f'{op} {ms:.0f} ms' for ms, op in others))
    return 0


if __name__ == '__main__':
    sys.exit(main())
