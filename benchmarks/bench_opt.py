"""Time one OpenAIAdam step over the full GPT-1 parameter set, foreach path vs the per-parameter loop.

The benchmark of opt.py (TF: opt.adam as called by train.py, with its defaults: lr 6.25e-5, warmup_linear,
warmup 0.002, l2 0.01, max_grad_norm 1). Usage:

    python benchmarks/bench_opt.py [--device cpu|cuda] [--steps N] [--warmup-steps K] [--json PATH]
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the library at the repository root

import torch

from model_pytorch import DEFAULT_CONFIG
from opt import OpenAIAdam

N_EMBD = 768
N_LAYER = 12
N_EMBED_ROWS = DEFAULT_CONFIG.n_rows  # the released 40478 tokens and 512 positions, as one table
# one block, in TF variable order: attn/c_attn w b, attn/c_proj w b, ln_1 g b, mlp/c_fc w b, mlp/c_proj w b, ln_2 g b
BLOCK_SHAPES = [(N_EMBD, 3 * N_EMBD), (3 * N_EMBD,), (N_EMBD, N_EMBD), (N_EMBD,), (N_EMBD,), (N_EMBD,),
                (N_EMBD, 4 * N_EMBD), (4 * N_EMBD,), (4 * N_EMBD, N_EMBD), (N_EMBD,), (N_EMBD,), (N_EMBD,)]


def gpt1_shapes():
    """Return the shapes of GPT-1's trainable tensors: embedding table, 12 blocks, classifier w and b."""
    return [(N_EMBED_ROWS, N_EMBD)] + BLOCK_SHAPES * N_LAYER + [(N_EMBD, 1), (1,)]


def parse_args(argv=None):
    """Return the parsed command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cpu', help="'cpu' (default) or 'cuda'")
    parser.add_argument('--steps', type=int, default=10,
                        help='timed steps per path (the median is reported; default: 10)')
    parser.add_argument('--warmup-steps', type=int, default=2, help='untimed steps before timing (default: 2)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the parameters and gradients (default: 0)')
    parser.add_argument('--json', default=None, help='also write the results as JSON to this path (default: none)')
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f'--steps must be >= 1, got {args.steps}')
    if args.warmup_steps < 0:
        parser.error(f'--warmup-steps must be >= 0, got {args.warmup_steps}')
    return args


def _sync(device):
    """Wait for queued kernels on device, so a timer reads the real duration."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_steps(foreach, shapes, device, steps, warmup_steps, seed):
    """Return the wall time in seconds of each of `steps` timed OpenAIAdam steps on fresh random tensors."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen).mul_(0.02).to(device) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).mul_(1e-3).to(device)
    opt = OpenAIAdam(params, lr=6.25e-5, schedule='warmup_linear', warmup=0.002, t_total=10000, l2=0.01,
                     max_grad_norm=1, foreach=foreach)
    for _ in range(warmup_steps):
        opt.step()
    times = []
    for _ in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        opt.step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def main(argv=None):
    """Run the benchmark, print a table, optionally write JSON; return the results dict."""
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit(f'--device {args.device}: CUDA is not available in this torch build')
    shapes = gpt1_shapes()
    n_params = sum(torch.Size(s).numel() for s in shapes)
    results = {
        'device': str(device),
        'device_name': torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor(),
        'torch': torch.__version__,
        'threads': torch.get_num_threads(),
        'n_tensors': len(shapes),
        'n_params': n_params,
        'steps': args.steps,
        'warmup_steps': args.warmup_steps,
        'paths': {},
    }
    for name, foreach in (('foreach', True), ('loop', False)):
        times = time_steps(foreach, shapes, device, args.steps, args.warmup_steps, args.seed)
        results['paths'][name] = {'median_ms': 1e3 * statistics.median(times), 'min_ms': 1e3 * min(times),
                                  'max_ms': 1e3 * max(times)}
    print(f"OpenAIAdam step, {len(shapes)} tensors, {n_params:,} parameters, {device} "
          f"({results['threads']} threads), torch {torch.__version__}, median of {args.steps}")
    print(f"{'path':<8} {'median ms':>10} {'min ms':>10} {'max ms':>10}")
    for name, r in results['paths'].items():
        print(f"{name:<8} {r['median_ms']:>10.1f} {r['min_ms']:>10.1f} {r['max_ms']:>10.1f}")
    speedup = results['paths']['loop']['median_ms'] / results['paths']['foreach']['median_ms']
    results['speedup'] = speedup
    print(f'foreach speedup over loop: {speedup:.2f}x')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == '__main__':
    main()
