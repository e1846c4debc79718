"""Tests of benchmarks/bench_inference.py: a --quick run times both implementations of each row and checks that they
computed the same thing."""
import json
import os

import bench_inference


def test_quick_run_reports_both_implementations_with_equal_outputs(tmp_path, capsys):
    assert bench_inference.main(['--quick', '--precisions', 'fp32', '--json', str(tmp_path / 'r.json')]) == 0
    rows = json.loads((tmp_path / 'r.json').read_text())['results']
    assert {(r['task'], r['impl'], r['batch']) for r in rows} == {
        (task, impl, batch) for impl in ('ours', 'transformers')
        for task, batch in (('generation', 1), ('generation', 4), ('evaluation', 1))}
    assert all(r['same'] for r in rows)  # greedy tokens row by row; the summed NLLs within 0.1%
    assert all(r['tokens_per_s'] > 0 and len(r['times']) == 1 for r in rows)
    pids = {r['impl']: r['pids'] for r in rows}  # each implementation's round in a process of its own
    assert len(set(pids['ours'] + pids['transformers'])) == 2 and os.getpid() not in pids['ours']
    assert 'ours vs it' in capsys.readouterr().out


def test_tasks_picks_the_rows_and_refuses_an_unknown_one(tmp_path):
    assert bench_inference.main(['--quick', '--precisions', 'fp32', '--tasks', 'evaluation',
                                 '--json', str(tmp_path / 'r.json')]) == 0
    rows = json.loads((tmp_path / 'r.json').read_text())['results']
    assert {r['task'] for r in rows} == {'evaluation'}
    try:
        bench_inference.main(['--quick', '--tasks', 'generaton'])
    except SystemExit as err:
        assert 'generaton unknown' in str(err)
    else:
        raise AssertionError('an unknown task ran')
