"""Training and evaluation throughput and peak memory of this port against transformers' GPT-1 (TF: none).

One run measures, side by side, at the ROCStories shape (effective batch n_batch * n_gpu = 8 * 4 = 32
examples, 2 endings each, n_ctx 77) on synthetic batches laid out exactly as train.transform_roc lays them
out (story ~ U[40, 60] and endings ~ U[8, 15] random token ids, right-padded to n_ctx):

- ``ours-<precision>``: train.train_step with a train.parse_args namespace (micro-batches of n_batch
  trimmed to their longest sequence, gradient accumulation to the whole batch, the masked chunked LM loss,
  OpenAIAdam with the original's defaults), and train.iter_apply for evaluation;
- ``peer-<precision>``: transformers' OpenAIGPTDoubleHeadsModel of the same size doing the same work as a
  peer user would: the whole batch [B, 2, n_ctx] in one pass, LM labels -100 at padding, mc_token_ids at
  the classify tokens, loss = mc_loss + lm_coef * lm_loss, clip_grad_norm_(max_grad_norm), torch AdamW
  (weight decay l2); its plain forward for evaluation;
- a ``-mbN`` suffix sets the micro-batch (ours: --micro_batch N; peer: N examples per pass, accumulated).

Each configuration is timed in steady state by steady.py's protocol: the configurations take turns round by round,
each round in a subprocess of its own (so its peak memory, peak RSS on the CPU or CUDA max allocated on a GPU, is its
own), warm-up steps discarded until they settle, then --steps timed. The achieved FLOP/s are model FLOPs (see
`seq_flops`) over the median step time, as a fraction of a large square matmul measured at the same dtype in the same
run.

The CUDA path (--device cuda: fp16 with a GradScaler, CUDA max allocated memory, TF32 for fp32 as
precision.configure_precision sets it) has not been run yet: no GPU was available when it was written
(BENCHMARKS.md records which numbers were measured).

    python benchmarks/bench.py [--device cpu|cuda] [--configs ours-fp32,peer-fp32,...] [--steps 5] [--warmup_steps 2]
                     [--rounds 3] [--quick] [--json PATH] [--in-process]
"""
import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, is_dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the library at the repository root

import numpy as np
import torch

import steady
from model_pytorch import N_VOCAB

N_SPECIAL = 3            # _start_, _delimiter_, _classify_
N_CTX = 77               # the n_ctx train.roc_n_ctx computes for ROCStories
STORY_LEN = (40, 60)     # story tokens, inclusive range
ENDING_LEN = (8, 15)     # tokens of each ending, inclusive range
N_TRAIN_ROC = 1497       # ROCStories training examples (datasets.rocstories: 1871 - n_valid)
N_VALID_ROC = 374        # evaluated twice per epoch by train.log_eval: n_valid training examples + valid
N_TEST_ROC = 1871        # predicted once with --submit
PRECISION_DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}
IMPLS = ('ours', 'peer')


@dataclass(frozen=True)
class Shape:
    """The model and batch sizes of a run."""
    n_vocab: int = N_VOCAB
    n_ctx: int = N_CTX
    n_embd: int = 768
    n_head: int = 12
    n_layer: int = 12
    n_batch: int = 8
    n_gpu: int = 4

    @property
    def rows(self):
        """Rows of our embedding table and LM softmax: tokens, special tokens and positions."""
        return self.n_vocab + N_SPECIAL + self.n_ctx

    @property
    def batch(self):
        """Examples per update (train.py: n_batch * n_gpu)."""
        return self.n_batch * self.n_gpu


QUICK_SHAPE = Shape(n_vocab=500, n_embd=64, n_head=4, n_layer=2)


@dataclass(frozen=True)
class Spec:
    """One configuration: implementation, precision and examples per forward pass."""
    name: str
    impl: str
    precision: str
    micro_batch: int


def parse_spec(name, shape, device):
    """Return the Spec of a name like 'ours-bf16' or 'peer-fp32-mb8', or raise ValueError."""
    parts = name.split('-')
    if len(parts) not in (2, 3) or parts[0] not in IMPLS or parts[1] not in PRECISION_DTYPES:
        raise ValueError(f'bad config {name!r}: use <impl>-<precision>[-mbN] with impl in {IMPLS} and precision '
                         f'in {tuple(PRECISION_DTYPES)}, e.g. ours-bf16 or peer-fp32-mb8')
    impl, precision = parts[0], parts[1]
    micro = shape.n_batch if impl == 'ours' else shape.batch
    if len(parts) == 3:
        if not (parts[2].startswith('mb') and parts[2][2:].isdigit() and int(parts[2][2:]) >= 1):
            raise ValueError(f'bad config {name!r}: the suffix must be mbN with N >= 1 examples per pass')
        micro = int(parts[2][2:])
    return Spec(name, impl, precision, micro)


def default_configs(device):
    """Return the default config names: both implementations in fp32 and the device's low precision."""
    low = ['fp16', 'bf16'] if device.type == 'cuda' else ['bf16']
    return [f'{impl}-{p}' for p in ['fp32'] + low for impl in IMPLS]


def make_batches(n_batches, shape, seed):
    """Return n_batches (xmb [B, 2, n_ctx, 2] int64, mmb [B, 2, n_ctx] float32, ymb [B] int64) as transform_roc."""
    from train import RocLayout, transform_roc
    rng = np.random.default_rng(seed)
    encoder = {'_start_': shape.n_vocab, '_delimiter_': shape.n_vocab + 1, '_classify_': shape.n_vocab + 2}
    batches = []
    for _ in range(n_batches):
        X1, X2, X3 = [], [], []
        for _ in range(shape.batch):
            endings = rng.integers(ENDING_LEN[0], ENDING_LEN[1] + 1, size=2)
            # story + longest ending + 3 special tokens must fit n_ctx (60 + 15 + 3 = 78 > 77 otherwise)
            n_story = min(int(rng.integers(STORY_LEN[0], STORY_LEN[1] + 1)), shape.n_ctx - 3 - int(endings.max()))
            X1.append(rng.integers(0, shape.n_vocab, n_story).tolist())
            X2.append(rng.integers(0, shape.n_vocab, endings[0]).tolist())
            X3.append(rng.integers(0, shape.n_vocab, endings[1]).tolist())
        xmb, mmb = transform_roc(X1, X2, X3, RocLayout(encoder, shape.n_ctx, shape.n_ctx, shape.n_vocab, N_SPECIAL))
        batches.append((xmb, mmb, rng.integers(0, 2, shape.batch)))
    return batches


def seq_flops(n, shape, rows, train=True):
    """Return the model FLOPs of one sequence of n tokens: a training step (fwd + bwd) or an eval forward.

    Forward: 2 * 12 * n_layer * n_embd^2 * n (c_attn, attn c_proj, c_fc, mlp c_proj)
           + 4 * n_layer * n_embd * n^2 (q @ k^T and w @ v over the full square, causality not discounted)
           + 2 * n_embd * rows * (n - 1) when training (the tied LM decoder at the n - 1 predicted positions).
    Training counts 3x the forward (backward = 2 forwards). Embeddings, layer norms, the n_embd x 1
    classifier and the softmaxes are left out (< 0.1%). Padding is not counted: these are the FLOPs the
    work needs, whatever an implementation spends on padding.
    """
    d, L = shape.n_embd, shape.n_layer
    fwd = 2 * 12 * L * d * d * n + 4 * L * d * n * n
    if not train:
        return fwd
    return 3 * (fwd + 2 * d * rows * (n - 1))


def batch_flops(mmb, shape, rows, train=True):
    """Return the summed seq_flops over the sequences of a batch mask mmb [B, 2, T]."""
    lengths = mmb.reshape(-1, mmb.shape[-1]).sum(1).astype(np.int64)
    return int(sum(seq_flops(int(n), shape, rows, train) for n in lengths))


def sync(device):
    """Wait for queued kernels, so a timer reads the real duration."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def timed(fn, device):
    """Return the wall seconds fn() takes, synchronised on device."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def measure_roofline(precision, device, n, repeats=5):
    """Return the best FLOP/s of an [n, n] @ [n, n] matmul at the precision's dtype (TF32 allowed for fp32 on CUDA)."""
    dtype = PRECISION_DTYPES[precision]
    if device.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True  # as precision.configure_precision does for fp32
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    timed(lambda: a @ b, device)
    # the best of the repeats: what the hardware reaches, less any load from other processes
    return 2 * n ** 3 / min(timed(lambda: a @ b, device) for _ in range(repeats))


def rss_bytes():
    """Return this process's current resident set size in bytes (Linux /proc; else the peak so far)."""
    try:
        with open('/proc/self/statm') as f:
            return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
    except (OSError, ValueError, IndexError):
        return peak_rss_bytes()


def peak_rss_bytes():
    """Return this process's peak resident set size in bytes (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == 'darwin' else peak * 1024


def memory_base(device):
    """Return the memory in use before the steps (bytes) and start tracking the peak on CUDA."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    return rss_bytes()


def memory_peak(device):
    """Return the peak memory (bytes) since memory_base: CUDA max allocated, else the process's peak RSS."""
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device)
    return peak_rss_bytes()


class Ours:
    """This port: train.train_step / train.iter_apply on a DoubleHeadModel with OpenAIAdam."""

    def __init__(self, spec, shape, device, seed):
        import train
        from model_pytorch import DoubleHeadModel, GPTConfig
        from opt import OpenAIAdam
        from trainer import Launch, Run, RunSettings, StateSpec, set_seed
        self.train, self.device = train, device
        self.args = train.parse_args(['--n_ctx', str(shape.n_ctx), '--n_embd', str(shape.n_embd),
                                      '--n_head', str(shape.n_head), '--n_layer', str(shape.n_layer), '--afn', 'gelu',
                                      '--n_batch', str(shape.n_batch), '--n_gpu', str(shape.n_gpu),
                                      '--micro_batch', str(spec.micro_batch), '--precision', spec.precision,
                                      '--device', str(device), '--seed', str(seed)])
        set_seed(seed)
        self.rows = shape.rows
        cfg = GPTConfig(**train.model_switches(self.args), n_embd=shape.n_embd, n_head=shape.n_head,
                        n_layer=shape.n_layer, n_vocab=shape.n_vocab, n_special=N_SPECIAL, n_ctx=shape.n_ctx)
        self.model = DoubleHeadModel(cfg, shape.n_vocab + 2, 'multiple_choice').to(device)
        a = self.args
        # as train.run_fine_tuning builds it; t_total is the 3-epoch ROCStories run's
        self.opt = OpenAIAdam(self.model.parameters(), lr=a.lr, schedule=a.lr_schedule, warmup=a.lr_warmup,
                              t_total=(N_TRAIN_ROC // shape.batch) * a.n_iter, b1=a.b1, b2=a.b2, e=a.e, l2=a.l2,
                              vector_l2=a.vector_l2, max_grad_norm=a.max_grad_norm)
        # as train.run_fine_tuning sets it up: the model's training forward, the precision's scaler; a launch writing no files
        self.run = Run(Launch(RunSettings.of(self.args), device), self.model, self.opt, StateSpec({}, {}), dynamic=True)
        self.step_settings = self.args.step_settings()

    def train_step(self, batch):
        """Do one update on batch = (xmb, mmb, ymb)."""
        self.model.train()
        self.train.train_step(self.run, *batch, self.step_settings)

    def evaluate(self, batch):
        """Return the classification logits [B, 2] of batch, as train.evaluate computes them."""
        self.model.eval()
        xmb, mmb, ymb = batch
        return self.train.iter_apply(self.model, xmb, mmb, ymb, self.train.Evaluation(len(ymb), self.device, self.args.precision))[0]


def peer_inputs(batch, device):
    """Return transformers' inputs for a transform_roc batch (xmb [B, 2, T, 2], mmb [B, 2, T], ymb [B]), on device.

    input_ids [B, 2, T] (its positions come from its own table), LM labels [B, 2, T] with -100 at padding,
    mc_token_ids [B, 2] at the classify token that ends each sequence, mc_labels [B].
    """
    xmb, mmb, ymb = batch
    ids = xmb[..., 0]
    labels = np.where(mmb > 0, ids, -100)  # -100: ignored by its LM loss
    mc_token_ids = mmb.sum(-1).astype(np.int64) - 1
    return [torch.from_numpy(np.ascontiguousarray(a)).to(device)
            for a in (ids, labels, mc_token_ids, ymb.astype(np.int64))]


class Peer:
    """transformers' OpenAIGPTDoubleHeadsModel of the same size, trained as its users do."""

    def __init__(self, spec, shape, device, seed, lm_coef=0.5, lr=6.25e-5, l2=0.01, max_grad_norm=1.0):
        from transformers import OpenAIGPTConfig, OpenAIGPTDoubleHeadsModel
        torch.manual_seed(seed)
        self.spec, self.device, self.lm_coef, self.max_grad_norm = spec, device, lm_coef, max_grad_norm
        # its positions have their own table; its LM softmax covers tokens and special tokens only
        self.rows = shape.n_vocab + N_SPECIAL
        cfg = OpenAIGPTConfig(vocab_size=self.rows, n_positions=shape.n_ctx, n_embd=shape.n_embd,
                              n_layer=shape.n_layer, n_head=shape.n_head, afn='gelu', embd_pdrop=0.1,
                              attn_pdrop=0.1, resid_pdrop=0.1, summary_first_dropout=0.1)
        self.model = OpenAIGPTDoubleHeadsModel(cfg).to(device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=l2)
        from precision import configure_precision
        self.scaler = configure_precision(device, spec.precision)  # TF32 for fp32 on CUDA, as ours

    def autocast(self):
        """Return the autocast context of the spec's precision."""
        if self.spec.precision == 'fp32':
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=PRECISION_DTYPES[self.spec.precision])

    def train_step(self, batch):
        """Do one update on batch, spec.micro_batch examples per forward pass."""
        self.model.train()
        ids, labels, mc_token_ids, y = peer_inputs(batch, self.device)
        n = len(y)
        for s in range(0, n, self.spec.micro_batch):
            e = min(s + self.spec.micro_batch, n)
            with self.autocast():
                out = self.model(ids[s:e], mc_token_ids=mc_token_ids[s:e], labels=labels[s:e], mc_labels=y[s:e])
                loss = (out.mc_loss + self.lm_coef * out.loss) * ((e - s) / n)
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        if self.scaler is not None:
            self.scaler.unscale_(self.opt)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def evaluate(self, batch):
        """Return the classification logits [B, 2] of batch from the plain forward (which also decodes LM logits)."""
        self.model.eval()
        ids, _, mc_token_ids, y = peer_inputs(batch, self.device)
        with torch.inference_mode(), self.autocast():
            logits = self.model(ids, mc_token_ids=mc_token_ids).mc_logits.float()
            torch.nn.functional.cross_entropy(logits, y, reduction='sum').item()  # the loss iter_apply sums
        return logits.cpu().numpy()


def measure_section(step, batches, shape, rows, train, protocol, device):
    """Return one round of step (a training update or an evaluation) over batches in steady state (steady.py): how many
    were discarded, the seconds of the timed ones, and their batches' real tokens and model FLOPs."""
    discarded, times = steady.measure_round(lambda k: step(batches[k]), protocol, lambda fn: timed(fn, device))
    used = batches[discarded:discarded + len(times)]
    return dict(discarded=discarded, times=times, tokens=[int(mmb.sum()) for _, mmb, _ in used],
                flops=[batch_flops(mmb, shape, rows, train) for _, mmb, _ in used])


def run_config(spec, shape, device, protocol, seed):
    """Build one configuration in this process and measure one round of its training, evaluation and memory; return
    a result dict (combine pools the rounds)."""
    batches = make_batches(protocol.most, shape, seed)
    impl = (Ours if spec.impl == 'ours' else Peer)(spec, shape, device, seed)
    load_start = os.getloadavg()[0] if hasattr(os, 'getloadavg') else None
    base = memory_base(device)
    training = measure_section(impl.train_step, batches, shape, impl.rows, True, protocol, device)
    peak = memory_peak(device)  # before evaluation, which needs less
    evaluation = measure_section(impl.evaluate, batches, shape, impl.rows, False, protocol, device)
    mib = 2 ** 20
    return dict(
        name=spec.name, impl=spec.impl, precision=spec.precision, micro_batch=spec.micro_batch, lm_rows=impl.rows,
        train=training, eval=evaluation,
        memory=dict(kind='cuda_max_allocated' if device.type == 'cuda' else 'peak_rss', peak_mib=peak / mib,
                    base_mib=base / mib, step_increment_mib=(peak - base) / mib),
        loadavg=[load_start, os.getloadavg()[0] if hasattr(os, 'getloadavg') else None])


def rates(rounds, section, shape):
    """Return the throughput statistics of a section's timed steps over all rounds: medians of examples/s, tokens/s
    and FLOP/s, the median and range of the seconds a step, and how many each round discarded."""
    times = [t for r in rounds for t in r[section]['times']]
    tokens = [n for r in rounds for n in r[section]['tokens']]
    flops = [f for r in rounds for f in r[section]['flops']]
    return dict(step_s=statistics.median(times), step_s_min=min(times), step_s_max=max(times), step_s_all=times,
                discarded=[r[section]['discarded'] for r in rounds],
                examples_per_s=statistics.median(shape.batch / t for t in times),
                tokens_per_s=statistics.median(n / t for n, t in zip(tokens, times)),
                flops_per_s=statistics.median(f / t for f, t in zip(flops, times)),
                tokens_per_step=tokens, flops_per_step=flops)


def combine(rounds, shape):
    """Return a configuration's result over its rounds: the rates of every timed step, the memory of the round with
    the highest peak, each round's load averages and process id."""
    failed = [r for r in rounds if 'error' in r]
    if failed:
        return failed[0]
    first = rounds[0]
    return dict({key: first[key] for key in ('name', 'impl', 'precision', 'micro_batch', 'lm_rows')},
                train=rates(rounds, 'train', shape), eval=rates(rounds, 'eval', shape),
                memory=max((r['memory'] for r in rounds), key=lambda m: m['peak_mib']),
                loadavg=[r['loadavg'] for r in rounds], pids=[r.get('pid') for r in rounds])


def run_isolated(spec, argv_common):
    """Return run_config's result for spec from a fresh subprocess, or a dict with the error."""
    cmd = [sys.executable, os.path.abspath(__file__), *argv_common, '--worker', spec.name]
    try:
        return steady.run_worker(cmd, f'bench.py: the {spec.name} worker')
    except SystemExit as err:
        return dict(name=spec.name, impl=spec.impl, precision=spec.precision, micro_batch=spec.micro_batch,
                    error=str(err)[:500])


def cpu_name():
    """Return the CPU model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags():
    """Return the SIMD flags of interest that /proc/cpuinfo lists."""
    try:
        with open('/proc/cpuinfo') as f:
            flags = next((line.split(':', 1)[1].split() for line in f if line.startswith('flags')), [])
    except OSError:
        flags = []
    return [f for f in ('avx2', 'avx512f', 'avx512_bf16', 'amx_bf16') if f in flags]


def total_memory_gib():
    """Return the machine's total memory in GiB from /proc/meminfo, or None."""
    try:
        with open('/proc/meminfo') as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith('MemTotal'))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    return kib / 2 ** 20


def write_json(path, info, args, **results):
    """Write a benchmark's results as JSON to path: the machine (machine_info), its arguments (a namespace) and each
    named part of its results."""
    settings = {key: asdict(value) if is_dataclass(value) else value for key, value in vars(args).items()}
    with open(path, 'w') as f:
        json.dump(dict(machine=info, args=settings, **results), f, indent=1)


def machine_info(device):
    """Return a description of the machine and the library versions."""
    try:
        import transformers
        tf_version = transformers.__version__
    except ImportError:
        tf_version = None
    info = dict(cpu=cpu_name(), cpu_count=os.cpu_count(), cpu_flags=cpu_flags(), memory_gib=total_memory_gib(),
                torch_threads=torch.get_num_threads(),
                torch=torch.__version__, transformers=tf_version, python=platform.python_version(),
                date=datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'), device=str(device))
    if device.type == 'cuda':
        info['gpu'] = torch.cuda.get_device_name(device)
    return info


def fine_tune_projection(results, shape, n_iter=3):
    """Return the projected seconds of train.py's 3-epoch ROCStories run from a config's step and eval rates."""
    updates = (N_TRAIN_ROC // shape.batch) * n_iter
    evaluated = n_iter * 2 * N_VALID_ROC + N_TEST_ROC
    return updates * results['train']['step_s'] + evaluated / results['eval']['examples_per_s']


def ratio(results, a, b, section='train', key='examples_per_s'):
    """Return results[a][section][key] / results[b][section][key], or None when either is missing."""
    ra, rb = results.get(a), results.get(b)
    if not ra or not rb or 'error' in ra or 'error' in rb:
        return None
    return ra[section][key] / rb[section][key]


def targets(results, device):
    """Return the issue's targets as [{name, value, goal, at_least, met}] for the configs that were measured.

    Each of our configs is compared with every measured peer config of the named precision (peer-fp32 and,
    when measured, peer-fp32-mbN): the issue's peer does the batch of 32 in one pass.
    """
    low = 'bf16' if device.type == 'cpu' else 'fp16'
    out = []

    def add(name, value, goal, at_least):
        if value is not None:
            out.append(dict(name=name, value=value, goal=goal, at_least=at_least,
                            met=value >= goal if at_least else value <= goal))

    def peers(precision):
        return [n for n in results if n == f'peer-{precision}' or n.startswith(f'peer-{precision}-')]

    if device.type == 'cpu':
        for peer in peers('fp32'):
            add(f'train throughput ours-fp32 / {peer}', ratio(results, 'ours-fp32', peer), 1.3, True)
            add(f'train throughput ours-{low} / {peer}', ratio(results, f'ours-{low}', peer), 2.5, True)
        for peer in peers(low):
            add(f'train throughput ours-{low} / {peer}', ratio(results, f'ours-{low}', peer), 2.5, True)
    for p in ['fp32', low]:
        for peer in peers(p):
            add(f'train peak memory ours-{p} / {peer}', ratio(results, f'ours-{p}', peer, 'memory', 'peak_mib'),
                0.6, False)
    if device.type == 'cuda':
        r = results.get('ours-bf16')
        if r and 'error' not in r:
            add('ours-bf16 train FLOP/s / bf16 matmul roofline', r['train']['roofline_fraction'], 0.4, True)
            add('ours-bf16 3-epoch ROCStories fine-tune, s (projected)', r['fine_tune_s'], 60.0, False)
    return out


def format_table(report):
    """Return the human-readable table of a report."""
    m, s = report['machine'], report['settings']
    lines = [f"GPT-1 fine-tuning benchmark: {m['cpu']} ({m['cpu_count']} cores, {m['torch_threads']} threads"
             f"{', ' + m['gpu'] if 'gpu' in m else ''}), torch {m['torch']}, transformers {m['transformers']}, "
             f"{m['date']}",
             f"model n_embd {s['n_embd']} n_layer {s['n_layer']} n_head {s['n_head']} rows {s['rows']}; batch "
             f"{s['batch']} x 2 endings x n_ctx {s['n_ctx']}; device {s['device']}",
             f"{steady.Protocol(**s['protocol']).describe()} (median, range), training steps and evaluation batches "
             f"alike",
             'roofline (best square matmul, n=%d): %s' % (s['roofline_n'], ', '.join(
                 f'{p} {v / 1e12:.3f} TFLOP/s' for p, v in report['roofline'].items())),
             '',
             f"{'config':<16}{'micro':>6}{'step s':>8}{'range':>12}{'ex/s':>8}{'tok/s':>9}{'TFLOP/s':>9}{'roof':>6}"
             f"{'vs peer':>8}{'eval ex/s':>10}{'eval tok/s':>11}{'vs peer':>8}{'peak MiB':>10}{'step +MiB':>10}"
             f"{'vs peer':>8}{'3-ep min':>9}{'load':>6}"]
    for name, r in report['results'].items():
        if 'error' in r:
            lines.append(f"{name:<16}{r['micro_batch']:>6}  {r['error']}")
            continue
        t, e, mem = r['train'], r['eval'], r['memory']
        peer = f"peer-{r['precision']}"
        vs_t = ratio(report['results'], name, peer) if r['impl'] == 'ours' else None
        vs_e = ratio(report['results'], name, peer, 'eval') if r['impl'] == 'ours' else None
        vs_m = ratio(report['results'], name, peer, 'memory', 'peak_mib') if r['impl'] == 'ours' else None
        load = r['loadavg'][-1][1]
        spread = f"{t['step_s_min']:.2f}-{t['step_s_max']:.2f}"
        lines.append(f"{name:<16}{r['micro_batch']:>6}{t['step_s']:>8.2f}{spread:>12}{t['examples_per_s']:>8.2f}"
                     f"{t['tokens_per_s']:>9.0f}{t['flops_per_s'] / 1e12:>9.3f}{t['roofline_fraction']:>6.0%}"
                     f"{'' if vs_t is None else f'{vs_t:.2f}x':>8}{e['examples_per_s']:>10.1f}"
                     f"{e['tokens_per_s']:>11.0f}{'' if vs_e is None else f'{vs_e:.2f}x':>8}"
                     f"{mem['peak_mib']:>10.0f}{mem['step_increment_mib']:>10.0f}"
                     f"{'' if vs_m is None else f'{vs_m:.2f}x':>8}{r['fine_tune_s'] / 60:>9.1f}"
                     f"{'' if load is None else f'{load:.1f}':>6}")
    lines.append(f"3-ep min: projected 3-epoch ROCStories fine-tune, {(N_TRAIN_ROC // s['batch']) * 3} updates + "
                 f"{3 * 2 * N_VALID_ROC + N_TEST_ROC} examples evaluated; load: 1-min load average after the config's "
                 f"last round (its own threads included)")
    lines.append('discarded a round (training/evaluation): ' + '; '.join(
        f"{name} {','.join(f'{a}/{b}' for a, b in zip(r['train']['discarded'], r['eval']['discarded']))}"
        for name, r in report['results'].items() if 'error' not in r))
    if report['targets']:
        lines.append('')
        for t in report['targets']:
            lines.append(f"target {t['name']}: {t['value']:.2f} (goal {'>=' if t['at_least'] else '<='} {t['goal']}): "
                         f"{'met' if t['met'] else 'MISSED'}")
    if report['settings']['in_process']:
        lines.append('(--in-process: the peak RSS of each config is the whole run\'s so far; memory ratios are not '
                     'per config)')
    if report['settings']['quick']:
        lines.append('(--quick: tiny model, numbers are a smoke test only)')
    return '\n'.join(lines)


def parse_args(argv=None):
    """Return the parsed command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--device', default='cpu', help="'cpu' (default) or 'cuda'")
    p.add_argument('--configs', default=None,
                   help='comma-separated <impl>-<precision>[-mbN] names (default: ours and peer in fp32 and '
                        'bf16 on the CPU, fp32, fp16 and bf16 on CUDA)')
    steady.add_arguments(p, what='training steps and evaluation batches')
    p.add_argument('--seed', type=int, default=0, help='seed of the synthetic batches and the models (default: 0)')
    p.add_argument('--quick', action='store_true', help='tiny model and 1 timed step: a smoke test in seconds')
    p.add_argument('--in-process', action='store_true',
                   help='run every config in this process (faster start; peak memory then not per config)')
    p.add_argument('--json', default=None, help='also write the results as JSON to this path (default: none)')
    p.add_argument('--worker', default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.protocol = steady.protocol_of(args)
    return args


def common_argv(args):
    """Return the flags a worker subprocess needs to repeat this run's settings."""
    argv = ['--device', args.device, '--seed', str(args.seed), *args.protocol.argv()]
    return argv + (['--quick'] if args.quick else [])


def main(argv=None):
    """Run the benchmark, print the table, optionally write JSON; return the report dict."""
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit(f'bench.py: --device {args.device}: CUDA is not available in this torch build')
    shape = QUICK_SHAPE if args.quick else Shape()
    names = args.configs.split(',') if args.configs else default_configs(device)
    try:
        specs = [parse_spec(n.strip(), shape, device) for n in names]
    except ValueError as err:
        raise SystemExit(f'bench.py: {err}') from None
    if args.worker:
        steady.report(run_config(parse_spec(args.worker, shape, device), shape, device, args.protocol, args.seed))
        return None

    roofline_n = 256 if args.quick else (8192 if device.type == 'cuda' else 3072)
    roofline = {p: measure_roofline(p, device, roofline_n) for p in dict.fromkeys(s.precision for s in specs)}
    by_name = {spec.name: spec for spec in specs}

    def run_round(name, round_no):
        print(f'bench.py: round {round_no + 1} of {name} ...', file=sys.stderr, flush=True)
        if args.in_process:
            return run_config(by_name[name], shape, device, args.protocol, args.seed)
        return run_isolated(by_name[name], common_argv(args))

    results = {name: combine(rounds, shape) for name, rounds in steady.take_turns(by_name, args.protocol,
                                                                                  run_round).items()}
    for spec in specs:
        r = results[spec.name]
        if 'error' not in r:
            r['memory']['isolated'] = not args.in_process  # in-process, the peak RSS is the run's so far
            r['train']['roofline_fraction'] = r['train']['flops_per_s'] / roofline[spec.precision]
            r['eval']['roofline_fraction'] = r['eval']['flops_per_s'] / roofline[spec.precision]
            r['fine_tune_s'] = fine_tune_projection(r, shape)
    report = dict(machine=machine_info(device),
                  settings=dict(asdict(shape), rows=shape.rows, batch=shape.batch, protocol=asdict(args.protocol),
                                seed=args.seed, quick=args.quick,
                                in_process=args.in_process, device=str(device), roofline_n=roofline_n,
                                story_len=STORY_LEN, ending_len=ENDING_LEN),
                  roofline=roofline, results=results, targets=[])
    report['targets'] = targets(results, device)
    print(format_table(report), flush=True)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w') as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == '__main__':
    main()
