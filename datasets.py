"""ROCStories / Story Cloze Test 2016 reader and the original train/valid split (TF: datasets.py)."""
import csv
import os

import numpy as np

from utils import train_test_indices

seed = 3535999445  # the original's split seed

VAL_FILE = 'cloze_test_val__spring2016 - cloze_test_ALL_val.csv'
TEST_FILE = 'cloze_test_test__spring2016 - cloze_test_ALL_test.csv'
DATA_SOURCE = ('ROCStories comes from the Story Cloze Test 2016 val/test CSVs on the dataset\'s website '
               'https://cs.rochester.edu/nlp/rocstories/')
HEADER = ('InputStoryid', 'InputSentence1', 'InputSentence2', 'InputSentence3', 'InputSentence4',
          'RandomFifthSentenceQuiz1', 'RandomFifthSentenceQuiz2', 'AnswerRightEnding')


def _check_exists(path):
    """Raise FileNotFoundError naming the file, the folder searched and where the data comes from."""
    if not os.path.isfile(path):
        folder = os.path.dirname(path) or '.'
        raise FileNotFoundError(f'{os.path.basename(path)!r} not found in folder {folder!r}; {DATA_SOURCE}')


def _rocstories(path, require_labels=True):
    """Return (stories, endings1, endings2, labels) read from one Story Cloze CSV (TF: _rocstories).

    labels are AnswerRightEnding - 1; they are None for a file without the AnswerRightEnding column, which
    is accepted only when require_labels is False.
    """
    _check_exists(path)
    st, ct1, ct2, y = [], [], [], []
    # The original skipped the first line unchecked and trusted every row; here the header is checked and a
    # bad row raises with its line number, so no story is dropped or misread silently.
    try:
        with open(path, encoding='utf-8-sig', newline='') as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise ValueError(f'{path}: empty file, expected the header {",".join(HEADER)} and stories')
            header = tuple(name.strip() for name in header)
            if header == HEADER:
                n_fields = 8
            elif header == HEADER[:7] and not require_labels:
                n_fields = 7
            else:
                raise ValueError(f'{path}: line 1: header is {",".join(header)[:200]!r}, '
                                 f'expected {",".join(HEADER if require_labels else HEADER[:7])}')
            for line in reader:
                where = f'{path}: line {reader.line_num}'
                if len(line) != n_fields:
                    raise ValueError(f'{where}: {len(line)} fields, expected {n_fields} like the header')
                st.append(' '.join(line[1:5]))
                ct1.append(line[5])
                ct2.append(line[6])
                if n_fields == 8:
                    if line[7].strip() not in ('1', '2'):
                        raise ValueError(f'{where}: AnswerRightEnding is {line[7]!r}, expected 1 or 2')
                    y.append(int(line[7]) - 1)
    except UnicodeDecodeError as e:
        raise ValueError(f'{path}: not UTF-8 text ({e}); save the CSV as UTF-8') from None
    except csv.Error as e:
        raise ValueError(f'{path}: line {reader.line_num}: malformed CSV ({e})') from None
    if not st:
        raise ValueError(f'{path}: header only, no stories; {DATA_SOURCE}')
    return st, ct1, ct2, (y if n_fields == 8 else None)


def rocstories_test_labels(data_dir):
    """Return the test file's labels (AnswerRightEnding - 1) as an np.int32 array, or None when it has none."""
    return story_cloze(data_dir, 'test')[3]


def rocstories(data_dir, n_train=1497, n_valid=374, return_test_labels=False):
    """Return (trX1, trX2, trX3, trY), (vaX1, vaX2, vaX3, vaY), (teX1, teX2, teX3) (TF: rocstories).

    X1 are stories (the four sentences joined by spaces), X2 and X3 the two endings, Y the index of the
    right ending as np.int32. The validation CSV is split into train/valid exactly as the original does;
    n_train is accepted for compatibility and unused, as in the original (train is what valid leaves).
    With return_test_labels=True the third element is (teX1, teX2, teX3, teY), teY an np.int32 array or
    None when the test file has no AnswerRightEnding column.
    """
    _check_exists(os.path.join(data_dir, VAL_FILE))
    _check_exists(os.path.join(data_dir, TEST_FILE))
    storys, comps1, comps2, ys = _rocstories(os.path.join(data_dir, VAL_FILE))
    teX1, teX2, teX3, teY = _rocstories(os.path.join(data_dir, TEST_FILE), require_labels=False)
    # the original's train_test_split(storys, comps1, comps2, ys, test_size=n_valid, random_state=seed), index for
    # index, without importing scikit-learn
    try:
        train, valid = train_test_indices(len(storys), n_valid, seed)
    except ValueError as err:
        raise ValueError(f'{os.path.join(data_dir, VAL_FILE)}: --n_valid {n_valid}: {err}') from None
    trX1, trX2, trX3 = ([field[i] for i in train] for field in (storys, comps1, comps2))
    vaX1, vaX2, vaX3 = ([field[i] for i in valid] for field in (storys, comps1, comps2))
    trY = np.asarray([ys[i] for i in train], dtype=np.int32)
    vaY = np.asarray([ys[i] for i in valid], dtype=np.int32)
    if return_test_labels:
        teY = None if teY is None else np.asarray(teY, dtype=np.int32)
        return (trX1, trX2, trX3, trY), (vaX1, vaX2, vaX3, vaY), (teX1, teX2, teX3, teY)
    return (trX1, trX2, trX3, trY), (vaX1, vaX2, vaX3, vaY), (teX1, teX2, teX3)


STORY_CLOZE_SPLITS = {'val': VAL_FILE, 'test': TEST_FILE}


def story_cloze(data_dir, split):
    """Return (stories, endings1, endings2, labels) of a whole Story Cloze CSV: split 'val' (the file the original
    splits into train and valid) or 'test'; labels (the right ending's index, np.int32) are None for a test file
    without them."""
    if split not in STORY_CLOZE_SPLITS:
        raise ValueError(f'ROCStories has no split {split!r}: use {" or ".join(STORY_CLOZE_SPLITS)}')
    stories, endings1, endings2, labels = _rocstories(os.path.join(data_dir, STORY_CLOZE_SPLITS[split]),
                                                      require_labels=split == 'val')
    return stories, endings1, endings2, None if labels is None else np.asarray(labels, dtype=np.int32)
