"""Pre-train GPT-1 (or GPT-2) on your own text, from scratch or continuing from released or converted weights.

No TF counterpart: OpenAI released the fine-tuning code only. This is the paper's first stage (Section 4.1) on
the same model (model_pytorch), BPE (text_utils, through prepare_corpus.py), optimizer (opt.OpenAIAdam) and
update (trainer.Run: micro-batches, autocast, DDP's no_sync, global clipping, the non-finite stop) as
train.py. A corpus prepared with `prepare_corpus.py --arch gpt2` trains a GPT-2 (model_gpt2) with the same update:
from scratch with a released size (--preset) or the architecture flags, or continuing from any GPT-2 folder; its LM
loss is the tied decoder over the 50,257 token rows, <|endoftext|> the document separator. The defaults are the paper's recipe: 12 layers, 768 states, 12 heads, GELU, N(0, 0.02) init,
contiguous windows of 512 tokens, 64 windows an update, Adam with the learning rate raised linearly from 0
over 2,000 updates to 2.5e-4 then annealed to 0 with a cosine (opt.warmup_cosine_decay), L2 0.01 on every
matrix (not biases or gains), dropout 0.1 on residuals, embeddings and attention, 100 epochs.

    python prepare_corpus.py --input books/ --out corpus/
    python pretrain.py --corpus corpus/ --out runs/books/                      # from scratch
    python pretrain.py --corpus corpus/ --out runs/domain/ --model_dir model/  # continue from released weights
    python train.py --model_dir runs/domain/ ...                               # then fine-tune as usual

The LM loss is the mean over every predicted token of the cross-entropy of the tied decoder over the token
rows and the document separator (never the position rows). Windows of n_ctx + 1 tokens are drawn from the
memory-mapped stream at offsets that depend only on --seed and the update's number, so a resumed run and a
run under torchrun (each rank takes its share of the same global batch) see the same windows.
"""
import argparse
import dataclasses
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch

from checkpoint import write_json
from corpus import corpus_family, load_corpus, read_meta
from distributed import DistInfo, close_distributed, dist_info, shard, sum_over_ranks
from flags import (add_architecture_args, add_config_arg, add_dropout_args, add_optimizer_args, add_run_args,
                   parse_with_config, task_dirs)
from heuristics import METRICS, SENTIMENT_WORDS, read_zero_shot, score_zero_shot, scoring_lm, single_token
from heuristics import TASKS as HEURISTIC_TASKS
from loss import LM_CHUNK, token_losses
from model_gpt2 import PRESETS, GPT2Config, GPT2LMHeadModel
from model_pytorch import DEFAULT_CONFIG, LMModel
from models import FAMILY_MODULES, architecture_flags, built_architecture, read_with_flags, tokenizer_from_files
from opt import SCHEDULES, OpenAIAdam
from sample import SamplingSettings, generate
from precision import autocast_context
from trainer import (RUN_ENDINGS, Evaluation, Launch, Run, RunFiles, RunSettings, StateSpec, failed_run_exit,
                     format_phases, phase_record, run_identity, save_state, shard_memory_line, stop_if_requested,
                     to_tensors, update_phase)
from untrusted import int_field
from utils import progress as progress_bar
from weights import (FAMILIES, checkpoint_from_model, family_name, vocab_names, write_released, write_safetensors,
                     write_tf_gpt2)

SAMPLE_PROMPT = 'the'
ARCHES = FAMILIES
DEFAULT_N_CTX = {'gpt1': 512, 'gpt2': 1024}  # the papers' context lengths
EVALS_PER_RUN = 20  # --eval_every's default: a loss curve of about this many points, whatever the run's length


def parse_args(argv=None):
    """Return the command line as PretrainSettings; architecture flags left out come from --model_dir or the paper."""
    return PretrainSettings(**vars(parse_with_config(command_line(), argv)))


def command_line():
    """Return pretrain.py's argument parser."""
    p = argparse.ArgumentParser(description='Pre-train GPT-1 or GPT-2 (the GPT-1 paper\'s first stage) on a corpus '
                                            'made by prepare_corpus.py, from scratch or from released or converted '
                                            'weights; under torchrun, data-parallel over the processes.')
    add_config_arg(p)
    p.add_argument('--corpus', required=True, help='the folder prepare_corpus.py wrote (train.bin, val.bin, meta.json)')
    p.add_argument('--out', required=True, help='the run folder: log.jsonl, the training state, the model')
    p.add_argument('--model_dir', default=None,
                   help='continue from these weights: GPT-1 released shards, a GPT-2 released checkpoint, a '
                        'convert.py or a transformers folder (default: train from scratch)')
    p.add_argument('--arch', choices=ARCHES, default=None,
                   help="the model family: gpt1 or gpt2 (default: the corpus's, whose tokenizer it was encoded with)")
    p.add_argument('--preset', choices=sorted(PRESETS, key=lambda n: float(n[:-1])), default=None,
                   help='GPT-2 from scratch: a released size (default 124M; --n_embd, --n_head, --n_layer override)')
    p.add_argument('--n_ctx', type=int, default=None,
                   help='tokens per window (default: 512 for GPT-1, 1024 for GPT-2; positions kept from the weights)')
    add_architecture_args(p)
    add_dropout_args(p, clf=False)
    p.add_argument('--n_epochs', type=float, default=100,
                   help='passes over the training tokens, setting --n_updates when it is not given (default: 100)')
    p.add_argument('--n_updates', type=int, default=None,
                   help='total updates; the schedule runs over them (default: from --n_epochs)')
    p.add_argument('--n_batch', type=int, default=64, help='windows per update, over all processes (default: 64)')
    add_optimizer_args(p, lr=2.5e-4)
    p.add_argument('--warmup_updates', type=int, default=2000,
                   help='updates over which the learning rate rises linearly from 0 to --lr before its cosine decay '
                        '(default: 2000, the paper\'s; a warning when it covers the whole run)')
    p.add_argument('--eval_every', type=int, default=None,
                   help=f'validation loss every N updates, and at the start and the end (default: the run\'s updates '
                        f'/ {EVALS_PER_RUN}, about {EVALS_PER_RUN} evaluations a run; 0: only at the end)')
    p.add_argument('--eval_windows', type=int, default=64,
                   help='fixed validation windows evaluated each time (default: 64)')
    p.add_argument('--sample_every', type=int, default=0,
                   help='a text sample every N updates (0: never; default: 0)')
    p.add_argument('--sample_prompt', default=SAMPLE_PROMPT,
                   help=f'the text the samples continue (default: {SAMPLE_PROMPT!r})')
    p.add_argument('--zero_shot', action='append', default=[], metavar='TASK=DATA_DIR',
                   help=f'at each evaluation, also score a zero-shot heuristic of the paper (heuristics.py: '
                        f'{", ".join(HEURISTIC_TASKS)}) on its default split in DATA_DIR, logged as zs_TASK '
                        f'(repeatable; default: none)')
    add_run_args(p, unit='windows', save_every=1000,
                 save_help='save the training state every N updates (and at the end; default: 1000)',
                 state_path='OUT/train_state.safetensors')
    p.add_argument('--save_shards', action='store_true',
                   help='also write the weights in the released format in OUT/shards/ (GPT-1: the ten shards; GPT-2: '
                        'hparams.json and a TensorFlow checkpoint)')
    return p


@dataclass(frozen=True)
class PretrainSettings:
    """pretrain.py's command line, typed: every flag (parse_args gives their defaults), in the order the run's log
    header and args.json list them; arch and n_ctx None until the corpus decides them (resolve_arch)."""
    corpus: str
    out: str
    model_dir: Optional[str]
    arch: Optional[str]
    preset: Optional[str]
    n_ctx: Optional[int]
    n_embd: Optional[int]   # the architecture flags: None means the weights' (or the paper's, the preset's)
    n_head: Optional[int]
    n_layer: Optional[int]
    afn: Optional[str]
    embd_pdrop: float
    attn_pdrop: float
    resid_pdrop: float
    n_epochs: float
    n_updates: Optional[int]
    n_batch: int
    lr: float
    l2: float
    max_grad_norm: float
    b1: float
    b2: float
    e: float
    warmup_updates: int
    eval_every: Optional[int]  # None until the run's updates decide it (eval_every_of)
    eval_windows: int
    sample_every: int
    sample_prompt: str
    zero_shot: list
    seed: int
    device: Optional[str]
    precision: str
    micro_batch: Optional[int]
    compile: bool
    shard: bool
    checkpoint_activations: bool
    save_every: int
    resume: Union[bool, str]  # True, False or 'auto'
    restart: bool
    quiet: bool
    save_shards: bool

    def windows(self, sizes):
        """Return the Windows layout of n_ctx tokens over a corpus of sizes (n_rows, first_position)."""
        return Windows(self.n_ctx, sizes['n_rows'], sizes['first_position'])

    def update_batch(self):
        """Return what each update draws (UpdateBatch): n_batch windows, micro_batch per forward pass."""
        return UpdateBatch(self.seed, self.n_batch, self.micro_batch)

    def evaluation(self, device):
        """Return how evaluations batch (micro_batch, else n_batch windows) on device in the run's precision."""
        return Evaluation(self.micro_batch or self.n_batch, device, self.precision, verbose=not self.quiet)


def check_args(settings, info=DistInfo()):
    """Raise ValueError naming the first inconsistent argument."""
    for name in ('n_batch', 'n_ctx', 'eval_windows'):
        if getattr(settings, name) < 1:
            raise ValueError(f'--{name} must be at least 1, got {getattr(settings, name)}')
    for name in ('eval_every', 'sample_every', 'save_every', 'warmup_updates'):
        if getattr(settings, name) is not None and getattr(settings, name) < 0:
            raise ValueError(f'--{name} must be 0 or more, got {getattr(settings, name)}')
    if settings.n_updates is not None and settings.n_updates < 1:
        raise ValueError(f'--n_updates must be at least 1, got {settings.n_updates}')
    if settings.micro_batch is not None and settings.micro_batch < 1:
        raise ValueError(f'--micro_batch must be at least 1, got {settings.micro_batch}')
    if info.world_size > settings.n_batch:
        raise ValueError(f'{info.world_size} processes for --n_batch {settings.n_batch}: use at most that many processes')
    zero_shot_tasks(settings.zero_shot)


def zero_shot_tasks(specs):
    """Return [(task, data_dir)] of --zero_shot TASK=DATA_DIR flags, each checked."""
    return task_dirs(specs, '--zero_shot', HEURISTIC_TASKS)


def read_zero_shot_tasks(settings, lm):
    """Return the ZeroShotData of every --zero_shot task (CoLA's training split too), read now, before training, with
    the SST-2 words checked against the vocabulary of lm (a heuristics.ScoringLM)."""
    tasks = []
    for task, data_dir in zero_shot_tasks(settings.zero_shot):
        tasks.append(read_zero_shot(task, data_dir))
        if task == 'sst2':
            for word in SENTIMENT_WORDS:
                single_token(lm, word)
    return tasks


def zero_shot_record(model, settings, text_encoder, sizes, tasks):
    """Return {'zs_TASK': metric} of every zero-shot task (ZeroShotData) on the model (whole). Every rank scores them
    (the same work), so that no rank waits in a collective meanwhile, where the process group's timeout could end the
    job. No tasks: {}."""
    if not tasks:
        return {}
    lm = scoring_lm(model, text_encoder, n_vocab=sizes['n_vocab'], precision=settings.precision,
                    batch_size=settings.micro_batch or settings.n_batch)
    return {f'zs_{data.task}': score_zero_shot(lm, data).value for data in tasks}


def window_starts(seed, update, n_windows, n_tokens, n_ctx):
    """Return the offsets [n_windows] of the windows of update `update` (from 1) in a stream of n_tokens."""
    if n_tokens < n_ctx + 1:
        raise ValueError(f'the training stream holds {n_tokens} tokens, fewer than one window of n_ctx + 1 = '
                         f'{n_ctx + 1}: use a smaller --n_ctx or more text')
    # a generator of its own for each update: the windows depend on (seed, update) only
    return np.random.default_rng([seed, update]).integers(0, n_tokens - n_ctx, n_windows)


def val_starts(n_tokens, n_ctx, n_windows):
    """Return the offsets of the fixed validation windows: consecutive, not overlapping, at most n_windows."""
    return np.arange(0, n_tokens - n_ctx, n_ctx)[:n_windows]


def lm_inputs(stream, starts, n_ctx, first_position):
    """Return (x [B, n_ctx, 2] int64 token and position ids, targets [B, n_ctx] int64) of windows of a stream."""
    tokens = np.stack([np.asarray(stream[s:s + n_ctx + 1], dtype=np.int64) for s in starts])  # [B, n_ctx + 1]
    x = np.empty((len(starts), n_ctx, 2), dtype=np.int64)
    x[..., 0] = tokens[:, :-1]
    x[..., 1] = np.arange(first_position, first_position + n_ctx)
    return x, tokens[:, 1:]


def window_loss(net, x, targets, n_rows):
    """Return the per-token LM losses [B * n_ctx] of windows: the tied decoder over the first n_rows rows."""
    h, we = net(x, return_we=True)  # [B, n_ctx, n_embd], the (dropped) table
    rows = h.reshape(-1, h.size(-1))  # [B, n_ctx, n_embd] -> [B * n_ctx, n_embd]
    return token_losses(rows, we[:n_rows], targets.reshape(-1), LM_CHUNK)


def resolve_arch(settings, meta):
    """Set settings.arch (the corpus's family, which --arch and the weights' must match) and the family's default n_ctx;
    return settings."""
    family = corpus_family(meta)
    if settings.arch not in (None, family):
        raise ValueError(f'--arch {settings.arch} but {settings.corpus} was encoded with {family_name(family)}\'s tokenizer: '
                         f'prepare it with prepare_corpus.py --arch {settings.arch}, or leave --arch out')
    settings = dataclasses.replace(settings, arch=family, n_ctx=settings.n_ctx or DEFAULT_N_CTX[family])
    if settings.preset is not None and (family != 'gpt2' or settings.model_dir is not None):
        raise ValueError('--preset sizes a GPT-2 trained from scratch: leave it out with a GPT-1 corpus or --model_dir')
    if family == 'gpt2' and settings.afn not in (None, 'gelu'):
        raise ValueError(f'--afn {settings.afn}: GPT-2 computes gelu only')
    return settings


def lm_config(settings, n_vocab, n_special, ckpt=None):
    """Return the model's config (GPTConfig, or GPT2Config for --arch gpt2): architecture flags, else the weights' (a
    Checkpoint), else the paper's (GPT-1) or the --preset's (GPT-2, default 124M); the dropouts and activation
    checkpointing from the flags; the table [n_vocab; n_special; n_ctx positions]."""
    module = FAMILY_MODULES[settings.arch]
    if ckpt is not None:
        stored = module.checkpoint_config(ckpt)
    else:
        stored = GPT2Config.preset(settings.preset or '124M') if settings.arch == 'gpt2' else DEFAULT_CONFIG
    fields = {}  # with a Checkpoint, a given flag equals the weights' (models.read_with_flags refused the others)
    for name in ('n_embd', 'n_head', 'n_layer') + (('afn',) if settings.arch == 'gpt1' else ()):
        given = getattr(settings, name)
        fields[name] = getattr(stored, name) if given is None else given
    return dataclasses.replace(stored, **fields, embd_pdrop=settings.embd_pdrop, attn_pdrop=settings.attn_pdrop,
                               resid_pdrop=settings.resid_pdrop, checkpoint_activations=settings.checkpoint_activations,
                               n_vocab=n_vocab, n_special=n_special, n_ctx=settings.n_ctx)


def build_lm(settings, n_vocab, n_special):
    """Return an LMModel (GPT2LMHeadModel for --arch gpt2) with [n_vocab tokens; n_special special rows] and n_ctx
    positions: fresh (GPT-1: N(0, 0.02); GPT-2: model_gpt2.init_weights) or holding --model_dir's weights (positions
    cropped to n_ctx, missing special rows drawn as the original draws them)."""
    lm_class = GPT2LMHeadModel if settings.arch == 'gpt2' else LMModel
    if settings.model_dir is None:
        return lm_class(lm_config(settings, n_vocab, n_special))
    # a flag that contradicts the weights is refused in one line naming every mismatch
    ckpt = read_with_flags(settings.model_dir, architecture_flags(settings))
    if ckpt.family != settings.arch:
        raise ValueError(f'{settings.model_dir} holds a {family_name(ckpt.family)} but {settings.corpus} was encoded for '
                         f'{family_name(settings.arch)}: use weights of the corpus\'s family')
    if ckpt.n_vocab != n_vocab:
        raise ValueError(f'{settings.model_dir} has {ckpt.n_vocab} token rows but the corpus was encoded with '
                         f'{n_vocab} tokens: use the vocabulary of the weights')
    if settings.n_ctx > ckpt.n_pos:
        raise ValueError(f'--n_ctx {settings.n_ctx} but {settings.model_dir} stores {ckpt.n_pos} positions: '
                         f'use at most {ckpt.n_pos}')
    if ckpt.n_special > n_special:
        ckpt.special = ckpt.special[:n_special]  # rows the corpus does not use (e.g. fine-tuning's) are left out
    model = lm_class(lm_config(settings, n_vocab, n_special, ckpt))
    return FAMILY_MODULES[settings.arch].model_from_checkpoint(ckpt, model=model)  # extra special rows drawn


def n_updates_of(settings, n_train_tokens):
    """Return the run's number of updates: --n_updates, else --n_epochs passes over the training tokens."""
    if settings.n_updates is not None:
        return settings.n_updates
    return max(1, math.ceil(settings.n_epochs * n_train_tokens / (settings.n_batch * settings.n_ctx)))


def eval_every_of(settings, n_updates):
    """Return the updates between evaluations: --eval_every, else n_updates / EVALS_PER_RUN rounded up."""
    if settings.eval_every is not None:
        return settings.eval_every
    return max(1, math.ceil(n_updates / EVALS_PER_RUN))


def plan_lines(settings, model, n_updates):
    """Return the lines pretrain.py prints before its first update: what trains, for how long, and a warning line
    (for stderr, else None) when the warm-up covers the whole run."""
    n_params = sum(p.numel() for p in model.parameters())
    plan = (f'pre-training {family_name(settings.arch)} ({settings.n_layer} layers, {settings.n_embd} states, '
            f'{settings.n_head} heads, n_ctx {settings.n_ctx}; {n_params / 1e6:.1f}M parameters) for {n_updates} '
            f'updates of {settings.n_batch} windows ({settings.n_batch * settings.n_ctx} tokens), '
            + (f'a validation every {settings.eval_every} updates' if settings.eval_every else 'validated at the end'))
    warning = None
    if settings.warmup_updates >= n_updates:
        warning = (f'pretrain.py: warning: --warmup_updates {settings.warmup_updates} covers the whole run of '
                   f'{n_updates} updates: the learning rate only rises and never reaches --lr\'s cosine decay; give '
                   f'fewer (e.g. --warmup_updates {max(1, n_updates // 10)})')
    return plan, warning


def next_steps(settings, n_updates):
    """Return the lines pretrain.py ends a finished run with: where the model is and the commands to try next, for the
    settings the run resolved (its n_ctx, which a continued run keeps) and its n_updates."""
    out = settings.out.rstrip('/') + '/'
    q = shlex.quote
    return [f'the model is in {out} (model.safetensors, config.json, its vocabulary); log {out}log.jsonl; next:',
            f'  sample it:     python generate.py --model_dir {q(out)} --prompt {q(settings.sample_prompt)} '
            f'--gen_len 100 --top_k 40',
            f'  continue it:   python pretrain.py --corpus {q(settings.corpus)} --out {q(out.rstrip("/") + "-more/")} '
            f'--model_dir {q(out)} --n_ctx {settings.n_ctx} --n_updates {n_updates} --warmup_updates '
            f'{min(settings.warmup_updates, max(1, n_updates // 10))} --lr {settings.lr:g}',
            f'  fine-tune it:  python train.py --model_dir {q(out)} --dataset rocstories --data_dir data/ '
            f'(docs/training.md)']


@dataclass(frozen=True)
class Windows:
    """Windows of n_ctx tokens laid out for a table of n_rows token rows (tokens and special rows) whose position rows
    start at first_position."""
    n_ctx: int
    n_rows: int
    first_position: int


@dataclass(frozen=True)
class UpdateBatch:
    """What an update draws: n_batch windows at offsets seeded by (seed, the update's number), micro windows per
    forward pass (None: all of this process's share)."""
    seed: int
    n_batch: int
    micro: Optional[int] = None


def pretrain_step(run, stream, update_no, windows, batch):
    """Make update number update_no (from 1) on this rank's share of its windows (a Windows layout; batch: the
    UpdateBatch); return the share's summed token loss and token count."""
    starts = window_starts(batch.seed, update_no, batch.n_batch, len(stream), windows.n_ctx)
    own = shard(batch.n_batch, run.info)
    micro = batch.micro or (own.stop - own.start)
    # windows all have n_ctx tokens: weighting each micro-batch by its windows gives the batch's token mean
    bounds = [(s, min(s + micro, own.stop)) for s in range(own.start, own.stop, micro)]
    parts = [((e - s) / batch.n_batch, starts[s:e]) for s, e in bounds]
    loss_sum = torch.zeros((), device=run.device)  # the update's loss, for the non-finite check
    token_sum = torch.zeros((), dtype=torch.float64, device=run.device)
    with run.autocast():  # one region for every micro-batch: each weight is cast once
        for k, (weight, batch_starts) in enumerate(parts):
            x, targets = to_tensors(run.device, *lm_inputs(stream, batch_starts, windows.n_ctx,
                                                           windows.first_position))
            with run.sync_gradients(last=k == len(parts) - 1):  # DDP all-reduces on the last micro-batch only
                losses = window_loss(run.net, x, targets, windows.n_rows)  # forward: every next token's loss
                # weight: the micro-batch's share of the whole batch; x world size: DDP averages the ranks' gradients
                loss = losses.mean() * weight * run.info.world_size
                run.backward(loss)  # fp16: scaled
            loss_sum = loss_sum + loss.detach().float()
            token_sum += losses.detach().sum().double()
    token_sum = run.step(loss_sum, report=token_sum)  # stops on a non-finite loss; OpenAIAdam clips by the global norm
    return token_sum, (own.stop - own.start) * windows.n_ctx


def validation_loss(model, stream, starts, windows, evaluation, info=DistInfo()):
    """Return the mean token loss (nats) of the fixed validation windows (a Windows layout; evaluation: batches,
    device, precision), the model in eval mode; under torchrun each rank evaluates its share of the windows."""
    model.eval()
    starts = starts[shard(len(starts), info)]
    total, count = 0.0, 0
    n_batch, device = evaluation.n_batch, evaluation.device
    bar = progress_bar(total=len(starts), desc='validating', unit='window', leave=False,
                       disable=not (evaluation.verbose and info.is_main))
    with torch.inference_mode(), bar:
        for s in range(0, len(starts), n_batch):
            x, targets = to_tensors(device, *lm_inputs(stream, starts[s:s + n_batch], windows.n_ctx,
                                                       windows.first_position))
            with autocast_context(device, evaluation.precision):
                losses = window_loss(model.transformer, x, targets, windows.n_rows)
            total += losses.float().sum().item()
            count += losses.numel()
            bar.update(len(x))
    model.train()
    total, count = sum_over_ranks(total, info), sum_over_ranks(count, info)
    return total / max(count, 1)


def check_sample_prompt(text_encoder, prompt, n_ctx):
    """Raise ValueError unless --sample_prompt encodes to 1 to n_ctx tokens."""
    n = len(text_encoder.encode([prompt], verbose=False)[0])
    if not 0 < n <= n_ctx:
        raise ValueError(f'--sample_prompt {prompt!r} encodes to {n} tokens: give 1 to n_ctx = {n_ctx}, or '
                         f'--sample_every 0 for no samples')


def sample_text(model, text_encoder, prompt, n_vocab, seed, device):
    """Return prompt and a sample of up to 40 tokens after it (top-k 40, seeded), from the model in eval mode."""
    model.eval()
    generator = torch.Generator(device='cpu').manual_seed(seed)
    with torch.inference_mode():
        text = generate(model, text_encoder, prompt, SamplingSettings(gen_len=40, top_k=40), generator,
                        n_vocab=n_vocab).full_text
    model.train()
    return text


def learning_rate(opt, n_updates):
    """Return the learning rate OpenAIAdam applied at update n_updates (before bias correction)."""
    group = opt.param_groups[0]
    return group['lr'] * SCHEDULES[group['schedule']](n_updates / group['t_total'], group['warmup'])


def run_paths(out):
    """Return the files a run writes under its folder."""
    return dict(log=os.path.join(out, 'log.jsonl'), state=os.path.join(out, 'train_state.safetensors'),
                args=os.path.join(out, 'args.json'), shards=os.path.join(out, 'shards'),
                lock=os.path.join(out, 'run.lock'))


# the flags that decide a run's result: a training state resumes only a run with the same ones
RESUME_IDENTITY = ('arch', 'seed', 'n_ctx', 'n_batch', 'lr', 'warmup_updates', 'l2', 'b1', 'b2', 'e', 'max_grad_norm',
                   'embd_pdrop', 'attn_pdrop', 'resid_pdrop')


def new_progress():
    """Return the counters of a run that has not started."""
    return dict(n_updates=0, tokens=0, train_loss_sum=0.0, train_tokens=0, train_time=0.0, log=[], samples=[])


def log_eval(run, settings, corpus, sizes, text_encoder):
    """Evaluate, append a record to the log (main rank) and print it; reset the training-loss window."""
    progress = run.progress
    with run.clock.phase('eval'), run.whole_model() as model:  # with --shard, gathered on every rank
        val_loss = validation_loss(model, corpus['val'], corpus['val_starts'], settings.windows(sizes),
                                   settings.evaluation(run.device), run.info)
        zero_shot = zero_shot_record(model, settings, text_encoder, sizes, corpus['zero_shot'])
    # each rank counted its own share of the windows since the last record: the log reports the global batch
    loss_sum = sum_over_ranks(progress['train_loss_sum'], run.info)
    train_tokens = sum_over_ranks(progress['train_tokens'], run.info)
    record = dict(n_updates=progress['n_updates'], tokens=progress['tokens'],
                  train_loss=loss_sum / train_tokens if train_tokens else None,
                  val_loss=val_loss, val_ppl=math.exp(min(val_loss, 700.0)),
                  tokens_per_s=train_tokens / progress['train_time'] if progress['train_time'] else None,
                  lr=learning_rate(run.opt, progress['n_updates']))
    record.update(zero_shot)
    record['time'] = time.time()
    progress.update(train_loss_sum=0.0, train_tokens=0, train_time=0.0)
    progress['log'].append(record)
    if run.info.is_main:
        run.logger.log(**record)
        train_text = 'n/a' if record['train_loss'] is None else f"{record['train_loss']:.4f}"
        zero_shot_text = ''.join(f", zero-shot {k[3:]} {METRICS[k[3:]]} {v:.2f}" for k, v in record.items()
                                 if k.startswith('zs_') and v is not None)
        print(f"update {record['n_updates']}: train loss {train_text}, val loss {val_loss:.4f} "
              f"(ppl {record['val_ppl']:.1f}){zero_shot_text}", flush=True)


def maybe_sample(run, settings, text_encoder, sizes):
    """Print and keep a text sample from the fixed prompt (main rank; with --shard every rank calls it, to gather the
    weights)."""
    if not (run.info.is_main or run.sharded):
        return
    with run.clock.phase('eval'), run.whole_model(keep=run.info.is_main) as model:
        if not run.info.is_main:
            return
        text = sample_text(model, text_encoder, settings.sample_prompt, sizes['n_vocab'], settings.seed, run.device)
    run.progress['samples'].append(dict(n_updates=run.progress['n_updates'], text=text))
    print(f"sample at update {run.progress['n_updates']}: {text}", flush=True)


def pretrain(run, settings, corpus, sizes, text_encoder, n_updates):
    """Run the updates left in run.progress, evaluating, sampling and saving on schedule."""
    progress, windows, batch = run.progress, settings.windows(sizes), settings.update_batch()
    if progress['n_updates'] == 0 and len(progress['log']) == 1:  # only the header: nothing evaluated yet
        log_eval(run, settings, corpus, sizes, text_encoder)  # where the run starts: a fresh model's loss, or the weights'
    run.model.train()
    with progress_bar(total=n_updates, initial=progress['n_updates'], desc='pre-training', unit='update',
                      disable=settings.quiet or not run.info.is_main) as bar:
        while progress['n_updates'] < n_updates:
            update_no = progress['n_updates'] + 1
            t0 = time.time()
            with update_phase(run, update_no):
                loss_sum, n_tokens = pretrain_step(run, corpus['train'], update_no, windows, batch)
            elapsed = time.time() - t0
            progress['n_updates'] = update_no
            progress['tokens'] += settings.n_batch * settings.n_ctx
            progress['train_loss_sum'] += loss_sum
            progress['train_tokens'] += n_tokens
            progress['train_time'] += elapsed
            bar.update(1)
            bar.set_postfix(loss=f'{loss_sum / max(n_tokens, 1):.3f}',
                            tok_s=f'{n_tokens * run.info.world_size / elapsed:.0f}')
            last = update_no == n_updates
            if (settings.eval_every and update_no % settings.eval_every == 0) or last:
                log_eval(run, settings, corpus, sizes, text_encoder)
            if settings.sample_every and (update_no % settings.sample_every == 0 or last):
                maybe_sample(run, settings, text_encoder, sizes)
            saved = (settings.save_every and update_no % settings.save_every == 0) or last
            if saved:
                save_state(run)
            if not last:  # after the last update the run ends anyway
                stop_if_requested(run, saved)


def vocabulary_paths(meta):
    """Return (encoder_path, bpe_path) of the vocabulary a corpus was encoded with: in the meta of
    load_corpus_checked (corpus.load_corpus), the files checked against meta.json's SHA-256s (inside the corpus folder
    or shipped with this repository), never a path meta.json gives unchecked."""
    return meta['vocabulary']['encoder_path'], meta['vocabulary']['bpe_path']


def write_outputs(model, run, settings, sizes, meta):
    """Write the model's weights (whole) to OUT/model.safetensors + config.json (this project's format) and, on
    request, the released format in OUT/shards/ (GPT-1's shards, GPT-2's TensorFlow checkpoint), each with the
    corpus's vocabulary files beside them under the family's names, as train.py and generate.py read them."""
    import shutil
    ckpt = checkpoint_from_model(model, sizes['n_vocab'], sizes['n_special'])
    folders = [settings.out] + ([run.paths['shards']] if settings.save_shards else [])
    with run.clock.phase('write'):
        write_safetensors(ckpt, settings.out)
        if settings.save_shards:  # the released formats have no special rows
            write_released_format = write_tf_gpt2 if ckpt.family == 'gpt2' else write_released
            write_released_format(ckpt, run.paths['shards'], drop_special=True)
        for folder in folders:
            for src, name in zip(vocabulary_paths(meta), vocab_names(ckpt.family)[0]):
                shutil.copyfile(src, os.path.join(folder, name))


def load_corpus_checked(settings, meta):
    """Return (corpus dict with train/val streams and val window offsets, sizes dict) of --corpus.

    corpus.load_corpus checks the folder as a file from elsewhere (one untrusted.BadFile otherwise): meta.json's
    fields, its vocabulary (the files' SHA-256, inside the folder or shipped, n_vocab tokens), and every id of both
    splits below n_vocab + n_special (a scan recorded in meta.json, so that a second open costs nothing)."""
    train_stream, val_stream, meta = load_corpus(settings.corpus, meta)
    n_vocab, n_special = meta['n_vocab'], meta['n_special']
    starts = val_starts(len(val_stream), settings.n_ctx, settings.eval_windows)
    if len(starts) == 0:
        raise ValueError(f'{settings.corpus}: the validation stream holds {len(val_stream)} tokens, fewer than one '
                         f'window of n_ctx + 1 = {settings.n_ctx + 1}: raise --val_fraction in prepare_corpus.py '
                         f'or lower --n_ctx')
    window_starts(settings.seed, 1, 1, len(train_stream), settings.n_ctx)  # checks that one window fits
    sizes = dict(n_vocab=n_vocab, n_special=n_special, n_rows=n_vocab + n_special,
                 first_position=n_vocab + n_special)
    return dict(train=train_stream, val=val_stream, val_starts=starts, meta=meta), sizes


def run_pretraining(settings):
    """Pre-train as the settings say; return a summary dict."""
    t0 = time.time()
    info = dist_info()
    meta = read_meta(settings.corpus)  # read once: the family it states decides the run's, and the run reads it
    settings = resolve_arch(settings, meta)
    check_args(settings, info)
    paths = run_paths(settings.out)
    files = RunFiles(paths, (settings.out,), (paths['lock'],), standing=state_standing)
    with Launch.begin(RunSettings.of(settings), files, info) as launch:
        done = launch.settings  # the device's name, --resume auto decided
        settings = dataclasses.replace(settings, device=done.device, resume=done.resume, restart=done.restart)
        return run_launched(launch, settings, meta, t0)


def state_standing(meta):
    """Return (finished, where it stands) of a training state's metadata: finished once its last update is made."""
    done = int_field('n_updates', meta['progress']['n_updates'], 0, 2 ** 62)
    total = int_field('n_updates', meta['identity']['n_updates'], 1, 2 ** 62)
    return done >= total, f'update {done} of {total}'


def run_launched(launch, settings, meta, t0):
    """Pre-train in a run that has launched (meta: the corpus's meta.json, as read_meta read it); return a summary
    dict."""
    paths, info, device, clock = launch.paths, launch.info, launch.device, launch.clock
    with clock.phase('encode'):
        corpus, sizes = load_corpus_checked(settings, meta)
    with clock.phase('load'):
        text_encoder = tokenizer_from_files(settings.arch, *vocabulary_paths(corpus['meta']))
        if settings.sample_every:
            check_sample_prompt(text_encoder, settings.sample_prompt, settings.n_ctx)
        model = build_lm(settings, sizes['n_vocab'], sizes['n_special'])
        settings = dataclasses.replace(settings, **built_architecture(model.cfg))  # the log and args.json say what trains
        model.to(device)
        corpus['zero_shot'] = read_zero_shot_tasks(settings, scoring_lm(model, text_encoder, n_vocab=sizes['n_vocab']))
        n_updates = n_updates_of(settings, len(corpus['train']))
        settings = dataclasses.replace(settings, eval_every=eval_every_of(settings, n_updates))
        launch.place(model)  # with --shard, sharded before the optimizer takes its parameters
        opt = OpenAIAdam(model.parameters(), lr=settings.lr, schedule='warmup_cosine_decay',
                         warmup=min(1.0, settings.warmup_updates / n_updates), t_total=n_updates, b1=settings.b1,
                         b2=settings.b2, e=settings.e, l2=settings.l2, max_grad_norm=settings.max_grad_norm)
        identity = run_identity({name: getattr(settings, name) for name in RESUME_IDENTITY}, model,
                                n_updates=n_updates, corpus_tokens=[len(corpus['train']), len(corpus['val'])])
        # each rank's share of the training loss since the last record is its own
        state = StateSpec(identity, new_progress(), rank_keys=('train_loss_sum', 'train_tokens', 'train_time'))
        run = Run(launch, model, opt, state, trained=model.transformer)
        progress = run.progress
        if info.is_main:
            plan, warning = plan_lines(settings, model, n_updates)
            print(plan, flush=True)
            if settings.shard:
                windows = settings.micro_batch or -(-settings.n_batch // info.world_size)
                print(shard_memory_line(model, windows * settings.n_ctx, run), flush=True)
            if warning:
                print(warning, file=sys.stderr, flush=True)
        if settings.resume and info.is_main:
            print(f"resuming at update {progress['n_updates']} of {n_updates}", flush=True)
    if info.is_main:
        write_json(paths['args'], dict(dataclasses.asdict(settings), n_updates_total=n_updates,
                                       corpus_meta=corpus['meta']))
    try:
        with run.open_log(paths['log'], dataclasses.asdict(settings)):  # the header, or a resumed run's records
            with run.stop_signals():
                pretrain(run, settings, corpus, sizes, text_encoder, n_updates)
    finally:
        with clock.phase('write'):
            run.writer.wait()
    with run.whole_model(host=True, keep=info.is_main) as model:  # with --shard, gathered on the main rank's host
        if info.is_main:
            write_outputs(model, run, settings, sizes, corpus['meta'])
    last = progress['log'][-1] if progress['log'] else {}
    return dict(n_updates=progress['n_updates'], val_loss=last.get('val_loss'), wall_s=time.time() - t0,
                phases=phase_record(clock, device), next_steps=next_steps(settings, n_updates))


def main(argv=None):
    """Run pretrain.py from the command line; return the exit code."""
    settings = parse_args(argv)
    try:
        summary = run_pretraining(settings)
        close_distributed(synchronize=True)
    except RUN_ENDINGS as err:
        return failed_run_exit('pretrain.py', argv, err)
    finally:
        close_distributed()
    if dist_info().is_main:
        val = 'n/a' if summary['val_loss'] is None else f"{summary['val_loss']:.4f}"
        print(f"done: {summary['n_updates']} updates, val loss {val}, wall {summary['wall_s']:.1f} s; "
              f"model in {settings.out}", flush=True)
        print(format_phases(summary['phases']), flush=True)
        print('\n'.join(summary['next_steps']), flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
