"""Whole-run benchmark: train.py timed end to end as a user runs it, on synthetic weights and stories (TF: none).

bench.py times training steps inside one process; this times what a user waits for: `python train.py
--dataset rocstories --submit ...` as a subprocess, from process start to exit, on inputs made here in a work
folder:

- released-format weights (params_shapes.json, params_0.npy ... params_9.npy, the vocabulary copied beside
  them) with random values, N(0, 0.02) with layer-norm gains 1: the full size (n_embd 768, 12 layers, 12
  heads, 512 positions, 40,478 token rows) or, for CI, a tiny one (n_embd 32, 2 layers, 4 heads);
- Story Cloze CSVs in the dataset's layout: stories of four sentences totalling 40-60 BPE tokens and endings
  of 8-15, made of common English words that the real vocabulary encodes one token each, as in real text.

Jobs: `small` (48 training, 24 valid and 16 test stories, 1 epoch, batch 8 x 1, CPU fp32: the issue's CPU
target), `rocstories` (the real dataset's sizes, 1,497 / 374 / 1,871 stories, 3 epochs, the original's
batch 8 x 4, any --device / --precision) and `tiny` (a few stories on the tiny model, seconds, for CI).

Each run reports the wall time measured outside (time.perf_counter around the child), the phases train.py
records in its summary (log/<desc>_summary.json: load, encode, train, eval, write, peak memory), the start-up
(wall minus the phases: process start, imports, argument parsing), the child's max RSS, and the training FLOP/s: model FLOPs
(bench.seq_flops) of the sequences the job trains on, counted by encoding the made stories with
text_utils.TextEncoder as train.py does, over the train phase (and over the whole wall), as a fraction of
--peak_tflops (default: the bf16 dense peak of a detected H100/H200 when the job runs on CUDA).

--earlier PATH also runs the earlier PyTorch port's train.py (huggingface/pytorch-openai-transformer-lm, a
checkout patched to run on today's libraries, never part of this repository) on the same small job,
alternating with ours over --repeats rounds, and prints both wall times and their ratio.

    python3 bench_e2e.py [--job small|rocstories|tiny] [--model full|tiny] [--device cpu|cuda]
                         [--precision fp32|bf16|...] [--repeats N] [--earlier PATH] [--peak_tflops T]
                         [--workdir DIR] [--keep] [--train_args '...'] [--json PATH]
"""
import argparse
import csv
import json
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the library at the repository root

import numpy as np

import bench
from bench import ENDING_LEN, N_SPECIAL, STORY_LEN
from model_pytorch import N_CTX_RELEASED, N_VOCAB
from tests.helpers import random_released_arrays
from text_utils import MODEL_DIR
from weights import VOCAB_FILES, copy_vocab, released_names, write_released_shards

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository root
SENTENCE_TOKENS = (8, 17)   # BPE tokens of one story sentence, its full stop included
OUTPUTS = ('log', 'save', 'submission')  # what a run writes in its folder, removed before each run
# bf16 dense peaks (TFLOP/s, datasheet values without sparsity), matched in order against the GPU's name
GPU_PEAK_BF16 = (('H100 PCIe', 756.5), ('H100 NVL', 835.5), ('H200 NVL', 835.5), ('H100', 989.4), ('H200', 989.4))


@dataclass(frozen=True)
class ModelSize:
    """The sizes of the made weights (and the train.py flags that build the model)."""
    n_embd: int
    n_head: int
    n_layer: int
    n_positions: int = N_CTX_RELEASED


MODELS = {'full': ModelSize(768, 12, 12), 'tiny': ModelSize(32, 4, 2)}


@dataclass(frozen=True)
class Job:
    """A train.py run: split sizes, epochs, batch, model, device and precision (None: train.py's default)."""
    name: str
    n_train: int
    n_valid: int
    n_test: int
    n_iter: int
    n_batch: int
    n_gpu: int
    model: str
    device: str = None
    precision: str = 'fp32'


JOBS = {
    'small': Job('small', 48, 24, 16, n_iter=1, n_batch=8, n_gpu=1, model='full', device='cpu'),
    'rocstories': Job('rocstories', 1497, 374, 1871, n_iter=3, n_batch=8, n_gpu=4, model='full'),
    'tiny': Job('tiny', 8, 4, 4, n_iter=1, n_batch=4, n_gpu=1, model='tiny', device='cpu'),
}

# Words the released BPE vocabulary holds whole ('word</w>'), so each is one token, as in real stories.
NAMES = ('Jim', 'Anna', 'Tom', 'Kelly', 'Sam', 'Maria', 'Joe', 'Lisa', 'Ben', 'Gina', 'Tim', 'Amy', 'John',
         'Sarah', 'Mike', 'Emma', 'Dan', 'Kate', 'Bob', 'Jane')
PRONOUNS = ('he', 'she', 'they')
VERBS = ('bought', 'found', 'saw', 'made', 'cooked', 'baked', 'cleaned', 'painted', 'fixed', 'washed',
         'visited', 'called', 'watched', 'played', 'read', 'wrote', 'took', 'brought', 'sold', 'lost')
DETS = ('the', 'his', 'her', 'their')
ADJS = ('big', 'small', 'new', 'old', 'red', 'blue', 'green', 'little', 'nice', 'cheap', 'warm', 'long')
NOUNS = ('car', 'dog', 'cat', 'book', 'house', 'cake', 'pizza', 'bike', 'phone', 'room', 'garden', 'shirt',
         'game', 'movie', 'song', 'letter', 'picture', 'boat', 'kitchen', 'door', 'window', 'table')
PLACES = ('store', 'park', 'beach', 'school', 'office', 'lake', 'city', 'party')
PLACE_PREPS = ('at', 'near', 'in', 'from')
PEOPLE = ('friend', 'friends', 'mother', 'father', 'sister', 'brother', 'teacher', 'neighbor', 'family')
TIMES = (('after', 'lunch'), ('before', 'dinner'), ('at', 'night'), ('after', 'school'), ('in', 'town'))
FEELINGS = ('happy', 'sad', 'tired', 'proud', 'excited', 'angry', 'glad', 'upset', 'hungry')
ADVERBS = ('today', 'again', 'yesterday', 'later', 'finally', 'early')


def phrase(rnd, n_words, subject):
    """Return a list of n_words (2 to 5) words that continue a sentence: a time, a place, a person or a clause."""
    pron = rnd.choice(PRONOUNS)
    be = 'were' if pron == 'they' else 'was'
    if n_words == 2:
        return list(rnd.choice(TIMES))
    if n_words == 3:
        if rnd.random() < 0.5:
            return [rnd.choice(PLACE_PREPS), 'the', rnd.choice(PLACES)]
        return ['with', rnd.choice(DETS[1:]), rnd.choice(PEOPLE)]
    if n_words == 4:
        return ['because', pron, be, rnd.choice(FEELINGS)] if rnd.random() < 0.5 else \
            ['so', pron, 'felt', rnd.choice(FEELINGS)]
    who = subject if subject in NAMES and rnd.random() < 0.5 else pron
    return ['and', who, rnd.choice(VERBS), rnd.choice(DETS), rnd.choice(NOUNS)]


def sentence(rnd, n_tokens, subject):
    """Return a sentence of exactly n_tokens BPE tokens (>= 5; its full stop is one): subject, verb, object, more."""
    n_object = 2 if n_tokens - 3 <= 2 or rnd.random() < 0.5 else 3
    words = [subject, rnd.choice(VERBS), rnd.choice(DETS)] + ([rnd.choice(ADJS)] if n_object == 3 else [])
    words.append(rnd.choice(NOUNS))
    left = n_tokens - 1 - len(words)
    if left < 0:
        raise ValueError(f'a sentence needs at least 5 tokens, asked for {n_tokens}')
    used = set()
    while left > 1:
        n = rnd.choice([k for k in (2, 3, 4, 5) if k <= left and k not in used] or [k for k in (2, 3) if k <= left])
        used.add(n)  # each kind of phrase once while others fit: no 'before dinner before dinner'
        words += phrase(rnd, n, subject)
        left -= n
    if left == 1:
        words.append(rnd.choice(ADVERBS))
    text = ' '.join(words) + '.'
    return text[0].upper() + text[1:]


def split_lengths(rnd, total, parts=4, bounds=SENTENCE_TOKENS):
    """Return parts sentence lengths within bounds that add up to total, near-equal with some jitter."""
    lengths = [total // parts + (i < total % parts) for i in range(parts)]
    for _ in range(2 * parts):
        i, j = rnd.sample(range(parts), 2)
        if lengths[i] > bounds[0] and lengths[j] < bounds[1]:
            lengths[i] -= 1
            lengths[j] += 1
    return lengths


def story_row(rnd):
    """Return one Story Cloze row: id, four sentences of 40-60 tokens together, two endings of 8-15, label 1 or 2."""
    name = rnd.choice(NAMES)
    subjects = [name] + [rnd.choice((name, rnd.choice(PRONOUNS))) for _ in range(3)]
    lengths = split_lengths(rnd, rnd.randint(*STORY_LEN))
    sentences = [sentence(rnd, n, s) for n, s in zip(lengths, subjects)]
    endings = [sentence(rnd, rnd.randint(*ENDING_LEN), rnd.choice((name, rnd.choice(PRONOUNS))))
               for _ in range(2)]
    return [str(uuid.UUID(int=rnd.getrandbits(128)))] + sentences + endings + [str(rnd.randint(1, 2))]


def write_stories_csv(path, n, rnd):
    """Write a Story Cloze CSV (datasets.HEADER, the label column included) of n made stories to path."""
    import datasets
    with open(path, 'w', newline='', encoding='utf-8') as f:
        w = csv.writer(f)
        w.writerow(datasets.HEADER)
        for _ in range(n):
            w.writerow(story_row(rnd))


def is_made(folder, marker):
    """Return whether folder holds what marker describes (made.json equal to marker)."""
    try:
        with open(os.path.join(folder, 'made.json')) as f:
            return json.load(f) == marker
    except (OSError, ValueError):
        return False


def mark_made(folder, marker):
    """Write marker as folder/made.json, so a later run with the same inputs reuses the folder."""
    with open(os.path.join(folder, 'made.json'), 'w') as f:
        json.dump(marker, f)


def make_weights(folder, size, seed=0):
    """Write random released-format weights of size and the vocabulary to folder (reused when made before); return it."""
    marker = dict(kind='weights', model=asdict(size), seed=seed)
    files = [*released_names(), *VOCAB_FILES]
    if is_made(folder, marker) and all(os.path.isfile(os.path.join(folder, f)) for f in files):
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    arrays = random_released_arrays(np.random.default_rng(seed), size.n_embd, size.n_layer, size.n_positions, N_VOCAB)
    write_released_shards(folder, arrays)
    del arrays
    copy_vocab(MODEL_DIR, folder, VOCAB_FILES)
    mark_made(folder, marker)
    return folder


def make_stories(folder, job, seed=0):
    """Write the job's valid CSV (n_train + n_valid stories) and test CSV (n_test) to folder (reused when made before)."""
    import datasets
    marker = dict(kind='stories', n_val_rows=job.n_train + job.n_valid, n_test=job.n_test, seed=seed,
                  story_tokens=STORY_LEN, ending_tokens=ENDING_LEN)
    marker = json.loads(json.dumps(marker))  # tuples as the lists made.json gives back
    if is_made(folder, marker) and all(os.path.isfile(os.path.join(folder, f))
                                       for f in (datasets.VAL_FILE, datasets.TEST_FILE)):
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    rnd = random.Random(seed)
    write_stories_csv(os.path.join(folder, datasets.VAL_FILE), job.n_train + job.n_valid, rnd)
    write_stories_csv(os.path.join(folder, datasets.TEST_FILE), job.n_test, rnd)
    mark_made(folder, marker)
    return folder


def split_lengths_of(data_dir, n_valid, vocab_dir=MODEL_DIR):
    """Return {'train'|'valid'|'test': [(story, ending 1, ending 2) BPE lengths]} of the splits train.py reads."""
    import datasets
    from text_utils import TextEncoder
    encoder = TextEncoder(os.path.join(vocab_dir, VOCAB_FILES[0]), os.path.join(vocab_dir, VOCAB_FILES[1]))
    splits = datasets.rocstories(data_dir, n_valid=n_valid)
    out = {}
    for name, split in zip(('train', 'valid', 'test'), splits):
        fields = [encoder.encode(list(field), verbose=False) for field in split[:3]]
        out[name] = [tuple(len(x) for x in example) for example in zip(*fields)]
    return out


def sequence_lengths(examples, n_ctx=N_CTX_RELEASED):
    """Return [(len of _start_ story _delimiter_ ending1 _classify_, the same with ending 2)] as train.transform_roc."""
    max_len = n_ctx // 2 - 2
    return [(3 + min(s, max_len) + min(a, max_len), 3 + min(s, max_len) + min(b, max_len)) for s, a, b in examples]


def job_n_ctx(lengths, n_ctx=N_CTX_RELEASED):
    """Return the n_ctx train.py computes (train.roc_n_ctx): the longest story + ending over all splits, + 3."""
    return min(max(n for split in lengths.values() for pair in sequence_lengths(split, n_ctx) for n in pair), n_ctx)


def job_flops(lengths, job, size):
    """Return the job's model FLOPs and tokens: training (fwd + bwd, bench.seq_flops) and evaluation (fwd)."""
    # Training: n_iter epochs of the (n_train // batch) full batches. The epoch's shuffle decides which examples
    # the dropped remainder holds, so each epoch counts its share of every example: exact when the batch divides
    # the training set (the small and tiny jobs). Evaluation (train.log_eval after each epoch): the first
    # n_valid training examples and the valid split; with --submit, the test split once.
    shape = bench.Shape(n_embd=size.n_embd, n_head=size.n_head, n_layer=size.n_layer)
    n_ctx = job_n_ctx(lengths)
    rows = N_VOCAB + N_SPECIAL + n_ctx  # the table of tokens, special tokens and positions: the tied LM decoder

    def total(examples, train):
        seqs = [n for pair in sequence_lengths(examples) for n in pair]
        return sum(bench.seq_flops(n, shape, rows, train) for n in seqs), sum(seqs)

    n_train, batch = len(lengths['train']), job.n_batch * job.n_gpu
    used = (n_train // batch) * batch / n_train
    train_flops, train_tokens = total(lengths['train'], True)
    logged = [total(lengths['train'][:job.n_valid], False), total(lengths['valid'], False)]
    test = total(lengths['test'], False)
    return dict(n_ctx=n_ctx, rows=rows, updates=(n_train // batch) * job.n_iter,
                train_flops=job.n_iter * used * train_flops, train_tokens=job.n_iter * used * train_tokens,
                eval_flops=job.n_iter * sum(f for f, _ in logged) + test[0],
                eval_tokens=job.n_iter * sum(t for _, t in logged) + test[1])


def read_phases(cwd):
    """Return the phases record ({'load_s': ..., 'peak_memory_mib': ...}) of the summary train.py wrote in the run
    folder cwd (log/rocstories_summary.json), or None when there is none (the earlier port writes none)."""
    path = os.path.join(cwd, 'log', 'rocstories_summary.json')
    if not os.path.isfile(path):
        return None
    with open(path, encoding='utf-8') as f:
        return json.load(f)['phases']


def startup_seconds(wall_s, phases):
    """Return the wall time outside train.py's phases (process start, imports, argument parsing), or None."""
    if not phases:
        return None
    return wall_s - sum(v for k, v in phases.items() if k.endswith('_s'))


def done_line(text):
    """Return train.py's last `done: ...` line, or None."""
    lines = [line.strip() for line in text.splitlines() if line.startswith('done:')]
    return lines[-1] if lines else None


def gpu_name():
    """Return the first GPU's name from nvidia-smi, or None when there is none."""
    try:
        out = subprocess.run(['nvidia-smi', '--query-gpu=name', '--format=csv,noheader'], capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    names = out.stdout.strip().splitlines() if out.returncode == 0 else []
    return names[0].strip() if names else None


def default_peak(device, gpu):
    """Return (peak TFLOP/s, where it comes from): the bf16 dense peak of a known GPU when the job runs on CUDA."""
    if not device.startswith('cuda') or not gpu:
        return None, None
    for key, tflops in GPU_PEAK_BF16:
        if key in gpu:
            return tflops, f'bf16 dense peak of {gpu}'
    return None, None


def resolve_device(requested):
    """Return the device the job runs on (a str): the requested one, else CUDA when torch sees a GPU, else the CPU."""
    from distributed import resolve_device as train_device
    return str(train_device(requested or None))


def train_command(job, size, device, precision, extra=()):
    """Return our train.py command line of a job, run in a folder holding model/ and data/ (the README's command)."""
    cmd = [sys.executable, os.path.join(REPO, 'train.py'), '--dataset', 'rocstories', '--desc', 'rocstories',
           '--submit', '--data_dir', 'data/', '--n_valid', str(job.n_valid), '--n_iter', str(job.n_iter),
           '--n_batch', str(job.n_batch), '--n_gpu', str(job.n_gpu), '--device', device, '--precision', precision]
    if size != MODELS['full']:
        cmd += ['--n_embd', str(size.n_embd), '--n_head', str(size.n_head), '--n_layer', str(size.n_layer)]
    return cmd + list(extra)


def earlier_command(path, job):
    """Return the earlier port's train.py command line of a job (its batch is n_batch * the GPUs it sees, 1 on the CPU)."""
    return [sys.executable, os.path.join(path, 'train.py'), '--dataset', 'rocstories', '--desc', 'rocstories',
            '--submit', '--data_dir', 'data/', '--n_batch', str(job.n_batch), '--n_valid', str(job.n_valid),
            '--n_iter', str(job.n_iter)]


def run_folder(folder, model_dir, data_dir, links=()):
    """Make folder with model/ and data/ (and each (name, target) of links) as symbolic links; return it."""
    os.makedirs(folder, exist_ok=True)
    for name, target in [('model', model_dir), ('data', data_dir), *links]:
        path = os.path.join(folder, name)
        if os.path.islink(path) or os.path.isfile(path):
            os.remove(path)
        os.symlink(os.path.abspath(target), path)
    return folder


def loadavg():
    """Return the 1-minute load average, or None where the system has none."""
    return os.getloadavg()[0] if hasattr(os, 'getloadavg') else None


def earlier_env(device):
    """Return the environment of the earlier port's run: it takes every GPU it sees, so it sees the job's device only."""
    env = dict(os.environ)
    if device.startswith('cuda'):
        visible = env.get('CUDA_VISIBLE_DEVICES', '').split(',')
        index = int(device.split(':')[1]) if ':' in device else 0
        env['CUDA_VISIBLE_DEVICES'] = visible[index] if visible != [''] else str(index)
    else:
        env['CUDA_VISIBLE_DEVICES'] = ''  # on a CPU job it would otherwise move to a GPU
    return env


def run_timed(cmd, cwd, log_prefix, env=None):
    """Run cmd in cwd (its earlier outputs removed), output to log_prefix.{stdout,stderr}; return a result dict."""
    # the wall time is time.perf_counter around the child, from its start to its exit (subprocess.run's wait);
    # wait4 also gives the child's own max RSS where the system has it
    for name in OUTPUTS:
        shutil.rmtree(os.path.join(cwd, name), ignore_errors=True)
    out_path, err_path = log_prefix + '.stdout', log_prefix + '.stderr'
    load_before = loadavg()
    with open(out_path, 'w') as out, open(err_path, 'w') as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=err, env=env)
        if hasattr(os, 'wait4'):
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - t0
            proc.returncode = os.waitstatus_to_exitcode(status)
            max_rss = usage.ru_maxrss / (2 ** 20 if sys.platform == 'darwin' else 1024)
        else:
            proc.wait()
            wall = time.perf_counter() - t0
            max_rss = None
    with open(out_path) as f:
        stdout = f.read()
    with open(err_path) as f:
        stderr_tail = f.read()[-2000:]
    result = dict(returncode=proc.returncode, wall_s=wall, max_rss_mib=max_rss, loadavg=[load_before, loadavg()],
                  done=done_line(stdout), phases=None, startup_s=None, stdout=out_path, stderr=err_path,
                  command=shlex.join(cmd))
    result['phases'] = read_phases(cwd)
    result['startup_s'] = startup_seconds(wall, result['phases'])
    if proc.returncode != 0:
        result['error_tail'] = stderr_tail
    return result


def add_rates(result, flops, peak_tflops):
    """Add the training TFLOP/s (over the train phase and over the whole wall) and their fraction of the peak."""
    train_s = (result['phases'] or {}).get('train_s')
    result['train_tflops'] = flops['train_flops'] / train_s / 1e12 if train_s else None
    result['wall_tflops'] = flops['train_flops'] / result['wall_s'] / 1e12
    for key in ('train', 'wall'):
        value = result[f'{key}_tflops']
        result[f'{key}_mfu'] = value / peak_tflops if value is not None and peak_tflops else None
    return result


def summarize(runs):
    """Return per implementation the median and min wall time and the median of each phase over its good runs."""
    out = {}
    for impl in dict.fromkeys(r['impl'] for r in runs):
        good = [r for r in runs if r['impl'] == impl and r['returncode'] == 0]
        if not good:
            out[impl] = dict(runs=0)
            continue
        s = dict(runs=len(good), wall_s=statistics.median(r['wall_s'] for r in good),
                 wall_s_min=min(r['wall_s'] for r in good), wall_s_all=[r['wall_s'] for r in good])
        for key in ('startup_s', 'train_tflops', 'train_mfu', 'wall_tflops', 'wall_mfu', 'max_rss_mib'):
            values = [r[key] for r in good if r.get(key) is not None]
            s[key] = statistics.median(values) if values else None
        phases = [r['phases'] for r in good if r['phases']]
        keys = dict.fromkeys(k for p in phases for k in p)
        s['phases'] = {k: statistics.median(p[k] for p in phases if k in p) for k in keys} if phases else None
        out[impl] = s
    ours, earlier = out.get('ours', {}), out.get('earlier', {})
    if ours.get('runs') and earlier.get('runs'):
        by_round = {}
        for r in runs:
            if r['returncode'] == 0:
                by_round.setdefault(r['round'], {})[r['impl']] = r['wall_s']
        out['earlier_over_ours'] = earlier['wall_s'] / ours['wall_s']
        out['earlier_over_ours_by_round'] = [w['earlier'] / w['ours'] for _, w in sorted(by_round.items())
                                             if len(w) == 2]
    return out


def fmt(value, spec, missing='-'):
    """Return value formatted with spec, or missing for None."""
    return missing if value is None else format(value, spec)


def format_report(report):
    """Return the human-readable table of a report."""
    s, d, m = report['settings'], report['data'], report['machine']
    size = s['model']
    lines = [f"bench_e2e: job {s['job']}: {s['n_train']} train / {s['n_valid']} valid / {s['n_test']} test stories, "
             f"{s['n_iter']} epoch(s), batch {s['n_batch']} x {s['n_gpu']}, model {size['n_embd']}/{size['n_layer']}/"
             f"{size['n_head']}, device {s['device']}, {s['precision']}{' ' + s['train_args'] if s['train_args'] else ''}",
             f"machine: {m['cpu']} ({m['cpu_count']} cores, torch {m['torch']}){', ' + m['gpu'] if m.get('gpu') else ''}, "
             f"{m['date']}",
             f"data: story tokens {d['story_tokens']['min']}-{d['story_tokens']['max']} (mean "
             f"{d['story_tokens']['mean']:.1f}), endings {d['ending_tokens']['min']}-{d['ending_tokens']['max']} (mean "
             f"{d['ending_tokens']['mean']:.1f}), n_ctx {d['n_ctx']}, {d['updates']} updates; training "
             f"{d['train_tokens']:,.0f} tokens, {d['train_flops'] / 1e12:.2f} TFLOP; evaluation {d['eval_tokens']:,.0f} "
             f"tokens, {d['eval_flops'] / 1e12:.2f} TFLOP",
             'peak: ' + (f"{s['peak_tflops']:g} TFLOP/s ({s['peak_source']})" if s['peak_tflops'] else
                         'none given (--peak_tflops), so no MFU'),
             '',
             f"{'round':>5} {'impl':<8}{'wall s':>8}{'start-up':>9}{'load':>7}{'encode':>7}{'train':>8}{'eval':>7}"
             f"{'write':>7}{'peak MiB':>9}{'maxRSS MiB':>11}{'train TF/s':>11}{'MFU':>7}{'wall MFU':>9}{'load avg':>9}"]
    for r in report['runs']:
        p = r['phases'] or {}
        if r['returncode'] != 0:
            lines.append(f"{r['round']:>5} {r['impl']:<8}{r['wall_s']:>8.2f}  FAILED (exit {r['returncode']}), "
                         f"see {r['stderr']}")
            continue
        lines.append(f"{r['round']:>5} {r['impl']:<8}{r['wall_s']:>8.2f}{fmt(r['startup_s'], '.2f'):>9}"
                     f"{fmt(p.get('load_s'), '.2f'):>7}{fmt(p.get('encode_s'), '.2f'):>7}{fmt(p.get('train_s'), '.2f'):>8}"
                     f"{fmt(p.get('eval_s'), '.2f'):>7}{fmt(p.get('write_s'), '.2f'):>7}"
                     f"{fmt(p.get('peak_memory_mib'), '.0f'):>9}{fmt(r['max_rss_mib'], '.0f'):>11}"
                     f"{fmt(r['train_tflops'], '.3f'):>11}{fmt(r['train_mfu'], '.1%'):>7}{fmt(r['wall_mfu'], '.1%'):>9}"
                     f"{fmt(r['loadavg'][1], '.1f'):>9}")
    summary = report['summary']
    for impl in ('ours', 'earlier'):
        t = summary.get(impl)
        if t and t.get('runs'):
            lines.append(f"{impl}: median wall {t['wall_s']:.2f} s (min {t['wall_s_min']:.2f}, {t['runs']} run(s))"
                         + (f", start-up {t['startup_s']:.2f} s" if t['startup_s'] is not None else ''))
    if 'earlier_over_ours' in summary:
        lines.append(f"earlier / ours wall time: {summary['earlier_over_ours']:.2f}x (by round: "
                     + ', '.join(f'{x:.2f}x' for x in summary['earlier_over_ours_by_round']) + ')')
    lines.append('start-up: wall minus the phases train.py records; peak MiB: train.py\'s (CUDA max allocated on a GPU, '
                 'else max RSS); maxRSS: the child\'s, measured outside; train TF/s: training model FLOPs over the '
                 'train phase; wall MFU: the same over the whole wall; load avg: 1-minute, after the run')
    if not any(r['phases'] for r in report['runs'] if r['impl'] == 'ours'):
        lines.append('(train.py wrote no summary with its phases: wall times only)')
    return '\n'.join(lines)


def length_stats(values):
    """Return min, max and mean of a list of ints."""
    return dict(min=min(values), max=max(values), mean=sum(values) / len(values))


def machine_info(gpu):
    """Return the CPU, its cores, the GPU's name, the library versions and the date (transformers not imported)."""
    import datetime
    import platform

    import torch
    return dict(cpu=bench.cpu_name(), cpu_count=os.cpu_count(), cpu_flags=bench.cpu_flags(),
                memory_gib=bench.total_memory_gib(), gpu=gpu, torch=torch.__version__, numpy=np.__version__,
                python=platform.python_version(),
                date=datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'))


def parse_args(argv=None):
    """Return the parsed command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--job', choices=sorted(JOBS), default='small',
                   help='small: 48 stories, 1 epoch, CPU fp32; rocstories: the real sizes, 3 epochs; tiny: CI '
                        '(default: small)')
    p.add_argument('--model', choices=sorted(MODELS), default=None, help="weights' size (default: the job's)")
    p.add_argument('--device', default=None, help="train.py's --device (default: the job's; rocstories: CUDA when "
                                                  'present, else the CPU)')
    p.add_argument('--precision', default=None, help="train.py's --precision (default: the job's, fp32)")
    p.add_argument('--repeats', type=int, default=1,
                   help='rounds of runs (with --earlier: ours and theirs each; default: 1)')
    p.add_argument('--earlier', default=None, metavar='PATH',
                   help="also run the earlier port's train.py from PATH on the small job, alternating with ours "
                        '(default: none)')
    p.add_argument('--peak_tflops', type=float, default=None,
                   help='peak for the MFU (default: bf16 dense peak of an H100/H200 on CUDA, else none)')
    p.add_argument('--workdir', default=None,
                   help='folder for the made inputs and the runs (kept, and reused when the inputs match); '
                        'default: a temporary folder removed at the end')
    p.add_argument('--keep', action='store_true', help='keep the temporary work folder')
    p.add_argument('--seed', type=int, default=0, help='seed of the made weights and stories (default: 0)')
    p.add_argument('--train_args', default='',
                   help="extra train.py flags for our runs, e.g. '--compile' (default: none)")
    p.add_argument('--json', default=None, help='also write the results as JSON to this path (default: none)')
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f'--repeats must be >= 1, got {args.repeats}')
    if args.earlier:
        if args.job != 'small' or (args.model or JOBS['small'].model) != 'full':
            p.error('--earlier runs the small job on the full-size model only (the earlier port has fixed sizes)')
        for name in ('train.py', 'parameters_names.json'):
            if not os.path.isfile(os.path.join(args.earlier, name)):
                p.error(f'--earlier {args.earlier}: {name} is missing there (a checkout of '
                        f'huggingface/pytorch-openai-transformer-lm)')
    return args


def main(argv=None):
    """Make the inputs, run the job (and the earlier port), print the table, optionally write JSON; return the report."""
    args = parse_args(argv)
    job = JOBS[args.job]
    size = MODELS[args.model or job.model]
    device = resolve_device(args.device or job.device)
    precision = args.precision or job.precision
    gpu = gpu_name() if device.startswith('cuda') else None
    peak, peak_source = (args.peak_tflops, '--peak_tflops') if args.peak_tflops else default_peak(device, gpu)
    workdir = os.path.abspath(args.workdir) if args.workdir else tempfile.mkdtemp(prefix='bench_e2e_')
    os.makedirs(os.path.join(workdir, 'logs'), exist_ok=True)
    print(f'bench_e2e.py: making inputs in {workdir} ...', file=sys.stderr, flush=True)
    model_dir = make_weights(os.path.join(workdir, f'model_{args.model or job.model}'), size, args.seed)
    data_dir = make_stories(os.path.join(workdir, f'data_{job.name}'), job, args.seed)
    lengths = split_lengths_of(data_dir, job.n_valid, model_dir)
    flops = job_flops(lengths, job, size)
    examples = [e for split in lengths.values() for e in split]

    impls = {'ours': (train_command(job, size, device, precision, shlex.split(args.train_args)),
                      run_folder(os.path.join(workdir, f'run_{job.name}_ours'), model_dir, data_dir), None)}
    if args.earlier:
        earlier = os.path.abspath(args.earlier)
        impls['earlier'] = (earlier_command(earlier, job), run_folder(
            os.path.join(workdir, f'run_{job.name}_earlier'), model_dir, data_dir,
            [('parameters_names.json', os.path.join(earlier, 'parameters_names.json'))]), earlier_env(device))
    runs = []
    for k in range(1, args.repeats + 1):
        order = list(impls) if k % 2 else list(impls)[::-1]  # ABBA: neither always runs first
        for impl in order:
            cmd, cwd, env = impls[impl]
            print(f'bench_e2e.py: round {k}/{args.repeats}: {impl} ...', file=sys.stderr, flush=True)
            r = run_timed(cmd, cwd, os.path.join(workdir, 'logs', f'{job.name}_{impl}_{k}'), env)
            runs.append(add_rates(dict(impl=impl, round=k, **r), flops, peak))
            if r['returncode'] != 0:
                print(f"bench_e2e.py: {impl} exited with status {r['returncode']}:\n{r['error_tail']}", file=sys.stderr)

    machine = machine_info(gpu)
    report = dict(
        machine=machine,
        settings=dict(asdict(job), job=job.name, model=asdict(size), device=device, precision=precision,
                      repeats=args.repeats, earlier=args.earlier, peak_tflops=peak, peak_source=peak_source,
                      seed=args.seed, train_args=args.train_args, workdir=workdir),
        data=dict(flops, story_tokens=length_stats([e[0] for e in examples]),
                  ending_tokens=length_stats([n for e in examples for n in e[1:]]),
                  n_stories={name: len(split) for name, split in lengths.items()}),
        runs=runs, summary=summarize(runs))
    report['settings'].pop('name')
    print(format_report(report), flush=True)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w') as f:
            json.dump(report, f, indent=2)
    failed = [r for r in runs if r['returncode'] != 0]
    if not args.workdir and not args.keep and not failed:
        shutil.rmtree(workdir, ignore_errors=True)
    if failed:
        raise SystemExit(f'bench_e2e.py: {len(failed)} run(s) failed; their output is in {workdir}/logs')
    return report


if __name__ == '__main__':
    main()
