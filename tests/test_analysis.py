"""Tests for analysis (TF: analysis.py): accuracies on a tiny run, plots, errors, the CLI."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import analysis
from datasets import HEADER, TEST_FILE

REPO = Path(__file__).resolve().parents[1]
TEST_LABELS = [1, 2, 2, 1, 1]  # AnswerRightEnding of the five test stories


def write_test_csv(data_dir, labels=TEST_LABELS, with_labels=True):
    with open(data_dir / TEST_FILE, 'w', encoding='utf-8', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(HEADER if with_labels else HEADER[:7])
        for i, label in enumerate(labels):
            row = [f'id{i}', f'Story {i} one.', 'Two.', 'Three.', 'Four.', f'Good end {i}.', f'Bad end {i}.']
            writer.writerow(row + [str(label)] if with_labels else row)


def write_log(path, records):
    with open(path, 'w', encoding='utf-8') as f:
        f.write(json.dumps({'desc': 'rocstories', 'va_acc': 999.0, 'time': 0.0}) + '\n')  # arguments line
        for r in records:
            f.write(json.dumps(r) + '\n')


def write_preds(path, preds):
    with open(path, 'w', encoding='utf-8') as f:
        f.write('index\tprediction\n')
        for i, p in enumerate(preds):
            f.write(f'{i}\t{p}\n')


LOG = [
    {'n_epochs': 0, 'n_updates': 10, 'tr_cost': 1.2, 'va_cost': 1.3, 'tr_acc': 60.0, 'va_acc': 58.5},
    {'n_epochs': 1, 'n_updates': 20, 'tr_cost': 0.9, 'va_cost': 1.0, 'tr_acc': 75.0, 'va_acc': 80.25},
    {'note': 'a record without accuracies'},
    {'n_epochs': 2, 'n_updates': 30, 'tr_cost': 0.5, 'va_cost': 1.1, 'tr_acc': 90.0, 'va_acc': 79.0},
]


@pytest.fixture
def run(tmp_path):
    write_test_csv(tmp_path)
    write_log(tmp_path / 'rocstories.jsonl', LOG)
    write_preds(tmp_path / 'ROCStories.tsv', [0, 1, 0, 0, 1])  # 3 of 5 right (labels 0, 1, 1, 0, 0)
    return tmp_path


def test_rocstories_numbers(run, capsys):
    valid, test = analysis.rocstories(run, run / 'ROCStories.tsv', run / 'rocstories.jsonl')
    assert valid == 80.25  # the first line's va_acc (999) is the arguments, not a result
    assert test == pytest.approx(60.0)
    out = capsys.readouterr().out
    assert out == 'ROCStories Valid Accuracy: 80.25\nROCStories Test Accuracy:  60.00\n'


def test_prediction_count_mismatch(run):
    write_preds(run / 'ROCStories.tsv', [0, 1, 0])
    with pytest.raises(ValueError, match='3 predictions for 5 test stories'):
        analysis.rocstories(run, run / 'ROCStories.tsv', run / 'rocstories.jsonl')


def test_missing_files(run):
    with pytest.raises(FileNotFoundError, match='nope.tsv'):
        analysis.rocstories(run, run / 'nope.tsv', run / 'rocstories.jsonl')
    with pytest.raises(FileNotFoundError, match='nope.jsonl'):
        analysis.rocstories(run, run / 'ROCStories.tsv', run / 'nope.jsonl')
    (run / TEST_FILE).unlink()
    with pytest.raises(FileNotFoundError, match='rocstories'):
        analysis.compute_test_accuracy(run, run / 'ROCStories.tsv')


def test_log_without_va_acc(run):
    write_log(run / 'rocstories.jsonl', [{'n_updates': 1, 'tr_cost': 1.0}])
    with pytest.raises(ValueError, match='no va_acc'):
        analysis.best_valid_accuracy(run / 'rocstories.jsonl')


def test_bad_log_line(run):
    with open(run / 'rocstories.jsonl', 'a', encoding='utf-8') as f:
        f.write('{not json\n')
    with pytest.raises(ValueError, match='line 6: not JSON'):
        analysis.best_valid_accuracy(run / 'rocstories.jsonl')


def test_bad_predictions_file(run):
    (run / 'ROCStories.tsv').write_text('index\tprediction\n0\t1\n2\t0\n', encoding='utf-8')
    with pytest.raises(ValueError, match="line 3: index '2', expected 1"):
        analysis.read_predictions(run / 'ROCStories.tsv')
    (run / 'ROCStories.tsv').write_text('index\tprediction\n0\tone\n', encoding='utf-8')
    with pytest.raises(ValueError, match="line 2: prediction 'one'"):
        analysis.read_predictions(run / 'ROCStories.tsv')
    (run / 'ROCStories.tsv').write_text('0\t1\n', encoding='utf-8')
    with pytest.raises(ValueError, match='line 1: expected the header'):
        analysis.read_predictions(run / 'ROCStories.tsv')


def test_unlabelled_test_file(run):
    write_test_csv(run, with_labels=False)
    with pytest.raises(ValueError, match='no AnswerRightEnding column'):
        analysis.compute_test_accuracy(run, run / 'ROCStories.tsv')


def test_misclassified(run):
    wrong = analysis.misclassified(run, run / 'ROCStories.tsv')
    assert [(w[0], w[4], w[5]) for w in wrong] == [(2, 1, 2), (4, 2, 1)]
    assert wrong[0][1] == 'Story 2 one. Two. Three. Four.' and wrong[0][2:4] == ('Good end 2.', 'Bad end 2.')


def test_plot_writes_png(run):
    out = run / 'curves.png'
    assert analysis.plot_curves(run / 'rocstories.jsonl', out) == out
    data = out.read_bytes()
    assert data.startswith(b'\x89PNG\r\n\x1a\n') and len(data) > 5000


def test_main_full(run, capsys):
    analysis.main(['--log', str(run / 'rocstories.jsonl'), '--pred', str(run / 'ROCStories.tsv'),
                   '--data_dir', str(run), '--plot', str(run / 'c.png'), '--errors'])
    out = capsys.readouterr().out
    assert 'ROCStories Valid Accuracy: 80.25' in out and 'ROCStories Test Accuracy:  60.00' in out
    assert '2 misclassified test stories' in out
    assert '[4] Story 4 one. Two. Three. Four.\n  1: Good end 4.\n  2: Bad end 4.\n  predicted 2, true 1' in out
    assert (run / 'c.png').stat().st_size > 0


def test_main_valid_only(run, capsys):
    analysis.main(['--log', str(run / 'rocstories.jsonl')])
    assert capsys.readouterr().out == 'ROCStories Valid Accuracy: 80.25\n'


@pytest.mark.parametrize('args, message', [
    (['--log', 'missing.jsonl'], 'missing.jsonl is missing: no log there; train.py writes it'),
    (['--log', 'rocstories.jsonl', '--errors'], '--errors needs --pred'),
    (['--log', 'rocstories.jsonl', '--pred', 'ROCStories.tsv', '--data_dir', 'nodata'], "not found in folder 'nodata'"),
])
def test_main_errors(run, capsys, monkeypatch, args, message):
    monkeypatch.chdir(run)
    with pytest.raises(SystemExit) as e:
        analysis.main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and message in err and err.startswith('analysis.py: error: ')


def test_cli_error_is_one_line_without_traceback(run):
    proc = subprocess.run([sys.executable, str(REPO / 'analysis.py'), '--log', str(run / 'missing.jsonl')],
                          capture_output=True, text=True, cwd=run, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == '' and proc.stderr.count('\n') == 1 and 'Traceback' not in proc.stderr
    assert 'missing.jsonl is missing: no log there' in proc.stderr


# --- every flag of the command line, each checked by its effect -------------------------------------------

def test_main_plot_writes_a_png_of_the_curves(run, capsys):
    analysis.main(['--log', str(run / 'rocstories.jsonl'), '--plot', str(run / 'curves.png')])
    assert capsys.readouterr().out == (f'ROCStories Valid Accuracy: 80.25\n'
                                       f'learning curves written to {run / "curves.png"}\n')
    data = (run / 'curves.png').read_bytes()
    assert data.startswith(b'\x89PNG\r\n\x1a\n') and len(data) > 5000
    analysis.main(['--log', str(run / 'rocstories.jsonl')])
    assert 'learning curves' not in capsys.readouterr().out  # no --plot, no picture


def test_main_errors_lists_exactly_the_misclassified_stories(run, capsys):
    write_preds(run / 'ROCStories.tsv', [1, 1, 0, 0, 1])  # wrong on stories 0, 2 and 4 (labels 0, 1, 1, 0, 0)
    argv = ['--log', str(run / 'rocstories.jsonl'), '--pred', str(run / 'ROCStories.tsv'), '--data_dir', str(run)]
    analysis.main(argv)
    assert 'misclassified' not in capsys.readouterr().out  # no --errors, no list
    analysis.main(argv + ['--errors'])
    out = capsys.readouterr().out
    assert 'ROCStories Test Accuracy:  40.00' in out and '3 misclassified test stories' in out
    listed = [line for line in out.splitlines() if line.startswith('[')]
    assert listed == [f'[{i}] Story {i} one. Two. Three. Four.' for i in (0, 2, 4)]
    assert out.count('predicted 2, true 1') == 2 and out.count('predicted 1, true 2') == 1


def write_dev_predictions(path, rows):
    with open(path, 'w', encoding='utf-8') as f:
        f.write('index\tprediction\tlabel\n')
        for i, (pred, gold) in enumerate(rows):
            f.write(f'{i}\t{pred}\t{gold}\n')


def test_main_task_reports_a_dev_predictions_file(tmp_path, capsys):
    mnli = tmp_path / 'mnli_dev_matched_predictions.tsv'
    write_dev_predictions(mnli, [('entailment', 'entailment'), ('neutral', 'entailment'),
                                 ('contradiction', 'contradiction'), ('neutral', 'neutral')])
    analysis.main(['--task', 'mnli', '--pred', str(mnli)])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == 'mnli mnli_dev_matched_predictions.tsv: acc 75.00'
    assert out[1] == 'confusion matrix (rows: gold, columns: predicted):'
    # rows and columns in TASK_LABELS order: contradiction, entailment, neutral
    assert [[int(v) for v in line.strip(' []').split()] for line in out[2:]] == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    stsb = tmp_path / 'stsb_dev_predictions.tsv'
    write_dev_predictions(stsb, [(1.0, 0.5), (2.0, 2.5), (4.0, 3.0)])
    analysis.main(['--task', 'stsb', '--pred', str(stsb)])
    out = capsys.readouterr().out
    pearson = np.corrcoef([1.0, 2.0, 4.0], [0.5, 2.5, 3.0])[0, 1] * 100
    assert out == f'stsb stsb_dev_predictions.tsv: pearson {pearson:.2f}, spearman 100.00\n'  # same ranks
    assert 'confusion' not in out  # a regression has none
    # --task rocstories is the ROCStories report itself
    with pytest.raises(SystemExit):
        analysis.main(['--task', 'rocstories', '--pred', str(stsb)])
    assert capsys.readouterr().err == ('analysis.py: error: --log is required (the .jsonl that train.py writes), or '
                                       '--task with --pred\n')
    for argv, message in ((['--task', 'mnli'], '--task needs --pred'),
                          (['--task', 'nope', '--pred', str(mnli)], "unknown task 'nope'"),
                          (['--task', 'cola', '--pred', str(mnli)], 'are not labels of cola')):
        with pytest.raises(SystemExit):
            analysis.main(argv)
        err = capsys.readouterr().err
        assert err.startswith('analysis.py: error: ') and message in err and err.count('\n') == 1


def test_pretrain_log_report_and_loss_curves(tmp_path, capsys):
    """--pretrain_log reads pretrain.py's log (the arguments, then one record per evaluation): last and best val
    loss, and the loss curves."""
    records = [dict(corpus='corpus/', out='runs/x'), dict(n_updates=0, train_loss=None, val_loss=10.5),
               dict(n_updates=50, train_loss=6.0, val_loss=4.0), dict(n_updates=100, train_loss=3.5, val_loss=4.2)]
    log = tmp_path / 'log.jsonl'
    log.write_text(''.join(json.dumps(r) + '\n' for r in records))
    analysis.main(['--pretrain_log', str(log), '--plot', str(tmp_path / 'losses.png')])
    out = capsys.readouterr().out
    assert '3 evaluations, last at update 100: val loss 4.2000 (perplexity 66.69)' in out
    assert 'best val loss 4.0000 at update 50' in out
    assert (tmp_path / 'losses.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    log.write_text(json.dumps(dict(corpus='corpus/')) + '\n' + json.dumps(dict(n_updates=1, train_loss=2.0)) + '\n')
    with pytest.raises(SystemExit):
        analysis.main(['--pretrain_log', str(log)])
    assert 'no val_loss entries' in capsys.readouterr().err
