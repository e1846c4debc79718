"""Pre-training throughput: pretrain.py's update against transformers' OpenAIGPTLMHeadModel, tokens/s and MFU.

Both train the full-size GPT-1 (768 states, 12 layers, 12 heads) as a language model on windows of n_ctx
tokens (default 512, the paper's), the same random token windows for both, timed in steady state by steady.py's
protocol (rounds taken in turn, each in a process of its own, warm-up updates discarded until they settle):
- ours: `pretrain.pretrain_step` (trainer.update: micro-batches, autocast, the fused LM loss over the token
  rows and the separator, OpenAIAdam with global clipping);
- peer: `OpenAIGPTLMHeadModel(input_ids, labels=input_ids)` (its own position table, LM softmax over its
  token rows), backward, `clip_grad_norm_(1.0)`, `torch.optim.AdamW`, the same micro-batches accumulated.
FLOPs are model FLOPs per token (bench.seq_flops with train=True); MFU is against --peak_tflops when given,
else against the measured matmul roofline of the precision (bench.measure_roofline).

    python benchmarks/bench_pretrain.py                          # CPU: fp32 and bf16, 4 windows of 512 an update
    python benchmarks/bench_pretrain.py --device cuda --n_batch 64 --micro_batch 16 --peak_tflops 989.4
    python benchmarks/bench_pretrain.py --quick                  # a tiny model, seconds (tests/test_bench_pretrain.py)
"""
import argparse
import os
import statistics
import sys
import time
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the library at the repository root

import numpy as np
import torch

import bench
import steady
from model_pytorch import DEFAULT_CONFIG, N_VOCAB, LMModel, clone_config
from opt import OpenAIAdam
from precision import autocast_context, configure_precision
from trainer import Launch, Run, RunSettings, StateSpec

FULL = dict(n_embd=768, n_head=12, n_layer=12)
QUICK = dict(n_embd=32, n_head=4, n_layer=2)


def parse_args(argv=None):
    """Return the parsed command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--device', default='cpu', help='torch device (default: cpu)')
    p.add_argument('--precisions', default='fp32,bf16', help='comma-separated: fp32, bf16, fp16 (default: fp32,bf16)')
    p.add_argument('--n_ctx', type=int, default=512, help="tokens per window (default: 512, the paper's)")
    p.add_argument('--n_batch', type=int, default=4, help='windows per update (default: 4)')
    p.add_argument('--micro_batch', type=int, default=None, help='windows per forward pass (default n_batch)')
    steady.add_arguments(p)
    p.add_argument('--compile', action='store_true',
                   help="torch.compile each model as its users would on a GPU: ours (pretrain.py --compile), the "
                        "peer's (and a fused AdamW; default: off)")
    p.add_argument('--peak_tflops', type=float, default=None, help='the device\'s dense peak; default: the roofline')
    p.add_argument('--quick', action='store_true', help='a tiny model and short windows: a smoke test')
    p.add_argument('--json', default=None, help='also write the results as JSON to this path (default: none)')
    p.add_argument('--worker', default=None, choices=('ours', 'peer'),
                   help='run one round of one implementation in this process, print its times as the last line '
                        '(the benchmark starts its rounds so; default: none, run the whole benchmark)')
    p.add_argument('--first_update', type=int, default=1, help="--worker's first update number (default: 1)")
    args = p.parse_args(argv)
    if args.quick:
        args.n_ctx, args.n_batch = 32, 2
    args.protocol = steady.protocol_of(args)
    return args


def shape_of(args):
    """Return the model shape bench.seq_flops expects."""
    size = QUICK if args.quick else FULL
    return SimpleNamespace(n_vocab=N_VOCAB, n_ctx=args.n_ctx, **size)


def make_stream(n_tokens, seed=0, n_words=N_VOCAB, separator=N_VOCAB):
    """Return a random uint16 token stream of ids below n_words with separator about every 300 tokens."""
    rng = np.random.default_rng(seed)
    stream = rng.integers(0, n_words, n_tokens).astype(np.uint16)
    stream[rng.integers(0, n_tokens, n_tokens // 300)] = separator
    return stream


def pretraining_run(args, model, precision, device):
    """Return a Run that makes pretrain.py's update on model (its transformer wrapped as pretrain.py wraps it) with
    the benchmark's optimizer."""
    opt = OpenAIAdam(model.parameters(), lr=2.5e-4, schedule='warmup_cosine_decay', warmup=0.1, t_total=1000,
                     l2=0.01, max_grad_norm=1.0)
    launch = Launch(RunSettings(seed=0, precision=precision, compile=args.compile),
                    device)  # writes no files
    return Run(launch, model, opt, StateSpec({}, {}), trained=model.transformer)


class Ours:
    """pretrain.py's update on an LMModel with the table [tokens; separator; positions]."""

    def __init__(self, args, shape, precision, device):
        import pretrain
        self.pretrain = pretrain
        torch.manual_seed(0)
        cfg = clone_config(DEFAULT_CONFIG, n_embd=shape.n_embd, n_head=shape.n_head, n_layer=shape.n_layer)
        model = LMModel(cfg, vocab=N_VOCAB + 1 + args.n_ctx, n_ctx=args.n_ctx).to(device)
        self.run = pretraining_run(args, model, precision, device)
        self.rows = N_VOCAB + 1
        self.n_ctx, self.n_batch, self.micro_batch = args.n_ctx, args.n_batch, args.micro_batch

    def step(self, stream, update_no):
        """Make one update on the windows of update_no."""
        windows = self.pretrain.Windows(self.n_ctx, self.rows, self.rows)
        batch = self.pretrain.UpdateBatch(0, self.n_batch, self.micro_batch)
        self.pretrain.pretrain_step(self.run, stream, update_no, windows, batch)


class Peer:
    """transformers' OpenAIGPTLMHeadModel trained on the same windows, accumulated over the same micro-batches."""

    def __init__(self, args, shape, precision, device):
        from transformers import OpenAIGPTConfig, OpenAIGPTLMHeadModel
        torch.manual_seed(0)
        cfg = OpenAIGPTConfig(vocab_size=N_VOCAB + 1, n_positions=args.n_ctx, n_embd=shape.n_embd,
                              n_layer=shape.n_layer, n_head=shape.n_head, afn='gelu')
        self.start(OpenAIGPTLMHeadModel(cfg), args, precision, device)

    def start(self, model, args, precision, device):
        """Train model (a transformers LM head model) with AdamW in precision on device."""
        self.model = model.to(device).train()
        self.forward = torch.compile(self.model) if args.compile else self.model
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=2.5e-4, weight_decay=0.01,
                                     fused=args.compile or None)
        self.scaler = configure_precision(device, precision)
        self.args, self.precision, self.device = args, precision, device

    def step(self, stream, update_no):
        """Make one update on the windows of update_no."""
        import pretrain
        args = self.args
        starts = pretrain.window_starts(0, update_no, args.n_batch, len(stream), args.n_ctx)
        micro = args.micro_batch or args.n_batch
        for s in range(0, args.n_batch, micro):
            ids = torch.from_numpy(np.stack([stream[t:t + args.n_ctx].astype(np.int64) for t in starts[s:s + micro]]))
            ids = ids.to(self.device)
            with autocast_context(self.device, self.precision):
                loss = self.forward(input_ids=ids, labels=ids).loss * (len(ids) / args.n_batch)
            (self.scaler.scale(loss) if self.scaler else loss).backward()
        if self.scaler:
            self.scaler.unscale_(self.opt)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        if self.scaler:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)


IMPLS = {'ours': Ours, 'peer': Peer}  # the implementations a --worker process runs


def worker_argv(args, name, precision, first_update):
    """Return the command line of a worker process making one round of implementation name."""
    argv = [sys.executable, os.path.abspath(__file__), '--worker', name, '--precisions', precision,
            '--first_update', str(first_update), '--device', args.device, '--n_ctx', str(args.n_ctx),
            '--n_batch', str(args.n_batch), *args.protocol.argv()]
    return (argv + (['--micro_batch', str(args.micro_batch)] if args.micro_batch else [])
            + (['--quick'] if args.quick else []) + (['--compile'] if args.compile else []))


def worker_round(args, shape, stream, device):
    """Return one round of implementation args.worker in precision args.precisions (one): the updates it discarded,
    the seconds of the timed ones."""
    impl = IMPLS[args.worker](args, shape, args.precisions, device)
    discarded, times = steady.measure_round(lambda k: impl.step(stream, args.first_update + k), args.protocol,
                                            lambda fn: bench.timed(fn, device))
    return dict(discarded=discarded, times=times)


def measure(args, precision):
    """Return {impl name: [each round's worker result]}, ours and the peer taking turns, each round in a new process
    on the same windows as the other's."""
    def run_round(name, r):
        first_update = 1 + r * args.protocol.most
        return steady.run_worker(worker_argv(args, name, precision, first_update), f'bench_pretrain.py: {name}')

    return steady.take_turns(list(IMPLS), args.protocol, run_round)


def main(argv=None):
    """Run the benchmark; print a table (and write JSON); return the exit code."""
    args = parse_args(argv)
    device = torch.device(args.device)
    shape = shape_of(args)
    stream = make_stream(max(4 * args.n_batch * (args.n_ctx + 1) * 8, 100_000))
    if args.worker:
        steady.report(worker_round(args, shape, stream, device))
        return 0
    tokens = args.n_batch * args.n_ctx
    flops = args.n_batch * bench.seq_flops(args.n_ctx, shape, N_VOCAB + 1, train=True)
    results = []
    for precision in args.precisions.split(','):
        peak = args.peak_tflops * 1e12 if args.peak_tflops else bench.measure_roofline(
            precision, device, 512 if args.quick else (8192 if device.type == 'cuda' else 3072))
        for name, rounds in measure(args, precision).items():
            times = [t for r in rounds for t in r['times']]
            step_s = statistics.median(times)
            results.append(dict(impl=name, precision=precision, step_s=step_s, step_min=min(times),
                                step_max=max(times), times=times, discarded=[r['discarded'] for r in rounds],
                                pids=[r['pid'] for r in rounds], tokens_per_s=tokens / step_s,
                                tflops=flops / step_s / 1e12, mfu=flops / step_s / peak, peak_tflops=peak / 1e12))
    info = bench.machine_info(device)
    print(f"GPT-1 pre-training benchmark: {info.get('cpu', '')} {info.get('gpu', '')} torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"model {shape.n_embd}/{shape.n_layer}/{shape.n_head}, rows {N_VOCAB + 1}; {args.n_batch} windows of "
          f"{args.n_ctx} an update (micro-batch {args.micro_batch or args.n_batch}); {args.protocol.describe()} "
          f"(median, range); device {device}")
    print(f"{'impl':6} {'prec':5} {'step s':>8} {'range':>13} {'tok/s':>9} {'TFLOP/s':>8} {'MFU':>6} {'peak':>8} "
          f"{'discarded':>10}  vs peer")
    for r in results:
        peer = next(p for p in results if p['impl'] == 'peer' and p['precision'] == r['precision'])
        vs = f"{peer['step_s'] / r['step_s']:.2f}x" if r['impl'] == 'ours' else ''
        spread = f"{r['step_min']:.2f}-{r['step_max']:.2f}"
        print(f"{r['impl']:6} {r['precision']:5} {r['step_s']:8.2f} {spread:>13} {r['tokens_per_s']:9.0f} "
              f"{r['tflops']:8.3f} {r['mfu']:6.1%} {r['peak_tflops']:8.3f} {','.join(map(str, r['discarded'])):>10}  "
              f"{vs}")
    if args.json:
        bench.write_json(args.json, info, args, results=results)
    return 0


if __name__ == '__main__':
    sys.exit(main())
