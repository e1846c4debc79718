"""Tests of benchmarks/bench_gpt2.py: a --quick run's results, and nanoGPT's log read by its iteration times."""
import json
import os
from types import SimpleNamespace

import bench_gpt2
import steady


def test_quick_run_reports_every_implementation_and_checks_equal_outputs(tmp_path, capsys):
    assert bench_gpt2.main(['--quick', '--precisions', 'fp32', '--json', str(tmp_path / 'r.json')]) == 0
    report = json.loads((tmp_path / 'r.json').read_text())
    assert {(r['impl'], r['precision']) for r in report['pretraining']} == {('ours', 'fp32'), ('transformers', 'fp32')}
    assert all(r['step_s'] > 0 and r['tokens_per_s'] > 0 for r in report['pretraining'])
    assert [r['impl'] for r in report['generation']] == ['ours', 'transformers']
    assert all(r['same_tokens'] for r in report['generation'])  # greedy decoding agrees token for token
    assert [r['impl'] for r in report['encoding']] == ['ours', 'transformers']
    assert all(r['same_ids'] for r in report['encoding'])
    assert 'pre-training' in capsys.readouterr().out


def test_each_round_of_each_implementation_runs_in_a_process_of_its_own(tmp_path):
    """A process that has trained one model runs another's updates slower: no round shares a process."""
    args = bench_gpt2.parse_args(['--quick', '--precisions', 'fp32', '--rounds', '2'])
    pre = bench_gpt2.pretraining(args, bench_gpt2.bench_config(args), None, bench_gpt2.make_stream(10_000),
                                 str(tmp_path))
    assert [r['impl'] for r in pre] == ['ours', 'transformers']
    pids = [pid for r in pre for pid in r['pids']]
    assert len(pids) == 4 and len(set(pids)) == 4 and os.getpid() not in pids
    assert all(len(r['times']) == 2 and len(r['discarded']) == 2 for r in pre)


def test_nanogpt_runs_unchanged_and_its_iteration_times_are_read(tmp_path, monkeypatch):
    """A stand-in for nanoGPT's train.py: the benchmark copies the folder, writes data/bench/*.bin, passes
    nanoGPT's --key=value flags and keeps the times of the iterations after the warm-up ones."""
    source = tmp_path / 'nanogpt'
    source.mkdir()
    (source / 'train.py').write_text(
        "import sys, os\n"
        "args = dict(a[2:].split('=') for a in sys.argv[1:])\n"
        "assert os.path.getsize('data/bench/train.bin') > 0 and args['dtype'] == 'float32'\n"
        "assert args['compile'] == os.environ['EXPECT_COMPILE']\n"
        "for i in range(int(args['max_iters']) + 1):\n"
        "    print(f'iter {i}: loss 10.8, time {100 * (i + 1):.2f}ms, mfu -100.00%')\n")
    for name in ('model.py', 'configurator.py'):
        (source / name).write_text('')
    cfg = SimpleNamespace(n_ctx=16, n_layer=2, n_head=4, n_embd=32)
    folder = bench_gpt2.nanogpt_folder(str(source), str(tmp_path / 'work'), bench_gpt2.make_stream(1000))
    for compile_ in (False, True):  # nanoGPT compiles by default: --compile leaves it so, else it is turned off
        monkeypatch.setenv('EXPECT_COMPILE', str(compile_))
        args = SimpleNamespace(protocol=steady.Protocol(warmup=1, steps=2, settle=0.1), micro_batch=2, n_batch=4,
                               compile=compile_)
        # 0.1 s, 0.2 s, 0.3 s, 0.4 s: no two in a row within 10%, so the warm-up is the most allowed, 2 iterations
        assert bench_gpt2.run_nanogpt(folder, args, cfg, 'fp32', 'cpu') == (2, [0.3, 0.4])
