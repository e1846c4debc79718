"""Tests for prepare_corpus.py: ids equal TextEncoder.encode per document, stable split, identical re-runs, errors."""
import json
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import prepare_corpus
import utils
from corpus import SPLITS, load_corpus
from prepare_corpus import encode_chunk, in_val, main
from text_utils import TextEncoder

SEP = 40478  # the number of tokens of the released vocabulary: the separator id
DOCS = [
    'The quick brown fox jumps over the lazy dog.',
    'Café, naïve façade — “smart quotes” … and ½ of it!',
    'Hyphen-ated words; semi:colons (parens) [brackets] {braces} $5.00 & 100% #hash @at ~tilde~ a/b\\c',
    'Line one\nline two\n\tindented line',
    '日本語のテキストと emoji 😀 mixed',
    'ÀÉÎÕÜ ß Σίσυφος Ελληνικά Русский текст',
    "it's don't can't WON'T",
    'a',
]
WORDS = 'jim anna went to the store and bought a new dog , cat ! car ; book she was happy . sad ? rained'.split()


@pytest.fixture(scope='module')
def text_encoder():
    return TextEncoder()


def encode_one(text_encoder, doc):
    """Return the ids TextEncoder gives the document on its own."""
    return text_encoder.encode([doc], verbose=False)[0]


def run(capsys, *argv):
    """Return (exit code, stdout, stderr) of main(argv)."""
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def prepare(capsys, src, out, *extra):
    """Run prepare_corpus quietly in one process (unless extra says otherwise); return out after checking rc 0."""
    rc, _, err = run(capsys, '--input', src, '--out', out, '--quiet', '--workers', '1', *extra)
    assert rc == 0, err
    return out


def read_ids(path):
    """Return the little-endian uint16 ids of a .bin file."""
    return np.fromfile(path, dtype='<u2').tolist()


def split_docs(ids, sep=SEP):
    """Return the documents of a stream doc1 SEP doc2 SEP ... (which must end with SEP)."""
    assert not ids or ids[-1] == sep
    docs, doc = [], []
    for i in ids:
        if i == sep:
            docs.append(doc)
            doc = []
        else:
            doc.append(i)
    return docs


def stream_docs(out):
    """Return {split: list of documents' ids} of a corpus folder."""
    return {split: split_docs(read_ids(out / f'{split}.bin')) for split in SPLITS}


def write_jsonl(path, texts, field='text'):
    """Write one JSON object per text to path; return path."""
    path.write_text(''.join(json.dumps({'id': i, field: t}, ensure_ascii=i % 2 == 0) + '\n'
                            for i, t in enumerate(texts)), encoding='utf-8')
    return path


def random_docs(n, seed=0):
    """Return n distinct short documents of random words."""
    rng = np.random.default_rng(seed)
    return [f'document {i}: ' + ' '.join(rng.choice(WORDS, rng.integers(3, 15))) for i in range(n)]


def files_bytes(out):
    """Return the bytes of the three corpus files of out."""
    return {name: (out / name).read_bytes() for name in ('train.bin', 'val.bin', 'meta.json')}


def test_folder_layout_ids_equal_text_encoder(tmp_path, capsys, text_encoder):
    src = tmp_path / 'src'
    # in sorted path order, nested folders and an upper-case suffix included; empty files are documents too
    layout = [('00.txt', DOCS[0]), ('01/a.txt', DOCS[1]), ('01/b/c.txt', ''), ('01/d.TXT', DOCS[2]),
              ('02.txt', DOCS[3] + '\n'), ('03.txt', ' \n\t\n'), ('04/x.txt', DOCS[4]), ('05.txt', DOCS[5]),
              ('06.txt', '\ufeff' + DOCS[6]), ('07.txt', DOCS[7])]
    for name, text in reversed(layout):  # creation order must not matter
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(text, encoding='utf-8')
    (src / 'notes.md').write_text('not a document', encoding='utf-8')
    out = prepare(capsys, src, tmp_path / 'out', '--val_fraction', '0')
    expected = [encode_one(text_encoder, text) for _, text in layout]
    assert stream_docs(out) == {'train': [ids for ids in expected if ids], 'val': []}
    meta = json.loads((out / 'meta.json').read_text(encoding='utf-8'))
    assert meta['splits']['train']['n_empty_skipped'] == 2 and meta['splits']['train']['n_documents'] == 8
    assert meta['splits']['train']['n_tokens'] == sum(len(ids) + 1 for ids in expected if ids)


def test_single_txt_layout_splits_at_blank_lines(tmp_path, capsys, text_encoder):
    src = tmp_path / 'corpus.txt'
    src.write_bytes(('\ufeff\n \n' + DOCS[0] + '\n' + DOCS[1] + '\n\n\n' + DOCS[2] + '\r\nmore\r\n \t \r\n'
                     + DOCS[3] + '\n\u3000\n' + DOCS[4] + '\n\n' + DOCS[5] + '\n' + DOCS[6]).encode('utf-8'))
    # DOCS[3] has no blank line inside: its tab-indented line stays in it
    expected_docs = [DOCS[0] + '\n' + DOCS[1], DOCS[2] + '\r\nmore', DOCS[3], DOCS[4], DOCS[5] + '\n' + DOCS[6]]
    out = prepare(capsys, src, tmp_path / 'out', '--val_fraction', '0')
    assert stream_docs(out)['train'] == [encode_one(text_encoder, d) for d in expected_docs]


def test_jsonl_layout_with_blank_lines_and_empty_documents(tmp_path, capsys, text_encoder):
    texts = DOCS + ['', '   ']
    src = write_jsonl(tmp_path / 'c.jsonl', texts)
    src.write_text(src.read_text(encoding='utf-8').replace('\n', '\n\n  \n', 2), encoding='utf-8')
    out = prepare(capsys, src, tmp_path / 'out', '--text_field', 'text', '--val_fraction', '0')
    assert stream_docs(out)['train'] == [encode_one(text_encoder, d) for d in DOCS]
    meta = json.loads((out / 'meta.json').read_text(encoding='utf-8'))
    assert meta['splits']['train']['n_empty_skipped'] == 2
    assert meta['settings'] == dict(input=str(src), text_field='text', errors='strict', seed=0, val_fraction=0.0,
                                min_val_windows=4)


def test_meta_records_format_vocabulary_separator_and_counts(tmp_path, capsys):
    src = write_jsonl(tmp_path / 'c.jsonl', random_docs(30) + [''])
    out = prepare(capsys, src, tmp_path / 'out', '--text_field', 'text', '--val_fraction', '0.3', '--seed', '7',
                  '--min_val_windows', '0')  # the hash split alone (the top-up: test_a_val_split_too_small_...)
    meta = json.loads((out / 'meta.json').read_text(encoding='utf-8'))
    assert meta['format'] == prepare_corpus.CORPUS_FORMATS['gpt1'] == 'gpt1-corpus-v1'
    assert (meta['separator_id'], meta['n_special'], meta['n_vocab'], meta['dtype']) == (SEP, 1, SEP, 'uint16')
    assert 'separator' in meta and 'separators included' not in meta['separator']
    # the released vocabulary's git blob SHA-1 (integrity.RELEASED_FILES) and SHA-256, named as shipped
    assert meta['vocabulary']['encoder_sha1'] == '9dc3f0af5a80956e57dc8d9401e16dfadcade7c2'
    assert meta['vocabulary']['bpe_sha1'] == '0023a687b3d4d0b795a5e97cc914bdabb5a253df'
    assert meta['vocabulary']['encoder_sha256'] == 'fdf49b19e7de236852091da09b84a7a3cd5e7b0e79916376cf45f6b8127b8078'
    assert meta['vocabulary']['bpe_sha256'] == '0ea9b51ae695073cd871e0358f7016311d671a7ff3963e367d5236522f294725'
    assert meta['vocabulary']['encoder_path'] == 'model/encoder_bpe_40000.json'
    assert meta['vocabulary']['bpe_path'] == 'model/vocab_40000.bpe'
    docs = stream_docs(out)
    for split in SPLITS:
        c = meta['splits'][split]
        assert c['file'] == f'{split}.bin' and c['n_documents'] == len(docs[split]) > 0
        assert c['n_tokens'] == os.path.getsize(out / c['file']) // 2  # separators included
    assert meta['splits']['train']['n_empty_skipped'] + meta['splits']['val']['n_empty_skipped'] == 1
    assert meta['settings']['seed'] == 7 and meta['settings']['val_fraction'] == 0.3
    assert 'workers' not in json.dumps(meta)


def test_serial_and_parallel_write_the_same_bytes(tmp_path, capsys):
    src = write_jsonl(tmp_path / 'c.jsonl', random_docs(600) + DOCS + [''])  # 3 chunks of 256
    serial = prepare(capsys, src, tmp_path / 'serial', '--text_field', 'text', '--val_fraction', '0.3')
    parallel = prepare(capsys, src, tmp_path / 'parallel', '--text_field', 'text', '--val_fraction', '0.3',
                       '--workers', '2')
    assert files_bytes(serial) == files_bytes(parallel)
    assert len(stream_docs(serial)['val']) > 0


def test_parallel_progress_bar_and_summary(tmp_path, capsys, monkeypatch):
    # a bar not on a terminal writes a line every PROGRESS_INTERVAL_S and, being one tqdm would erase (leave=False),
    # none at its end: a line at every update, for this short run
    monkeypatch.setattr(utils, 'PROGRESS_INTERVAL_S', 0)
    src = write_jsonl(tmp_path / 'c.jsonl', DOCS)
    rc, out, err = run(capsys, '--input', src, '--out', tmp_path / 'out', '--text_field', 'text', '--workers', '2',
                       '--val_fraction', '0.5')
    assert rc == 0
    assert 'encoding' in err and 'tokens/s' in err  # the bar, on stderr
    assert out.startswith('train: ') and '(separators included)' in out


def test_re_run_writes_identical_files_and_cleans_temporaries(tmp_path, capsys):
    src = write_jsonl(tmp_path / 'c.jsonl', random_docs(40))
    out = prepare(capsys, src, tmp_path / 'out', '--text_field', 'text', '--val_fraction', '0.2')
    first = files_bytes(out)
    (out / 'train.bin.tmp99999999').write_bytes(b'left by a killed run')
    prepare(capsys, src, out, '--text_field', 'text', '--val_fraction', '0.2')
    assert files_bytes(out) == first
    assert sorted(os.listdir(out)) == ['checked_ids.json', 'meta.json', 'train.bin', 'val.bin']


def splits_of(text_encoder, out, texts):
    """Return {text: split} for texts, found by their ids in the corpus at out."""
    where = {split: {tuple(ids) for ids in docs} for split, docs in stream_docs(out).items()}
    found = {}
    for text in texts:
        ids = tuple(encode_one(text_encoder, text))
        assert (ids in where['train']) != (ids in where['val'])
        found[text] = 'val' if ids in where['val'] else 'train'
    return found


def test_split_is_stable_under_reordering_adding_and_removing(tmp_path, capsys, text_encoder):
    docs = random_docs(40)
    flags = ('--text_field', 'text', '--val_fraction', '0.4', '--seed', '3', '--min_val_windows', '0')
    a = prepare(capsys, write_jsonl(tmp_path / 'a.jsonl', docs), tmp_path / 'a', *flags)
    changed = list(reversed(docs[5:])) + random_docs(15, seed=1)  # reordered, 5 removed, 15 added
    b = prepare(capsys, write_jsonl(tmp_path / 'b.jsonl', changed), tmp_path / 'b', *flags)
    in_a, in_b = splits_of(text_encoder, a, docs), splits_of(text_encoder, b, changed)
    assert sorted(set(in_a.values())) == ['train', 'val']
    assert all(in_a[d] == in_b[d] for d in docs[5:])
    assert all(in_a[d] == ('val' if in_val(d, 3, 0.4) else 'train') for d in docs)
    assert any(in_val(d, 3, 0.4) != in_val(d, 4, 0.4) for d in docs)  # the seed does change the split


def test_duplicates_share_a_split(tmp_path, capsys, text_encoder):
    docs = random_docs(20)
    out = prepare(capsys, write_jsonl(tmp_path / 'c.jsonl', docs + docs[::-1]), tmp_path / 'out',
                  '--text_field', 'text', '--val_fraction', '0.5', '--min_val_windows', '0')
    streams = stream_docs(out)
    for doc in docs:
        ids = encode_one(text_encoder, doc)
        assert sorted(streams[split].count(ids) for split in SPLITS) == [0, 2]


@pytest.mark.parametrize('fraction, empty', [('0', 'val'), ('1', 'train')])
def test_val_fraction_0_and_1_leave_one_split_empty(tmp_path, capsys, fraction, empty):
    src = write_jsonl(tmp_path / 'c.jsonl', DOCS)
    rc, _, err = run(capsys, '--input', src, '--out', tmp_path / 'out', '--text_field', 'text', '--quiet',
                     '--workers', '1', '--val_fraction', fraction)
    assert rc == 0 and err == ''  # asked for: no warning
    assert os.path.getsize(tmp_path / 'out' / f'{empty}.bin') == 0
    train, val, meta = load_corpus(tmp_path / 'out')
    assert len({'train': train, 'val': val}[empty]) == 0
    assert meta['splits'][empty]['n_documents'] == 0


def test_a_val_split_too_small_is_topped_up_from_the_end_of_train(tmp_path, capsys):
    """Too few val ids for MIN_VAL_WINDOWS windows: the last ids of train (at most a tenth) move to val, the document
    cut there ending in train with a separator; said in one line, recorded in meta.json; nothing lost or reordered."""
    docs = [d for d in random_docs(60) if not in_val(d, 0, 0.005)]
    src = write_jsonl(tmp_path / 'c.jsonl', docs)
    whole = tmp_path / 'whole'
    prepare(capsys, src, whole, '--text_field', 'text', '--val_fraction', '0')  # 0: no val asked for, none made
    full = read_ids(whole / 'train.bin')
    assert read_ids(whole / 'val.bin') == [] and 'n_tail_tokens' not in json.loads((whole / 'meta.json').read_text())[
        'splits']['val']
    rc, out, err = run(capsys, '--input', src, '--out', tmp_path / 'out', '--text_field', 'text', '--quiet',
                       '--workers', '1')
    assert rc == 0 and err == ''
    n_tail = len(full) // 10  # the shortfall (4 x 513 ids) is larger than the cap
    assert 0 < n_tail < prepare_corpus.MIN_VAL_WINDOWS * 513
    train, val, meta = load_corpus(tmp_path / 'out')
    assert val.tolist() == full[-n_tail:] and train.tolist() == full[:-n_tail] + [SEP]
    assert meta['splits']['val']['n_tail_tokens'] == n_tail and meta['splits']['val']['n_tokens'] == n_tail
    assert meta['splits']['train']['n_tokens'] == len(full) - n_tail + 1
    assert meta['splits']['train']['max_id'] == max(train) and meta['splits']['val']['max_id'] == max(val)
    assert f'so the last {n_tail} tokens of the training text went to val' in out
    for split, stream in (('train', train), ('val', val)):  # the documents counted are the files' separators
        assert meta['splits'][split]['n_documents'] == int((stream == SEP).sum())
    assert prepare_corpus.tail_tokens({'train': {'n_tokens': 100_000}, 'val': {'n_tokens': 1000}}, 'gpt2', 4) == 3100
    rc, out, _ = run(capsys, '--input', src, '--out', tmp_path / 'off', '--text_field', 'text', '--quiet', '--workers',
                     '1', '--min_val_windows', '0')
    assert rc == 0 and read_ids(tmp_path / 'off' / 'val.bin') == [] and 'went to val' not in out  # asked: no top-up


@pytest.mark.parametrize('n_tail, train, val, n_docs', [
    (3, [1, 2, SEP], [7, SEP, 3, 4, SEP], (1, 2)),       # the cut falls on a boundary: whole documents move
    (2, [1, 2, SEP, 3, SEP], [7, SEP, 4, SEP], (2, 2)),  # inside a document: its first part ends train, a document
])
def test_top_up_moves_the_tail_and_counts_its_documents(tmp_path, n_tail, train, val, n_docs):
    import untrusted
    tmp = {split: untrusted.create_temporary(str(tmp_path / f'{split}.bin')) for split in SPLITS}
    os.write(tmp['train'][0], np.asarray([1, 2, SEP, 3, 4, SEP], dtype='<u2').tobytes())
    os.write(tmp['val'][0], np.asarray([7, SEP], dtype='<u2').tobytes())
    counts = {'train': dict(n_documents=2, n_tokens=6, max_id=SEP), 'val': dict(n_documents=1, n_tokens=2, max_id=SEP)}
    prepare_corpus.top_up_val(tmp, counts, n_tail, SEP)
    for fd, _ in tmp.values():
        os.close(fd)
    assert read_ids(tmp['train'][1]) == train and read_ids(tmp['val'][1]) == val
    assert (counts['train']['n_documents'], counts['val']['n_documents']) == (n_docs[0], n_docs[1])
    assert counts['train']['n_tokens'] == len(train) and counts['val']['n_tokens'] == len(val)
    assert counts['val']['n_tail_tokens'] == n_tail and counts['train']['max_id'] == SEP


def test_empty_val_is_a_warning_not_an_error(tmp_path, capsys):
    docs = [d for d in ('a', 'b', 'c', 'd') if not in_val(d, 0, 0.005)]  # fewer than 10 ids: nothing to top up from
    assert len(docs) >= 3
    rc, out, err = run(capsys, '--input', write_jsonl(tmp_path / 'c.jsonl', docs), '--out', tmp_path / 'out',
                       '--text_field', 'text', '--quiet', '--workers', '1')
    assert rc == 0 and 'val: 0 documents, 0 tokens' in out
    assert err.count('\n') == 1 and err.startswith('warning: val is empty') and '--val_fraction' in err


@pytest.mark.parametrize('mode', ['replace', 'ignore'])
def test_errors_replace_and_ignore_decode_bad_bytes(tmp_path, capsys, text_encoder, mode):
    data = b'caf\xe9 au lait\n\nna\xefve \xff end \xe2\x82\n'
    (tmp_path / 'c.txt').write_bytes(data)
    out = prepare(capsys, tmp_path / 'c.txt', tmp_path / 'out', '--errors', mode, '--val_fraction', '0')
    expected = [d.strip('\n') for d in data.decode('utf-8', mode).split('\n\n')]
    assert stream_docs(out)['train'] == [encode_one(text_encoder, d) for d in expected]
    assert json.loads((out / 'meta.json').read_text(encoding='utf-8'))['settings']['errors'] == mode


def write_case(tmp_path, case):
    """Write the input of an error case under tmp_path; return (argv, substrings the error line must hold)."""
    src = tmp_path / 'src'
    if case == 'empty corpus':
        src.mkdir()
        (src / 'a.txt').write_text('', encoding='utf-8')
        (src / 'b.txt').write_text(' \n\t\n', encoding='utf-8')
        return ['--input', src], [str(src), 'no document with text', '2 empty']
    if case == 'no txt files':
        src.mkdir()
        (src / 'a.md').write_text('text', encoding='utf-8')
        return ['--input', src], [str(src), 'no .txt files']
    if case in ('bad byte in folder', 'bad byte in folder, parallel'):
        (src / 'sub').mkdir(parents=True)
        (src / 'a.txt').write_text('fine', encoding='utf-8')
        (src / 'sub' / 'b.txt').write_bytes(b'good text\n\xff bad')
        workers = ['--workers', '2'] if case.endswith('parallel') else []
        return ['--input', src] + workers, [str(src / 'sub' / 'b.txt'), 'byte offset 10', '0xff',
                                            'strict, replace, ignore']
    if case == 'bad byte in txt file':
        path = tmp_path / 'c.txt'
        path.write_bytes(b'one\n\ntwo \xc3\x28 x\n')
        return ['--input', path], [str(path), 'line 3', 'byte offset 9', '--errors replace', '--errors ignore']
    path = tmp_path / 'c.jsonl'
    good = json.dumps({'text': 'fine'}).encode()
    lines = {'bad byte in jsonl': [good, b'{"text": "caf\xe9"}'],
             'invalid json': [good, b'', b'{"text": "unterminated}'],
             'missing field': [good, json.dumps({'body': 'x', 'id': 1}).encode()],
             'non-string field': [good, good, json.dumps({'text': 3}).encode()],
             'null field': [json.dumps({'text': None}).encode()],
             'not an object': [b'["text"]']}[case]
    path.write_bytes(b'\n'.join(lines) + b'\n')
    offset = len(good) + 1 + len(b'{"text": "caf')  # the bad byte, on line 2
    want = {'bad byte in jsonl': ['line 2', f'byte offset {offset}', '0xe9', '--errors'],
            'invalid json': ['line 3', 'not valid JSON'],
            'missing field': ['line 2', "no field 'text'", "'body'", '--text_field'],
            'non-string field': ['line 3', "field 'text' is a int, not a string"],
            'null field': ['line 1', 'NoneType, not a string'],
            'not an object': ['line 1', 'not an object']}[case]
    return ['--input', path, '--text_field', 'text'], [str(path)] + want


@pytest.mark.parametrize('case', ['empty corpus', 'no txt files', 'bad byte in folder', 'bad byte in folder, parallel',
                                  'bad byte in txt file', 'bad byte in jsonl', 'invalid json', 'missing field',
                                  'non-string field', 'null field', 'not an object'])
def test_bad_input_is_one_line_naming_file_and_place(tmp_path, capsys, case):
    argv, wanted = write_case(tmp_path, case)
    out = tmp_path / 'out'
    rc, stdout, err = run(capsys, *argv, '--out', out, '--quiet', *(['--workers', '1'] * ('--workers' not in argv)))
    assert rc == 2 and stdout == ''
    assert err.count('\n') == 1 and err.startswith('prepare_corpus.py: error: ') and 'Traceback' not in err
    for part in wanted:
        assert part in err, (part, err)
    assert not out.exists() or os.listdir(out) == []  # nothing half-written, no temporaries


@pytest.mark.parametrize('case', ['missing input', 'text_field with txt', 'text_field with folder',
                                  'jsonl without text_field', 'other suffix', 'val_fraction', 'workers', 'out is a file'])
def test_bad_arguments_are_one_line(tmp_path, capsys, case):
    txt, jsonl = tmp_path / 'c.txt', write_jsonl(tmp_path / 'c.jsonl', DOCS)
    txt.write_text('text', encoding='utf-8')
    (tmp_path / 'c.csv').write_text('text', encoding='utf-8')
    (tmp_path / 'file').write_text('', encoding='utf-8')
    argv, wanted = {
        'missing input': (['--input', tmp_path / 'nope'], [str(tmp_path / 'nope'), 'no such file or folder']),
        'text_field with txt': (['--input', txt, '--text_field', 'text'], [str(txt), '--text_field']),
        'text_field with folder': (['--input', tmp_path, '--text_field', 'text'], ['a folder', '--text_field']),
        'jsonl without text_field': (['--input', jsonl], [str(jsonl), 'pass --text_field']),
        'other suffix': (['--input', tmp_path / 'c.csv'], [str(tmp_path / 'c.csv'), '.jsonl']),
        'val_fraction': (['--input', txt, '--val_fraction', '1.5'], ['--val_fraction 1.5']),
        'workers': (['--input', txt, '--workers', '0'], ['--workers 0']),
        'out is a file': (['--input', txt], ['--out', 'is a file']),
    }[case]
    out = tmp_path / ('file' if case == 'out is a file' else 'out')
    rc, _, err = run(capsys, *argv, '--out', out, '--quiet')
    assert rc == 2 and err.count('\n') == 1 and err.startswith('prepare_corpus.py: error: ')
    for part in wanted:
        assert part in err, (part, err)


def test_custom_vocabulary_sets_the_separator(tmp_path, capsys):
    enc, bpe = tmp_path / 'enc.json', tmp_path / 'merges.bpe'
    enc.write_text(json.dumps({'a</w>': 0, 'b</w>': 1, 'ab</w>': 2, 'a': 3, 'b': 4, '.</w>': 5}), encoding='utf-8')
    bpe.write_text('#version: 0.2\na b</w>\n', encoding='utf-8')
    (tmp_path / 'c.txt').write_text('ab a. b\n\nzz ab\n', encoding='utf-8')
    out = prepare(capsys, tmp_path / 'c.txt', tmp_path / 'out', '--encoder_path', enc, '--bpe_path', bpe,
                  '--val_fraction', '0')
    # spaCy keeps 'a.' as one token (pieces 'a' '.</w>'); 'zz' is two unknown pieces (id 0); the separator is 6
    assert read_ids(out / 'train.bin') == [2, 3, 5, 1, 6, 0, 0, 2, 6]
    meta = json.loads((out / 'meta.json').read_text(encoding='utf-8'))
    assert (meta['separator_id'], meta['vocabulary']['encoder_path']) == (6, 'encoder_bpe_40000.json')
    assert (out / 'encoder_bpe_40000.json').read_bytes() == enc.read_bytes()  # the copy the corpus names
    assert (out / 'vocab_40000.bpe').read_bytes() == bpe.read_bytes()
    assert meta['splits']['train']['max_id'] == 6


@pytest.mark.parametrize('ids, wanted', [(range(1 << 16), 'do not fit uint16'), ([0, 1, 5], 'must be 0..2')])
def test_vocabulary_that_cannot_hold_the_separator_is_an_error(tmp_path, capsys, ids, wanted):
    enc = tmp_path / 'enc.json'
    enc.write_text(json.dumps({f't{i}': i for i in ids}), encoding='utf-8')
    (tmp_path / 'c.txt').write_text('text', encoding='utf-8')
    rc, _, err = run(capsys, '--input', tmp_path / 'c.txt', '--out', tmp_path / 'out', '--encoder_path', enc,
                     '--quiet', '--workers', '1')
    assert rc == 2 and err.count('\n') == 1 and str(enc) in err and wanted in err


@settings(max_examples=40, deadline=None)
@given(docs=st.lists(st.text(max_size=30), max_size=12), fraction=st.sampled_from([0.0, 0.5, 1.0]))
def test_encode_chunk_is_per_document_encoding_plus_separators(text_encoder, docs, fraction):
    data, counts = encode_chunk(text_encoder, docs, 0, fraction, SEP)
    expected = {split: [] for split in SPLITS}
    for doc in docs:
        expected['val' if in_val(doc, 0, fraction) else 'train'].append(encode_one(text_encoder, doc))
    for split in SPLITS:
        stream = np.frombuffer(data[split], dtype='<u2').tolist()
        assert split_docs(stream) == [ids for ids in expected[split] if ids]
        assert counts[split]['n_tokens'] == len(stream)
        assert counts[split]['n_empty_skipped'] == sum(not ids for ids in expected[split])


def test_load_corpus_round_trip(tmp_path, capsys):
    src = write_jsonl(tmp_path / 'c.jsonl', random_docs(30))
    out = prepare(capsys, src, tmp_path / 'out', '--text_field', 'text', '--val_fraction', '0.3')
    train, val, meta = load_corpus(out)
    written = json.loads((out / 'meta.json').read_text(encoding='utf-8'))
    assert meta == dict(written, vocabulary=dict(written['vocabulary'], encoder_path=prepare_corpus.ENCODER_PATH,
                                                 bpe_path=prepare_corpus.BPE_PATH))  # the shipped files, checked
    for split, ids in (('train', train), ('val', val)):
        assert isinstance(ids, np.memmap) and ids.dtype == np.uint16 and not ids.flags.writeable
        assert ids.tolist() == read_ids(out / f'{split}.bin') and len(ids) == meta['splits'][split]['n_tokens']
        assert ids[-1] == meta['separator_id']
    assert np.array_equal(np.memmap(out / 'train.bin', dtype=np.uint16, mode='r'), train)


def damage(out, case):
    """Damage the corpus at out as case says; return the substrings load_corpus's error must hold."""
    meta_path = out / 'meta.json'
    if case == 'missing folder':
        return [str(out / 'nope')]
    if case == 'missing meta.json':
        meta_path.unlink()
        return [str(meta_path), 'is missing', 'again']
    if case == 'missing val.bin':
        (out / 'val.bin').unlink()
        return [str(out / 'val.bin'), 'missing']
    if case in ('odd size', 'count mismatch', 'last id not the separator'):
        data = (out / 'train.bin').read_bytes()
        data = {'odd size': data + b'\0', 'count mismatch': data + data[:2],
                'last id not the separator': data[:-2] + b'\1\0'}[case]
        (out / 'train.bin').write_bytes(data)
        return [str(out / 'train.bin'), {'odd size': 'not a whole number', 'count mismatch': 'meta.json says',
                                         'last id not the separator': 'not the separator'}[case]]
    meta = json.loads(meta_path.read_text(encoding='utf-8'))
    if case == 'other format':
        meta['format'] = 'gpt1-corpus-v0'
        meta_path.write_text(json.dumps(meta), encoding='utf-8')
        return [str(meta_path), "'gpt1-corpus-v0'", 'gpt1-corpus-v1']
    meta_path.write_text('{"format": "gpt1-', encoding='utf-8')
    return [str(meta_path), 'not valid JSON']


@pytest.mark.parametrize('case', ['missing folder', 'missing meta.json', 'missing val.bin', 'odd size',
                                  'count mismatch', 'last id not the separator', 'other format', 'bad json'])
def test_load_corpus_errors_name_the_file(tmp_path, capsys, case):
    out = prepare(capsys, write_jsonl(tmp_path / 'c.jsonl', DOCS), tmp_path / 'out', '--text_field', 'text',
                  '--val_fraction', '0.5')
    wanted = damage(out, case)
    with pytest.raises((OSError, ValueError)) as err:
        load_corpus(out / 'nope' if case == 'missing folder' else out)
    assert '\n' not in str(err.value)
    for part in wanted:
        assert part in str(err.value), (part, str(err.value))


def test_interrupted_run_never_leaves_a_complete_looking_folder(tmp_path, capsys, monkeypatch):
    out = prepare(capsys, write_jsonl(tmp_path / 'a.jsonl', DOCS), tmp_path / 'out', '--text_field', 'text',
                  '--val_fraction', '0.5')
    before = files_bytes(out)
    b = write_jsonl(tmp_path / 'b.jsonl', random_docs(20))

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt
    # killed while encoding: the previous corpus is untouched and no temporary is left
    monkeypatch.setattr(prepare_corpus, 'encode_chunk', interrupt)
    with pytest.raises(KeyboardInterrupt):
        main(['--input', str(b), '--out', str(out), '--text_field', 'text', '--quiet', '--workers', '1'])
    assert files_bytes(out) == before
    assert sorted(os.listdir(out)) == ['checked_ids.json', 'meta.json', 'train.bin', 'val.bin']
    monkeypatch.undo()
    # killed between the renames: train.bin is new, val.bin old, and there is no meta.json to vouch for them
    renames = []

    def rename_train_only(tmp, path):
        if renames:
            raise KeyboardInterrupt
        renames.append(path)
        return real_replace(tmp, path)
    real_replace = os.replace
    monkeypatch.setattr(os, 'replace', rename_train_only)
    with pytest.raises(KeyboardInterrupt):
        main(['--input', str(b), '--out', str(out), '--text_field', 'text', '--quiet', '--workers', '1'])
    assert renames == [os.path.join(str(out), 'train.bin')]
    assert sorted(os.listdir(out)) == ['checked_ids.json', 'train.bin', 'val.bin']
    with pytest.raises(FileNotFoundError, match='meta.json is missing'):
        load_corpus(out)


def test_gpt2_corpus_is_the_original_encoders_ids_joined_by_endoftext(tmp_path, capsys):
    """--arch gpt2: each document is exactly GPT-2's encoder's ids (no standardisation), followed by <|endoftext|>
    (50256, a token of the vocabulary, so no special row); serial and parallel runs write the same bytes."""
    from encoder_gpt2 import get_encoder
    texts = DOCS + ['', '   ', 'Café — naïve 東京 🙂 <|endoftext|> literal']  # '   ' is three tokens to GPT-2
    src = write_jsonl(tmp_path / 'c.jsonl', texts)
    out = prepare(capsys, src, tmp_path / 'out', '--text_field', 'text', '--val_fraction', '0', '--arch', 'gpt2')
    enc = get_encoder()
    ids = read_ids(out / 'train.bin')
    want = [i for t in texts if enc.encode(t) for i in enc.encode(t) + [50256]]
    assert ids == want
    meta = json.loads((out / 'meta.json').read_text(encoding='utf-8'))
    assert (meta['format'], meta['n_vocab'], meta['separator_id'], meta['n_special']) == ('gpt2-corpus-v1', 50257,
                                                                                          50256, 0)
    assert meta['splits']['train']['n_empty_skipped'] == 1 and meta['vocabulary']['encoder_path'].endswith('encoder.json')
    parallel = prepare(capsys, src, tmp_path / 'par', '--text_field', 'text', '--val_fraction', '0', '--arch', 'gpt2',
                       '--workers', '2')
    assert (parallel / 'train.bin').read_bytes() == (out / 'train.bin').read_bytes()
    from corpus import corpus_family, load_corpus
    train, _, meta = load_corpus(out)
    assert corpus_family(meta) == 'gpt2' and train.tolist() == want


def plant_links(out, target):
    """Plant, in the folder out, a symlink to target at every name prepare_corpus.py writes or could predictably
    write (the names and, for a temporary named by this process's id, NAME.tmpPID); return their names."""
    names = ['train.bin', 'val.bin', 'meta.json', 'checked_ids.json', 'encoder_bpe_40000.json', 'vocab_40000.bpe']
    planted = names + [f'{name}.tmp{os.getpid()}' for name in names]
    for name in planted:
        if not os.path.lexists(out / name):
            os.symlink(target, out / name)
    return planted


def test_links_planted_in_out_are_never_written_through(tmp_path, capsys, monkeypatch):
    """Re-preparing into a downloaded folder: a symlink planted at any name, final or temporary, is replaced or
    removed, never followed: the file it leads to is unchanged. Planted before the run and again once the stale
    temporaries were cleaned (a race, or a name the cleaning misses)."""
    outside = tmp_path / 'victim'
    outside.write_bytes(b'precious')
    enc, bpe = tmp_path / 'enc.json', tmp_path / 'merges.bpe'  # a vocabulary of its own: its copies are written too
    enc.write_text(json.dumps({'a</w>': 0, 'b</w>': 1, 'ab</w>': 2, 'a': 3, 'b': 4, '.</w>': 5}), encoding='utf-8')
    bpe.write_text('#version: 0.2\na b</w>\n', encoding='utf-8')
    (tmp_path / 'c.txt').write_text('ab a. b\n\nzz ab\n', encoding='utf-8')
    out = tmp_path / 'out'
    out.mkdir()
    plant_links(out, outside)
    real = prepare_corpus.make_out_folder

    def make_then_plant(path):
        real(path)
        plant_links(out, outside)
        return path
    monkeypatch.setattr(prepare_corpus, 'make_out_folder', make_then_plant)
    prepare(capsys, tmp_path / 'c.txt', out, '--encoder_path', enc, '--bpe_path', bpe, '--val_fraction', '0')
    assert outside.read_bytes() == b'precious'
    for name in ('train.bin', 'val.bin', 'meta.json', 'checked_ids.json', 'encoder_bpe_40000.json'):
        assert not os.path.islink(out / name), name
    assert read_ids(out / 'train.bin') == [2, 3, 5, 1, 6, 0, 0, 2, 6]
    monkeypatch.undo()
    train, _, meta = load_corpus(out)
    assert list(train) == [2, 3, 5, 1, 6, 0, 0, 2, 6] and meta['vocabulary']['encoder_path'] == str(
        out / 'encoder_bpe_40000.json')


@pytest.mark.parametrize('arch', ['gpt1', 'gpt2'])
def test_a_vocabulary_named_through_a_link_out_says_to_pass_the_real_path(tmp_path, capsys, arch):
    """--encoder_path naming a symlink to a file elsewhere is refused (no link leaves the folder of the file), in one
    line that says what to do: pass the file's real path."""
    (tmp_path / 'c.txt').write_text('ab a. b\n', encoding='utf-8')
    (tmp_path / 'links').mkdir()
    link = tmp_path / 'links' / 'encoder.json'
    os.symlink(prepare_corpus.DEFAULT_VOCABULARY[arch][0], link)
    rc, _, err = run(capsys, '--input', tmp_path / 'c.txt', '--out', tmp_path / 'out', '--arch', arch,
                     '--encoder_path', link, '--quiet', '--workers', '1')
    assert rc == 2 and err.count('\n') == 1, err
    assert f"{link}: is a link that leads outside" in err and "pass the file's real path" in err, err
    assert 'unmodified file' not in err and 'put the released' not in err, err
