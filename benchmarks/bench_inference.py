"""GPT-2 inference speed against transformers: batched greedy generation and perplexity evaluation.

1. Generation: greedy tokens/s (new tokens of every row per second) of `sample.sample_prompts` (the key/value
   cache, prompts of mixed lengths in one batch) against transformers' `generate(do_sample=False)` (left-padded with
   its attention mask) on the same model and prompts, at batch 1 and --batch_size, in each of --precisions (bf16: both
   under the same autocast); the new tokens are checked equal row by row.
2. Evaluation: tokens/s of `evaluate.stream_nll` (windows of the model's n_ctx advancing by --stride, each token
   scored once, evaluate.py's default batch of 8 windows) against the perplexity loop of transformers' guide (each
   window's `model(input_ids, labels=target_ids).loss`, the tokens an earlier window scored set to -100), on the
   same random token stream; the summed NLLs are checked to agree within 0.1%.

Each measurement runs once untimed (warm-up), then ours and transformers' take turns for --rounds timed rounds, so a
slow spell of a shared machine falls on both; the median and the range are reported. Random weights of the size
given (default 124M): speed does not depend on the values.

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
from model_gpt2 import GPT2Config, GPT2LMHeadModel
from precision import autocast_context

N_VOCAB = 50257


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
    p.add_argument('--rounds', type=int, default=3, help='timed rounds of the two taking turns (default: 3)')
    p.add_argument('--quick', action='store_true', help='a tiny model and short runs: a smoke test (default: off)')
    p.add_argument('--json', default=None, help='also write the results as JSON to this path (default: none)')
    return p.parse_args(argv)


def models(args, device):
    """Return (ours, transformers') GPT-2 LM of the same random weights, in eval mode on device."""
    from transformers import GPT2LMHeadModel as HFModel

    from models import complete_checkpoint
    from weights import checkpoint_from_model, write_transformers
    cfg = GPT2Config.preset(args.size)
    if args.quick:
        cfg = dataclasses.replace(cfg, n_ctx=args.n_ctx, n_embd=32, n_head=2, n_layer=2)
    torch.manual_seed(0)
    ours = GPT2LMHeadModel(cfg).eval().to(device)
    with tempfile.TemporaryDirectory() as d:
        write_transformers(complete_checkpoint(checkpoint_from_model(ours)), d)
        theirs = HFModel.from_pretrained(d).eval().to(device)
    return ours, theirs


def take_turns(jobs, rounds):
    """Return {name: [seconds of each timed round]} of jobs {name: callable}, each run once untimed first, then in
    turn for rounds rounds."""
    for job in jobs.values():
        job()
    times = {name: [] for name in jobs}
    for _ in range(rounds):
        for name, job in jobs.items():
            start = time.perf_counter()
            job()
            times[name].append(time.perf_counter() - start)
    return times


def mixed_prompts(n, longest, seed=1):
    """Return n random prompts (id lists) of lengths spread from longest // 2 to longest (one of longest when n is 1)."""
    rng = np.random.default_rng(seed)
    lengths = [longest] if n == 1 else np.linspace(max(1, longest // 2), longest, n).round().astype(int).tolist()
    return [rng.integers(0, N_VOCAB - 1, k).tolist() for k in lengths]


def generation(args, ours, theirs, device, precision, batch):
    """Return the rows of greedy generation tokens/s of ours (sample.sample_prompts: the prompts in one batch, run
    packed, the steps padded on the right and masked) and transformers' (padded on the left with its attention_mask,
    as its docs advise) at one precision, on batch prompts of mixed lengths."""
    from sample import SamplingSettings, sample_prompts
    prompts = mixed_prompts(batch, args.prompt_len)
    settings = SamplingSettings(gen_len=args.gen_len, greedy=True)
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=device)  # [B, width], left-padded
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    out = {}

    def run_ours():
        with autocast_context(device, precision):
            out['ours'] = sample_prompts(ours, prompts, N_VOCAB, settings)[0]

    def run_theirs():
        with torch.no_grad(), autocast_context(device, precision):
            new = theirs.generate(ids, attention_mask=mask, max_new_tokens=args.gen_len, do_sample=False,
                                  pad_token_id=N_VOCAB - 1)
        out['transformers'] = new[:, width:].tolist()

    times = take_turns({'ours': run_ours, 'transformers': run_theirs}, args.rounds)
    same = out['ours'] == out['transformers']
    return [dict(task='generation', impl=name, precision=precision, batch=batch, same=same,
                 tokens=batch * args.gen_len, times=own) for name, own in times.items()]


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


def evaluation(args, ours, theirs, device, precision):
    """Return the rows of evaluation tokens/s of evaluate.stream_nll and the transformers guide's loop."""
    from encoder_gpt2 import get_encoder
    from evaluate import stream_nll
    from heuristics import scoring_lm
    ids = np.random.default_rng(2).integers(0, N_VOCAB - 1, args.eval_tokens).tolist()
    lm = scoring_lm(ours, get_encoder(), precision=precision, batch_size=8)
    out = {}

    def run_ours():
        with torch.no_grad():
            out['ours'] = stream_nll(lm, ids, args.stride)[0]

    def run_theirs():
        with autocast_context(device, precision):
            out['transformers'] = hf_perplexity_nll(theirs, ids, lm.n_ctx, args.stride, device)

    times = take_turns({'ours': run_ours, 'transformers': run_theirs}, args.rounds)
    # every token but the first scored once by both; a window's context differs by a token (ours: n_ctx inputs, the
    # guide's: n_ctx tokens), so the sums agree closely, not exactly
    same = abs(out['ours'] - out['transformers']) <= 1e-3 * abs(out['transformers'])
    return [dict(task='evaluation', impl=name, precision=precision, batch=1, same=same, tokens=len(ids) - 1,
                 times=own) for name, own in times.items()]


def main(argv=None):
    """Run both benchmarks; print their table (and write JSON); return the exit code."""
    args = parse_args(argv)
    if args.quick:
        args.batch_size, args.prompt_len, args.gen_len, args.eval_tokens = 4, 8, 4, 200
        args.n_ctx, args.stride, args.rounds = 64, 32, 1  # the tiny model's positions: the evaluation window
    tasks = args.tasks.split(',')
    unknown = sorted(set(tasks) - {'generation', 'evaluation'})
    if unknown:
        raise SystemExit(f'--tasks {args.tasks}: {", ".join(unknown)} unknown; give generation and/or evaluation')
    device = torch.device(args.device)
    ours, theirs = models(args, device)
    rows = []
    for precision in args.precisions.split(','):
        if 'generation' in tasks:
            for batch in (1, args.batch_size):
                rows += generation(args, ours, theirs, device, precision, batch)
        if 'evaluation' in tasks:
            rows += evaluation(args, ours, theirs, device, precision)
    for r in rows:
        r['tokens_per_s'] = r['tokens'] / statistics.median(r['times'])
    info = bench.machine_info(device)
    print(f"GPT-2 inference: {info.get('cpu', '')} {info.get('gpu', '')} torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {'tiny' if args.quick else args.size}, 1 untimed "
          f"run then {args.rounds} timed rounds taking turns (median, range)")
    print(f"{'task':11} {'impl':13} {'prec':5} {'batch':>5} {'tok/s':>9} {'range':>17}  ours vs it  same")
    for r in rows:
        ours_row = next(o for o in rows if o['impl'] == 'ours' and o['task'] == r['task'] and
                        o['precision'] == r['precision'] and o['batch'] == r['batch'])
        slowest, fastest = r['tokens'] / max(r['times']), r['tokens'] / min(r['times'])
        vs = '' if r['impl'] == 'ours' else f"{ours_row['tokens_per_s'] / r['tokens_per_s']:.2f}x"
        print(f"{r['task']:11} {r['impl']:13} {r['precision']:5} {r['batch']:5} {r['tokens_per_s']:9.1f} "
              f"{slowest:8.1f}-{fastest:<8.1f}  {vs:10}  {r['same']}")
    if args.json:
        bench.write_json(args.json, info, args, results=rows)
    return 0


if __name__ == '__main__':
    sys.exit(main())
