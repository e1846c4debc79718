"""Hostile inputs of analysis.py (issue 26): damaged logs of train.py and pretrain.py, predictions files and transfer
records. Each reader raises only untrusted.BadFile, one line naming the file (the line, and which script's log was
expected); analysis.py's main prints it as one line and exits 2."""
import json
import math
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import analysis
import untrusted

TRAIN_LOG = [{'desc': 'rocstories', 'n_iter': 3, 'time': 0.0},
             {'n_epochs': 0, 'n_updates': 10, 'tr_cost': 1.2, 'va_cost': 1.3, 'tr_acc': 60.0, 'va_acc': 58.5},
             {'n_epochs': 1, 'n_updates': 20, 'tr_cost': 0.9, 'va_cost': 1.0, 'tr_acc': 75.0, 'va_acc': 80.25}]
PRETRAIN_LOG = [{'corpus': 'corpus/', 'out': 'runs/x', 'time': 0.0},
                {'n_updates': 0, 'tokens': 0, 'train_loss': None, 'val_loss': 10.5, 'val_ppl': 36315.5, 'lr': 0.0,
                 'zs_rocstories': 50.0},
                {'n_updates': 50, 'tokens': 6400, 'train_loss': 6.0, 'val_loss': 4.0, 'val_ppl': 54.6, 'lr': 1e-4,
                 'zs_rocstories': 55.0}]
TRANSFER = {'metric': 'acc', 'points': [{'n_transfer': 0, 'median': 60.0, 'runs': [{'desc': 'a', 'best_va': 60.0}]},
                                        {'n_transfer': 12, 'median': 80.0, 'runs': [{'desc': 'b', 'best_va': 80.0}]}]}


def lines(records):
    return ''.join(json.dumps(r) + '\n' for r in records).encode()


def refused(fn, *args, names):
    """Assert that fn(*args) raises only a BadFile, one line naming names; return its message."""
    with pytest.raises(untrusted.BadFile) as err:
        fn(*args)
    message = str(err.value)
    assert '\n' not in message and str(names) in message, message
    return message


def outcome(fn, *args, names):
    """Return 'ok' when fn(*args) returns, else the BadFile's message (checked as refused checks it); any other
    exception fails the test."""
    try:
        fn(*args)
    except untrusted.BadFile as err:
        assert '\n' not in str(err) and str(names) in str(err), str(err)
        return str(err)
    return 'ok'


def train_readers(path):
    analysis.best_valid_accuracy(path)
    analysis.read_log(path)


def pretrain_readers(path):
    analysis.pretrain_report(path)


# --- logs --------------------------------------------------------------------------------------------------------

DAMAGED_LINES = [b'{"n_updates": 1, "va_acc": ', b'{not json', b'[1, 2]', b'"text"', b'17', b'null',
                 b'[' * 100000 + b']' * 100000, b'{"a": ' * 5000 + b'1' + b'}' * 5000,
                 b'{"va_acc": 1}\xff\xfe', b'\x00\x00\x00', b'{"va_acc": 1e999}', b'{"va_acc": NaN}']
WRONG_VALUES = {'n_updates': [-1, 'x', 1.5, True, None, [], {}, 2 ** 70, 1e308],
                'n_epochs': [-1, 'x', True], 'tokens': [-5, 'many'],
                'va_acc': ['x', True, [], {}, [[[[1]]]], 10 ** 400], 'tr_cost': ['x', False, {'a': 1}, -10 ** 400],
                'val_loss': ['x', True, []], 'zs_rocstories': ['x', [50.0], True], 'lr': ['x']}


@pytest.mark.parametrize('kind, records, readers', [('train.py', TRAIN_LOG, train_readers),
                                                    ('pretrain.py', PRETRAIN_LOG, pretrain_readers)])
def test_damaged_log_lines_are_refused_naming_the_line_and_the_kind_of_log(tmp_path, capsys, kind, records, readers):
    path = tmp_path / 'log.jsonl'
    path.write_bytes(lines(records))
    readers(path)  # the valid log is read
    capsys.readouterr()
    expected = 'the log.jsonl that pretrain.py writes' if kind == 'pretrain.py' else 'the .jsonl that train.py writes'
    for damaged in DAMAGED_LINES:
        path.write_bytes(lines(records) + damaged + b'\n' + lines(records[1:]))
        message = refused(readers, path, names=path)
        if not damaged.endswith(b'\xfe') and damaged != b'\x00\x00\x00':
            assert 'line 4' in message and expected in message, (damaged[:30], message)
    for key, values in WRONG_VALUES.items():
        for value in values:
            record = dict(records[-1], **{key: value})
            path.write_bytes(lines(records[:-1] + [record]))
            result = outcome(readers, path, names=path)
            if value is None and key not in ('n_updates', 'n_epochs', 'tokens'):  # a score may be null
                continue
            assert result != 'ok', (key, value)
            assert f'line 3: {key}' in result and expected in result, result


def test_a_pretrain_log_evaluation_without_its_update_is_refused(tmp_path):
    path = tmp_path / 'log.jsonl'
    path.write_bytes(lines(PRETRAIN_LOG[:2] + [{'val_loss': 3.0}]))
    assert 'line 3: an evaluation (val_loss) without its n_updates' in refused(analysis.pretrain_report, path,
                                                                               names=path)
    path.write_bytes(lines(PRETRAIN_LOG + [{'n_updates': 60, 'val_loss': 3.5, 'zs_rocstories': None}]))
    assert analysis.pretrain_report(path)['last']['n_updates'] == 60  # a null zero-shot score is left out


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                                       max_size=3), max_leaves=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(sorted(WRONG_VALUES) + ['n_transfer', 'other']), value=json_values,
       kind=st.sampled_from(['train.py', 'pretrain.py']))
def test_any_value_of_a_log_field_is_read_or_refused_as_a_bad_file(tmp_path, key, value, kind):
    records = TRAIN_LOG if kind == 'train.py' else PRETRAIN_LOG
    path = tmp_path / f'{kind}.jsonl'
    path.write_text(json.dumps(records[0]) + '\n' + json.dumps(dict(records[1], **{key: value})) + '\n')
    outcome(train_readers if kind == 'train.py' else pretrain_readers, path, names=path)


def test_a_log_that_is_not_a_regular_file_is_refused(tmp_path):
    os.mkfifo(tmp_path / 'fifo.jsonl')
    assert 'not a regular file' in refused(analysis.read_log, tmp_path / 'fifo.jsonl', names='fifo.jsonl')
    assert 'is a folder' in refused(analysis.read_log, tmp_path, names=tmp_path)
    with pytest.raises(untrusted.MissingFile, match='pretrain.py writes it to <out>/log.jsonl'):
        analysis.read_log(tmp_path / 'none.jsonl', 'pretrain.py')


@pytest.mark.parametrize('flag, writer', [('--log', 'train.py'), ('--pretrain_log', 'pretrain.py')])
def test_main_prints_a_bad_log_as_one_line_naming_the_log_kind_and_exits_2(tmp_path, capsys, flag, writer):
    path = tmp_path / 'log.jsonl'
    path.write_bytes(lines(TRAIN_LOG if writer == 'train.py' else PRETRAIN_LOG) + b'[' * 100000 + b'\n')
    with pytest.raises(SystemExit) as exit_:
        analysis.main([flag, str(path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count('\n') == 1 and err.startswith(f'analysis.py: error: {path}: line 4')
    assert f'{writer} writes' in err
    other = 'pretrain.py' if writer == 'train.py' else 'train.py'
    assert f'that {other}' not in err and f' {other} writes' not in err
    with pytest.raises(SystemExit) as exit_:
        analysis.main([flag, str(tmp_path / 'none.jsonl')])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count('\n') == 1 and f'{writer} writes it' in err


# --- predictions files (submissions) -----------------------------------------------------------------------------

GOOD_PREDICTIONS = b'index\tprediction\n0\t1\n1\t0\n'


@pytest.mark.parametrize('content', [
    b'', b'\xff\xfe\x00', b'index\tprediction\n0\t\x00\n', b'index\tprediction\n0\t' + b'1' * 200000 + b'\n',
    b'index\tprediction\n0\t"' + b'x' * 200000 + b'\n', b'index\tprediction\n0\t2\n', b'index\tprediction\n0\t-1\n',
    b'index\tprediction\n0\t1e5\n', b'index\tprediction\n0\t\xef\xbc\x91\n', b'index\tprediction\n0\t1\t1\n',
    b'index\tprediction\n5\t1\n', b'prediction\n' + b'9' * 5000 + b'\n', b'index\tprediction\n0\tNaN\n'])
def test_damaged_predictions_are_refused(tmp_path, content):
    path = tmp_path / 'ROCStories.tsv'
    path.write_bytes(GOOD_PREDICTIONS)
    assert analysis.read_predictions(path).tolist() == [1, 0]
    path.write_bytes(content)
    refused(analysis.read_predictions, path, names=path)


@pytest.mark.parametrize('task, row', [('stsb', b'0\tnan\t1.0'), ('stsb', b'0\t1.0\tinf'), ('stsb', b'0\tx\t1'),
                                       ('mnli', b'0\tentailment\tmaybe'), ('mnli', b'0\tentailment'),
                                       ('mnli', b'0\t' + b'a' * 200000 + b'\tneutral'),
                                       ('mnli', b'0\tentailment\tneutral\xff')])
def test_damaged_dev_predictions_are_refused(tmp_path, task, row):
    path = tmp_path / f'{task}_dev_predictions.tsv'
    path.write_bytes(b'index\tprediction\tlabel\n' + row + b'\n')
    refused(analysis.read_task_predictions, task, path, names=path)


def test_main_prints_a_bad_predictions_file_as_one_line_and_exits_2(tmp_path, capsys):
    path = tmp_path / 'mnli_dev_predictions.tsv'
    path.write_bytes(b'index\tprediction\tlabel\n0\t\x00\tneutral\n')
    with pytest.raises(SystemExit) as exit_:
        analysis.main(['--task', 'mnli', '--pred', str(path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count('\n') == 1 and err.startswith(f'analysis.py: error: {path}')


# --- transfer records ----------------------------------------------------------------------------------------------

def transfer_mutations():
    yield 'not JSON', b'{"metric": "acc", "points": ['
    yield 'deep', b'[' * 100000 + b']' * 100000
    yield 'a list', b'[]'
    yield 'NaN', json.dumps(dict(TRANSFER, points=[dict(TRANSFER['points'][0], median=float('nan'))])).encode()
    yield 'not UTF-8', b'{"metric": "\xff"}'
    for key, values in (('metric', [None, 1, []]), ('points', [None, [], {}, 'x', [None], [[1]]])):
        for value in values:
            yield f'{key}={value!r}', json.dumps(dict(TRANSFER, **{key: value})).encode()
    for key, values in (('n_transfer', [None, 'x', True, -2, 1.5, 2 ** 70]), ('median', [None, 'x', True, [], 1e999]),
                        ('runs', [None, 'x', {}, [None], [{'best_va': 'x'}], [{}], [{'best_va': True}]])):
        for value in values:
            point = dict(TRANSFER['points'][0], **{key: value})
            yield f'points[0].{key}={value!r}', json.dumps(dict(TRANSFER, points=[point])).encode()
        point = {k: v for k, v in TRANSFER['points'][0].items() if k != key}
        yield f'no points[0].{key}', json.dumps(dict(TRANSFER, points=[point])).encode()


def test_damaged_transfer_records_are_refused(tmp_path, capsys):
    path = tmp_path / 'tiny_transfer.json'
    path.write_text(json.dumps(TRANSFER))
    assert analysis.transfer_report(path) == TRANSFER
    capsys.readouterr()
    for name, content in transfer_mutations():
        path.write_bytes(content)
        message = refused(analysis.transfer_report, path, names=path)
        assert 'transfer' in message, (name, message)
    with pytest.raises(SystemExit) as exit_:
        analysis.main(['--transfer', str(path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count('\n') == 1 and err.startswith(f'analysis.py: error: {path}')


def test_a_pretrain_log_with_a_nan_loss_is_read_and_the_nan_is_never_the_best(tmp_path, capsys):
    path = tmp_path / 'log.jsonl'
    path.write_bytes(lines([PRETRAIN_LOG[0], {'n_updates': 10, 'val_loss': math.nan}] + PRETRAIN_LOG[1:]
                           + [{'n_updates': 60, 'val_loss': math.inf}]))
    analysis.pretrain_report(path)
    out = capsys.readouterr().out
    assert 'best val loss 4.0000 at update 50' in out and 'val loss inf' in out
