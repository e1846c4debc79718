"""Readers for the GPT-1 paper's other fine-tuning datasets (its Section 4 tasks), in their distribution layouts.

No TF counterpart: the original release had code for ROCStories only (datasets.py); these readers cover the
paper's natural language inference (MNLI, SNLI, QNLI, RTE, SciTail), question answering (RACE), semantic
similarity (MRPC, QQP, STS-B) and classification (CoLA, SST-2) datasets.

`read_task(name, data_dir)` returns {split: {'fields': (list, ...), 'labels': np.ndarray | None,
'groups': list | None, 'ids': list | None}} with the splits, fields and label ids below; SNLI splits also
carry 'dropped', the number of rows without a gold label ('-') left out.

  task     fields                          labels (class-id order = TASK_LABELS)     splits
  cola     (sentence,)                     '0' unacceptable, '1' acceptable          train, dev, test
  sst2     (sentence,)                     '0' negative, '1' positive                train, dev, test
  mrpc     (#1 String, #2 String)          '0', '1' (Quality)                        train, dev, test
  qqp      (question1, question2)          '0', '1' (is_duplicate)                   train, dev, test
  stsb     (sentence1, sentence2)          float32 score 0-5                         train, dev, test
  mnli     (sentence1, sentence2)          contradiction, entailment, neutral        train, dev_matched,
                                                                                     dev_mismatched, test_matched,
                                                                                     test_mismatched
  qnli     (question, sentence)            entailment, not_entailment                train, dev, test
  rte      (sentence1, sentence2)          entailment, not_entailment                train, dev, test
  snli     (sentence1, sentence2)          contradiction, entailment, neutral        train, dev, test
  scitail  (premise, hypothesis)           entails, neutral                          train, dev, test
  race     (article, question, options)    A, B, C, D; groups 'high' / 'middle'      train, dev, test

Layouts under data_dir (`expected_files(name)` lists them): GLUE as its download script unpacks it, one folder
per task (CoLA/, SST-2/, MRPC/, QQP/, STS-B/, MNLI/, QNLI/, RTE/), or data_dir may be that task folder itself;
SNLI snli_1.0/snli_1.0_{train,dev,test}.jsonl; SciTail SciTailV1.1/tsv_format/scitail_1.0_{train,dev,test}.tsv;
RACE RACE/{train,dev,test}/{high,middle}/*.txt. Each dataset's own folder (or SciTail's tsv_format) may be
given as data_dir too. GLUE test files have no labels (labels None) and carry the index column the leaderboard
numbers rows by ('ids'); SNLI, SciTail and RACE test files have labels. Every file is read as UTF-8 and every
malformed row raises a one-line ValueError naming the file and line: no row is dropped or misread silently,
except the SNLI rows without annotator consensus, which are dropped and counted, as is usual for SNLI.
"""
import json
import math
import os
import sys

import numpy as np

TASK_LABELS = {
    'cola': ('0', '1'),
    'sst2': ('0', '1'),
    'mrpc': ('0', '1'),
    'qqp': ('0', '1'),
    'stsb': None,
    'mnli': ('contradiction', 'entailment', 'neutral'),
    'qnli': ('entailment', 'not_entailment'),
    'rte': ('entailment', 'not_entailment'),
    'snli': ('contradiction', 'entailment', 'neutral'),
    'scitail': ('entails', 'neutral'),
    'race': ('A', 'B', 'C', 'D'),
}

GLUE_SOURCE = 'the GLUE data from https://gluebenchmark.com/tasks, as its download script unpacks it'
SOURCES = {
    'snli': 'SNLI 1.0 from https://nlp.stanford.edu/projects/snli/',
    'scitail': 'SciTail V1.1 from https://allenai.org/data/scitail',
    'race': 'RACE from https://www.cs.cmu.edu/~glai1/data/race/',
}
GLUE_SPLITS = (('train', 'train.tsv'), ('dev', 'dev.tsv'), ('test', 'test.tsv'))
MNLI_SPLITS = (('train', 'train.tsv'), ('dev_matched', 'dev_matched.tsv'), ('dev_mismatched', 'dev_mismatched.tsv'),
               ('test_matched', 'test_matched.tsv'), ('test_mismatched', 'test_mismatched.tsv'))
RACE_GROUPS = ('high', 'middle')

# task -> (display name, folder under data_dir, ((split, file in that folder), ...)); RACE's entries are folders
# of *.txt files, one per (split, group)
LAYOUTS = {
    'cola': ('CoLA', 'CoLA', GLUE_SPLITS),
    'sst2': ('SST-2', 'SST-2', GLUE_SPLITS),
    'mrpc': ('MRPC', 'MRPC', GLUE_SPLITS),
    'qqp': ('QQP', 'QQP', GLUE_SPLITS),
    'stsb': ('STS-B', 'STS-B', GLUE_SPLITS),
    'mnli': ('MNLI', 'MNLI', MNLI_SPLITS),
    'qnli': ('QNLI', 'QNLI', GLUE_SPLITS),
    'rte': ('RTE', 'RTE', GLUE_SPLITS),
    'snli': ('SNLI', 'snli_1.0', tuple((s, f'snli_1.0_{s}.jsonl') for s in ('train', 'dev', 'test'))),
    'scitail': ('SciTail', 'SciTailV1.1/tsv_format',
                tuple((s, f'scitail_1.0_{s}.tsv') for s in ('train', 'dev', 'test'))),
    'race': ('RACE', 'RACE', tuple((s, f'{s}/{g}/*.txt') for s in ('train', 'dev', 'test') for g in RACE_GROUPS)),
}

# GLUE task -> (text columns, label column, test files' id column), by header name; the label column is required
# in train/dev files and read from a test file only where its header has it
GLUE_COLUMNS = {
    'cola': (('sentence',), 'label', 'index'),
    'sst2': (('sentence',), 'label', 'index'),
    'mrpc': (('#1 String', '#2 String'), 'Quality', 'index'),
    'qqp': (('question1', 'question2'), 'is_duplicate', 'id'),
    'stsb': (('sentence1', 'sentence2'), 'score', 'index'),
    'mnli': (('sentence1', 'sentence2'), 'gold_label', 'index'),
    'qnli': (('question', 'sentence'), 'label', 'index'),
    'rte': (('sentence1', 'sentence2'), 'label', 'index'),
}
COLA_COLUMNS = ('source', 'label', 'label_mark', 'sentence')  # CoLA train/dev.tsv: no header row, these columns
SCITAIL_COLUMNS = ('premise', 'hypothesis', 'label')  # SciTail tsv_format: no header row
SNLI_KEYS = ('sentence1', 'sentence2', 'gold_label')
RACE_KEYS = ('article', 'questions', 'options', 'answers')


def _check_task(name):
    """Raise ValueError for a task name read_task does not know."""
    if name not in TASK_LABELS:
        raise ValueError(f'unknown task {name!r}; known tasks: {", ".join(TASK_LABELS)}')


def expected_files(name):
    """Return the paths, relative to data_dir, that read_task(name) reads ('RACE/train/high/*.txt' for RACE)."""
    _check_task(name)
    _, folder, files = LAYOUTS[name]
    return [f'{folder}/{rel}' for _, rel in files]


def _present(root, rel):
    """Return whether root holds rel: a file, or for a '*.txt' pattern a folder with at least one .txt file."""
    path = os.path.join(root, *rel.split('/'))
    if rel.endswith('/*.txt'):
        folder = os.path.dirname(path)
        return os.path.isdir(folder) and any(n.endswith('.txt') and os.path.isfile(os.path.join(folder, n))
                                             for n in os.listdir(folder))
    return os.path.isfile(path)


def _find_root(name, data_dir):
    """Return the folder holding every file of task name: data_dir/<folder>, or a folder inside it, or data_dir.

    Raise FileNotFoundError listing the expected files, each folder searched and what it lacks, and the source.
    """
    title, folder, files = LAYOUTS[name]
    rels = [rel for _, rel in files]
    parts = folder.split('/')
    # 'SciTailV1.1/tsv_format' is searched as data_dir/SciTailV1.1/tsv_format, data_dir/tsv_format, data_dir
    roots = [os.path.join(data_dir, *parts[k:]) for k in range(len(parts) + 1)]
    searched = []
    for root in roots:
        missing = [rel for rel in rels if not _present(root, rel)]
        if not missing:
            return root
        if not os.path.isdir(root):
            searched.append(f'{root!r} (no such folder)')
        elif len(missing) == len(rels):
            searched.append(f'{root!r} (none of them)')
        else:
            searched.append(f'{root!r} (missing {", ".join(missing)})')
    source = SOURCES.get(name, GLUE_SOURCE)
    raise FileNotFoundError(f'no {title} data in {os.fspath(data_dir)!r}: expected {", ".join(expected_files(name))} '
                            f'({source}; data_dir may also be the {" or ".join(parts)} folder); '
                            f'searched {", ".join(searched)}')


def _lines(path):
    """Yield (line number, text) of a UTF-8 file split at '\\n' only, without the line end; blank lines skipped."""
    # Bytes split at b'\n' give exact line numbers for decoding errors and keep a stray '\r' or U+2028 inside a
    # field from ending the row
    with open(path, 'rb') as f:
        for line_num, raw in enumerate(f, 1):
            try:
                line = raw.decode('utf-8')
            except UnicodeDecodeError as e:
                raise ValueError(f'{path}: line {line_num}: not UTF-8 text ({e}); save the file as UTF-8') from None
            if line_num == 1:
                line = line.removeprefix('\ufeff')  # GLUE's MRPC files keep the byte order mark of the source
            line = line.removesuffix('\n').removesuffix('\r')
            if line:
                yield line_num, line
    return


def _tsv_rows(path, columns=None):
    """Yield (header names, line number, fields) of a tab-separated file read with no quoting.

    columns names the columns of a file without a header row; otherwise the first line is the header. Every row
    must have as many fields as there are columns.
    """
    # GLUE TSVs hold unbalanced double quotes, so quotes are plain text (csv.QUOTE_NONE): a field is what lies
    # between tabs
    header = columns
    n_rows = 0
    for line_num, line in _lines(path):
        fields = line.split('\t')
        if header is None:
            header = tuple(name.strip() for name in fields)
            continue
        if len(fields) != len(header):
            kind = 'the header' if columns is None else ', '.join(columns)
            raise ValueError(f'{path}: line {line_num}: {len(fields)} tab-separated fields, expected {len(header)} '
                             f'like {kind} (quotes are text: a tab inside a field is not allowed)')
        n_rows += 1
        yield header, line_num, fields
    if header is None:
        raise ValueError(f'{path}: empty file, expected a header row and data rows')
    if n_rows == 0:
        raise ValueError(f'{path}: {"header only" if columns is None else "empty file"}, no data rows')
    return


def _positions(path, header, names):
    """Return the position of each of names in header, or raise ValueError naming the file and missing columns."""
    missing = [n for n in names if n not in header]
    if missing:
        raise ValueError(f'{path}: line 1: header lacks column {", ".join(map(repr, missing))}; '
                         f'it has {", ".join(header)[:300]}')
    return [header.index(n) for n in names]


def _label_id(where, column, value, labels):
    """Return the class id of value in labels, or raise ValueError with the bad value and the allowed ones."""
    value = value.strip()
    if value not in labels:
        raise ValueError(f'{where}: {column} is {value!r}, expected one of {", ".join(labels)}')
    return labels.index(value)


def _score(where, value):
    """Return an STS-B similarity score in [0, 5], or raise ValueError with the bad value."""
    try:
        score = float(value)
    except ValueError:
        score = math.nan
    if not 0.0 <= score <= 5.0:
        raise ValueError(f'{where}: score is {value!r}, expected a number from 0 to 5')
    return score


def _split(fields, labels, dtype, groups=None, ids=None):
    """Return one split's dict: fields a tuple of lists, labels an array of dtype (or None)."""
    labels = None if labels is None else np.asarray(labels, dtype=dtype)
    return {'fields': tuple(fields), 'labels': labels, 'groups': groups, 'ids': ids}


def _read_glue(name, path, split):
    """Return one split of a GLUE task read from its TSV, columns found by header name."""
    texts, label, id_column = GLUE_COLUMNS[name]
    is_test = split.startswith('test')
    headerless = name == 'cola' and not is_test
    fields = tuple([] for _ in texts)
    labels, ids = [], []
    positions, with_label = None, False
    for header, line_num, row in _tsv_rows(path, COLA_COLUMNS if headerless else None):
        if positions is None:
            with_label = not is_test or label in header
            names = list(texts) + ([label] if with_label else []) + ([id_column] if is_test else [])
            positions = _positions(path, header, names)
        for i, column in enumerate(fields):
            column.append(row[positions[i]])
        where = f'{path}: line {line_num}'
        if with_label:
            value = row[positions[len(texts)]]
            labels.append(_score(where, value) if name == 'stsb' else
                          _label_id(where, label, value, TASK_LABELS[name]))
        if is_test:
            ids.append(row[positions[-1]])
    return _split(fields, labels if with_label else None, np.float32 if name == 'stsb' else np.int64,
                  ids=ids if is_test else None)


def _read_snli(path):
    """Return one SNLI split read from its JSON lines, rows with gold_label '-' dropped and counted."""
    premises, hypotheses, labels = [], [], []
    dropped = 0
    for line_num, line in _lines(path):
        where = f'{path}: line {line_num}'
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f'{where}: malformed JSON ({e.msg} at column {e.colno}); '
                             f'expected one JSON object per line') from None
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in SNLI_KEYS):
            raise ValueError(f'{where}: expected a JSON object with string fields {", ".join(SNLI_KEYS)}')
        if row['gold_label'] == '-':  # no consensus among the annotators: no gold label to learn
            dropped += 1
            continue
        premises.append(row['sentence1'])
        hypotheses.append(row['sentence2'])
        labels.append(_label_id(where, 'gold_label', row['gold_label'], TASK_LABELS['snli']))
    print(f"{os.path.basename(path)}: dropped {dropped} rows without a gold label ('-')", file=sys.stderr)
    if not labels:
        raise ValueError(f'{path}: no rows with a gold label ({dropped} without one); expected SNLI JSON lines')
    split = _split((premises, hypotheses), labels, np.int64)
    split['dropped'] = dropped
    return split


def _read_scitail(path):
    """Return one SciTail split read from its headerless premise/hypothesis/label TSV."""
    premises, hypotheses, labels = [], [], []
    for _, line_num, (premise, hypothesis, label) in _tsv_rows(path, SCITAIL_COLUMNS):
        premises.append(premise)
        hypotheses.append(hypothesis)
        labels.append(_label_id(f'{path}: line {line_num}', 'label', label, TASK_LABELS['scitail']))
    return _split((premises, hypotheses), labels, np.int64)


def _read_race_file(path):
    """Return (article, questions, options, answer ids) of one RACE passage file, every list checked."""
    with open(path, 'rb') as f:
        raw = f.read()
    try:
        text = raw.decode('utf-8-sig')
    except UnicodeDecodeError as e:
        raise ValueError(f'{path}: not UTF-8 text ({e}); save the file as UTF-8') from None
    if not text.strip():
        raise ValueError(f'{path}: empty file, expected one RACE JSON object')
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f'{path}: line {e.lineno}: malformed JSON ({e.msg} at column {e.colno}); '
                         f'expected one RACE JSON object') from None
    if not isinstance(obj, dict) or any(k not in obj for k in RACE_KEYS):
        raise ValueError(f'{path}: expected a JSON object with keys {", ".join(RACE_KEYS)}')
    article, questions, options, answers = (obj[k] for k in RACE_KEYS)
    if not isinstance(article, str) or not all(isinstance(v, list) for v in (questions, options, answers)):
        raise ValueError(f'{path}: expected article a string and questions, options, answers lists')
    if not questions or not len(questions) == len(options) == len(answers):
        raise ValueError(f'{path}: {len(questions)} questions, {len(options)} option lists, {len(answers)} answers; '
                         f'expected one option list and one answer per question, at least one question')
    label_ids = []
    for i, (question, opts, answer) in enumerate(zip(questions, options, answers), 1):
        if not isinstance(question, str):
            raise ValueError(f'{path}: question {i} is {question!r}, expected a string')
        if not isinstance(opts, list) or len(opts) != 4 or not all(isinstance(o, str) for o in opts):
            raise ValueError(f'{path}: question {i}: options are {opts!r}, expected a list of 4 strings (A-D)')
        label_ids.append(_label_id(f'{path}: question {i}', 'answer', str(answer), TASK_LABELS['race']))
    return article, questions, [list(o) for o in options], label_ids


def _read_race(root, split):
    """Return one RACE split: one example per question, files in sorted order, high school then middle school."""
    articles, questions, options, labels, groups = [], [], [], [], []
    for group in RACE_GROUPS:
        folder = os.path.join(root, split, group)
        for file_name in sorted(os.listdir(folder)):
            path = os.path.join(folder, file_name)
            if not file_name.endswith('.txt') or not os.path.isfile(path):
                continue
            article, qs, opts, ys = _read_race_file(path)
            articles += [article] * len(qs)
            questions += qs
            options += opts
            labels += ys
            groups += [group] * len(qs)
    return _split((articles, questions, options), labels, np.int64, groups=groups)


def read_task(name, data_dir):
    """Return {split: {'fields', 'labels', 'groups', 'ids'}} of task name read from its files under data_dir."""
    _check_task(name)
    root = _find_root(name, data_dir)
    _, _, files = LAYOUTS[name]
    if name == 'race':
        return {split: _read_race(root, split) for split in dict.fromkeys(split for split, _ in files)}
    paths = {split: os.path.join(root, *rel.split('/')) for split, rel in files}
    if name == 'snli':
        return {split: _read_snli(path) for split, path in paths.items()}
    if name == 'scitail':
        return {split: _read_scitail(path) for split, path in paths.items()}
    return {split: _read_glue(name, path, split) for split, path in paths.items()}


# The Definite Pronoun Resolution data (Rahman & Ng 2012, the GPT-1 paper's Winograd set for its zero-shot
# heuristics): train.c.txt and test.c.txt, records of four lines (sentence, pronoun, 'candidate 1,candidate 2', the
# right candidate) each followed by a blank line
DPRD_SOURCE = 'the Definite Pronoun Resolution data from http://www.hlt.utdallas.edu/~vince/data/emnlp12/'
DPRD_FILES = {'train': 'train.c.txt', 'test': 'test.c.txt'}


def read_dprd_file(path):
    """Return (sentences, pronouns, [(candidate 1, candidate 2)], labels as an int64 array: 0 or 1) of one DPRD file;
    a malformed record is a ValueError naming the file and line."""
    sentences, pronouns, candidates, labels = [], [], [], []
    record, first = [], None
    with open(path, 'rb') as f:
        raw_lines = f.read().split(b'\n')
    for line_num, raw in enumerate(raw_lines + [b''], 1):
        try:
            line = raw.decode('utf-8').removesuffix('\r').strip()
        except UnicodeDecodeError as e:
            raise ValueError(f'{path}: line {line_num}: not UTF-8 text ({e}); save the file as UTF-8') from None
        if line:
            first = line_num if not record else first
            record.append(line)
            continue
        if not record:
            continue
        where = f'{path}: line {first}'
        if len(record) != 4:
            raise ValueError(f'{where}: a record of {len(record)} lines, expected 4 (sentence, pronoun, '
                             f'"candidate 1,candidate 2", answer) then a blank line')
        sentence, pronoun, pair, answer = record
        cands = tuple(c.strip() for c in pair.split(','))
        if len(cands) != 2 or not all(cands):
            raise ValueError(f'{path}: line {first + 2}: candidates {pair!r}, expected two separated by one comma')
        if answer not in cands:
            raise ValueError(f'{path}: line {first + 3}: the answer {answer!r} is neither candidate {cands[0]!r} nor '
                             f'{cands[1]!r}')
        sentences.append(sentence)
        pronouns.append(pronoun)
        candidates.append(cands)
        labels.append(cands.index(answer))
        record = []
    if not sentences:
        raise ValueError(f'{path}: no records; expected DPRD records (sentence, pronoun, candidates, answer, blank '
                         f'line)')
    return sentences, pronouns, candidates, np.asarray(labels, dtype=np.int64)


def read_dprd(data_dir, split):
    """Return read_dprd_file of split ('train' or 'test') under data_dir (or its DPRD/ folder)."""
    if split not in DPRD_FILES:
        raise ValueError(f'DPRD has no split {split!r}: use {" or ".join(DPRD_FILES)}')
    for folder in (data_dir, os.path.join(data_dir, 'DPRD')):
        path = os.path.join(folder, DPRD_FILES[split])
        if os.path.isfile(path):
            return read_dprd_file(path)
    raise FileNotFoundError(f'no {DPRD_FILES[split]} in {os.fspath(data_dir)!r} or its DPRD/ folder ({DPRD_SOURCE})')
