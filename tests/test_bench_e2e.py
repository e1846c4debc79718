"""Tests of bench_e2e.py (made weights and stories, the phases record, the FLOP count) and of gpu_check.sh --dry-run."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bench_e2e
import datasets
from model_pytorch import DoubleHeadModel, load_openai_pretrained_model
from tests.helpers import VOCAB_DIR, small_cfg
from text_utils import TextEncoder

REPO = Path(__file__).resolve().parents[1]
def test_phases_come_from_train_py_summary(tmp_path):
    """bench_e2e reads the structured phases record of train.py's summary file, never its printed text."""
    assert bench_e2e.read_phases(str(tmp_path)) is None  # the earlier port writes no summary
    phases = dict(load_s=1.23, encode_s=2.34, train_s=3.45, eval_s=1.11, write_s=0.5, peak_memory_mib=812.0)
    (tmp_path / 'log').mkdir()
    (tmp_path / 'log' / 'rocstories_summary.json').write_text(json.dumps(dict(n_updates=6, phases=phases)))
    assert bench_e2e.read_phases(str(tmp_path)) == phases
    assert bench_e2e.startup_seconds(10.0, phases) == pytest.approx(10.0 - 8.63)
    assert bench_e2e.startup_seconds(10.0, None) is None
    text = '0 6 0.693 0.693 50.00 50.00\ndone: best valid acc 50.00, 6 updates, wall 9.9 s\n'
    assert bench_e2e.done_line(text) == 'done: best valid acc 50.00, 6 updates, wall 9.9 s'


def test_default_peak_and_commands():
    assert bench_e2e.default_peak('cuda', 'NVIDIA H100 80GB HBM3')[0] == 989.4
    assert bench_e2e.default_peak('cuda:0', 'NVIDIA H200')[0] == 989.4
    assert bench_e2e.default_peak('cuda', 'NVIDIA A100-SXM4-80GB') == (None, None)
    assert bench_e2e.default_peak('cpu', 'NVIDIA H100 80GB HBM3') == (None, None)  # a CPU job on a GPU machine
    small = bench_e2e.train_command(bench_e2e.JOBS['small'], bench_e2e.MODELS['full'], 'cpu', 'fp32')
    assert small[2:] == ['--dataset', 'rocstories', '--desc', 'rocstories', '--submit', '--data_dir', 'data/',
                         '--n_valid', '24', '--n_iter', '1', '--n_batch', '8', '--n_gpu', '1', '--device', 'cpu',
                         '--precision', 'fp32']
    tiny = bench_e2e.train_command(bench_e2e.JOBS['tiny'], bench_e2e.MODELS['tiny'], 'cpu', 'bf16', ['--compile'])
    assert tiny[-7:] == ['--n_embd', '32', '--n_head', '4', '--n_layer', '2', '--compile']
    assert bench_e2e.earlier_env('cpu')['CUDA_VISIBLE_DEVICES'] == ''  # the earlier port would take any GPU


def by_hand_fwd(n, d, n_layer):
    """Forward model FLOPs of a sequence of n tokens, written out: 4 weight matmuls per block and attention."""
    qkv, proj, fc, mlp_proj = 2 * n * d * 3 * d, 2 * n * d * d, 2 * n * d * 4 * d, 2 * n * 4 * d * d
    scores, weighted = 2 * n * n * d, 2 * n * n * d
    return n_layer * (qkv + proj + fc + mlp_proj + scores + weighted)


def test_job_flops_by_hand():
    lengths = {'train': [(40, 8, 9), (50, 10, 12), (44, 9, 9)], 'valid': [(45, 11, 8)], 'test': [(41, 15, 9)]}
    job = bench_e2e.Job('t', 3, 1, 1, n_iter=2, n_batch=2, n_gpu=1, model='tiny')
    size = bench_e2e.MODELS['tiny']  # n_embd 32, 2 layers
    assert by_hand_fwd(51, 32, 2) == 3_172_608  # 49152 * 51 + 256 * 51^2
    got = bench_e2e.job_flops(lengths, job, size)
    # sequences _start_ story _delimiter_ ending _classify_: 3 + story + ending tokens; the longest is 65
    train = [51, 52, 63, 65, 56, 56]
    assert got['n_ctx'] == 65 and got['rows'] == 40478 + 3 + 65
    decoder = [2 * 32 * (40478 + 3 + 65) * (n - 1) for n in train]  # the tied LM decoder at n - 1 positions
    per_epoch = sum(3 * (by_hand_fwd(n, 32, 2) + dec) for n, dec in zip(train, decoder))
    # 3 training examples, batches of 2: one full batch per epoch, i.e. 2/3 of the examples' FLOPs
    assert got['train_flops'] == pytest.approx(2 * per_epoch * 2 / 3, rel=1e-12)
    assert got['train_tokens'] == pytest.approx(2 * sum(train) * 2 / 3)
    assert got['updates'] == 2
    # each epoch: the first n_valid = 1 training example and the valid split; then the test split once
    evaluated = 2 * [51, 52, 59, 56] + [59, 53]
    assert got['eval_flops'] == sum(by_hand_fwd(n, 32, 2) for n in evaluated)
    assert got['eval_tokens'] == sum(evaluated)


def released_shapes_tiny():
    """The shapes of the released layout written out for n_embd 32, 2 blocks, 512 positions."""
    block = [[1, 32, 96], [96], [1, 32, 32], [32], [32], [32], [1, 32, 128], [128], [1, 128, 32], [32], [32], [32]]
    return [[512, 32], [40478, 32]] + block + block


def test_made_weights_load_with_released_shapes(tmp_path):
    folder = bench_e2e.make_weights(str(tmp_path / 'model'), bench_e2e.MODELS['tiny'], seed=1)
    assert json.loads((tmp_path / 'model' / 'params_shapes.json').read_text()) == released_shapes_tiny()
    for name in ('encoder_bpe_40000.json', 'vocab_40000.bpe'):  # the vocabulary beside the shards, unchanged
        assert (tmp_path / 'model' / name).read_bytes() == (VOCAB_DIR / name).read_bytes()
    n_ctx = 77
    model = DoubleHeadModel(small_cfg(), 40478 + 2, 'multiple_choice', vocab=40478 + 3 + n_ctx, n_ctx=n_ctx)
    np.random.seed(0)
    load_openai_pretrained_model(model.transformer, n_ctx=n_ctx, n_special=3, n_embd=32, path=folder)
    we = model.transformer.embed.weight.detach().numpy()
    sd = {k: v.detach().numpy() for k, v in model.transformer.state_dict().items()}
    tokens = we[:40478]
    assert abs(tokens.mean()) < 1e-3 and abs(tokens.std() - 0.02) < 1e-3  # N(0, 0.02) over 1.3M values
    for i in range(2):
        assert (sd[f'h.{i}.ln_1.g'] == 1).all() and (sd[f'h.{i}.ln_2.g'] == 1).all()
        assert abs(sd[f'h.{i}.mlp.c_fc.w'].std() - 0.02) < 2e-3
    # made once: a second call with the same size and seed reuses the files
    mtime = os.stat(tmp_path / 'model' / 'params_0.npy').st_mtime_ns
    bench_e2e.make_weights(folder, bench_e2e.MODELS['tiny'], seed=1)
    assert os.stat(tmp_path / 'model' / 'params_0.npy').st_mtime_ns == mtime


def test_made_stories_parse_with_real_lengths(tmp_path):
    job = bench_e2e.JOBS['small']
    folder = bench_e2e.make_stories(str(tmp_path / 'data'), job, seed=2)
    (trX1, trX2, trX3, trY), (vaX1, vaX2, vaX3, vaY), (teX1, teX2, teX3, teY) = datasets.rocstories(
        folder, n_valid=job.n_valid, return_test_labels=True)
    assert (len(trX1), len(vaX1), len(teX1)) == (48, 24, 16) and len(teY) == 16
    assert set(trY) | set(vaY) | set(teY) <= {0, 1}
    encoder = TextEncoder()
    stories = encoder.encode(trX1 + vaX1 + teX1, verbose=False)
    endings = encoder.encode(trX2 + trX3 + vaX2 + vaX3 + teX2 + teX3, verbose=False)
    assert all(40 <= len(s) <= 60 for s in stories) and all(8 <= len(e) <= 15 for e in endings)
    assert 0 not in {i for x in stories + endings for i in x}  # no unknown pieces
    with open(os.path.join(folder, datasets.VAL_FILE), encoding='utf-8') as f:
        rows = list(csv.reader(f))[1:]
    for row in rows:
        for text in row[1:7]:  # four story sentences and two endings: plain words, one BPE token each
            assert text.endswith('.') and text[0].isupper()
            assert len(encoder.encode([text], verbose=False)[0]) == len(text.split()) + 1
        assert all(8 <= len(encoder.encode([s], verbose=False)[0]) <= 17 for s in row[1:5])
    lengths = bench_e2e.split_lengths_of(folder, job.n_valid)
    assert lengths['train'] == [(len(a), len(b), len(c)) for a, b, c in zip(
        *(encoder.encode(x, verbose=False) for x in (trX1, trX2, trX3)))]
    # the real dataset's sizes: 1,871 valid-file and 1,871 test stories (not encoded here)
    big = bench_e2e.make_stories(str(tmp_path / 'roc'), bench_e2e.JOBS['rocstories'])
    for name in (datasets.VAL_FILE, datasets.TEST_FILE):
        with open(os.path.join(big, name), encoding='utf-8') as f:
            assert sum(1 for _ in csv.reader(f)) == 1 + 1871


@pytest.fixture(scope='module')
def dry_run(tmp_path_factory):
    """Run `bash benchmarks/gpu_check.sh --dry-run` once; return (completed process, results folder)."""
    results = tmp_path_factory.mktemp('gpu_check') / 'results'
    # the script runs the interpreter that runs the tests (a virtual environment need not be activated)
    proc = subprocess.run(['bash', str(REPO / 'benchmarks' / 'gpu_check.sh'), '--dry-run', '--results', str(results)],
                          cwd=REPO, capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHON=sys.executable))
    return proc, results


def test_gpu_check_dry_run_passes(dry_run):
    proc, results = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'every step passed (dry run, CPU)' in proc.stdout
    for name in ('pytest_cuda.txt', 'bench.txt', 'bench_quick.json', 'e2e_tiny.txt', 'e2e_tiny.json'):
        assert (results / name).is_file(), name
    assert 'skipped' in (results / 'pytest_cuda.txt').read_text() or 'passed' in (results / 'pytest_cuda.txt').read_text()
    assert set(json.loads((results / 'bench_quick.json').read_text())['results']) == {'ours-fp32'}
    # pre-training under torchrun with DDP and with --shard, each run's tokens/s said
    for mode in ('ddp', 'shard'):
        assert f'gpu_check.sh: pretrain_{mode}: ' in (results / f'pretrain_{mode}.txt').read_text()
    assert '--shard: 2 processes; memory per rank: ' in (results / 'pretrain_shard.txt').read_text()


def test_dry_run_tiny_job_report(dry_run):
    _, results = dry_run
    report = json.loads((results / 'e2e_tiny.json').read_text())
    s, d = report['settings'], report['data']
    assert (s['job'], s['device'], s['precision'], s['model']['n_embd'], s['model']['n_layer']) == \
        ('tiny', 'cpu', 'fp32', 32, 2)
    assert d['n_stories'] == {'train': 8, 'valid': 4, 'test': 4}
    assert 40 <= d['story_tokens']['min'] <= d['story_tokens']['max'] <= 60
    assert 8 <= d['ending_tokens']['min'] <= d['ending_tokens']['max'] <= 15
    job = bench_e2e.JOBS['tiny']
    lengths = bench_e2e.split_lengths_of(str(results / 'e2e_work' / 'data_tiny'), job.n_valid)
    assert d['train_flops'] == bench_e2e.job_flops(lengths, job, bench_e2e.MODELS['tiny'])['train_flops']
    run, = report['runs']
    assert run['impl'] == 'ours' and run['returncode'] == 0 and run['wall_s'] > 0
    assert 'done:' in run['done']
    submission = results / 'e2e_work' / 'run_tiny_ours' / 'submission' / 'ROCStories.tsv'
    assert len(submission.read_text().splitlines()) == 1 + 4  # header and the 4 test stories
    # the phases come from train.py's summary record
    assert set(run['phases']) == {'load_s', 'encode_s', 'train_s', 'eval_s', 'write_s', 'peak_memory_mib'}
    assert run['startup_s'] == pytest.approx(run['wall_s'] - sum(v for k, v in run['phases'].items() if k.endswith('_s')))
    assert run['train_tflops'] == pytest.approx(d['train_flops'] / run['phases']['train_s'] / 1e12)
    assert run['train_mfu'] is None and s['peak_tflops'] is None  # no peak is known for a CPU


def test_gpu_check_without_nvidia_smi_fails_in_one_line(tmp_path):
    env = dict(os.environ, NVIDIA_SMI=str(tmp_path / 'no-nvidia-smi'), PYTHON=sys.executable)
    proc = subprocess.run(['bash', str(REPO / 'benchmarks' / 'gpu_check.sh'), '--results', str(tmp_path / 'r')], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stdout == ''
    assert proc.stderr.count('\n') == 1 and 'needs a machine with an NVIDIA GPU' in proc.stderr
    assert not (tmp_path / 'r').exists()
