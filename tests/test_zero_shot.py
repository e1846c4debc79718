"""Tests for zero_shot.py: the command prints the metric and its JSON record, writes one TSV row per example in the
split's order, and bad arguments or data are one-line errors."""
import json

import numpy as np
import pytest

import zero_shot
from tests.helpers import roc_workdir


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    return roc_workdir(tmp_path_factory.mktemp('zero_shot'))


def args(d, *extra):
    return ['--task', 'rocstories', '--model_dir', str(d / 'model'), '--n_head', '4', '--data_dir', str(d / 'data'),
            '--device', 'cpu', '--quiet', *extra]


def test_the_metric_the_record_and_the_rows(workdir, tmp_path, capsys):
    out = tmp_path / 'roc.tsv'
    assert zero_shot.main(args(workdir, '--split', 'val', '--out', str(out), '--batch_size', '5')) == 0
    line, record = capsys.readouterr().out.strip().splitlines()
    record = json.loads(record)
    assert record['task'] == 'rocstories' and record['split'] == 'val' and record['metric'] == 'acc'
    assert record['n'] == 56 and line == f"rocstories val: acc {record['value']:.2f} on 56 examples"
    header, *rows = [r.split('\t') for r in out.read_text().splitlines()]
    assert header == ['index', 'prediction', 'score_0', 'score_1']
    assert [int(r[0]) for r in rows] == list(range(56))
    scores = np.array([[float(r[2]), float(r[3])] for r in rows])
    assert [int(r[1]) for r in rows] == scores.argmax(1).tolist()
    import datasets
    labels = datasets.story_cloze(str(workdir / 'data'), 'val')[3]
    assert record['value'] == pytest.approx(100 * np.mean(scores.argmax(1) == labels))


@pytest.mark.parametrize('extra, message', [
    (['--split', 'dev'], "zero_shot.py: error: ROCStories has no split 'dev': use val or test"),
    (['--data_dir', 'nowhere'], "zero_shot.py: error: 'cloze_test_test__spring2016 - cloze_test_ALL_test.csv' not "
                                "found in folder 'nowhere'"),
])
def test_bad_arguments_are_one_line(workdir, capsys, extra, message):
    assert zero_shot.main(args(workdir, *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message)
