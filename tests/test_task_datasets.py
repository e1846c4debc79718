"""Tests for task_datasets (no TF counterpart): each dataset's layout, fields, labels, ids and bad-input errors."""
import json
import os
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from task_datasets import TASK_LABELS, expected_files, read_task

QUOTE = 'He said "stop and left.'  # a stray double quote: read as text only with quoting off
UNI = 'Café naïve façade — ünïcode ✓.'


def esc(path):
    """Return path as a regular expression matching it literally."""
    return re.escape(str(path))


def write(path, lines, ending='\n', bom=False):
    """Write lines (lists of fields are tab-joined) as UTF-8 text to path, creating its folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = ''.join(('\t'.join(line) if isinstance(line, (list, tuple)) else line) + ending for line in lines)
    path.write_bytes(('\ufeff' if bom else '').encode('utf-8') + text.encode('utf-8'))
    return path


MNLI_HEAD = ['index', 'promptID', 'pairID', 'genre', 'sentence1_binary_parse', 'sentence2_binary_parse',
             'sentence1_parse', 'sentence2_parse', 'sentence1', 'sentence2']
STSB_HEAD = ['index', 'genre', 'filename', 'year', 'old_index', 'source1', 'source2', 'sentence1', 'sentence2']


def mnli_row(i, s1, s2, *labels):
    return [str(i), f'p{i}', f'{i}e', 'fiction', '( x )', '( y )', '(ROOT x)', '(ROOT y)', s1, s2, *labels]


def stsb_row(i, s1, s2, *score):
    return [str(i), 'main-news', 'MSRvid', '2012test', f'00{i}', 'none', 'none', s1, s2, *score]


# task -> ({file under the task folder: lines}, {split: (fields, label ids or scores, ids)}); distractor columns
# (IDs, label marks, label1..label5) hold values that would show up if a column were read by the wrong position
GLUE = {
    'cola': ({
        'train.tsv': [['gj04', '1', '', QUOTE], ['gj04', '0', '*', UNI], ['cj99', '1', '', 'Fine.']],
        'dev.tsv': [['bc01', '0', '*', 'Bad it.']],
        'test.tsv': [['index', 'sentence'], ['0', QUOTE], ['1', UNI]],
    }, {
        'train': (([QUOTE, UNI, 'Fine.'],), [1, 0, 1], None),
        'dev': ((['Bad it.'],), [0], None),
        'test': (([QUOTE, UNI],), None, ['0', '1']),
    }),
    'sst2': ({
        'train.tsv': [['sentence', 'label'], [QUOTE, '0'], [UNI, '1']],
        'dev.tsv': [['sentence', 'label'], ['good film ', '1']],
        'test.tsv': [['index', 'sentence'], ['0', UNI], ['1', QUOTE], ['2', 'meh']],
    }, {
        'train': (([QUOTE, UNI],), [0, 1], None),
        'dev': ((['good film '],), [1], None),
        'test': (([UNI, QUOTE, 'meh'],), None, ['0', '1', '2']),
    }),
    'mrpc': ({
        'train.tsv': [['Quality', '#1 ID', '#2 ID', '#1 String', '#2 String'],
                      ['1', '702876', '702977', QUOTE, UNI], ['0', '2108705', '2108831', 'a b', 'c d']],
        'dev.tsv': [['Quality', '#1 ID', '#2 ID', '#1 String', '#2 String'], ['1', '1', '2', 'x', 'y']],
        'test.tsv': [['index', '#1 ID', '#2 ID', '#1 String', '#2 String'], ['0', '11', '12', UNI, QUOTE]],
    }, {
        'train': (([QUOTE, 'a b'], [UNI, 'c d']), [1, 0], None),
        'dev': ((['x'], ['y']), [1], None),
        'test': (([UNI], [QUOTE]), None, ['0']),
    }),
    'qqp': ({
        'train.tsv': [['id', 'qid1', 'qid2', 'question1', 'question2', 'is_duplicate'],
                      ['133273', '213221', '213222', QUOTE, UNI, '0'], ['402555', '536040', '536041', 'q?', 'r?', '1']],
        'dev.tsv': [['id', 'qid1', 'qid2', 'question1', 'question2', 'is_duplicate'], ['7', '8', '9', 'u?', 'v?', '1']],
        'test.tsv': [['id', 'question1', 'question2'], ['0', UNI, QUOTE], ['1', 'w?', 'z?']],
    }, {
        'train': (([QUOTE, 'q?'], [UNI, 'r?']), [0, 1], None),
        'dev': ((['u?'], ['v?']), [1], None),
        'test': (([UNI, 'w?'], [QUOTE, 'z?']), None, ['0', '1']),
    }),
    'stsb': ({
        'train.tsv': [STSB_HEAD + ['score'], stsb_row(0, QUOTE, UNI, '5.000'), stsb_row(1, 'a', 'b', '3.800')],
        'dev.tsv': [STSB_HEAD + ['score'], stsb_row(0, 'c', 'd', '0.000')],
        'test.tsv': [STSB_HEAD, stsb_row(0, UNI, QUOTE), stsb_row(1, 'e', 'f')],
    }, {
        'train': (([QUOTE, 'a'], [UNI, 'b']), [5.0, 3.8], None),
        'dev': ((['c'], ['d']), [0.0], None),
        'test': (([UNI, 'e'], [QUOTE, 'f']), None, ['0', '1']),
    }),
    'mnli': ({
        'train.tsv': [MNLI_HEAD + ['label1', 'gold_label'], mnli_row(0, QUOTE, UNI, 'neutral', 'entailment'),
                      mnli_row(1, 'p', 'h', 'neutral', 'contradiction'), mnli_row(2, 'p2', 'h2', 'x', 'neutral')],
        'dev_matched.tsv': [MNLI_HEAD + [f'label{i}' for i in range(1, 6)] + ['gold_label'],
                            mnli_row(0, 'm', 'n', *['neutral'] * 5, 'contradiction')],
        'dev_mismatched.tsv': [MNLI_HEAD + [f'label{i}' for i in range(1, 6)] + ['gold_label'],
                               mnli_row(0, 'mm', 'nn', *['contradiction'] * 5, 'entailment')],
        'test_matched.tsv': [MNLI_HEAD, mnli_row(0, UNI, QUOTE), mnli_row(1, 't', 'u')],
        'test_mismatched.tsv': [MNLI_HEAD, mnli_row(9796, 'v', 'w')],
    }, {
        'train': (([QUOTE, 'p', 'p2'], [UNI, 'h', 'h2']), [1, 0, 2], None),
        'dev_matched': ((['m'], ['n']), [0], None),
        'dev_mismatched': ((['mm'], ['nn']), [1], None),
        'test_matched': (([UNI, 't'], [QUOTE, 'u']), None, ['0', '1']),
        'test_mismatched': ((['v'], ['w']), None, ['9796']),
    }),
    'qnli': ({
        'train.tsv': [['index', 'question', 'sentence', 'label'], ['0', QUOTE, UNI, 'not_entailment'],
                      ['1', 'Who?', 'Him.', 'entailment']],
        'dev.tsv': [['index', 'question', 'sentence', 'label'], ['0', 'Why?', 'So.', 'entailment']],
        'test.tsv': [['index', 'question', 'sentence'], ['0', UNI, QUOTE]],
    }, {
        'train': (([QUOTE, 'Who?'], [UNI, 'Him.']), [1, 0], None),
        'dev': ((['Why?'], ['So.']), [0], None),
        'test': (([UNI], [QUOTE]), None, ['0']),
    }),
    'rte': ({
        'train.tsv': [['index', 'sentence1', 'sentence2', 'label'], ['0', QUOTE, UNI, 'entailment'],
                      ['1', 'A.', 'B.', 'not_entailment']],
        'dev.tsv': [['index', 'sentence1', 'sentence2', 'label'], ['0', 'C.', 'D.', 'not_entailment']],
        'test.tsv': [['index', 'sentence1', 'sentence2'], ['0', UNI, QUOTE], ['1', 'E.', 'F.']],
    }, {
        'train': (([QUOTE, 'A.'], [UNI, 'B.']), [0, 1], None),
        'dev': ((['C.'], ['D.']), [1], None),
        'test': (([UNI, 'E.'], [QUOTE, 'F.']), None, ['0', '1']),
    }),
}
FOLDERS = {'cola': 'CoLA', 'sst2': 'SST-2', 'mrpc': 'MRPC', 'qqp': 'QQP', 'stsb': 'STS-B', 'mnli': 'MNLI',
           'qnli': 'QNLI', 'rte': 'RTE'}


def write_glue(data_dir, name, **changes):
    """Write task name's synthetic GLUE files under data_dir/<folder>, files in changes replacing the defaults."""
    files = dict(GLUE[name][0], **changes)
    for file_name, lines in files.items():
        write(data_dir / FOLDERS[name] / file_name, lines)
    return data_dir / FOLDERS[name]


def assert_split(split, fields, labels, ids=None, groups=None, dtype=np.int64):
    assert split['fields'] == fields and isinstance(split['fields'], tuple)
    assert all(isinstance(f, list) for f in split['fields'])
    if labels is None:
        assert split['labels'] is None
    else:
        assert split['labels'].dtype == dtype
        np.testing.assert_array_equal(split['labels'], np.asarray(labels, dtype=dtype))
    assert split['ids'] == ids
    assert split['groups'] == groups


@pytest.mark.parametrize('name', sorted(GLUE))
def test_glue_task_reads_fields_labels_ids(tmp_path, name):
    write_glue(tmp_path, name)
    data = read_task(name, tmp_path)
    expected = GLUE[name][1]
    assert list(data) == list(expected)
    for split, (fields, labels, ids) in expected.items():
        assert set(data[split]) == {'fields', 'labels', 'groups', 'ids'}
        assert_split(data[split], fields, labels, ids, dtype=np.float32 if name == 'stsb' else np.int64)
    assert expected_files(name) == [f'{FOLDERS[name]}/{f}' for f in GLUE[name][0]]


@pytest.mark.parametrize('name', sorted(GLUE))
def test_glue_task_folder_accepted_as_data_dir(tmp_path, name):
    folder = write_glue(tmp_path / 'glue', name)
    by_task_folder, by_glue_folder = read_task(name, folder), read_task(name, str(tmp_path / 'glue'))
    assert list(by_task_folder) == list(by_glue_folder)
    for split in by_glue_folder:
        assert by_task_folder[split]['fields'] == by_glue_folder[split]['fields']


def test_glue_columns_read_by_header_name(tmp_path):
    shuffled = [['label', 'sentence2', 'index', 'sentence1'], ['entailment', 'second', '0', 'first'],
                ['not_entailment', 'fourth', '1', 'third']]
    write_glue(tmp_path, 'rte', **{'train.tsv': shuffled, 'test.tsv': [['sentence2', 'sentence1', 'index'],
                                                                         ['b', 'a', '42']]})
    data = read_task('rte', tmp_path)
    assert_split(data['train'], (['first', 'third'], ['second', 'fourth']), [0, 1])
    assert_split(data['test'], (['a'], ['b']), None, ids=['42'])


def test_labelled_glue_test_file_gives_labels(tmp_path):
    test = [['index', 'question', 'sentence', 'label'], ['7', 'q', 's', 'not_entailment']]
    write_glue(tmp_path, 'qnli', **{'test.tsv': test})
    assert_split(read_task('qnli', tmp_path)['test'], (['q'], ['s']), [1], ids=['7'])


def test_crlf_bom_and_blank_lines(tmp_path):
    folder = write_glue(tmp_path, 'mrpc')
    lines = GLUE['mrpc'][0]['train.tsv']
    write(folder / 'train.tsv', lines[:2] + [''] + lines[2:] + [''], ending='\r\n', bom=True)
    assert_split(read_task('mrpc', tmp_path)['train'], ([QUOTE, 'a b'], [UNI, 'c d']), [1, 0])


def test_line_separators_inside_fields_stay_text(tmp_path):
    odd = 'a\rb\x85c\u2028d\x0ce'  # Python's str.splitlines would cut this in five
    write_glue(tmp_path, 'sst2', **{'dev.tsv': [['sentence', 'label'], [odd, '1']]})
    assert read_task('sst2', tmp_path)['dev']['fields'] == ([odd],)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.text(st.characters(blacklist_categories=('Cs',), blacklist_characters='\t\n'),
                              max_size=20), min_size=1, max_size=5),
       labels=st.lists(st.sampled_from(['0', '1']), min_size=5, max_size=5))
def test_glue_text_round_trips(tmp_path, texts, labels):
    """Any tab- and newline-free text, quotes included, is read back exactly (quoting off)."""
    rows = [['sentence', 'label']] + [[t, y] for t, y in zip(texts, labels)]
    write_glue(tmp_path, 'sst2', **{'train.tsv': rows})
    train = read_task('sst2', tmp_path)['train']
    assert train['fields'] == (texts,)
    assert train['labels'].tolist() == [int(y) for y in labels[:len(texts)]]


def test_unknown_task():
    with pytest.raises(ValueError, match=r"unknown task 'glue'; known tasks: cola, sst2, mrpc, .*race"):
        read_task('glue', '.')
    with pytest.raises(ValueError, match='unknown task'):
        expected_files('squad')


def test_task_labels():
    assert TASK_LABELS['mnli'] == TASK_LABELS['snli'] == ('contradiction', 'entailment', 'neutral')
    assert TASK_LABELS['qnli'] == TASK_LABELS['rte'] == ('entailment', 'not_entailment')
    assert TASK_LABELS['scitail'] == ('entails', 'neutral') and TASK_LABELS['race'] == ('A', 'B', 'C', 'D')
    assert TASK_LABELS['stsb'] is None
    assert all(TASK_LABELS[t] == ('0', '1') for t in ('cola', 'sst2', 'mrpc', 'qqp'))
    assert sorted(TASK_LABELS) == sorted(list(GLUE) + ['snli', 'scitail', 'race'])


def test_missing_glue_files_listed(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        read_task('mnli', tmp_path)
    msg = str(e.value)
    assert msg.startswith(f'no MNLI data in {str(tmp_path)!r}: expected MNLI/train.tsv, MNLI/dev_matched.tsv, '
                          'MNLI/dev_mismatched.tsv, MNLI/test_matched.tsv, MNLI/test_mismatched.tsv (')
    assert 'https://gluebenchmark.com/tasks' in msg
    assert f"{os.path.join(str(tmp_path), 'MNLI')!r} (no such folder)" in msg
    assert f'{str(tmp_path)!r} (none of them)' in msg


def test_partial_glue_folder_names_missing_files(tmp_path):
    write(tmp_path / 'MNLI' / 'train.tsv', GLUE['mnli'][0]['train.tsv'])
    write(tmp_path / 'MNLI' / 'dev_matched.tsv', GLUE['mnli'][0]['dev_matched.tsv'])
    with pytest.raises(FileNotFoundError, match=r'\(missing dev_mismatched.tsv, test_matched.tsv, '
                                                r'test_mismatched.tsv\)'):
        read_task('mnli', tmp_path)


@pytest.mark.parametrize('name, source', [('snli', 'https://nlp.stanford.edu/projects/snli/'),
                                          ('scitail', 'https://allenai.org/data/scitail'),
                                          ('race', 'https://www.cs.cmu.edu/~glai1/data/race/')])
def test_missing_files_name_the_source(tmp_path, name, source):
    with pytest.raises(FileNotFoundError) as e:
        read_task(name, tmp_path / 'nowhere')
    assert source in str(e.value)
    assert ', '.join(expected_files(name)) in str(e.value)


def test_wrong_field_count_names_file_and_line(tmp_path):
    bad = GLUE['rte'][0]['train.tsv'] + [['2', 'only two fields']]
    path = write_glue(tmp_path, 'rte', **{'train.tsv': bad}) / 'train.tsv'
    with pytest.raises(ValueError, match=rf'^{esc(path)}: line 4: 2 tab-separated fields, expected 4 like the header'):
        read_task('rte', tmp_path)


def test_headerless_wrong_field_count(tmp_path):
    bad = [['gj04', '1', '', 'ok'], ['gj04', '1', '', 'a\ttab inside']]
    path = write_glue(tmp_path, 'cola', **{'dev.tsv': bad}) / 'dev.tsv'
    with pytest.raises(ValueError, match=rf'^{esc(path)}: line 2: 5 tab-separated fields, expected 4 like source, label'):
        read_task('cola', tmp_path)


def test_bad_label_names_file_line_value_and_allowed(tmp_path):
    bad = [['index', 'question', 'sentence', 'label'], ['0', 'q', 's', 'entailment'], ['1', 'q', 's', 'maybe']]
    path = write_glue(tmp_path, 'qnli', **{'dev.tsv': bad}) / 'dev.tsv'
    with pytest.raises(ValueError, match=rf"^{esc(path)}: line 3: label is 'maybe', expected one of entailment, "
                                         r"not_entailment$"):
        read_task('qnli', tmp_path)


def test_mnli_no_consensus_label_is_an_error(tmp_path):
    bad = GLUE['mnli'][0]['dev_matched.tsv'] + [mnli_row(1, 'a', 'b', *['neutral'] * 5, '-')]
    write_glue(tmp_path, 'mnli', **{'dev_matched.tsv': bad})
    with pytest.raises(ValueError, match=r"dev_matched.tsv: line 3: gold_label is '-', expected one of contradiction"):
        read_task('mnli', tmp_path)


@pytest.mark.parametrize('score', ['5.5', '-0.1', 'high', 'nan', ''])
def test_stsb_bad_score(tmp_path, score):
    bad = GLUE['stsb'][0]['dev.tsv'] + [stsb_row(1, 'a', 'b', score)]
    write_glue(tmp_path, 'stsb', **{'dev.tsv': bad})
    with pytest.raises(ValueError, match=rf"dev.tsv: line 3: score is '{score}', expected a number from 0 to 5"):
        read_task('stsb', tmp_path)


def test_missing_column_named(tmp_path):
    path = write_glue(tmp_path, 'sst2', **{'train.tsv': [['text', 'label'], ['a', '1']]}) / 'train.tsv'
    with pytest.raises(ValueError, match=rf"^{esc(path)}: line 1: header lacks column 'sentence'; it has text, label"):
        read_task('sst2', tmp_path)
    path = write_glue(tmp_path, 'sst2', **{'test.tsv': [['id', 'sentence'], ['0', 'a']]}) / 'test.tsv'
    with pytest.raises(ValueError, match=rf"^{esc(path)}: line 1: header lacks column 'index'"):
        read_task('sst2', tmp_path)


@pytest.mark.parametrize('lines, message', [([], 'empty file'), ([['sentence', 'label']], 'header only'),
                                            (['', ''], 'empty file')])
def test_empty_or_header_only_file(tmp_path, lines, message):
    path = write_glue(tmp_path, 'sst2', **{'dev.tsv': lines}) / 'dev.tsv'
    with pytest.raises(ValueError, match=rf'^{esc(path)}: {message}'):
        read_task('sst2', tmp_path)


def test_empty_headerless_file(tmp_path):
    path = write_glue(tmp_path, 'cola', **{'train.tsv': []}) / 'train.tsv'
    with pytest.raises(ValueError, match=rf'^{esc(path)}: empty file, no data rows'):
        read_task('cola', tmp_path)


def test_not_utf8_names_line(tmp_path):
    path = write_glue(tmp_path, 'sst2') / 'dev.tsv'
    path.write_bytes(b'sentence\tlabel\nok\t1\ncaf\xe9\t0\n')
    with pytest.raises(ValueError, match=rf'^{esc(path)}: line 3: not UTF-8 text'):
        read_task('sst2', tmp_path)


# SNLI

def snli_line(s1, s2, gold, **extra):
    return json.dumps(dict(annotator_labels=['neutral'], captionID='x#0', gold_label=gold, pairID='x#0r1n',
                           sentence1=s1, sentence1_binary_parse='( a b )', sentence2=s2, **extra), ensure_ascii=False)


SNLI = {
    'train': [snli_line(QUOTE, UNI, 'neutral'), snli_line('a', 'b', '-'), snli_line('c', 'd', 'contradiction'),
              snli_line('e', 'f', '-'), snli_line('g', 'h', 'entailment')],
    'dev': [snli_line('i', 'j', 'entailment')],
    'test': [snli_line('k', 'l', '-'), snli_line(UNI, QUOTE, 'contradiction')],
}


def write_snli(folder, **changes):
    for split, lines in dict(SNLI, **changes).items():
        write(folder / f'snli_1.0_{split}.jsonl', lines)
    return folder


@pytest.mark.parametrize('sub', ['snli_1.0', ''])
def test_snli(tmp_path, capsys, sub):
    write_snli(tmp_path / sub if sub else tmp_path)
    data = read_task('snli', tmp_path)
    assert list(data) == ['train', 'dev', 'test']
    assert_split({k: v for k, v in data['train'].items() if k != 'dropped'}, ([QUOTE, 'c', 'g'], [UNI, 'd', 'h']),
                 [2, 0, 1])
    assert_split({k: v for k, v in data['test'].items() if k != 'dropped'}, ([UNI], [QUOTE]), [0])
    assert [data[s]['dropped'] for s in data] == [2, 0, 1]
    assert capsys.readouterr().err.splitlines() == [
        "snli_1.0_train.jsonl: dropped 2 rows without a gold label ('-')",
        "snli_1.0_dev.jsonl: dropped 0 rows without a gold label ('-')",
        "snli_1.0_test.jsonl: dropped 1 rows without a gold label ('-')"]
    assert expected_files('snli') == ['snli_1.0/snli_1.0_train.jsonl', 'snli_1.0/snli_1.0_dev.jsonl',
                                      'snli_1.0/snli_1.0_test.jsonl']


def test_snli_malformed_json_line(tmp_path):
    folder = write_snli(tmp_path, dev=[snli_line('i', 'j', 'entailment'), '{"sentence1": "a", '])
    with pytest.raises(ValueError, match=rf'^{esc(folder / "snli_1.0_dev.jsonl")}: line 2: malformed JSON'):
        read_task('snli', tmp_path)


def test_snli_bad_gold_label_and_missing_key(tmp_path):
    write_snli(tmp_path, test=[snli_line('a', 'b', 'neutral'), snli_line('a', 'b', 'entails')])
    with pytest.raises(ValueError, match=r"snli_1.0_test.jsonl: line 2: gold_label is 'entails', expected one of "
                                         r"contradiction, entailment, neutral"):
        read_task('snli', tmp_path)
    write_snli(tmp_path, test=[json.dumps({'sentence1': 'a', 'gold_label': 'neutral'})])
    with pytest.raises(ValueError, match=r'snli_1.0_test.jsonl: line 1: expected a JSON object with string fields '
                                         r'sentence1, sentence2, gold_label'):
        read_task('snli', tmp_path)


def test_snli_all_rows_dropped_is_an_error(tmp_path):
    write_snli(tmp_path, dev=[snli_line('a', 'b', '-')])
    with pytest.raises(ValueError, match=r'snli_1.0_dev.jsonl: no rows with a gold label \(1 without one\)'):
        read_task('snli', tmp_path)


# SciTail

SCITAIL = {
    'train': [[QUOTE, UNI, 'entails'], ['p', 'h', 'neutral']],
    'dev': [['p2', 'h2', 'neutral']],
    'test': [[UNI, QUOTE, 'neutral'], ['p3', 'h3', 'entails']],
}


def write_scitail(folder, **changes):
    for split, lines in dict(SCITAIL, **changes).items():
        write(folder / f'scitail_1.0_{split}.tsv', lines)
    return folder


@pytest.mark.parametrize('sub', ['SciTailV1.1/tsv_format', 'tsv_format', ''])
def test_scitail(tmp_path, sub):
    write_scitail(tmp_path / sub if sub else tmp_path)
    root = tmp_path / 'SciTailV1.1' if sub.startswith('SciTail') else tmp_path
    data = read_task('scitail', root)
    assert list(data) == ['train', 'dev', 'test']
    assert_split(data['train'], ([QUOTE, 'p'], [UNI, 'h']), [0, 1])
    assert_split(data['dev'], (['p2'], ['h2']), [1])
    assert_split(data['test'], ([UNI, 'p3'], [QUOTE, 'h3']), [1, 0])
    if sub.startswith('SciTail'):
        assert read_task('scitail', tmp_path)['test']['fields'] == data['test']['fields']


def test_scitail_errors(tmp_path):
    folder = write_scitail(tmp_path, dev=[['p', 'h', 'neutral'], ['p', 'h', 'contradiction']])
    with pytest.raises(ValueError, match=rf"^{esc(folder / 'scitail_1.0_dev.tsv')}: line 2: label is 'contradiction', "
                                         r"expected one of entails, neutral$"):
        read_task('scitail', tmp_path)
    write_scitail(tmp_path, dev=[['p', 'h', 'neutral'], ['p', 'neutral']])
    with pytest.raises(ValueError, match=r'scitail_1.0_dev.tsv: line 2: 2 tab-separated fields, expected 3'):
        read_task('scitail', tmp_path)


# RACE

def race_obj(name, article, questions, options, answers):
    return {'answers': answers, 'options': options, 'questions': questions, 'article': article, 'id': name}


def write_race(race_dir, files):
    for rel, obj in files.items():
        path = race_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False), encoding='utf-8')
    return race_dir


OPTS = [['o1', 'o2', 'o3', 'o4'], ['p1', 'p2', 'p3', UNI]]
RACE = {
    # '10.txt' sorts before '2.txt': plain sorted order, high school before middle school
    'train/middle/2.txt': race_obj('middle2.txt', 'Mid art.', ['Q m?'], [OPTS[0]], ['D']),
    'train/high/2.txt': race_obj('high2.txt', QUOTE, ['Q1?', f'Q2 {UNI}?'], OPTS, ['B', 'A']),
    'train/high/10.txt': race_obj('high10.txt', UNI, ['Q0?'], [OPTS[1]], ['C']),
    'dev/high/1.txt': race_obj('high1.txt', 'Dev h.', ['Qd?'], [OPTS[0]], ['A']),
    'dev/middle/1.txt': race_obj('middle1.txt', 'Dev m.', ['Qe?'], [OPTS[1]], ['B']),
    'test/high/1.txt': race_obj('high1.txt', 'Test h.', ['Qt?'], [OPTS[0]], ['C']),
    'test/middle/5.txt': race_obj('middle5.txt', 'Test m.', ['Qu?', 'Qv?'], OPTS, ['D', 'D']),
    'test/middle/notes.md': 'not a passage',
}


@pytest.mark.parametrize('as_race_folder', [False, True])
def test_race(tmp_path, as_race_folder):
    write_race(tmp_path / 'RACE', RACE)
    data = read_task('race', tmp_path / 'RACE' if as_race_folder else tmp_path)
    assert list(data) == ['train', 'dev', 'test']
    assert_split(data['train'], ([UNI, QUOTE, QUOTE, 'Mid art.'], ['Q0?', 'Q1?', f'Q2 {UNI}?', 'Q m?'],
                                 [OPTS[1], OPTS[0], OPTS[1], OPTS[0]]), [2, 1, 0, 3],
                 groups=['high', 'high', 'high', 'middle'])
    assert_split(data['dev'], (['Dev h.', 'Dev m.'], ['Qd?', 'Qe?'], [OPTS[0], OPTS[1]]), [0, 1],
                 groups=['high', 'middle'])
    assert_split(data['test'], (['Test h.', 'Test m.', 'Test m.'], ['Qt?', 'Qu?', 'Qv?'], [OPTS[0], *OPTS]),
                 [2, 3, 3], groups=['high', 'middle', 'middle'])
    assert expected_files('race') == [f'RACE/{s}/{g}/*.txt' for s in ('train', 'dev', 'test')
                                      for g in ('high', 'middle')]


def test_race_missing_group_folder(tmp_path):
    files = {k: v for k, v in RACE.items() if not k.startswith('dev/middle/')}
    write_race(tmp_path / 'RACE', files)
    with pytest.raises(FileNotFoundError, match=r'\(missing dev/middle/\*.txt\)'):
        read_task('race', tmp_path)


@pytest.mark.parametrize('obj, message', [
    (race_obj('h.txt', 'a', ['q?'], [OPTS[0]], ['E']), r"question 1: answer is 'E', expected one of A, B, C, D"),
    (race_obj('h.txt', 'a', ['q?', 'r?'], OPTS, ['A']), r'2 questions, 2 option lists, 1 answers'),
    (race_obj('h.txt', 'a', ['q?', 'r?'], [OPTS[0], ['x', 'y', 'z']], ['A', 'B']),
     r"question 2: options are \['x', 'y', 'z'\], expected a list of 4 strings"),
    ({'article': 'a', 'questions': []}, r'expected a JSON object with keys article, questions, options, answers'),
    (race_obj('h.txt', 'a', [], [], []), r'0 questions'),
    ('{"article": "a",\n "questions": [}', r'line 2: malformed JSON'),
    ('', r'empty file'),
])
def test_race_bad_file_named(tmp_path, obj, message):
    write_race(tmp_path / 'RACE', dict(RACE, **{'dev/high/bad.txt': obj}))
    path = tmp_path / 'RACE' / 'dev' / 'high' / 'bad.txt'
    with pytest.raises(ValueError, match=rf'^{esc(path)}: .*{message}'):
        read_task('race', tmp_path)


DPRD_FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'dprd')


def test_dprd_reads_the_distribution_format():
    from task_datasets import read_dprd
    sentences, pronouns, candidates, labels = read_dprd(DPRD_FIXTURES, 'train')
    assert sentences[0] == 'The bee landed on the flower because it had pollen.'
    assert pronouns == ['it', 'it', 'he']
    assert candidates == [('bee', 'flower'), ('bee', 'flower'), ('John', 'Bill')]  # spaces around the comma stripped
    assert labels.tolist() == [1, 0, 0] and labels.dtype == np.int64
    assert len(read_dprd(DPRD_FIXTURES, 'test')[0]) == 3


@pytest.mark.parametrize('text, line, problem', [
    ('A b.\nb\nA,b\nb\n\nC d.\nd\nC,d\n\n', 6, r'a record of 3 lines, expected 4'),
    ('A b.\nb\nA;b\nb\n\n', 3, r"candidates 'A;b', expected two separated by one comma"),
    ('A b.\nb\nA,b\nc\n\n', 4, r"the answer 'c' is neither candidate 'A' nor 'b'"),
    ('A b.\nb\nA,b\n\xff\n\n', 4, r'not UTF-8 text'),
])
def test_dprd_errors_name_the_file_and_line(tmp_path, text, line, problem):
    from task_datasets import read_dprd
    path = tmp_path / 'train.c.txt'
    path.write_bytes(text.encode('latin-1'))
    with pytest.raises(ValueError, match=rf'{re.escape(str(path))}: line {line}: {problem}'):
        read_dprd(str(tmp_path), 'train')


def test_dprd_missing_file_and_unknown_split_are_named(tmp_path):
    from task_datasets import read_dprd
    (tmp_path / 'DPRD').mkdir()
    (tmp_path / 'DPRD' / 'test.c.txt').write_text('A b.\nb\nA,b\nb\n')  # no blank line at the end: read anyway
    assert read_dprd(str(tmp_path), 'test')[3].tolist() == [1]
    with pytest.raises(FileNotFoundError, match=r"no train.c.txt in '.*' or its DPRD/ folder \(the Definite Pronoun"):
        read_dprd(str(tmp_path), 'train')
    with pytest.raises(ValueError, match="DPRD has no split 'dev': use train or test"):
        read_dprd(str(tmp_path), 'dev')
