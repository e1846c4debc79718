"""Attacks on a pre-training corpus folder (meta.json, train.bin, val.bin, the vocabulary meta.json names): every
damaged or crafted folder is refused at open with one untrusted.BadFile naming the file, before any training; ids
that would read a position row (or past the table) are found by one scan, recorded so that a second open costs
nothing, and a record from elsewhere is never trusted."""
import hashlib
import json
import os
import shutil

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import corpus
import pretrain
import untrusted
from tests.helpers import assert_refused, write_structured_corpus

N_VOCAB = 40478  # the released vocabulary; the separator is id 40478, the first special row
ROWS = N_VOCAB + 1  # the rows tokens may use: ids from here on are position rows
REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPT2_ENCODER = os.path.join(REPOSITORY, 'model', 'gpt2', 'encoder.json')


@pytest.fixture(scope='module')
def pristine(tmp_path_factory):
    """A tiny GPT-1 corpus as prepare_corpus.py writes it (never changed by the tests: they change copies)."""
    return write_structured_corpus(tmp_path_factory.mktemp('pristine'), n_docs=20)


@pytest.fixture
def folder(pristine, tmp_path):
    """A copy of the pristine corpus to damage."""
    return shutil.copytree(pristine, tmp_path / 'corpus')


@pytest.fixture
def scans(monkeypatch):
    """Count the scans of split files for their largest id."""
    calls = []
    real = corpus.scan_ids

    def counting(ids, limit):
        calls.append(len(ids))
        return real(ids, limit)
    monkeypatch.setattr(corpus, 'scan_ids', counting)
    return calls


def read_meta(folder):
    return json.loads((folder / 'meta.json').read_text(encoding='utf-8'))


def write_meta(folder, meta):
    (folder / 'meta.json').write_text(json.dumps(meta), encoding='utf-8')


def refused(folder, names):
    """Assert load_corpus(folder) raises one BadFile, on one line naming `names`; return its message."""
    with pytest.raises(untrusted.BadFile) as err:
        corpus.load_corpus(folder)
    message = str(err.value)
    assert '\n' not in message and str(names) in message, message
    return message


def sha256(path):
    return hashlib.sha256(open(path, 'rb').read()).hexdigest()


# --- the largest id: checked once, recorded -------------------------------------------------------------------

def test_a_fresh_corpus_opens_without_a_scan(pristine, scans):
    meta = read_meta(pristine)
    assert all(meta['splits'][s]['max_id'] == N_VOCAB for s in corpus.SPLITS)  # the separator is the largest id
    train, val, _ = corpus.load_corpus(pristine)
    assert scans == [] and train[-1] == val[-1] == N_VOCAB  # prepare_corpus.py's record is this machine's


def checked_ids(folder):
    return json.loads((folder / corpus.CHECKED_IDS).read_text(encoding='utf-8'))


def test_a_copied_corpus_is_scanned_once_then_recorded(folder, scans):
    """A copy (another inode and change time, as after a download) is scanned once; the record is written back, and
    the second open costs nothing. meta.json is left as prepare_corpus.py wrote it."""
    meta = (folder / 'meta.json').read_bytes()
    train, val, _ = corpus.load_corpus(folder)
    assert sorted(scans) == sorted([len(train), len(val)])
    record = checked_ids(folder)
    assert record['train'] == dict(max_id=N_VOCAB, stamp=corpus.file_stamp(os.stat(folder / 'train.bin')))
    corpus.load_corpus(folder)
    assert len(scans) == 2  # no further scan
    assert (folder / 'meta.json').read_bytes() == meta


def test_a_read_only_corpus_is_scanned_at_every_open(folder, scans, monkeypatch):
    before = checked_ids(folder)
    monkeypatch.setattr(os, 'access', lambda path, mode, **kw: False)  # a folder we may not write (root may)
    corpus.load_corpus(folder)
    corpus.load_corpus(folder)
    assert len(scans) == 4 and checked_ids(folder) == before


def put_id(path, position, value):
    """Write value as the id at position of a split file (in place)."""
    ids = np.fromfile(path, dtype='<u2')
    ids[position] = value
    ids.tofile(path)


@pytest.mark.parametrize('bad_id', [65535, ROWS, ROWS + 7, N_VOCAB + 1 + 512])
@pytest.mark.parametrize('split', ['train', 'val'])
def test_an_id_outside_the_token_rows_is_refused_naming_file_id_and_position(folder, split, bad_id):
    put_id(folder / f'{split}.bin', 3, bad_id)
    message = refused(folder, folder / f'{split}.bin')
    assert f'token id {bad_id} at position 3' in message and str(ROWS) in message


def test_an_appended_id_is_refused(folder):
    """65535 appended before the final separator, the counts fixed so that only the id is wrong."""
    ids = np.fromfile(folder / 'train.bin', dtype='<u2')
    np.concatenate([ids[:-1], [65535, N_VOCAB]]).astype('<u2').tofile(folder / 'train.bin')
    meta = read_meta(folder)
    meta['splits']['train']['n_tokens'] += 1
    write_meta(folder, meta)
    assert f'token id 65535 at position {len(ids) - 1}' in refused(folder, folder / 'train.bin')


def test_the_largest_allowed_id_is_the_separator(folder):
    put_id(folder / 'train.bin', 3, N_VOCAB)  # the separator: a row of its own, allowed anywhere
    corpus.load_corpus(folder)


def write_checked_ids(folder, record):
    (folder / corpus.CHECKED_IDS).write_text(json.dumps(record), encoding='utf-8')


def test_a_forged_record_is_not_trusted(folder, scans):
    """checked_ids.json and meta.json record max_id 0 with the file's size, modification time and inode (all that an
    attacker can arrange) but not its change time (which the kernel sets and nobody chooses): the file is scanned
    and refused."""
    put_id(folder / 'train.bin', 5, 65535)
    st = os.stat(folder / 'train.bin')
    forged = dict(corpus.file_stamp(st), ctime_ns=st.st_ctime_ns - 1)
    write_checked_ids(folder, {'train': dict(max_id=0, stamp=forged)})
    meta = read_meta(folder)
    meta['splits']['train']['max_id'] = 0
    write_meta(folder, meta)
    assert 'token id 65535 at position 5' in refused(folder, folder / 'train.bin')
    assert scans  # it scanned
    # the exact stamp is trusted (that is what makes a second open free): the scan is what refused the forgery
    write_checked_ids(folder, {'train': dict(max_id=0, stamp=corpus.file_stamp(os.stat(folder / 'train.bin')))})
    corpus.load_corpus(folder)


BAD_RECORDS = {'deep': '[' * 100000, 'list': '[]', 'string max_id': '{"train": {"max_id": "0", "stamp": {}}}',
               'no stamp': '{"train": {"max_id": 0}}', 'bool stamp': '{"train": {"max_id": 0, "stamp": true}}',
               'not UTF-8': b'\xff', 'fifo': None, 'folder': None}


@pytest.mark.parametrize('case', list(BAD_RECORDS))
def test_an_unreadable_record_is_ignored_and_the_files_scanned(folder, scans, case):
    path = folder / corpus.CHECKED_IDS
    path.unlink()
    if case == 'fifo':
        os.mkfifo(path)
    elif case == 'folder':
        path.mkdir()
    else:
        content = BAD_RECORDS[case]
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    put_id(folder / 'val.bin', 1, 65535)
    assert 'token id 65535 at position 1' in refused(folder, folder / 'val.bin')
    assert scans


def test_a_record_for_a_changed_file_is_not_trusted(folder):
    corpus.load_corpus(folder)  # recorded
    put_id(folder / 'train.bin', 2, ROWS)  # the same size, a new modification and change time
    assert f'token id {ROWS} at position 2' in refused(folder, folder / 'train.bin')


# --- train.bin / val.bin ----------------------------------------------------------------------------------------

@pytest.mark.parametrize('case, said', [
    ('odd size', 'not a whole number'), ('one id more', 'meta.json says'), ('empty', 'meta.json says'),
    ('last id not the separator', 'not the separator'), ('folder', 'folder'), ('missing', 'missing'),
    ('link out', 'outside'),
])
def test_a_damaged_split_file_is_refused(folder, tmp_path, case, said):
    path = folder / 'train.bin'
    data = path.read_bytes()
    if case in ('folder', 'missing', 'link out'):
        path.unlink()
        if case == 'folder':
            path.mkdir()
        elif case == 'link out':
            shutil.copy(folder / 'val.bin', tmp_path / 'outside.bin')
            path.symlink_to(tmp_path / 'outside.bin')
    else:
        path.write_bytes({'odd size': data + b'\0', 'one id more': data + data[-2:], 'empty': b'',
                          'last id not the separator': data[:-2] + b'\1\0'}[case])
    message = refused(folder, path)
    assert said in message
    if case == 'missing':
        with pytest.raises(FileNotFoundError):
            corpus.load_corpus(folder)


def test_a_fifo_for_a_split_file_is_refused_without_hanging(folder):
    (folder / 'val.bin').unlink()
    os.mkfifo(folder / 'val.bin')
    assert 'not a regular file' in assert_refused(corpus.load_corpus, str(folder), names=folder / 'val.bin',
                                                  seconds=30)


# --- meta.json's fields ------------------------------------------------------------------------------------------

def set_field(meta, dotted, value):
    """Set meta's field at a dotted path ('splits.train.n_tokens') to value; the value DELETE removes it."""
    *parents, last = dotted.split('.')
    record = meta
    for key in parents:
        record = record[key]
    if value is DELETE:
        del record[last]
    else:
        record[last] = value


DELETE = object()
BAD_FIELDS = [
    ('format', ['gpt1-corpus-v1']), ('format', 'gpt3-corpus-v1'), ('format', DELETE), ('dtype', 'uint32'),
    ('byteorder', 'big'), ('n_vocab', '40478'), ('n_vocab', True), ('n_vocab', 40478.0), ('n_vocab', -1),
    ('n_vocab', 70000), ('n_vocab', 40000), ('n_vocab', DELETE), ('n_vocab', None), ('n_special', '1'),
    ('n_special', 2), ('n_special', 0), ('n_special', False), ('separator_id', 40477), ('separator_id', '40478'),
    ('separator_id', 1 << 70), ('separator_id', DELETE), ('separator', 5), ('n_tokens_note', []),
    ('splits', []), ('splits', None), ('splits.train', DELETE), ('splits.val', 'val.bin'),
    ('splits.train.n_tokens', '809'), ('splits.train.n_tokens', -1), ('splits.train.n_tokens', True),
    ('splits.train.n_tokens', 1e3), ('splits.train.n_tokens', 1 << 80), ('splits.train.n_tokens', DELETE),
    ('splits.train.file', '../train.bin'), ('splits.train.file', 3), ('splits.val.n_documents', '3'),
    ('splits.train.n_empty_skipped', -2), ('splits.train.max_id', '40478'), ('splits.train.max_id', 65536),
    ('splits.train.max_id', None),
    ('vocabulary', DELETE), ('vocabulary', 'model/'), ('vocabulary.encoder_path', 5),
    ('vocabulary.encoder_path', DELETE), ('vocabulary.bpe_path', None), ('vocabulary.encoder_sha256', 'abc'),
    ('vocabulary.encoder_sha256', 'F' * 64), ('vocabulary.bpe_sha256', 7), ('vocabulary.bpe_sha1', 'x'),
    ('settings', 'x'), ('settings.seed', '0'), ('settings.val_fraction', 2), ('settings.val_fraction', 'half'),
    ('settings.text_field', 5), ('settings.input', None),
]


@pytest.mark.parametrize('dotted, value', BAD_FIELDS, ids=[f'{d}={v!r}'[:60] for d, v in BAD_FIELDS])
def test_every_meta_field_of_the_wrong_type_or_range_is_refused(folder, dotted, value):
    meta = read_meta(folder)
    set_field(meta, dotted, value)
    write_meta(folder, meta)
    message = refused(folder, folder / 'meta.json')
    assert 'prepare the corpus again' in message


def write_old_meta(folder, sha1s, outside):
    """Rewrite the corpus folder's meta.json as the previous prepare_corpus.py (git 35e4441) wrote it: its build_meta's
    fields in its order, the vocabulary as the paths given on its command line (absolute by default) with their git
    blob SHA-1s (sha1s: encoder's, bpe's) and no SHA-256, no max_id, json.dumps(indent=2, ensure_ascii=False); and
    no checked_ids.json (it wrote none). The vocabulary paths name the files in the folder outside."""
    meta = read_meta(folder)
    family = corpus.corpus_family(meta)
    names = corpus.CORPUS_VOCABULARY[family]
    old = dict(format=meta['format'], dtype='uint16', byteorder='little', n_vocab=meta['n_vocab'],
               separator_id=meta['separator_id'], n_special=meta['n_special'], separator=meta['separator'],
               vocabulary=dict(encoder_path=str(outside / names[0]), encoder_sha1=sha1s[0],
                               bpe_path=str(outside / names[1]), bpe_sha1=sha1s[1]),
               splits={split: dict(file=f'{split}.bin', n_documents=meta['splits'][split]['n_documents'],
                                   n_tokens=meta['splits'][split]['n_tokens'],
                                   n_empty_skipped=meta['splits'][split]['n_empty_skipped'])
                       for split in corpus.SPLITS},
               n_tokens_note=meta['n_tokens_note'], settings=meta['settings'])
    (folder / 'meta.json').write_text(json.dumps(old, indent=2, ensure_ascii=False) + '\n', encoding='utf-8')
    (folder / corpus.CHECKED_IDS).unlink()
    outside.mkdir(exist_ok=True)
    for name in names:  # what the recorded paths lead to: not a vocabulary (read, it would be refused)
        (outside / name).write_text('not the vocabulary', encoding='utf-8')


@pytest.fixture(scope='module')
def gpt2_pristine(tmp_path_factory):
    """A tiny GPT-2 corpus as prepare_corpus.py writes it."""
    return write_structured_corpus(tmp_path_factory.mktemp('gpt2'), n_docs=6, extra=('--arch', 'gpt2'))


def shipped_sha1s(family):
    """The git blob SHA-1s of the vocabulary files this repository ships: GPT-1's as integrity.RELEASED_FILES pins
    them (the released files), GPT-2's computed from model/gpt2/."""
    import integrity
    if family == 'gpt1':
        return tuple(integrity.RELEASED_FILES[name] for name in corpus.CORPUS_VOCABULARY['gpt1'])
    return tuple(untrusted.git_blob_sha1(corpus.shipped_path('gpt2', role)) for role in corpus.ROLES)


@pytest.mark.parametrize('family', ['gpt1', 'gpt2'])
def test_an_older_corpus_of_the_shipped_vocabulary_opens(family, pristine, gpt2_pristine, tmp_path, scans):
    """A corpus prepared by the previous prepare_corpus.py (meta.json with absolute vocabulary paths and git blob
    SHA-1s, no SHA-256): its SHA-1s are the shipped vocabulary's, so it opens, the shipped files stand for the
    recorded paths (which lead outside the folder, to files that are not read), and its ids are scanned once."""
    folder = shutil.copytree(pristine if family == 'gpt1' else gpt2_pristine, tmp_path / 'corpus')
    write_old_meta(folder, shipped_sha1s(family), tmp_path / 'elsewhere')
    train, val, meta = corpus.load_corpus(folder)
    shipped = tuple(corpus.shipped_path(family, role) for role in corpus.ROLES)
    assert pretrain.vocabulary_paths(meta) == shipped  # what pretrain.py builds its tokenizer from
    assert sorted(scans) == sorted([len(train), len(val)])
    assert checked_ids(folder)['train']['max_id'] == int(np.max(train))
    corpus.load_corpus(folder)
    assert len(scans) == 2  # recorded: the second open scans nothing


@pytest.mark.parametrize('which', ['encoder', 'bpe', 'both', 'none'])
def test_an_older_corpus_of_another_vocabulary_is_refused_with_the_remedy(folder, tmp_path, which):
    """An old record whose SHA-1 is not the shipped file's (another vocabulary, outside the folder: it cannot be
    trusted), or one with no checksum at all: refused, naming meta.json, saying to prepare the corpus again."""
    good = shipped_sha1s('gpt1')
    other = hashlib.sha1(b'another vocabulary').hexdigest()
    sha1s = {'encoder': (other, good[1]), 'bpe': (good[0], other), 'both': (other, other), 'none': good}[which]
    write_old_meta(folder, sha1s, tmp_path / 'elsewhere')
    if which == 'none':
        meta = read_meta(folder)
        del meta['vocabulary']['encoder_sha1'], meta['vocabulary']['bpe_sha1']
        write_meta(folder, meta)
    message = refused(folder, folder / 'meta.json')
    assert 'SHA-256' in message and 'prepare the corpus again' in message
    assert str(tmp_path / 'elsewhere') not in message
    if which != 'none':
        assert other in message and 'is not the one this repository ships' in message


def test_links_planted_at_the_record_and_its_temporary_are_not_written_through(folder, tmp_path):
    """A downloaded folder with symlinks at checked_ids.json and at the temporary name an open would write it to
    (NAME.tmpPID: PIDs are predictable), leading to a file elsewhere: opening (which scans the copied files and writes
    the record) replaces the links and leaves that file unchanged."""
    victim = tmp_path / 'victim'
    victim.write_bytes(b'precious')
    (folder / corpus.CHECKED_IDS).unlink()
    for name in (corpus.CHECKED_IDS, f'{corpus.CHECKED_IDS}.tmp{os.getpid()}'):
        os.symlink(victim, folder / name)
    train, _, _ = corpus.load_corpus(folder)
    assert victim.read_bytes() == b'precious'
    assert not os.path.islink(folder / corpus.CHECKED_IDS)
    assert checked_ids(folder)['train']['max_id'] == int(np.max(train))


NOT_META = {'deep list': '[' * 100000, 'deep object': '{"a": ' * 100000, 'list': '[]', 'string': '"meta"',
            'NaN': '{"format": NaN}', 'empty': '', 'not UTF-8': b'\xff\xfe{}', 'too large': b' ' * (2 << 20)}


@pytest.mark.parametrize('content', list(NOT_META.values()), ids=list(NOT_META))
def test_meta_json_that_is_not_a_meta_object(folder, content):
    data = content.encode() if isinstance(content, str) else content
    (folder / 'meta.json').write_bytes(data)
    refused(folder, folder / 'meta.json')


def test_a_meta_json_leaving_the_folder_or_not_a_file(folder, tmp_path):
    shutil.copy(folder / 'meta.json', tmp_path / 'elsewhere.json')
    (folder / 'meta.json').unlink()
    (folder / 'meta.json').symlink_to(tmp_path / 'elsewhere.json')
    assert 'outside' in refused(folder, folder / 'meta.json')
    (folder / 'meta.json').unlink()
    os.mkfifo(folder / 'meta.json')
    assert_refused(corpus.load_corpus, str(folder), names=folder / 'meta.json', seconds=30)


# --- the vocabulary meta.json names --------------------------------------------------------------------------------

def name_vocabulary(folder, path, sha=None, role='encoder'):
    """Point meta.json's vocabulary file of role at path, with the SHA-256 sha (default: the file's, if it exists)."""
    meta = read_meta(folder)
    meta['vocabulary'][f'{role}_path'] = str(path)
    if sha is None and os.path.isfile(os.path.join(folder, path)):
        sha = sha256(os.path.join(folder, path))
    if sha is not None:
        meta['vocabulary'][f'{role}_sha256'] = sha
    write_meta(folder, meta)


@pytest.mark.parametrize('name', [GPT2_ENCODER, 'model/gpt2/encoder.json', '../outside.json', '../../nothere.json',
                                  '/nonexistent/encoder.json', 'sub/../../outside.json', '', 'a\0b'])
def test_a_vocabulary_outside_the_folder_is_refused_without_saying_if_it_exists(folder, tmp_path, name):
    """GPT-2's shipped encoder.json named as a GPT-1 corpus's vocabulary (the attack: pretrain trained on it and copied
    it into the run as GPT-1's vocabulary), paths out of the folder, absolute paths: refused, with the same words
    whether or not the outside path exists."""
    shutil.copy(GPT2_ENCODER, tmp_path / 'outside.json')
    name_vocabulary(folder, name, sha=sha256(GPT2_ENCODER))
    message = refused(folder, folder / 'meta.json')
    if name.startswith(('/', '../', 'sub/')):
        assert 'outside its folder' in message
        assert message.replace(name, 'NAME') == refused_message_for(folder, '../../nothere.json')


def refused_message_for(folder, name):
    """The message for meta.json naming the (missing) outside path name, with name replaced by NAME."""
    name_vocabulary(folder, name)
    with pytest.raises(untrusted.BadFile) as err:
        corpus.load_corpus(folder)
    return str(err.value).replace(name, 'NAME')


def test_a_link_in_the_folder_leading_out_is_refused(folder):
    os.symlink(GPT2_ENCODER, folder / 'encoder.json')
    name_vocabulary(folder, 'encoder.json', sha=sha256(GPT2_ENCODER))
    assert 'outside its folder' in refused(folder, folder / 'meta.json')


def test_another_vocabulary_copied_into_the_folder_must_hold_n_vocab_tokens(folder):
    """GPT-2's encoder.json copied in as the GPT-1 corpus's vocabulary, its checksum recorded: it holds 50257 tokens,
    not the corpus's 40478."""
    shutil.copy(GPT2_ENCODER, folder / 'encoder_bpe_40000.json')
    name_vocabulary(folder, 'encoder_bpe_40000.json')
    assert '50257 tokens' in refused(folder, folder / 'meta.json')


@pytest.mark.parametrize('role', ['encoder', 'bpe'])
def test_a_checksum_mismatch_is_refused(folder, role):
    name_vocabulary(folder, read_meta(folder)['vocabulary'][f'{role}_path'], sha='0' * 64, role=role)
    assert 'SHA-256' in refused(folder, folder / 'meta.json')


def test_a_copy_in_the_folder_that_changed_is_refused(folder):
    shutil.copy(os.path.join(REPOSITORY, 'model', 'encoder_bpe_40000.json'), folder / 'encoder_bpe_40000.json')
    name_vocabulary(folder, 'encoder_bpe_40000.json')
    corpus.load_corpus(folder)  # the copy, checked, is read
    with open(folder / 'encoder_bpe_40000.json', 'ab') as f:
        f.write(b' ')
    assert 'SHA-256' in refused(folder, folder / 'meta.json')
    (folder / 'encoder_bpe_40000.json').unlink()
    assert 'does not hold' in refused(folder, folder / 'meta.json')


def test_a_custom_vocabulary_is_copied_into_the_corpus(tmp_path):
    """prepare_corpus.py copies a vocabulary it does not ship into the corpus folder, names the copy, and
    load_corpus reads the copy (the original may be gone)."""
    import prepare_corpus
    enc, bpe = tmp_path / 'enc.json', tmp_path / 'merges.bpe'
    enc.write_text(json.dumps({'a</w>': 0, 'b</w>': 1, 'ab</w>': 2, 'a': 3, 'b': 4, '.</w>': 5}), encoding='utf-8')
    bpe.write_text('#version: 0.2\na b</w>\n', encoding='utf-8')
    (tmp_path / 'c.txt').write_text('ab a. b\n\nzz ab\n', encoding='utf-8')
    out = tmp_path / 'out'
    assert prepare_corpus.main(['--input', str(tmp_path / 'c.txt'), '--out', str(out), '--encoder_path', str(enc),
                                '--bpe_path', str(bpe), '--val_fraction', '0', '--quiet', '--workers', '1']) == 0
    vocabulary = read_meta(out)['vocabulary']
    assert (vocabulary['encoder_path'], vocabulary['bpe_path']) == ('encoder_bpe_40000.json', 'vocab_40000.bpe')
    assert (out / 'encoder_bpe_40000.json').read_bytes() == enc.read_bytes()
    enc.unlink()
    bpe.unlink()
    train, _, meta = corpus.load_corpus(out)
    assert meta['vocabulary']['encoder_path'] == str(out / 'encoder_bpe_40000.json')
    assert train.max() == 6  # the separator, n_vocab


def test_pretrain_refuses_a_corpus_naming_gpt2s_vocabulary_in_one_line(folder, tmp_path, capsys):
    name_vocabulary(folder, GPT2_ENCODER, sha=sha256(GPT2_ENCODER))
    rc = pretrain.main(['--corpus', str(folder), '--out', str(tmp_path / 'run'), '--n_embd', '32', '--n_head', '4',
                        '--n_layer', '2', '--n_ctx', '16', '--n_updates', '1', '--device', 'cpu', '--quiet'])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith('pretrain.py: error: ') and err.count('\n') == 1
    assert str(folder / 'meta.json') in err and 'outside its folder' in err
    assert not (tmp_path / 'run' / 'encoder_bpe_40000.json').exists()


# --- mutations of meta.json: only BadFile escapes -----------------------------------------------------------------

@pytest.fixture(scope='module')
def mutable(pristine, tmp_path_factory):
    """A copy of the pristine corpus whose meta.json each example rewrites, and the pristine meta.json's bytes."""
    folder = shutil.copytree(pristine, tmp_path_factory.mktemp('mutable') / 'corpus')
    return folder, (pristine / 'meta.json').read_bytes()


@settings(max_examples=60, deadline=None)
@given(flips=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(1, 255)), max_size=4),
       cut=st.integers(0, 1 << 16))
def test_mutated_meta_json_opens_or_is_one_bad_file(mutable, flips, cut):
    folder, original = mutable
    data = bytearray(original)
    for position, byte in flips:
        data[position % len(data)] ^= byte
    (folder / 'meta.json').write_bytes(bytes(data[:cut]))
    try:
        train, val, meta = corpus.load_corpus(folder)
    except untrusted.BadFile as err:
        assert '\n' not in str(err) and str(folder) in str(err)
        return
    rows = meta['n_vocab'] + meta['n_special']
    assert int(train.max()) < rows and int(val.max()) < rows and rows <= 1 << 16


def test_a_gpt2_corpus_names_gpt2s_vocabulary_and_separator(tmp_path):
    folder = write_structured_corpus(tmp_path, n_docs=6, extra=('--arch', 'gpt2'))
    train, _, meta = corpus.load_corpus(folder)
    assert meta['vocabulary']['encoder_path'] == GPT2_ENCODER and train[-1] == 50256
    pristine = read_meta(folder)
    for change in ({'separator_id': 50255}, {'n_special': 1}, {'n_vocab': 50256}):
        write_meta(folder, dict(pristine, **change))
        refused(folder, folder / 'meta.json')
    write_meta(folder, pristine)
    gpt1_encoder = os.path.join(REPOSITORY, 'model', 'encoder_bpe_40000.json')
    name_vocabulary(folder, 'model/encoder_bpe_40000.json', sha=sha256(gpt1_encoder))  # GPT-1's, by its shipped name
    assert 'does not hold' in refused(folder, folder / 'meta.json')
