"""Tests for utils (TF: utils.py): encode_dataset, iter_data, ResultLogger and the numpy helpers."""
import json
import os
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from utils import (ResultLogger, encode_dataset, flatten, iter_data, make_path, np_softmax, shuffled_indices,
                   stsb_label_encoding, train_test_indices)


class CountingEncoder:
    """Stands in for TextEncoder: ids are word lengths; records every encode() call."""

    def __init__(self):
        self.calls = []

    def encode(self, texts, verbose=True):
        self.calls.append(list(texts))
        return [[len(w) for w in t.split()] for t in texts]


def test_encode_dataset_one_call_per_str_field():
    enc = CountingEncoder()
    trY, vaY = np.array([0, 1], dtype=np.int32), np.array([1], dtype=np.int32)
    splits = ((['a bb', 'ccc'], ['dddd'] * 2, ['e', 'ff'], trY), (['g'], ['hh'], ['iii'], vaY), (['jj k'], ['l'], ['m']))
    (trX1, trX2, trX3, trY2), (vaX1, vaX2, vaX3, vaY2), (teX1, teX2, teX3) = encode_dataset(splits, encoder=enc)
    assert trX1 == [[1, 2], [3]] and trX2 == [[4], [4]] and vaX3 == [[3]] and teX1 == [[2, 1]]
    assert trY2 is trY and vaY2 is vaY  # labels untouched
    assert len(enc.calls) == 9 and enc.calls[0] == ['a bb', 'ccc']  # one batched call per text field


def test_encode_dataset_several_splits_and_empty_fields():
    enc = CountingEncoder()
    out = encode_dataset((['a b'], [0]), ([], [1]), encoder=enc)
    assert out == [[[[1, 1]], [0]], [[], [1]]]
    assert enc.calls == [['a b']]


def test_encode_dataset_rejects_a_split_of_strs():
    with pytest.raises(ValueError, match='encode_dataset'):
        encode_dataset(['story one', 'story two'], encoder=CountingEncoder())


def test_iter_data_single_and_multi():
    x = np.arange(10)
    batches = list(iter_data(x, n_batch=4))
    assert [b.tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    y = [str(i) for i in range(10)]
    pairs = list(iter_data(x, y, n_batch=4))
    assert all(isinstance(p, tuple) and len(p) == 2 for p in pairs)
    assert pairs[2][0].tolist() == [8, 9] and pairs[2][1] == ['8', '9']
    xmb, ymb = next(iter(iter_data(x, y, n_batch=3)))
    assert xmb.tolist() == [0, 1, 2] and ymb == ['0', '1', '2']


def test_iter_data_truncate_and_max_batches():
    x = np.arange(10)
    assert [b.tolist() for b in iter_data(x, n_batch=4, truncate=True)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [b.tolist() for b in iter_data(x, n_batch=3, max_batches=2)] == [[0, 1, 2], [3, 4, 5]]
    assert list(iter_data(x, n_batch=3, max_batches=0)) == []
    assert len(list(iter_data(x, n_batch=3, max_batches=10))) == 4
    assert list(iter_data(np.arange(0), n_batch=3)) == []


def test_iter_data_ends_without_runtime_error():
    gen = iter_data(np.arange(5), n_batch=2, max_batches=1)
    assert next(gen).tolist() == [0, 1]
    with pytest.raises(StopIteration):  # a plain end, not RuntimeError('generator raised StopIteration')
        next(gen)


def test_iter_data_checks_lengths_and_batch_size():
    with pytest.raises(ValueError, match='same length'):
        list(iter_data(np.arange(5), np.arange(4)))
    with pytest.raises(ValueError, match='n_batch'):
        list(iter_data(np.arange(5), n_batch=0))


def test_iter_data_verbose_writes_stderr_only(capsys, monkeypatch):
    import utils
    monkeypatch.setattr(utils, 'PROGRESS_INTERVAL_S', 0)  # stderr is no terminal here: a line at every update
    list(iter_data(np.arange(10), n_batch=3))
    captured = capsys.readouterr()
    assert captured.out == '' and captured.err == ''
    list(iter_data(np.arange(10), n_batch=3, verbose=True))
    captured = capsys.readouterr()
    assert captured.out == '' and captured.err != ''


def test_result_logger(tmp_path):
    path = tmp_path / 'new' / 'dir' / 'run.jsonl'
    t0 = time.time()
    with ResultLogger(str(path), desc='rocstories', lr=6.25e-5) as logger:
        logger.log(n_updates=np.int64(3), va_acc=np.float32(81.5), tr_cost=np.float64(0.25), arr=np.arange(2))
        # flushed: readable while the logger is still open
        lines = path.read_text(encoding='utf-8').splitlines()
        assert len(lines) == 2
        logger.log(n_updates=4, time=123.0)
    assert logger.f_log.closed
    records = [json.loads(line) for line in path.read_text(encoding='utf-8').splitlines()]
    assert records[0]['desc'] == 'rocstories' and records[0]['lr'] == 6.25e-5 and records[0]['time'] >= t0
    assert records[1] == {'n_updates': 3, 'va_acc': 81.5, 'tr_cost': 0.25, 'arr': [0, 1], 'time': records[1]['time']}
    assert records[2] == {'n_updates': 4, 'time': 123.0}


def test_result_logger_rejects_unserialisable(tmp_path):
    logger = ResultLogger(str(tmp_path / 'run.jsonl'))
    with pytest.raises(TypeError, match='ResultLogger'):
        logger.log(model=object())
    logger.close()


def test_make_path(tmp_path):
    f = str(tmp_path / 'a' / 'b' / 'c.txt')
    assert make_path(f) == f and (tmp_path / 'a' / 'b').is_dir()
    assert make_path(f) == f  # existing folder is fine
    assert make_path('plain.txt') == 'plain.txt'


def test_np_softmax():
    x = np.array([[1.0, 2.0, 3.0], [1000.0, 1000.0, 1000.0]])
    e = np.exp([1.0, 2.0, 3.0])
    np.testing.assert_allclose(np_softmax(x), [e / e.sum(), [1 / 3] * 3], rtol=1e-12)
    e2 = np.exp(np.array([1.0, 2.0, 3.0]) / 2)
    np.testing.assert_allclose(np_softmax(x, t=2)[0], e2 / e2.sum(), rtol=1e-12)


def test_flatten():
    assert flatten([[1, 2], [], [3]]) == [1, 2, 3]
    assert flatten([(1,), [2, [3]]]) == [1, 2, [3]]


def test_stsb_label_encoding_hand_computed():
    Y = stsb_label_encoding([0, 2.4, 5, 3.75, 4.999])
    expected = np.zeros((5, 6), dtype=np.float32)
    expected[0, 0] = 1
    expected[1, 2], expected[1, 3] = 0.6, 0.4
    expected[2, 5] = 1
    expected[3, 3], expected[3, 4] = 0.25, 0.75
    expected[4, 4], expected[4, 5] = 0.001, 0.999
    assert Y.dtype == np.float32 and Y.shape == (5, 6)
    np.testing.assert_allclose(Y, expected, atol=1e-6)
    np.testing.assert_allclose(stsb_label_encoding([1.5], nclass=3), [[0, 0.5, 0.5]])


def test_stsb_label_encoding_out_of_range():
    for bad in ([5.5], [-0.1], [float('nan')]):
        with pytest.raises(ValueError, match=r'\[0, 5\]'):
            stsb_label_encoding(bad)


LIMITED_LOG = """
import resource, sys
sys.path.insert(0, {root!r})
from utils import ResultLogger
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))  # a full disk after 1000 bytes
logger = ResultLogger({path!r}, desc='x')
try:
    for i in range(100):
        logger.log(n_updates=i, text='y' * 50)
except OSError as err:
    print(err)
"""


def test_a_log_on_a_full_disk_keeps_its_whole_lines_and_names_itself(tmp_path):
    """Real writes past RLIMIT_FSIZE: the line the kernel cuts short is removed again, the error is one line."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = tmp_path / 'log' / 'run.jsonl'
    out = subprocess.run([sys.executable, '-c', LIMITED_LOG.format(root=root, path=str(path))], capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.startswith(f'cannot write {path} (File too large): free space'), out.stderr
    lines = path.read_bytes().split(b'\n')
    assert lines[-1] == b'' and len(lines) > 5
    records = [json.loads(line) for line in lines[:-1]]  # every line whole
    assert [r['n_updates'] for r in records[1:]] == list(range(len(records) - 1))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 400), data=st.data(), seed=st.integers(0, 2 ** 32 - 1))
def test_train_test_indices_are_scikit_learns_split(n, data, seed):
    from sklearn.model_selection import train_test_split
    n_test = data.draw(st.integers(1, n - 1))
    train, test = train_test_indices(n, n_test, seed)
    expected_train, expected_test = train_test_split(list(range(n)), test_size=n_test, random_state=seed)
    assert train.tolist() == expected_train and test.tolist() == expected_test


def test_train_test_indices_refuse_a_split_that_holds_nothing_out_or_everything():
    for n_test in (0, 10, -1):
        with pytest.raises(ValueError, match='cannot hold out'):
            train_test_indices(10, n_test, 0)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 500), seed=st.integers(0, 2 ** 32 - 1))
def test_shuffled_indices_are_scikit_learns_shuffle(n, seed):
    from sklearn.utils import shuffle
    expected = shuffle(np.arange(n), random_state=np.random.RandomState(seed))
    assert shuffled_indices(n, np.random.RandomState(seed)).tolist() == expected.tolist()
