"""GPT-2 speed: pre-training against nanoGPT and transformers, generation with the cache, encoding.

1. Pre-training tokens/s of GPT-2 (default the 124M size) on the same random token windows, same model size,
   context, batch (micro-batches accumulated to the same update) and precision:
   - ours: `pretrain.pretrain_step` on a `GPT2LMHeadModel` (trainer.Run: autocast, the fused LM loss over the 50,257
     token rows, OpenAIAdam with global clipping), in a process of its own (this script with --worker ours);
   - transformers: `GPT2LMHeadModel(input_ids, labels=input_ids)`, backward, `clip_grad_norm_(1.0)`, AdamW, in a
     plain loop in a process of its own (--worker transformers);
   - nanoGPT: its `train.py`, run unchanged from a scratch copy of the folder given by --nanogpt, as a subprocess on
     train.bin/val.bin written here (its own per-iteration times, from its log; its first iterations dropped). On a
     CPU nanoGPT applies autocast on CUDA only, so its --dtype=bfloat16 computes in fp32 there.
   With --compile (for a GPU) each model is compiled: ours as pretrain.py --compile does, transformers' with a fused
   AdamW, nanoGPT with its default --compile=True and its fused AdamW on CUDA.
   The three are timed in steady state, by steady.py's protocol: they take turns round by round, each round in a new
   process (nanoGPT's a run of its train.py), at least --warmup_steps updates discarded, --steps timed.
2. Generation: greedy tokens/s of `sample.sample_ids` (one position at a time with the key/value cache) against
   transformers' `generate(do_sample=False)`, the same model and prompt.
3. Encoding: characters/s of `encoder_gpt2.Encoder.encode` against the original encoder.py (given by
   --original_encoder, run unchanged on the same vocabulary) and transformers' GPT2TokenizerFast, ids checked equal.

    python benchmarks/bench_gpt2.py --nanogpt ../shared/reference/nanogpt --original_encoder ../shared/reference/original-gpt2/encoder.py
    python benchmarks/bench_gpt2.py --device cuda --precisions bf16 --n_ctx 1024 --n_batch 16 --nanogpt PATH
    python benchmarks/bench_gpt2.py --quick       # a tiny model, seconds (tests/test_bench_gpt2.py)
"""
import argparse
import importlib.util
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the library at the repository root

import numpy as np
import torch

import bench
import bench_pretrain
import steady
from model_gpt2 import GPT2Config, GPT2LMHeadModel

N_VOCAB = 50257
NANOGPT_FILES = ('train.py', 'model.py', 'configurator.py')
NANOGPT_ITER = re.compile(r'^iter (\d+): loss [-\d.naninf]+, time ([\d.]+)ms')
NANOGPT_DTYPES = {'fp32': 'float32', 'bf16': 'bfloat16', 'fp16': 'float16'}


def parse_args(argv=None):
    """Return the parsed command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--device', default='cpu', help='torch device (default: cpu)')
    p.add_argument('--precisions', default='fp32,bf16', help='comma-separated: fp32, bf16, fp16 (default: fp32,bf16)')
    p.add_argument('--size', default='124M', help='the GPT-2 size (a preset name: 124M, 355M, 774M, 1558M; default: '
                                                  '124M)')
    p.add_argument('--n_ctx', type=int, default=256, help='tokens per window (default: 256)')
    p.add_argument('--n_batch', type=int, default=4, help='windows per update (default: 4)')
    p.add_argument('--micro_batch', type=int, default=None, help='windows per forward pass (default n_batch)')
    steady.add_arguments(p)
    p.add_argument('--compile', action='store_true',
                   help="torch.compile each model as its users would on a GPU: ours (pretrain.py --compile), "
                        "transformers' (and a fused AdamW), nanoGPT's (its default; off otherwise)")
    p.add_argument('--nanogpt', default=None, help="a nanoGPT folder (its train.py, model.py, configurator.py; "
                                                   'default: none, nanoGPT is left out)')
    p.add_argument('--original_encoder', default=None, help="openai/gpt-2's encoder.py, for the encoding peer "
                                                            '(default: none, left out)')
    p.add_argument('--gen_len', type=int, default=64, help='tokens generated per prompt (default: 64)')
    p.add_argument('--text_mb', type=float, default=2.0, help='megabytes of text encoded (default: 2)')
    p.add_argument('--peak_tflops', type=float, default=None,
                   help="the device's dense peak in TFLOP/s (default: none, the best square matmul measured here)")
    p.add_argument('--quick', action='store_true', help='a tiny model, short windows and text: a smoke test')
    p.add_argument('--json', default=None, help='also write the results as JSON to this path (default: none)')
    p.add_argument('--worker', default=None, choices=tuple(IMPLS),
                   help='run one round of one implementation in this process, print its times as the last line '
                        '(the benchmark starts its rounds so; default: none, run the whole benchmark)')
    p.add_argument('--first_update', type=int, default=1, help="--worker's first update number (default: 1)")
    args = p.parse_args(argv)
    if args.quick:
        args.n_ctx, args.n_batch, args.micro_batch, args.gen_len = 32, 2, 1, 8
    args.protocol = steady.protocol_of(args)
    args.micro_batch = args.micro_batch or args.n_batch
    if args.n_batch % args.micro_batch:
        p.error(f'--micro_batch {args.micro_batch} must divide --n_batch {args.n_batch} (nanoGPT accumulates whole '
                f'micro-batches)')
    return args


def bench_config(args):
    """Return the GPT2Config benchmarked: the size (tiny with --quick), n_ctx positions, no dropout."""
    base = dict(n_embd=32, n_head=4, n_layer=2) if args.quick else {}
    cfg = GPT2Config.preset(args.size, n_ctx=args.n_ctx, **base)
    return cfg


def make_stream(n_tokens, seed=0):
    """Return a random uint16 token stream of GPT-2 ids with <|endoftext|> about every 300 tokens."""
    return bench_pretrain.make_stream(n_tokens, seed, n_words=N_VOCAB - 1, separator=N_VOCAB - 1)


class Ours:
    """pretrain.py's update on a GPT2LMHeadModel."""

    def __init__(self, args, cfg, precision, device):
        import pretrain
        from trainer import retain_freed_memory
        self.pretrain = pretrain
        retain_freed_memory()  # as pretrain.py's Launch.begin does: its process keeps the memory it frees
        torch.manual_seed(0)
        self.run = bench_pretrain.pretraining_run(args, GPT2LMHeadModel(cfg).to(device).train(), precision, device)
        self.windows = pretrain.Windows(args.n_ctx, N_VOCAB, N_VOCAB)
        self.batch = pretrain.UpdateBatch(0, args.n_batch, args.micro_batch)

    def step(self, stream, update_no):
        """Make one update on the windows of update_no."""
        self.pretrain.pretrain_step(self.run, stream, update_no, self.windows, self.batch)


class Transformers(bench_pretrain.Peer):
    """transformers' GPT2LMHeadModel trained on the same windows, accumulated over the same micro-batches."""

    def __init__(self, args, cfg, precision, device):
        from transformers import GPT2Config as HFConfig
        from transformers import GPT2LMHeadModel as HFModel
        torch.manual_seed(0)
        hf = HFConfig(vocab_size=N_VOCAB, n_positions=cfg.n_ctx, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
                      n_head=cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        self.start(HFModel(hf), args, precision, device)


IMPLS = {'ours': Ours, 'transformers': Transformers}  # the implementations a --worker process runs


def nanogpt_folder(source, workdir, stream):
    """Copy nanoGPT's three files to a scratch folder with data/bench/{train,val}.bin; return the folder."""
    folder = os.path.join(workdir, 'nanogpt')
    os.makedirs(os.path.join(folder, 'data', 'bench'), exist_ok=True)
    for name in NANOGPT_FILES:
        path = os.path.join(source, name)
        if not os.path.isfile(path):
            raise SystemExit(f'bench_gpt2.py: --nanogpt {source} has no {name}: give the folder of nanoGPT\'s train.py')
        shutil.copyfile(path, os.path.join(folder, name))
    for split in ('train', 'val'):
        stream.tofile(os.path.join(folder, 'data', 'bench', f'{split}.bin'))
    return folder


def run_nanogpt(folder, args, cfg, precision, device):
    """Run nanoGPT's train.py unchanged for 2 * warmup + steps iterations; return (the number of leading iterations
    discarded as its warm-up (settled), the seconds of the steps timed after them)."""
    protocol = args.protocol
    n_iters = protocol.most
    cmd = [sys.executable, 'train.py', '--dataset=bench', f'--device={device}', f'--compile={args.compile}',
           f'--dtype={NANOGPT_DTYPES[precision]}', f'--batch_size={args.micro_batch}',
           f'--gradient_accumulation_steps={args.n_batch // args.micro_batch}', f'--block_size={cfg.n_ctx}',
           f'--n_layer={cfg.n_layer}', f'--n_head={cfg.n_head}', f'--n_embd={cfg.n_embd}', '--bias=True',
           '--dropout=0.0', f'--max_iters={n_iters - 1}', '--eval_interval=1000000000', '--eval_iters=1',
           '--log_interval=1', '--always_save_checkpoint=False', '--out_dir=out']
    proc = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f'bench_gpt2.py: nanoGPT failed: {proc.stderr[-2000:]}')
    times = {int(m.group(1)): float(m.group(2)) / 1000 for m in map(NANOGPT_ITER.match, proc.stdout.splitlines())
             if m}
    times = [times[k] for k in range(n_iters)]
    discard = steady.settled(times, protocol.warmup, protocol.settle)
    return discard, times[discard:discard + protocol.steps]


def worker_round(args, cfg, device, stream):
    """Return one round of the implementation args.worker in precision args.precisions (one): the updates it
    discarded and the seconds of the timed ones."""
    impl = IMPLS[args.worker](args, cfg, args.precisions, device)
    return steady.measure_round(lambda k: impl.step(stream, args.first_update + k), args.protocol,
                                lambda fn: bench.timed(fn, device))


def worker_argv(args, name, precision, first_update):
    """Return the command line of a worker process making one round of implementation name."""
    argv = [sys.executable, os.path.abspath(__file__), '--worker', name, '--precisions', precision,
            '--first_update', str(first_update), '--device', args.device, '--size', args.size,
            '--n_ctx', str(args.n_ctx), '--n_batch', str(args.n_batch), '--micro_batch', str(args.micro_batch),
            *args.protocol.argv()]
    return argv + (['--quick'] if args.quick else []) + (['--compile'] if args.compile else [])


def pretraining(args, cfg, device, stream, workdir):
    """Return the pre-training results: per precision and implementation, the timed updates' seconds, what each round
    discarded and its process (nanoGPT's: a run of its train.py, whose process id is not reported)."""
    folder = nanogpt_folder(args.nanogpt, workdir, stream) if args.nanogpt else None
    results = []
    for precision in args.precisions.split(','):
        def run_round(name, r, precision=precision):
            if name == 'nanogpt':
                discarded, times = run_nanogpt(folder, args, cfg, precision, device)
                return dict(discarded=discarded, times=times)
            return steady.run_worker(worker_argv(args, name, precision, 1 + r * args.protocol.most),
                                     f'bench_gpt2.py: the {name} worker')

        names = list(IMPLS) + (['nanogpt'] if folder else [])
        for name, rounds in steady.take_turns(names, args.protocol, run_round).items():
            own = [t for r in rounds for t in r['times']]
            results.append(dict(impl=name, precision=precision, times=own, discarded=[r['discarded'] for r in rounds],
                                step_s=statistics.median(own), step_min=min(own), step_max=max(own),
                                pids=[r['pid'] for r in rounds if 'pid' in r]))
    return results


def generation(args, cfg, device):
    """Return greedy generation tokens/s of ours and transformers' generate on the same model and prompt."""
    from transformers import GPT2LMHeadModel as HFModel

    from sample import SamplingSettings, sample_ids
    from weights import checkpoint_from_model, write_transformers
    from models import complete_checkpoint
    torch.manual_seed(0)
    ours = GPT2LMHeadModel(cfg).eval().to(device)
    with tempfile.TemporaryDirectory() as d:
        write_transformers(complete_checkpoint(checkpoint_from_model(ours)), d)
        theirs = HFModel.from_pretrained(d).eval().to(device)
    prompt = make_stream(min(32, cfg.n_ctx // 2), seed=1).astype(np.int64).tolist()
    gen_len = min(args.gen_len, cfg.n_ctx - len(prompt))
    times = {'ours': [], 'transformers': []}
    for _ in range(args.protocol.rounds):
        start = time.perf_counter()
        ids, _ = sample_ids(ours, prompt, N_VOCAB, SamplingSettings(gen_len=gen_len, greedy=True))
        times['ours'].append(time.perf_counter() - start)
        start = time.perf_counter()
        with torch.no_grad():
            out = theirs.generate(torch.tensor([prompt], device=device), max_new_tokens=gen_len, do_sample=False,
                                  pad_token_id=N_VOCAB - 1, attention_mask=torch.ones(1, len(prompt), dtype=torch.long,
                                                                                     device=device))
        times['transformers'].append(time.perf_counter() - start)
        same = ids == out[0, len(prompt):].tolist()
    return [dict(impl=name, gen_len=gen_len, tokens_per_s=gen_len / statistics.median(own), times=own,
                 same_tokens=same) for name, own in times.items()]


def english_text(n_chars, seed=0):
    """Return about n_chars of varied English-like text (synthetic stories, numbers, punctuation, some accents)."""
    import bench_text
    stories = bench_text.synthetic_rocstories(n_stories=max(50, n_chars // 500), seed=seed)
    text = '\n'.join(' '.join(row) for row in zip(*stories[:5])) + '\n'
    while len(text) < n_chars:
        text += text
    return text[:n_chars] + ' Café naïve résumé — 3.14 x 10^9, “quotes” and emoji 🙂.\n'


def encoding(args):
    """Return encoding characters/s of ours, the original encoder.py and transformers' fast tokenizer."""
    import inspect

    import encoder_gpt2
    from transformers import GPT2TokenizerFast
    text = english_text(int(args.text_mb * 1e6) if not args.quick else 20_000)
    vocab = encoder_gpt2.DEFAULT_MODEL_DIR
    encoders = {'ours': encoder_gpt2.get_encoder().encode}
    if args.original_encoder:
        spec = importlib.util.spec_from_file_location('original_encoder', args.original_encoder)
        original = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(original)
        encoders['original'] = original.Encoder(encoder=encoder_gpt2.read_encoder_json(vocab / encoder_gpt2.ENCODER_FILE),
                                                bpe_merges=encoder_gpt2.read_merges(vocab / encoder_gpt2.MERGES_FILE)).encode
    if 'vocab_file' in inspect.signature(GPT2TokenizerFast.__init__).parameters:  # transformers 4
        files = dict(vocab_file=str(vocab / encoder_gpt2.ENCODER_FILE), merges_file=str(vocab / encoder_gpt2.MERGES_FILE))
    else:  # transformers 5 ignores vocab_file= and merges_file= (an empty vocabulary)
        files = dict(vocab=str(vocab / encoder_gpt2.ENCODER_FILE), merges=str(vocab / encoder_gpt2.MERGES_FILE))
    fast = GPT2TokenizerFast(**files, split_special_tokens=True)
    encoders['transformers'] = lambda t: fast(t, add_special_tokens=False)['input_ids']
    results, reference = [], None
    for name, encode in encoders.items():
        start = time.perf_counter()
        ids = encode(text)
        seconds = time.perf_counter() - start
        reference = ids if reference is None else reference
        results.append(dict(impl=name, chars=len(text), seconds=seconds, chars_per_s=len(text) / seconds,
                            same_ids=ids == reference))
    return results


def peak_of(args, precision, device, info):
    """Return (the FLOP/s a precision's utilisation is measured against, where it comes from): --peak_tflops, else the
    bf16 dense peak of a known GPU for bf16 and fp16, else the best square matmul measured here."""
    if args.peak_tflops:
        return args.peak_tflops * 1e12, '--peak_tflops'
    import bench_e2e
    known, source = bench_e2e.default_peak(str(device), info.get('gpu'))
    if known and precision in ('bf16', 'fp16'):
        return known * 1e12, source
    n = 256 if args.quick else 3072
    return bench.measure_roofline(precision, device, n), f'the best square matmul of n={n}'


def main(argv=None):
    """Run the three benchmarks; print their tables (and write JSON); return the exit code."""
    args = parse_args(argv)
    device = torch.device(args.device)
    cfg = bench_config(args)
    stream = make_stream(max(8 * args.n_batch * (args.n_ctx + 1) * 8, 100_000))
    if args.worker:
        discarded, times = worker_round(args, cfg, device, stream)
        steady.report(dict(discarded=discarded, times=times))
        return 0
    shape = SimpleNamespace(n_vocab=N_VOCAB, n_ctx=cfg.n_ctx, n_embd=cfg.n_embd, n_layer=cfg.n_layer)
    flops = args.n_batch * bench.seq_flops(args.n_ctx, shape, N_VOCAB, train=True)
    with tempfile.TemporaryDirectory() as workdir:
        pre = pretraining(args, cfg, device, stream, workdir)
    gen, enc = generation(args, cfg, device), encoding(args)
    info = bench.machine_info(device)
    peaks = {precision: peak_of(args, precision, device, info) for precision in args.precisions.split(',')}
    print(f"GPT-2 benchmark: {info.get('cpu', '')} {info.get('gpu', '')} torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"model {cfg.n_embd}/{cfg.n_layer}/{cfg.n_head} ({args.size if not args.quick else 'tiny'}), {args.n_batch} "
          f"windows of {args.n_ctx} an update (micro-batch {args.micro_batch}); {args.protocol.describe()} (median, "
          f"range); device {device}")
    tokens = args.n_batch * args.n_ctx
    print('peak: ' + ', '.join(f'{precision} {peak / 1e12:.3f} TFLOP/s ({source})'
                               for precision, (peak, source) in peaks.items()))
    print(f"{'pre-training':14} {'prec':5} {'step s':>8} {'range':>13} {'tok/s':>9} {'TFLOP/s':>8} {'of peak':>8} "
          f"{'discarded':>10}  ours vs it")
    for r in pre:
        ours = next(o for o in pre if o['impl'] == 'ours' and o['precision'] == r['precision'])
        r.update(tokens_per_s=tokens / r['step_s'], tflops=flops / r['step_s'] / 1e12,
                 peak_tflops=peaks[r['precision']][0] / 1e12, peak_source=peaks[r['precision']][1])
        r['of_peak'] = r['tflops'] / r['peak_tflops']
        vs = '' if r['impl'] == 'ours' else f"{r['step_s'] / ours['step_s']:.2f}x"
        spread = f"{r['step_min']:.2f}-{r['step_max']:.2f}"
        print(f"{r['impl']:14} {r['precision']:5} {r['step_s']:8.2f} {spread:>13} {r['tokens_per_s']:9.0f} "
              f"{r['tflops']:8.3f} {r['of_peak']:8.0%} {','.join(map(str, r['discarded'])):>10}  {vs}")
    print(f"{'generation':14} {'tok/s':>9}  same greedy tokens")
    for r in gen:
        print(f"{r['impl']:14} {r['tokens_per_s']:9.1f}  {r['same_tokens']}")
    print(f"{'encoding':14} {'Mchar/s':>9}  same ids")
    for r in enc:
        print(f"{r['impl']:14} {r['chars_per_s'] / 1e6:9.2f}  {r['same_ids']}")
    if args.json:
        bench.write_json(args.json, info, args, pretraining=pre, generation=gen, encoding=enc)
    return 0


if __name__ == '__main__':
    sys.exit(main())
