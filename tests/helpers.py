"""Shared test helpers: the TF ground truth, tiny models built from it, tiny checkpoints and stories."""
import csv
import json
import os
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np

import datasets
from model_pytorch import N_VOCAB, DEFAULT_CONFIG, DoubleHeadModel, clone_config, load_openai_pretrained_model
from weights import TF_BLOCK, VOCAB_FILES, block_shapes, torch_name, write_released_shards

FIXTURES = Path(__file__).resolve().parent / 'fixtures'
TF_REF = FIXTURES / 'tf_reference'
SMALL_MODEL = TF_REF / 'small_model'
ROOT = Path(__file__).resolve().parents[1]  # the repository
VOCAB_DIR = ROOT / 'model'  # the released vocabulary, shipped in the repository


def load_tf_reference():
    """Return (arrays of small.npz as a dict, its config dict)."""
    with np.load(TF_REF / 'small.npz', allow_pickle=False) as d:
        ref = {k: d[k] for k in d.files}
    return ref, json.loads(str(ref['config']))


def small_cfg(pdrop=0.0, **changes):
    """Return the fixture's model config with every dropout set to pdrop."""
    fields = dict(n_embd=32, n_head=4, n_layer=2, embd_pdrop=pdrop, attn_pdrop=pdrop, resid_pdrop=pdrop,
                  clf_pdrop=pdrop)
    fields.update(changes)
    return clone_config(DEFAULT_CONFIG, **fields)


def tf_model(ref, config, pdrop=0.0):
    """Return the DoubleHeadModel the original builds for the fixture, loaded like its train.py."""
    import torch
    n_vocab, n_special, n_ctx = config['n_vocab'], config['n_special'], config['n_ctx']
    model = DoubleHeadModel(small_cfg(pdrop), clf_token=n_vocab + n_special - 1, task_head_type='multiple_choice',
                            vocab=n_vocab + n_special + n_ctx, n_ctx=n_ctx)
    np.random.seed(config['seed'])
    load_openai_pretrained_model(model, n_ctx=n_ctx, n_special=n_special, n_embd=config['n_embd'],
                                 path=str(SMALL_MODEL))
    with torch.no_grad():
        model.task_head.clf.w.copy_(torch.from_numpy(ref['clf_w']))
        model.task_head.clf.b.copy_(torch.from_numpy(ref['clf_b']))
    return model


WORDS = ('jim anna max went to the store and bought a new dog cat car book she he was happy sad '
         'because it rained all day so they stayed home played games ate cake').split()


def write_roc_csv(path, n, rng, labels=True):
    """Write n random Story Cloze rows (with the label column unless labels=False) to path."""
    header = datasets.HEADER if labels else datasets.HEADER[:-1]
    with open(path, 'w', newline='', encoding='utf-8') as f:
        w = csv.writer(f)
        w.writerow(header)
        for i in range(n):
            sents = [' '.join(rng.choice(WORDS, rng.integers(4, 9))).capitalize() + '.' for _ in range(6)]
            row = [f'id{i}'] + sents + ([str(rng.integers(1, 3))] if labels else [])
            w.writerow(row)


def write_tiny_checkpoint(model_dir, rng, n_embd=32, n_layer=2, n_pos=64):
    """Write random released-format shards (n_embd, n_layer, n_pos positions) and the real vocabulary to model_dir."""
    write_released_shards(model_dir, random_released_arrays(rng, n_embd, n_layer, n_pos, N_VOCAB))
    for name in VOCAB_FILES:
        shutil.copy(VOCAB_DIR / name, Path(model_dir) / name)


def roc_workdir(d):
    """Fill folder d with a tiny ROCStories run's inputs: data/ (56 valid, 13 test stories) and model/ (n_embd 32,
    2 layers, 64 positions, the real vocabulary); return d."""
    rng = np.random.default_rng(0)
    (d / 'data').mkdir()
    write_roc_csv(d / 'data' / datasets.VAL_FILE, 56, rng)
    write_roc_csv(d / 'data' / datasets.TEST_FILE, 13, rng)
    write_tiny_checkpoint(d / 'model', rng)
    return d


def roc_cli_args(d, *extra, vocab=True):
    """Return train.py's arguments for a tiny run on roc_workdir(d), writing under d, then extra; without vocab, no
    --encoder_path and --bpe_path (the weights' own vocabulary is used)."""
    vocabulary = ['--encoder_path', str(d / 'model' / 'encoder_bpe_40000.json'),
                  '--bpe_path', str(d / 'model' / 'vocab_40000.bpe')] if vocab else []
    return ['--dataset', 'rocstories', '--desc', 'tiny', '--data_dir', str(d / 'data'),
            '--model_dir', str(d / 'model'), *vocabulary, '--log_dir', str(d / 'log'),
            '--save_dir', str(d / 'save'), '--submission_dir', str(d / 'submission'),
            '--n_embd', '32', '--n_head', '4', '--n_layer', '2', '--n_valid', '16', '--n_batch', '2',
            '--n_iter', '2', '--lr', '1e-3', '--quiet', *extra]


def fixture_arrays():
    """Return the arrays of the fixture's released folder (small_model), each reshaped, in TF order."""
    with open(SMALL_MODEL / 'params_shapes.json') as f:
        shapes = json.load(f)
    flat = np.concatenate([np.load(SMALL_MODEL / f'params_{n}.npy') for n in range(10)])
    return [a.reshape(s) for a, s in zip(np.split(flat, np.cumsum([np.prod(s) for s in shapes])[:-1]), shapes)]


def step_run(model, opt, settings, device=None, info=None):
    """Return the trainer.Run through which a test makes train.py's training steps on model and opt: settings (a
    train.FineTuneSettings) give its seed and precision (fp16's loss scaler), the model's forward is what a step calls
    (wrapped by DDP under several processes); a Launch that writes no files."""
    import torch

    from distributed import DistInfo
    from trainer import Launch, Run, RunSettings, StateSpec
    launch = Launch(RunSettings.of(settings), torch.device('cpu') if device is None else device,
                    DistInfo() if info is None else info)
    return Run(launch, model, opt, StateSpec(identity={}, template={}))


def write_tiny_gpt2(folder, seed=0, n_ctx=64, n_embd=32, n_head=4, n_layer=2):
    """Write a random GPT-2 with the real vocabulary's 50257 rows and tiny sizes as a released folder (hparams.json and
    a TensorFlow checkpoint, as tf.train.Saver writes them, without vocabulary files); return the folder."""
    import torch

    from model_gpt2 import GPT2Config, GPT2LMHeadModel
    from weights import checkpoint_from_model, write_tf_gpt2
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(n_ctx=n_ctx, n_embd=n_embd, n_head=n_head, n_layer=n_layer))
    return write_tf_gpt2(checkpoint_from_model(model), folder)


SUBJECTS = {'the cat': 'sat on the mat', 'a dog': 'ran to the park', 'my bird': 'sang in the tree',
            'the old man': 'read a long book', 'her sister': 'baked a sweet cake'}
ENDINGS = ['in the morning', 'after lunch', 'at night', 'on sunday']


def structured_text(n_docs, seed):
    """Documents of sentences whose verb phrase follows from their subject: learnable beyond unigrams."""
    rng = np.random.default_rng(seed)
    subjects = sorted(SUBJECTS)
    docs = []
    for _ in range(n_docs):
        sentences = []
        for _ in range(rng.integers(3, 7)):
            s = subjects[rng.integers(len(subjects))]
            sentences.append(f'{s} {SUBJECTS[s]} {ENDINGS[rng.integers(len(ENDINGS))]}.')
        docs.append(' '.join(sentences))
    return '\n\n'.join(docs) + '\n'


def write_structured_corpus(d, n_docs=400, extra=()):
    """Write structured_text(n_docs, 0) under folder d and prepare it as a corpus (10% validation; GPT-1's unless
    extra, more prepare_corpus.py flags, says otherwise); return the corpus folder."""
    import prepare_corpus
    (d / 'text.txt').write_text(structured_text(n_docs, 0), encoding='utf-8')
    assert prepare_corpus.main(['--input', str(d / 'text.txt'), '--out', str(d / 'corpus'), '--workers', '1',
                                '--val_fraction', '0.1', '--quiet', *extra]) == 0
    return d / 'corpus'


def wait_for_line(proc, prefix, timeout=300):
    """Read proc's stdout (a text pipe) up to its first line starting with prefix; raise AssertionError, the process
    killed, when its output ends without one or none comes within timeout seconds (a hung run fails, not hangs)."""
    found = threading.Event()

    def read():
        for line in proc.stdout:
            if line.startswith(prefix):
                found.set()
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if not found.is_set():
        proc.kill()
        raise AssertionError(f'no line starting {prefix!r} (the process ended with {proc.wait(timeout=60)})')


def _limited_child(conn, memory, fn, args):
    """In a forked child: cap the address space's growth at memory bytes, run fn(*args), send back what happened."""
    import resource

    import untrusted
    with open('/proc/self/status') as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith('VmSize:'))
    resource.setrlimit(resource.RLIMIT_AS, (vm + memory, resource.getrlimit(resource.RLIMIT_AS)[1]))
    try:
        fn(*args)
        outcome = ('ok', '')
    except untrusted.BadFile as err:
        outcome = (type(err).__name__, str(err))
    except BaseException as err:  # noqa: BLE001 - reported to the test, which fails on anything but BadFile
        outcome = (type(err).__name__, f'{type(err).__name__}: {err}')
    conn.send(outcome)
    conn.close()


def run_limited(fn, *args, memory=512 << 20, seconds=120):
    """Run fn(*args) in a forked child whose address space may grow by at most memory bytes and that is killed
    after seconds; return (outcome, message): ('ok', ''), ('BadFile' or 'MissingFile', the one line), another
    exception's type name (MemoryError when the reader overran the limit), or ('hung', '')."""
    import multiprocessing
    ctx = multiprocessing.get_context('fork')
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_limited_child, args=(send, memory, fn, args))
    child.start()
    send.close()
    if not receive.poll(seconds):
        child.kill()
        child.join()
        return 'hung', ''
    outcome = receive.recv()
    child.join()
    return outcome


def assert_refused(fn, *args, names=None, memory=512 << 20, seconds=120):
    """Assert that fn(*args), run as run_limited runs it, raises only the project's BadFile, on one line naming
    `names` (a path or part of one) when given; return the message."""
    outcome, message = run_limited(fn, *args, memory=memory, seconds=seconds)
    assert outcome in ('BadFile', 'MissingFile'), (outcome, message)
    assert '\n' not in message
    if names is not None:
        assert str(names) in message, message
    return message


def released_shapes(n_embd, n_layer, n_pos, n_vocab):
    """Return the shapes of the arrays of a released folder for a GPT-1 of that size, in TF order (as
    params_shapes.json lists them): positions, tokens, then each block's TF_BLOCK arrays, conv weights [1, nx, nf]."""
    one = block_shapes(n_embd, 1)  # {'h.0.attn.c_attn.w': (nx, 3 * nx), ...}
    block = [[1, *one[torch_name(f'h0/{name}')]] if name.endswith('/w') else list(one[torch_name(f'h0/{name}')])
             for name in TF_BLOCK]
    return [[n_pos, n_embd], [n_vocab, n_embd]] + block * n_layer


def random_released_arrays(rng, n_embd, n_layer, n_pos, n_vocab):
    """Return the arrays of a released folder for a GPT-1 of that size drawn from rng (a numpy Generator): N(0, 0.02)
    everywhere, layer-norm gains 1; for tests and benchmarks that need weights in the released format."""
    arrays = [(rng.standard_normal(s) * 0.02).astype(np.float32) for s in released_shapes(n_embd, n_layer, n_pos, n_vocab)]
    for i in range(n_layer):
        for name in ('ln_1/g', 'ln_2/g'):
            arrays[2 + len(TF_BLOCK) * i + TF_BLOCK.index(name)][:] = 1
    return arrays


def free_port():
    """Return a TCP port on 127.0.0.1 free a moment ago, for a test's process group."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def random_hf_gpt2(seed=0, vocab_size=96):
    """Return a random eval-mode transformers GPT2LMHeadModel (32 positions, n_embd 32, 2 layers, 4 heads), its layer
    norms and biases moved away from their initial 1 and 0."""
    import torch
    from transformers import GPT2Config as HFGPT2Config
    from transformers import GPT2LMHeadModel as HFGPT2LMHeadModel
    torch.manual_seed(seed)
    config = HFGPT2Config(vocab_size=vocab_size, n_positions=32, n_embd=32, n_layer=2, n_head=4)
    model = HFGPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape) * 0.05)
    return model


def hf_gpt2_and_ours(folder, seed=0):
    """Return (random_hf_gpt2(seed), our LM loaded from it): the transformers model saved to folder/hf and read back
    by models.load_model."""
    import models
    hf = random_hf_gpt2(seed=seed)
    hf.save_pretrained(Path(folder) / 'hf')
    return hf, models.load_model(str(Path(folder) / 'hf'), lm=True)


def torchrun_env():
    """Return the environment of a test's torchrun job: one thread a process (its processes share this machine's
    cores), and every thread's Python traceback printed should a rank abort."""
    return dict(os.environ, OMP_NUM_THREADS='1', PYTHONFAULTHANDLER='1')


def torchrun(script, argv, nproc=2, *launcher):
    """Return the torchrun command line running script with argv in nproc processes."""
    return [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}', *launcher,
            str(ROOT / script), *argv]


def wait_for(condition, proc, what, timeout=300):
    """Return once condition() holds; fail if proc ends first or after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f'the run ended before {what}'
        assert time.monotonic() < deadline, f'no {what} after {timeout} s'
        time.sleep(0.005)


def wait_until_unlocked(path, timeout=60):
    """Return once no process holds the lock at path (a killed process's lock goes when the process is gone)."""
    from runlock import RunLock, RunLocked
    deadline = time.monotonic() + timeout
    while True:
        try:
            with RunLock([str(path)], say=lambda message: None):
                return
        except RunLocked:
            assert time.monotonic() < deadline, f'{path} still locked after {timeout} s'
            time.sleep(0.01)


def children(pid):
    """Return the ids of the processes whose parent is pid."""
    found = []
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open(f'/proc/{entry}/stat') as f:
                    fields = f.read().rsplit(')', 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found
