"""Tests for datasets (TF: datasets.py): the original split, labels, bad-input errors."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.model_selection import train_test_split

from datasets import HEADER, TEST_FILE, VAL_FILE, _rocstories, rocstories, rocstories_test_labels

FIXTURES = Path(__file__).resolve().parent / 'fixtures'
ROOT = Path(__file__).resolve().parents[1]


def make_rows(n, prefix, seed=0):
    """n ROCStories rows: id, four sentences, two endings, label 1 or 2."""
    rng = np.random.RandomState(seed)
    return [[f'{prefix}-id{i}', f'{prefix} s1 {i}.', f'S2, "quoted" {i}.', f's3 {i}', f's4 {i}!',
             f'{prefix} ending one {i}', f'{prefix} ending two {i}', str(rng.randint(1, 3))] for i in range(n)]


def write_csv(path, rows, header=HEADER, encoding='utf-8'):
    with open(path, 'w', encoding=encoding, newline='') as f:
        writer = csv.writer(f)
        if header is not None:
            writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def data_dir(tmp_path):
    write_csv(tmp_path / VAL_FILE, make_rows(50, 'val', seed=1))
    write_csv(tmp_path / TEST_FILE, make_rows(20, 'test', seed=2))
    return tmp_path


def test_split_equals_original_train_test_split(data_dir):
    val = make_rows(50, 'val', seed=1)
    storys = [' '.join(r[1:5]) for r in val]
    c1, c2, ys = [r[5] for r in val], [r[6] for r in val], [int(r[7]) - 1 for r in val]
    expected = train_test_split(storys, c1, c2, ys, test_size=10, random_state=3535999445)
    (trX1, trX2, trX3, trY), (vaX1, vaX2, vaX3, vaY), te = rocstories(data_dir, n_valid=10)
    assert (trX1, vaX1, trX2, vaX2, trX3, vaX3) == tuple(expected[:6])
    assert trY.dtype == np.int32 and vaY.dtype == np.int32
    assert trY.tolist() == expected[6] and vaY.tolist() == expected[7]
    assert len(trX1) == 40 and len(vaX1) == 10
    assert trX1[0].count('.') >= 2 and ' S2, "quoted" ' in trX1[0]  # four sentences joined by single spaces
    test = make_rows(20, 'test', seed=2)
    assert len(te) == 3
    assert te == ([' '.join(r[1:5]) for r in test], [r[5] for r in test], [r[6] for r in test])


def test_matches_original_code(tmp_path):
    """The original datasets.rocstories (TF era) as oracle: its outputs recorded by make_oracle_fixtures.py."""
    with open(FIXTURES / 'original_datasets.json', encoding='ascii') as f:
        ref = json.load(f)
    for name, text in ((VAL_FILE, ref['val_csv']), (TEST_FILE, ref['test_csv'])):
        with open(tmp_path / name, 'w', encoding='utf-8', newline='') as f:
            f.write(text)
    train, valid, test = rocstories(str(tmp_path), n_valid=ref['n_valid'])
    for ours, theirs in ((train, ref['train']), (valid, ref['valid'])):
        assert list(ours[:3]) == theirs[:3]
        assert isinstance(ours[3], np.ndarray) and ours[3].dtype == ref['label_dtype']
        assert ours[3].tolist() == theirs[3]
    assert len(ref['train'][0]) == 45 and len(ref['valid'][0]) == 15
    assert list(test) == ref['test'] and all(type(field) is list for field in test)


def test_test_labels(data_dir):
    test_labels = [int(r[7]) - 1 for r in make_rows(20, 'test', seed=2)]
    *_, (teX1, teX2, teX3, teY) = rocstories(data_dir, n_valid=10, return_test_labels=True)
    assert teY.dtype == np.int32 and teY.tolist() == test_labels and len(teX1) == 20
    assert rocstories_test_labels(data_dir).tolist() == test_labels
    st_, c1, c2, y = _rocstories(data_dir / TEST_FILE)
    assert y == test_labels and len(st_) == len(c1) == len(c2) == 20


def test_unlabelled_test_file(data_dir):
    write_csv(data_dir / TEST_FILE, [r[:7] for r in make_rows(5, 'test')], header=HEADER[:7])
    *_, (teX1, teX2, teX3, teY) = rocstories(data_dir, n_valid=10, return_test_labels=True)
    assert teY is None and len(teX1) == 5
    assert rocstories_test_labels(data_dir) is None
    assert len(rocstories(data_dir, n_valid=10)[2]) == 3
    # the validation file needs its labels
    write_csv(data_dir / VAL_FILE, [r[:7] for r in make_rows(50, 'val')], header=HEADER[:7])
    with pytest.raises(ValueError, match='line 1: header'):
        rocstories(data_dir, n_valid=10)


def test_bom_and_crlf(data_dir):
    rows = make_rows(50, 'val', seed=1)
    plain = rocstories(data_dir, n_valid=10)
    write_csv(data_dir / VAL_FILE, rows, encoding='utf-8-sig')  # csv.writer ends lines with \r\n
    assert (data_dir / VAL_FILE).read_bytes().startswith(b'\xef\xbb\xbf')
    bom = rocstories(data_dir, n_valid=10)
    assert bom[0][:3] == plain[0][:3] and bom[0][3].tolist() == plain[0][3].tolist()


def test_unicode_and_multiline_fields(data_dir):
    rows = make_rows(50, 'val', seed=1)
    rows[3][1] = 'Crème brûlée, “quoted”\nover two lines.'
    write_csv(data_dir / VAL_FILE, rows)
    storys = _rocstories(data_dir / VAL_FILE)[0]
    assert storys[3].startswith('Crème brûlée, “quoted”\nover two lines. ')


@pytest.mark.parametrize('missing', [VAL_FILE, TEST_FILE])
def test_missing_file(data_dir, missing):
    (data_dir / missing).unlink()
    with pytest.raises(FileNotFoundError) as e:
        rocstories(data_dir)
    msg = str(e.value)
    assert missing in msg and str(data_dir) in msg and 'https://cs.rochester.edu/nlp/rocstories/' in msg
    assert 'Story Cloze Test 2016' in msg and '\n' not in msg


def bad_file_message(data_dir, rows, header=HEADER):
    write_csv(data_dir / VAL_FILE, rows, header=header)
    with pytest.raises(ValueError) as e:
        rocstories(data_dir, n_valid=2)
    msg = str(e.value)
    assert str(data_dir / VAL_FILE) in msg and '\n' not in msg
    return msg


def test_wrong_number_of_fields(data_dir):
    rows = make_rows(10, 'val')
    rows[4] = rows[4][:6]
    assert 'line 6: 6 fields, expected 8' in bad_file_message(data_dir, rows)
    rows = make_rows(10, 'val')
    rows[2] = rows[2] + ['extra']
    assert 'line 4: 9 fields' in bad_file_message(data_dir, rows)


def test_blank_line_is_an_error(data_dir):
    rows = make_rows(10, 'val')
    rows.insert(5, [])
    assert 'line 7: 0 fields' in bad_file_message(data_dir, rows)


@pytest.mark.parametrize('label', ['0', '3', 'x', '', '1.0', '-1'])
def test_bad_label(data_dir, label):
    rows = make_rows(10, 'val')
    rows[7][7] = label
    assert f"line 9: AnswerRightEnding is {label!r}, expected 1 or 2" in bad_file_message(data_dir, rows)


def test_line_numbers_count_multiline_records(data_dir):
    rows = make_rows(10, 'val')
    rows[1][2] = 'two\nlines'
    rows[5][7] = '9'
    assert 'line 8: AnswerRightEnding' in bad_file_message(data_dir, rows)


def test_empty_and_header_only(data_dir):
    (data_dir / VAL_FILE).write_bytes(b'')
    with pytest.raises(ValueError, match='empty file'):
        rocstories(data_dir)
    assert 'header only' in bad_file_message(data_dir, [])


def test_missing_or_wrong_header(data_dir):
    msg = bad_file_message(data_dir, make_rows(10, 'val'), header=None)  # first story taken for a header
    assert 'line 1: header' in msg and 'expected InputStoryid' in msg


def test_not_utf8(data_dir):
    rows = make_rows(10, 'val')
    rows[2][1] = 'caf\xe9'
    write_csv(data_dir / VAL_FILE, rows, encoding='latin-1')
    with pytest.raises(ValueError, match='not UTF-8'):
        rocstories(data_dir, n_valid=2)


FIELD = st.text(alphabet=st.characters(blacklist_categories=('Cs',), blacklist_characters='\x00'), max_size=12)
BAD_ROW = st.one_of(
    st.lists(FIELD, max_size=12).filter(lambda row: len(row) != 8),  # wrong number of fields
    st.tuples(st.lists(FIELD, min_size=7, max_size=7),
              FIELD.filter(lambda s: s.strip() not in ('1', '2'))).map(lambda t: t[0] + [t[1]]),  # bad label
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n_good=st.integers(0, 6), bad_row=BAD_ROW, n_after=st.integers(0, 3))
def test_random_malformed_row_gives_its_line(data_dir, n_good, bad_row, n_after):
    """One malformed row among good ones: a ValueError naming the file and the row's line, never a dataset."""
    good = make_rows(n_good + n_after, 'val')
    rows = good[:n_good] + [bad_row] + good[n_good:]
    path = write_csv(data_dir / VAL_FILE, rows)
    with open(path, encoding='utf-8', newline='') as f:  # the line the bad record ends on
        reader = csv.reader(f)
        for _ in range(n_good + 2):
            next(reader, None)
        bad_line = reader.line_num
    with pytest.raises(ValueError) as e:
        _rocstories(path)
    assert f'{path}: line {bad_line}: ' in str(e.value)


def test_the_rocstories_run_path_never_loads_scikit_learn_or_scipy(data_dir):
    """They take about 2 s to import: the split, the epoch's order and the accuracy are computed without them."""
    code = ('import sys, datasets, tasks, train\n'
            f'datasets.rocstories({str(data_dir)!r}, n_valid=10)\n'
            'train.epoch_order(40)\n'
            'tasks.metric("acc", [0, 1], [1, 1])\n'
            'print(sorted(m for m in ("sklearn", "scipy") if m in sys.modules))\n')
    proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == '[]'
