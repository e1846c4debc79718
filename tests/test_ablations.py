"""Tests for ablations.py: every variant of Table 5 runs train.py with its flags on each task, the table holds each
run's validation metric and their average, printed in the paper's layout and saved; a second invocation re-reads
the finished runs.

ablations.py starts each train.py run as a subprocess of this Python; the table's tests run train.py's main in this
process instead (the command checked to be this Python on train.py), which saves an interpreter and its imports per
run; the failed run below is a real subprocess."""
import json
import subprocess
import sys
import types

import pytest

import ablations
import train
from tests.helpers import roc_cli_args, roc_workdir


def run_train_here(cmd):
    """Stand in for ablations.py's subprocess.run: check that cmd runs train.py with this Python, run train.py's main
    on its arguments here; return the CompletedProcess with its exit status."""
    assert cmd[:2] == [sys.executable, ablations.SCRIPT], cmd
    return subprocess.CompletedProcess(cmd, train.main(cmd[2:]))


@pytest.fixture
def train_here(monkeypatch):
    """ablations.py's train.py runs go to train.py's main in this process."""
    monkeypatch.setattr(ablations, 'subprocess', types.SimpleNamespace(run=run_train_here))


@pytest.fixture(scope='module')
def table(tmp_path_factory):
    d = roc_workdir(tmp_path_factory.mktemp('ablations'))
    flags = [a for a in roc_cli_args(d, '--n_iter', '1')
             if a not in ('--dataset', 'rocstories', '--desc', 'tiny', '--data_dir', str(d / 'data'), '--log_dir',
                          str(d / 'log'), '--save_dir', str(d / 'save'), '--submission_dir', str(d / 'submission'))]
    argv = ['--tasks', f'rocstories={d / "data"}', '--out', str(d / 'out'), '--', *flags]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ablations, 'subprocess', types.SimpleNamespace(run=run_train_here))
        status = ablations.main(argv)
    return d, argv, status


def test_each_variant_is_a_train_run_with_its_flags_and_the_table_holds_their_metric(table, capsys):
    d, _, status = table
    assert status == 0
    record = json.loads((d / 'out' / 'ablations.json').read_text())
    assert [r['variant'] for r in record['rows']] == ['full', 'no_pretraining', 'no_aux_lm']
    headers = {}
    for row in record['rows']:
        log = d / 'out' / 'log' / f"rocstories_{row['variant']}.jsonl"
        headers[row['variant']] = json.loads(log.read_text().splitlines()[0])
        summary = json.loads((d / 'out' / 'log' / f"rocstories_{row['variant']}_summary.json").read_text())
        assert row['rocstories'] == summary['best_va'] == row['avg']
    assert (headers['full']['n_transfer'], headers['full']['lm_coef']) == (12, 0.5)
    assert (headers['no_pretraining']['n_transfer'], headers['no_pretraining']['from_scratch']) == (-1, True)
    assert headers['no_aux_lm']['lm_coef'] == 0 and headers['no_aux_lm']['n_iter'] == 1
    assert record['metrics'] == {'rocstories': 'acc'}


def test_the_table_is_printed_in_the_papers_layout(table, train_here, capfd):
    d, argv, _ = table
    assert ablations.main(argv) == 0  # again: the finished runs are re-read (--resume auto), not trained again
    out = capfd.readouterr().out
    record = json.loads((d / 'out' / 'ablations.json').read_text())
    lines = out[out.index('Method'):].splitlines()
    assert lines[0].split() == ['Method', 'Avg.', 'Score', 'rocstories', '(acc)']
    for line, row in zip(lines[1:4], record['rows']):
        assert line.startswith(row['method']) and line.split()[-1] == f"{row['rocstories']:.1f}"
    assert out.count('resuming at epoch 1, update 5') == 3  # train.py's own line, once per variant


def test_bad_arguments_and_a_failed_run_are_one_line(tmp_path, capfd):
    with pytest.raises(SystemExit):
        ablations.main(['--tasks', 'rocstories', '--out', str(tmp_path)])
    assert "--tasks 'rocstories': give TASK=DATA_DIR" in capfd.readouterr().err
    assert ablations.main(['--tasks', f'rocstories={tmp_path}', '--out', str(tmp_path / 'out'), '--variants',
                           'full', '--', '--n_iter', '1']) == 2
    assert capfd.readouterr().err.strip().splitlines()[-1] == (
        'ablations.py: error: train.py for rocstories (full) ended with status 2; its own error is above; run '
        'ablations.py again to pick up where it stopped')
