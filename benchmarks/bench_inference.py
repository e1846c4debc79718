"""GPT-2 inference speed against transformers: batched greedy generation and perplexity evaluation.

1. Generation: greedy tokens/s (new tokens of every row per second) of `sample.sample_prompts` (the key/value
   cache, prompts of mixed lengths in one batch) against transformers' `generate(do_sample=False)` (left-padded with
   its attention mask) on the same model and prompts, at batch 1 and --batch_size, in each of --precisions (bf16: both
   under the same autocast); the new tokens are checked equal row by row.
2. Evaluation: tokens/s of `evaluate.stream_nll` (windows of the model's n_ctx advancing by --stride, each token
   scored once, evaluate.py's default batch of 8 windows) against the perplexity loop of transformers' guide (each
   window's `model(input_ids, labels=target_ids).loss`, the tokens an earlier window scored set to -100), on the
   same random token stream; the summed NLLs are checked to agree within 0.1%.

Each is timed in steady state by steady.py's protocol: ours and transformers' take turns round by round, each round
in a process of its own making every measurement of a precision, each measurement's warm-up runs discarded until they
settle, then --steps runs timed; the median and the range of all timed runs are reported. Random weights of the size
given (default 124M, seed 0, the same for both): speed does not depend on the values.

    python benchmarks/bench_inference.py                       # 124M, fp32 and bf16, batch 1 and 16
    python benchmarks/bench_inference.py --quick               # a tiny model, seconds (tests/test_bench_inference.py)
    python benchmarks/bench_inference.py --tasks generation --precisions fp32 --gen_len 128   # one table only
"""
import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the library at the repository root

import numpy as np
import torch

import bench
import steady
from model_gpt2 import GPT2Config, GPT2LMHeadModel
from precision import autocast_context

N_VOCAB = 50257
IMPLS = ('ours', 'transformers')


def parse_args(argv=None):
    """Return the parsed command line."""
    p = argparse.ArgumentParser(description='GPT-2 inference speed against transformers: batched greedy generation '
                                            'and perplexity evaluation.')
    p.add_argument('--device', default='cpu', help='torch device (default: cpu)')
    p.add_argument('--precisions', default='fp32,bf16', help='comma-separated: fp32, bf16 (default: fp32,bf16)')
    p.add_argument('--size', default='124M', help='the GPT-2 size, a preset name (default: 124M)')
    p.add_argument('--batch_size', type=int, default=16, help='rows generated together, besides 1 (default: 16)')
    p.add_argument('--prompt_len', type=int, default=32,
                   help='tokens of the longest prompt; a batch\'s prompts spread from half that (default: 32)')
    p.add_argument('--gen_len', type=int, default=32, help='tokens generated per row (default: 32)')
    p.add_argument('--eval_tokens', type=int, default=4096, help='tokens of the evaluated stream (default: 4096)')
    p.add_argument('--stride', type=int, default=512, help='evaluation stride (default: 512)')
    p.add_argument('--tasks', default='generation,evaluation',
                   help='comma-separated: generation, evaluation (default: generation,evaluation)')
    steady.add_arguments(p, what='runs')
    p.add_argument('--quick', action='store_true', help='a tiny model and short runs: a smoke test (default: off)')
    p.add_argument('--json', default=None, help='also write the results as JSON to this path (default: none)')
    p.add_argument('--worker', default=None, choices=IMPLS,
                   help='make one round of one implementation in this process, print its times as the last line '
                        '(the benchmark starts its rounds so; default: none, run the whole benchmark)')
    args = p.parse_args(argv)
    if args.quick:
        args.batch_size, args.prompt_len, args.gen_len, args.eval_tokens = 4, 8, 4, 200
        args.n_ctx, args.stride = 64, 32  # the tiny model's positions: the evaluation window
    args.protocol = steady.protocol_of(args)
    return args


def build(args, impl, device):
    """Return impl's GPT-2 LM ('ours' or 'transformers'), the same random weights for both (seed 0), in eval mode on
    device."""
    cfg = GPT2Config.preset(args.size)
    if args.quick:
        cfg = dataclasses.replace(cfg, n_ctx=args.n_ctx, n_embd=32, n_head=2, n_layer=2)
    torch.manual_seed(0)
    ours = GPT2LMHeadModel(cfg).eval().to(device)
    if impl == 'ours':
        return ours
    from transformers import GPT2LMHeadModel as HFModel

    from models import complete_checkpoint
    from weights import checkpoint_from_model, write_transformers
    with tempfile.TemporaryDirectory() as d:
        write_transformers(complete_checkpoint(checkpoint_from_model(ours)), d)
        return HFModel.from_pretrained(d).eval().to(device)


def mixed_prompts(n, longest, seed=1):
    """Return n random prompts (id lists) of lengths spread from longest // 2 to longest (one of longest when n is 1)."""
    rng = np.random.default_rng(seed)
    lengths = [longest] if n == 1 else np.linspace(max(1, longest // 2), longest, n).round().astype(int).tolist()
    return [rng.integers(0, N_VOCAB - 1, k).tolist() for k in lengths]


def generation(args, impl, model, device, precision, batch):
    """Return a job of greedy generation on batch prompts of mixed lengths: (its tokens, a run returning the new
    tokens row by row). Ours: sample.sample_prompts (the prompts in one batch, run packed, the steps padded on the
    right and masked); transformers': generate, padded on the left with its attention_mask, as its docs advise."""
    prompts = mixed_prompts(batch, args.prompt_len)
    if impl == 'ours':
        from sample import SamplingSettings, sample_prompts
        settings = SamplingSettings(gen_len=args.gen_len, greedy=True)

        def run():
            with autocast_context(device, precision):
                return sample_prompts(model, prompts, N_VOCAB, settings)[0]
        return batch * args.gen_len, run
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=device)  # [B, width], left-padded
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)

    def run():
        with torch.no_grad(), autocast_context(device, precision):
            new = model.generate(ids, attention_mask=mask, max_new_tokens=args.gen_len, do_sample=False,
                                 pad_token_id=N_VOCAB - 1)
        return new[:, width:].tolist()
    return batch * args.gen_len, run


def hf_perplexity_nll(theirs, ids, n_ctx, stride, device):
    """Return the summed NLL (nats) of the transformers guide's loop: windows of n_ctx advancing by stride, each
    scoring the tokens no earlier window scored (the others' labels -100)."""
    total, prev_end = 0.0, 0
    seq = torch.tensor(ids, device=device)[None]  # [1, N]
    for begin in range(0, seq.size(1), stride):
        end = min(begin + n_ctx, seq.size(1))
        trg_len = end - prev_end
        input_ids = seq[:, begin:end]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = theirs(input_ids, labels=target_ids).loss  # the mean over its trg_len - (begin == 0) targets
        total += float(loss) * int((target_ids[:, 1:] != -100).sum())
        prev_end = end
        if end == seq.size(1):
            break
    return total


def evaluation(args, impl, model, device, precision):
    """Return a job of evaluation on a random token stream: (its scored tokens, a run returning the summed NLL). Ours:
    evaluate.stream_nll; transformers': the loop of its perplexity guide."""
    ids = np.random.default_rng(2).integers(0, N_VOCAB - 1, args.eval_tokens).tolist()
    if impl == 'ours':
        from encoder_gpt2 import get_encoder
        from evaluate import stream_nll
        from heuristics import scoring_lm
        lm = scoring_lm(model, get_encoder(), precision=precision, batch_size=8)

        def run():
            with torch.no_grad():
                return stream_nll(lm, ids, args.stride)[0]
        return len(ids) - 1, run

    def run():
        with autocast_context(device, precision):
            return hf_perplexity_nll(model, ids, model.config.n_positions, args.stride, device)
    return len(ids) - 1, run


def jobs(args, impl, model, device, precision):
    """Return [(task, batch, tokens, run)]: the measurements --tasks asks for, in order."""
    tasks = args.tasks.split(',')
    out = [('generation', batch, *generation(args, impl, model, device, precision, batch))
           for batch in ((1, args.batch_size) if 'generation' in tasks else ())]
    if 'evaluation' in tasks:
        out.append(('evaluation', 1, *evaluation(args, impl, model, device, precision)))
    return out


def worker_round(args, device):
    """Return one round of implementation args.worker at precision args.precisions (one): each job's discarded runs,
    the seconds of the timed ones and the last run's output."""
    model = build(args, args.worker, device)
    rows = []
    for task, batch, tokens, run in jobs(args, args.worker, model, device, args.precisions):
        last = {}
        discarded, times = steady.measure_round(lambda k: last.update(output=run()), args.protocol,
                                                lambda fn: bench.timed(fn, device))
        rows.append(dict(task=task, batch=batch, tokens=tokens, discarded=discarded, times=times,
                         output=last['output']))
    return dict(rows=rows)


def worker_argv(args, name, precision):
    """Return the command line of a worker process making one round of implementation name at precision."""
    argv = [sys.executable, os.path.abspath(__file__), '--worker', name, '--precisions', precision,
            '--device', args.device, '--size', args.size, '--batch_size', str(args.batch_size),
            '--prompt_len', str(args.prompt_len), '--gen_len', str(args.gen_len), '--eval_tokens', str(args.eval_tokens),
            '--stride', str(args.stride), '--tasks', args.tasks, *args.protocol.argv()]
    return argv + (['--quick'] if args.quick else [])


def same_output(task, ours, theirs):
    """Return whether two implementations computed the same: the greedy tokens row by row, or the summed NLLs within
    0.1% (a window's context differs by a token: ours n_ctx inputs, the guide's n_ctx tokens)."""
    if task == 'generation':
        return ours == theirs
    return abs(ours - theirs) <= 1e-3 * abs(theirs)


def measure(args, precision):
    """Return the rows of one precision: each job of each implementation over every round, outputs compared."""
    def run_round(name, r):
        return steady.run_worker(worker_argv(args, name, precision), f'bench_inference.py: the {name} worker')

    rounds = steady.take_turns(IMPLS, args.protocol, run_round)
    rows = []
    for name, per_round in rounds.items():
        for i, job in enumerate(per_round[0]['rows']):
            mine = [r['rows'][i] for r in per_round]
            rows.append(dict(task=job['task'], impl=name, precision=precision, batch=job['batch'], tokens=job['tokens'],
                             times=[t for m in mine for t in m['times']], discarded=[m['discarded'] for m in mine],
                             pids=[r['pid'] for r in per_round], output=mine[-1]['output']))
    for r in rows:
        ours = next(o for o in rows if o['impl'] == 'ours' and (o['task'], o['batch']) == (r['task'], r['batch']))
        r['same'] = same_output(r['task'], ours['output'], r['output'])
    for r in rows:
        del r['output']
    return rows


def main(argv=None):
    """Run both benchmarks; print their table (and write JSON); return the exit code."""
    args = parse_args(argv)
    unknown = sorted(set(args.tasks.split(',')) - {'generation', 'evaluation'})
    if unknown:
        raise SystemExit(f'--tasks {args.tasks}: {", ".join(unknown)} unknown; give generation and/or evaluation')
    device = torch.device(args.device)
    if args.worker:
        steady.report(worker_round(args, device))
        return 0
    rows = [row for precision in args.precisions.split(',') for row in measure(args, precision)]
    for r in rows:
        r['tokens_per_s'] = r['tokens'] / statistics.median(r['times'])
    info = bench.machine_info(device)
    print(f"GPT-2 inference: {info.get('cpu', '')} {info.get('gpu', '')} torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {'tiny' if args.quick else args.size}; "
          f"{args.protocol.describe()} (median, range)")
    print(f"{'task':11} {'impl':13} {'prec':5} {'batch':>5} {'tok/s':>9} {'range':>17} {'discarded':>10}  ours vs it  same")
    for r in rows:
        ours_row = next(o for o in rows if o['impl'] == 'ours' and o['task'] == r['task'] and
                        o['precision'] == r['precision'] and o['batch'] == r['batch'])
        slowest, fastest = r['tokens'] / max(r['times']), r['tokens'] / min(r['times'])
        vs = '' if r['impl'] == 'ours' else f"{ours_row['tokens_per_s'] / r['tokens_per_s']:.2f}x"
        print(f"{r['task']:11} {r['impl']:13} {r['precision']:5} {r['batch']:5} {r['tokens_per_s']:9.1f} "
              f"{slowest:8.1f}-{fastest:<8.1f} {','.join(map(str, r['discarded'])):>10}  {vs:10}  {r['same']}")
    if args.json:
        bench.write_json(args.json, info, args, results=rows)
    return 0


if __name__ == '__main__':
    sys.exit(main())
