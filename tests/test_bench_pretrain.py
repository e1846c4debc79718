"""Tests for bench_pretrain.py: the quick run measures both implementations and counts the right FLOPs."""
import json
import os

import numpy as np
import pytest

import bench
import bench_pretrain
from model_pytorch import N_VOCAB


def test_quick_run_measures_ours_and_the_peer_in_each_precision(tmp_path, capsys):
    """Each round of each implementation in a process of its own (none the benchmark's), after its warm-up."""
    out = tmp_path / 'r.json'
    assert bench_pretrain.main(['--quick', '--precisions', 'fp32,bf16', '--json', str(out)]) == 0
    report = json.loads(out.read_text())
    got = {(r['impl'], r['precision']) for r in report['results']}
    assert got == {('ours', 'fp32'), ('peer', 'fp32'), ('ours', 'bf16'), ('peer', 'bf16')}
    for r in report['results']:
        assert r['tokens_per_s'] > 0 and r['step_s'] > 0
        assert r['tokens_per_s'] * r['step_s'] == pytest.approx(2 * 32)  # 2 windows of 32 tokens an update
        assert 0 < r['mfu'] == pytest.approx(r['tflops'] / r['peak_tflops'])
        assert len(r['times']) == 1 and r['discarded'] == [1]  # --quick: 1 discarded, 1 timed, 1 round
    pids = [pid for r in report['results'] for pid in r['pids']]
    assert len(set(pids)) == 4 and os.getpid() not in pids
    assert 'vs peer' in capsys.readouterr().out


def test_flops_per_update_are_the_model_flops_of_its_windows():
    """2 windows of 32 tokens on the quick model: 3 x (forward of the blocks + the tied decoder over 40,479 rows)."""
    shape = bench_pretrain.shape_of(bench_pretrain.parse_args(['--quick', '--n_ctx', '32']))
    n, d, layers = 32, shape.n_embd, shape.n_layer
    forward = 2 * 12 * layers * d * d * n + 4 * layers * d * n * n
    expected = 3 * (forward + 2 * d * (N_VOCAB + 1) * (n - 1))
    assert bench.seq_flops(n, shape, N_VOCAB + 1, train=True) == expected


def test_windows_of_the_stream_hold_separators():
    stream = bench_pretrain.make_stream(30_000)
    assert stream.dtype == np.uint16 and stream.max() == N_VOCAB and (stream == N_VOCAB).sum() > 50
