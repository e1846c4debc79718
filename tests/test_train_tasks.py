"""End-to-end tests of train.py on the paper's other tasks: tiny synthetic data in each dataset's layout."""
import json
import random

import numpy as np
import pytest
import torch

import train
from task_datasets import TASK_LABELS
from tasks import TASKS
from tests.test_task_datasets import MNLI_HEAD, STSB_HEAD, mnli_row, stsb_row, write
from tests.helpers import write_tiny_checkpoint

WORDS = 'the a cat dog sat ran on under mat tree big small red blue happy sad man woman saw ate'.split()
N_ROWS = {'train': 6, 'dev': 5, 'test': 3}


def sentence(rng):
    return ' '.join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))) + '.'


def label_of(name, rng, i):
    names = TASK_LABELS[name]
    return f'{rng.uniform(0, 5):.3f}' if names is None else names[i % len(names)]


def glue_rows(name, split, n, rng, marker=''):
    """Rows of one GLUE file for task name, in the distribution's own columns; marker starts each first text."""
    test = split.startswith('test')
    s = [((marker + ' ' + sentence(rng)).strip(), sentence(rng)) for _ in range(n)]
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


def write_task_data(name, data_dir, rng, markers=None, n_rows=None):
    """Write a tiny dataset for task name in its distribution layout under data_dir.

    markers maps a split name ('dev', 'test_matched', ...) to a word that starts the first text of each of
    its rows; n_rows maps a split name to its number of rows (default N_ROWS by the name's first part).
    """
    def marked(split):
        marker = (markers or {}).get(split, '')
        return (marker + ' ' + sentence(rng)).strip()

    def rows_in(split):
        return (n_rows or {}).get(split, N_ROWS[split.split('_')[0]])

    if name in GLUE_FOLDERS:
        splits = (['train', 'dev_matched', 'dev_mismatched', 'test_matched', 'test_mismatched'] if name == 'mnli'
                  else ['train', 'dev', 'test'])
        for split in splits:
            write(data_dir / GLUE_FOLDERS[name] / f'{split}.tsv',
                  glue_rows(name, split, rows_in(split), rng, (markers or {}).get(split, '')))
    elif name == 'snli':
        for split in N_ROWS:
            lines = [json.dumps(dict(sentence1=marked(split), sentence2=sentence(rng),
                                     gold_label=label_of(name, rng, i))) for i in range(rows_in(split))]
            lines.append(json.dumps(dict(sentence1='x', sentence2='y', gold_label='-')))
            write(data_dir / 'snli_1.0' / f'snli_1.0_{split}.jsonl', lines)
    elif name == 'scitail':
        for split in N_ROWS:
            write(data_dir / 'SciTailV1.1' / 'tsv_format' / f'scitail_1.0_{split}.tsv',
                  [[marked(split), sentence(rng), label_of(name, rng, i)] for i in range(rows_in(split))])
    else:  # race
        for split in N_ROWS:
            n = rows_in(split)
            for group in ('high', 'middle'):
                obj = dict(id=f'{group}1.txt', article=' '.join([marked(split)] + [sentence(rng) for _ in range(11)]),
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


class MarkerModel(torch.nn.Module):
    """A stand-in model whose output is a function of the first token of each example's first sequence."""

    def __init__(self, task):
        super().__init__()
        self.task = task

    def hidden_and_task(self, x):
        """Return (None, None, outputs): one-hot logits of (first token id % classes), or the id % 5 as a score."""
        first = x[:, 0, 1, 0] if x.dim() == 4 else x[:, 1, 0]  # [B, C, T, 2] or [B, T, 2] -> [B]
        if self.task.n_class == 1:
            return None, None, (first % 5).float()
        n = self.task.n_choices if self.task.family == 'multiple_choice' else self.task.n_class
        return None, None, torch.nn.functional.one_hot(first % n, n).float()


def marker_words(text_encoder, n_class, splits):
    """Return {split: word} whose first BPE id falls in a different class (id % n_class) for consecutive splits."""
    words = iter('cat dog tree man woman red blue big small happy sad ran sat ate saw'.split())
    chosen = {}
    for k, split in enumerate(splits):
        want = k % n_class
        word = next(w for w in words if text_encoder.encode([w], verbose=False)[0][0] % n_class == want)
        chosen[split] = word
    return chosen


@pytest.mark.parametrize('name', sorted(TASKS))
def test_each_submission_and_dev_file_is_predicted_from_its_own_split(name, tmp_path):
    """Each split starts its texts with its own word and has its own number of rows; a model whose output is a
    function of the first word shows which split each written file was predicted from."""
    from tasks import decode_predictions, predictions
    from text_utils import TextEncoder
    task = TASKS[name]
    text_encoder = TextEncoder()
    splits = [split for split, _ in task.submissions] + list(task.dev)
    n_out = 1 if task.n_class == 1 else (task.n_choices if task.family == 'multiple_choice' else task.n_class)
    markers = marker_words(text_encoder, 5 if task.n_class == 1 else n_out, splits)
    n_rows = {split: 3 + k for k, split in enumerate(splits)}
    write_task_data(name, tmp_path / 'data', random.Random(1), markers=markers, n_rows=n_rows)
    args = train.parse_args(['--dataset', name, '--data_dir', str(tmp_path / 'data'), '--n_ctx', '128',
                             '--submission_dir', str(tmp_path / 'sub'), '--quiet'])
    data, _ = train.load_task_data(args, text_encoder, task)
    train.write_predictions(MarkerModel(task), data, args, torch.device('cpu'))

    per_group = 2 if name == 'race' else 1
    names = TASK_LABELS[name]

    def expected(split):
        first = text_encoder.encode([markers[split]], verbose=False)[0][0]
        outputs = (np.full(1, first % 5, np.float32) if task.n_class == 1
                   else np.eye(n_out, dtype=np.float32)[[first % n_out]])
        return decode_predictions(task, predictions(task, outputs), names)[0]

    files = [(split, file) for split, file in task.submissions]
    files += [(dev, f'{name}_{dev}_predictions.tsv') for dev in task.dev]
    assert len({expected(split) for split, _ in files}) > 1 or len(files) == 1
    for split, file in files:
        rows = [line.split('\t') for line in (tmp_path / 'sub' / file).read_text().splitlines()[1:]]
        assert len(rows) == n_rows[split] * per_group, (file, split)
        assert {r[1] for r in rows} == {expected(split)}, (file, split)
