"""Tests of bench.py: the synthetic ROCStories batches, the FLOP formula, the config names and a --quick run."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import bench

CPU = torch.device('cpu')


def test_make_batches_layout():
    shape = bench.Shape()
    (xmb, mmb, ymb), = bench.make_batches(1, shape, seed=3)
    assert xmb.shape == (32, 2, 77, 2) and mmb.shape == (32, 2, 77) and ymb.shape == (32,)
    lengths = mmb.sum(-1).astype(int)  # [B, 2]
    start, delimiter, clf = shape.n_vocab, shape.n_vocab + 1, shape.n_vocab + 2
    for i in range(32):
        a, b = lengths[i]
        x = xmb[i, :, :, 0]
        assert (mmb[i, 0, :a] == 1).all() and (mmb[i, 0, a:] == 0).all() and (x[0, a:] == 0).all()
        story = np.flatnonzero(x[0] == delimiter)[0] - 1
        endings = a - story - 3, b - story - 3
        assert x[0, 0] == x[1, 0] == start and x[0, a - 1] == x[1, b - 1] == clf
        assert (x[0, :story + 2] == x[1, :story + 2]).all()  # both endings follow the same story
        assert 40 <= story <= 60 and all(8 <= e <= 15 for e in endings)
        assert (x[:, 1:story + 1] < shape.n_vocab).all()
    assert lengths.max() <= 77 and lengths.min() >= 40 + 8 + 3
    np.testing.assert_array_equal(xmb[..., 1], np.broadcast_to(np.arange(40481, 40481 + 77), (32, 2, 77)))
    assert set(np.unique(ymb)) <= {0, 1}


def test_make_batches_deterministic():
    a = bench.make_batches(2, bench.QUICK_SHAPE, seed=5)
    b = bench.make_batches(2, bench.QUICK_SHAPE, seed=5)
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u, v)


def test_seq_flops_by_hand():
    shape = bench.QUICK_SHAPE  # n_embd 64, n_layer 2
    # forward: 2 * 12 * 2 * 64^2 * 10 + 4 * 2 * 64 * 10^2; LM head: 2 * 64 * 580 * 9
    fwd = 1_966_080 + 51_200
    assert bench.seq_flops(10, shape, rows=580, train=False) == fwd
    assert bench.seq_flops(10, shape, rows=580) == 3 * (fwd + 668_160)
    mmb = np.zeros((1, 2, 12), np.float32)
    mmb[0, 0, :10] = 1
    mmb[0, 1, :12] = 1
    assert bench.batch_flops(mmb, shape, 580) == bench.seq_flops(10, shape, 580) + bench.seq_flops(12, shape, 580)


def test_seq_flops_full_size():
    # GPT-1 at 1 token with a 40558-row table: 6 * (85M body + 31M decoder) per predicted token
    shape = bench.Shape()
    assert bench.seq_flops(2, shape, 40558) == 3 * (2 * 84_934_656 * 2 + 4 * 12 * 768 * 4 + 2 * 768 * 40558)


def test_parse_spec():
    shape = bench.Shape()
    assert bench.parse_spec('ours-bf16', shape, CPU) == bench.Spec('ours-bf16', 'ours', 'bf16', 8)
    assert bench.parse_spec('peer-fp32', shape, CPU).micro_batch == 32
    assert bench.parse_spec('peer-fp32-mb8', shape, CPU).micro_batch == 8
    assert bench.parse_spec('ours-fp32-mb32', shape, CPU).micro_batch == 32
    for bad in ('ours', 'theirs-fp32', 'ours-fp64', 'ours-fp32-32', 'ours-fp32-mb0', 'ours-fp32-mb8-x'):
        with pytest.raises(ValueError, match='bad config'):
            bench.parse_spec(bad, shape, CPU)
    assert bench.parse_spec('ours-fp16', shape, CPU).precision == 'fp16'  # fp16 with loss scaling runs on the CPU too


def test_peer_inputs_match_the_batch():
    (xmb, mmb, ymb), = bench.make_batches(1, bench.QUICK_SHAPE, seed=1)
    ids, labels, mc_token_ids, y = bench.peer_inputs((xmb, mmb, ymb), CPU)
    assert ids.shape == labels.shape == (32, 2, 77) and mc_token_ids.shape == (32, 2)
    np.testing.assert_array_equal(ids.numpy(), xmb[..., 0])
    assert ((labels.numpy() == -100) == (mmb == 0)).all()
    clf = bench.QUICK_SHAPE.n_vocab + 2
    assert (np.take_along_axis(xmb[..., 0], mc_token_ids.numpy()[..., None], -1) == clf).all()
    np.testing.assert_array_equal(y.numpy(), ymb)


def check_result(r, shape):
    """Assert the properties every measured config's result must have (one round, one timed step)."""
    assert 'error' not in r, r
    for section, train in (('train', True), ('eval', False)):
        s = r[section]
        discarded, = s['discarded']
        batches = bench.make_batches(discarded + 1, shape, seed=0)[discarded:]  # the timed batch follows the discarded
        assert s['tokens_per_step'] == [int(mmb.sum()) for _, mmb, _ in batches]
        assert s['flops_per_step'] == [bench.batch_flops(mmb, shape, r['lm_rows'], train) for _, mmb, _ in batches]
        assert s['step_s'] > 0 and s['examples_per_s'] > 0 and s['tokens_per_s'] > 0 and s['flops_per_s'] > 0
        assert 0 < s['roofline_fraction']
    memory = r['memory']
    assert memory['kind'] == 'peak_rss' and memory['base_mib'] > 0
    # a worker of its own must grow; in-process, the process's peak (ru_maxrss) may predate the run and is read
    # from another counter than the current size (statm), so it is only at least about as large
    assert memory['peak_mib'] > memory['base_mib'] if memory['isolated'] else memory['peak_mib'] > 0.99 * memory['base_mib']
    assert r['fine_tune_s'] > 0


def test_quick_in_process(tmp_path, capsys):
    path = tmp_path / 'out' / 'bench.json'
    report = bench.main(['--quick', '--in-process', '--json', str(path)])
    assert json.loads(path.read_text()) == json.loads(json.dumps(report))
    shape = bench.QUICK_SHAPE
    assert set(report['results']) == {'ours-fp32', 'peer-fp32', 'ours-bf16', 'peer-bf16'}
    for name, r in report['results'].items():
        impl, precision = name.split('-')
        assert (r['impl'], r['precision']) == (impl, precision)
        assert r['micro_batch'] == (8 if impl == 'ours' else 32)
        assert r['lm_rows'] == (500 + 3 + 77 if impl == 'ours' else 500 + 3)
        check_result(r, shape)
    assert not any(r['memory']['isolated'] for r in report['results'].values())
    assert set(report['roofline']) == {'fp32', 'bf16'} and min(report['roofline'].values()) > 0
    assert {t['name'] for t in report['targets']} >= {'train throughput ours-fp32 / peer-fp32',
                                                      'train peak memory ours-fp32 / peer-fp32'}
    out = capsys.readouterr().out
    assert 'ours-bf16' in out and 'peer-fp32' in out and 'roofline' in out


def test_quick_isolated_worker(tmp_path):
    report = bench.main(['--quick', '--configs', 'ours-fp32-mb32', '--warmup-steps', '0', '--json',
                         str(tmp_path / 'b.json')])
    r = report['results']['ours-fp32-mb32']
    assert r['micro_batch'] == 32
    check_result(r, bench.QUICK_SHAPE)
    assert r['train']['discarded'] == r['eval']['discarded'] == [0]  # --warmup-steps 0: the first batch is timed
    assert r['memory']['isolated'] and r['pids'][0] != os.getpid()  # measured in a process of its own


ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ['bench.py', 'bench_e2e.py', 'bench_opt.py', 'bench_pretrain.py', 'bench_text.py']


@pytest.fixture(scope='module')
def help_runs():
    """Run `python benchmarks/<script> --help` from the root for every benchmark, all at once (each is an interpreter
    importing torch on one core: together they use every core); return {script: its CompletedProcess}."""
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    procs = {script: subprocess.Popen([sys.executable, f'benchmarks/{script}', '--help'], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for script in BENCHMARKS}
    try:
        outputs = {script: proc.communicate(timeout=120) for script, proc in procs.items()}
        return {script: subprocess.CompletedProcess(proc.args, proc.returncode, *outputs[script])
                for script, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


@pytest.mark.parametrize('script', BENCHMARKS)
def test_each_benchmark_runs_from_the_repository_root(script, help_runs):
    """`python benchmarks/<script> --help` from the root: each finds the library at the root and prints its usage."""
    proc = help_runs[script]
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith('usage:') and script in proc.stdout
    assert not (ROOT / script).exists()  # the benchmarks live in their own folder only
