"""End-to-end tests of train.py on the paper's other tasks: tiny synthetic data in each dataset's layout."""
import json
import random

import numpy as np
import pytest

import train
from task_datasets import TASK_LABELS
from tasks import TASKS
from tests.test_task_datasets import MNLI_HEAD, STSB_HEAD, mnli_row, stsb_row, write
from tests.test_train import write_tiny_checkpoint

WORDS = 'the a cat dog sat ran on under mat tree big small red blue happy sad man woman saw ate'.split()
N_ROWS = {'train': 6, 'dev': 5, 'test': 3}


def sentence(rng):
    return ' '.join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))) + '.'


def label_of(name, rng, i):
    names = TASK_LABELS[name]
    return f'{rng.uniform(0, 5):.3f}' if names is None else names[i % len(names)]


def glue_rows(name, split, n, rng):
    """Rows of one GLUE file for task name, in the distribution's own columns."""
    test = split.startswith('test')
    s = [(sentence(rng), sentence(rng)) for _ in range(n)]
    y = [label_of(name, rng, i) for i in range(n)]
    if name == 'cola':
        if test:
            return [['index', 'sentence']] + [[str(i), a] for i, (a, _) in enumerate(s)]
        return [['src', y[i], '' if y[i] == '1' else '*', a] for i, (a, _) in enumerate(s)]
    if name == 'sst2':
        return [['index', 'sentence'] if test else ['sentence', 'label']] + [
            [str(i), a] if test else [a, y[i]] for i, (a, _) in enumerate(s)]
    if name == 'mrpc':
        head = ['index' if test else 'Quality', '#1 ID', '#2 ID', '#1 String', '#2 String']
        return [head] + [[str(i) if test else y[i], '1', '2', a, b] for i, (a, b) in enumerate(s)]
    if name == 'qqp':
        if test:
            return [['id', 'question1', 'question2']] + [[str(i), a, b] for i, (a, b) in enumerate(s)]
        return [['id', 'qid1', 'qid2', 'question1', 'question2', 'is_duplicate']] + [
            [str(i), '1', '2', a, b, y[i]] for i, (a, b) in enumerate(s)]
    if name == 'stsb':
        return [STSB_HEAD + ([] if test else ['score'])] + [
            stsb_row(i, a, b, *([] if test else [y[i]])) for i, (a, b) in enumerate(s)]
    if name == 'mnli':
        return [MNLI_HEAD + ([] if test else ['gold_label'])] + [
            mnli_row(i, a, b, *([] if test else [y[i]])) for i, (a, b) in enumerate(s)]
    cols = {'qnli': ['question', 'sentence'], 'rte': ['sentence1', 'sentence2']}[name]
    return [['index'] + cols + ([] if test else ['label'])] + [
        [str(i), a, b] + ([] if test else [y[i]]) for i, (a, b) in enumerate(s)]


GLUE_FOLDERS = {'cola': 'CoLA', 'sst2': 'SST-2', 'mrpc': 'MRPC', 'qqp': 'QQP', 'stsb': 'STS-B', 'mnli': 'MNLI',
                'qnli': 'QNLI', 'rte': 'RTE'}


def write_task_data(name, data_dir, rng):
    """Write a tiny dataset for task name in its distribution layout under data_dir."""
    if name in GLUE_FOLDERS:
        splits = (['train', 'dev_matched', 'dev_mismatched', 'test_matched', 'test_mismatched'] if name == 'mnli'
                  else ['train', 'dev', 'test'])
        for split in splits:
            n = N_ROWS[split.split('_')[0]]
            write(data_dir / GLUE_FOLDERS[name] / f'{split}.tsv', glue_rows(name, split, n, rng))
    elif name == 'snli':
        for split, n in N_ROWS.items():
            lines = [json.dumps(dict(sentence1=sentence(rng), sentence2=sentence(rng), gold_label=label_of(name, rng, i)))
                     for i in range(n)] + [json.dumps(dict(sentence1='x', sentence2='y', gold_label='-'))]
            write(data_dir / 'snli_1.0' / f'snli_1.0_{split}.jsonl', lines)
    elif name == 'scitail':
        for split, n in N_ROWS.items():
            write(data_dir / 'SciTailV1.1' / 'tsv_format' / f'scitail_1.0_{split}.tsv',
                  [[sentence(rng), sentence(rng), label_of(name, rng, i)] for i in range(n)])
    else:  # race
        for split, n in N_ROWS.items():
            for group in ('high', 'middle'):
                obj = dict(id=f'{group}1.txt', article=' '.join(sentence(rng) for _ in range(12)),
                           questions=[sentence(rng) for _ in range(n)],
                           options=[[sentence(rng) for _ in range(4)] for _ in range(n)],
                           answers=['ABCD'[i % 4] for i in range(n)])
                path = data_dir / 'RACE' / split / group / '1.txt'
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(obj))


@pytest.fixture(scope='module')
def checkpoint_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp('ckpt')
    write_tiny_checkpoint(d, np.random.default_rng(0), n_pos=128)
    return d


def run_task(name, d, ckpt, *extra):
    argv = ['--dataset', name, '--desc', name, '--data_dir', str(d / 'data'), '--model_dir', str(ckpt),
            '--encoder_path', str(ckpt / 'encoder_bpe_40000.json'), '--bpe_path', str(ckpt / 'vocab_40000.bpe'),
            '--log_dir', str(d / 'log'), '--save_dir', str(d / 'save'), '--submission_dir', str(d / 'sub'),
            '--n_embd', '32', '--n_head', '4', '--n_layer', '2', '--n_batch', '1', '--n_gpu', '2', '--n_iter', '1',
            '--n_valid', '4', '--n_ctx', '128', '--lr', '1e-3', '--quiet', *extra]
    return train.main(argv)


EXPECTED_METRICS = {'cola': ['mcc', 'acc'], 'mrpc': ['f1', 'acc'], 'qqp': ['f1', 'acc'],
                    'stsb': ['pearson', 'spearman']}


@pytest.mark.parametrize('name', sorted(TASKS))
def test_train_submit_end_to_end(name, tmp_path, checkpoint_dir, capsys):
    task = TASKS[name]
    write_task_data(name, tmp_path / 'data', random.Random(name))
    assert run_task(name, tmp_path, checkpoint_dir, '--submit', '--analysis') == 0
    out = capsys.readouterr().out

    with open(tmp_path / 'log' / f'{name}.jsonl') as f:
        log = [json.loads(line) for line in f]
    assert log[0]['dataset'] == name and len(log) == 2  # arguments, then one evaluation after the epoch
    record = log[1]
    per_group = 2 if name == 'race' else 1  # RACE's synthetic data has a middle and a high file per split
    # 6 training examples (12 for RACE), 2 per update
    assert record['n_epochs'] == 1 and record['n_updates'] == 3 * per_group
    metrics = EXPECTED_METRICS.get(name, ['acc'])
    for prefix in ('tr', 'va'):
        assert f'{prefix}_cost' in record
        for m in metrics:
            assert f'{prefix}_{m}' in record
    if name == 'mnli':
        assert 'dev_mismatched_acc' in record
    if name == 'race':
        assert {'va_acc_middle', 'va_acc_high'} <= set(record)
    first = f'va_{metrics[0]}'
    assert f'best valid {metrics[0]} ' in out and f'{record[first]:.2f}' in out

    names = TASK_LABELS[name]
    for split, file in task.submissions:
        rows = (tmp_path / 'sub' / file).read_text().splitlines()
        assert rows[0] == 'index\tprediction'
        n_test = N_ROWS['test'] * per_group
        assert len(rows) == 1 + n_test
        preds = [r.split('\t')[1] for r in rows[1:]]
        if names is None:
            assert all(np.isfinite(float(p)) for p in preds)  # STS-B: scores, three decimals
            assert all(len(p.split('.')[1]) == 3 for p in preds)
        else:
            assert set(preds) <= set(names)
        if name in GLUE_FOLDERS:
            assert [r.split('\t')[0] for r in rows[1:]] == [str(i) for i in range(n_test)]
    for dev in task.dev:
        rows = (tmp_path / 'sub' / f'{name}_{dev}_predictions.tsv').read_text().splitlines()
        assert rows[0] == 'index\tprediction\tlabel'
        assert len(rows) == 1 + N_ROWS['dev'] * per_group
    assert f'{name} {name}_{task.dev[0]}_predictions.tsv: {metrics[0]} ' in out  # --analysis report


def test_n_runs_reports_the_median_of_the_logged_runs(tmp_path, checkpoint_dir, capsys):
    write_task_data('sst2', tmp_path / 'data', random.Random(0))
    assert run_task('sst2', tmp_path, checkpoint_dir, '--n_runs', '3') == 0
    out = capsys.readouterr().out
    best = []
    for seed in (42, 43, 44):
        with open(tmp_path / 'log' / f'sst2_seed{seed}.jsonl') as f:
            records = [json.loads(line) for line in f][1:]
        best.append(max(r['va_acc'] for r in records))
    with open(tmp_path / 'log' / 'sst2_runs.json') as f:
        summary = json.load(f)
    assert summary['median'] == pytest.approx(float(np.median(best)))
    assert summary['best'] == pytest.approx(max(best)) and summary['n_runs'] == 3
    assert f'3 runs: median {np.median(best):.2f}, mean {np.mean(best):.2f}' in out


def test_wrong_data_dir_lists_the_expected_files(tmp_path, checkpoint_dir, capsys):
    (tmp_path / 'data').mkdir()
    assert run_task('mnli', tmp_path, checkpoint_dir) == 2
    err = capsys.readouterr().err
    assert 'MNLI/train.tsv' in err and 'MNLI/dev_matched.tsv' in err and 'Traceback' not in err
