"""Attacks on the four vocabulary readers (GPT-1's encoder_bpe_40000.json and vocab_40000.bpe, GPT-2's encoder.json
and vocab.bpe): every damaged or crafted file is one untrusted.BadFile naming it, within bounded memory and time, and
a vocabulary whose ids are not exactly 0..n-1 is refused (an id past the tokens would read a special or position row).
"""
import json
import os

import pytest
from hypothesis import given, settings, strategies as st

import encoder_gpt2
import untrusted
from models import tokenizer_from_files
from tests.helpers import assert_refused
from text_utils import BPE_PATH, ENCODER_PATH, load_bpe_ranks, load_encoder

# A small GPT-1-like vocabulary (the shape of encoder_bpe_40000.json and vocab_40000.bpe).
SMALL_ENCODER = {'a</w>': 0, 'b</w>': 1, 'ab</w>': 2, 'a': 3, 'b': 4, '.</w>': 5, 'the</w>': 6, 'th': 7}
SMALL_MERGES = '#version: 0.2\na b</w>\nt h\nth e</w>\n'
GPT2_DIR = encoder_gpt2.DEFAULT_MODEL_DIR


def small_gpt2_files():
    """Return (encoder.json bytes, vocab.bpe bytes) of a small byte-level vocabulary: the 256 byte tokens in GPT-2's
    order, three merges, <|endoftext|> last."""
    chars = list(encoder_gpt2.bytes_to_unicode().values())
    merges = [('Ġ', 't'), ('h', 'e'), ('Ġt', 'he')]
    encoder = {c: i for i, c in enumerate(chars)}
    for first, second in merges:
        encoder[first + second] = len(encoder)
    encoder[encoder_gpt2.ENDOFTEXT] = len(encoder)
    bpe = '#version: 0.2\n' + ''.join(f'{a} {b}\n' for a, b in merges)
    return json.dumps(encoder, ensure_ascii=False).encode(), bpe.encode()


SMALL_GPT2 = small_gpt2_files()


@pytest.fixture(scope='module')
def released_encoder():
    """The released GPT-1 encoder_bpe_40000.json as a dict (read once)."""
    with open(ENCODER_PATH, encoding='utf-8') as f:
        return json.load(f)


def write(path, content):
    """Write str or bytes content to path; return path."""
    data = content.encode('utf-8') if isinstance(content, str) else content
    path.write_bytes(data)
    return path


def refused(fn, path, *args):
    """Assert fn(path, *args) raises one BadFile (not another error) on one line naming path; return its message."""
    with pytest.raises(untrusted.BadFile) as err:
        fn(path, *args)
    message = str(err.value)
    assert '\n' not in message and str(path) in message, message
    return message


# --- GPT-1: ids exactly 0..n-1 -------------------------------------------------------------------------------------

def test_moving_a_token_to_a_position_row_id_is_refused(tmp_path, released_encoder):
    """The attack: 'the</w>' moved to id 40541 (past the 40478 tokens, in the position rows) passed the tokenizer
    check (which counts tokens) and 'the' read a position row. Now the vocabulary is refused when read."""
    moved = dict(released_encoder, **{'the</w>': 40541})
    path = write(tmp_path / 'encoder_bpe_40000.json', json.dumps(moved))
    message = refused(load_encoder, path)
    assert "'the</w>'" in message and '40541' in message and '0..40477' in message
    with pytest.raises(untrusted.BadFile, match='40541'):
        tokenizer_from_files('gpt1', str(path), BPE_PATH)  # what load_tokenizer / pretrain / train build


@pytest.mark.parametrize('content, said', [
    ({'a': 0, 'b': True}, 'id True'),                 # a bool is no id (True == 1 would pass a plain int check)
    ({'a': False, 'b': 1}, 'id False'),
    ({'a': 0, 'b': 1.0}, 'id 1.0'),
    ({'a': 0, 'b': '1'}, "id '1'"),
    ({'a': 0, 'b': None}, 'id None'),
    ({'a': 0, 'b': [1]}, 'id [1]'),
    ({'a': 0, 'b': -1}, 'id -1'),
    ({'a': 0, 'b': 2}, 'must be 0..1'),               # a gap: id 2 of two tokens
    ({'a': 1, 'b': 1}, 'which another token has'),    # a duplicate (and so a gap)
    ({'a': 0, 'b': 10 ** 30}, 'must be 0..1'),
    ({'': 0}, 'not a non-empty string'),
    ({}, 'non-empty JSON object'),
    ([0, 1], 'non-empty JSON object'),
    ('a', 'non-empty JSON object'),
])
def test_gpt1_encoder_ids_must_be_exactly_0_to_n_minus_1(tmp_path, content, said):
    path = write(tmp_path / 'enc.json', json.dumps(content))
    assert said in refused(load_encoder, path)


def test_gpt1_small_vocabulary_reads(tmp_path):
    enc = write(tmp_path / 'enc.json', json.dumps(SMALL_ENCODER))
    bpe = write(tmp_path / 'merges.bpe', SMALL_MERGES)
    assert load_encoder(enc) == SMALL_ENCODER
    assert load_bpe_ranks(bpe) == {('a', 'b</w>'): 0, ('t', 'h'): 1, ('th', 'e</w>'): 2}


@pytest.mark.parametrize('content, said', [
    ('#version: 0.2\na b c\n', 'line 2'),
    ('#version: 0.2\na\n', 'line 2'),
    ('#version: 0.2\na b\n\nc d\n', 'line 3'),       # an empty line inside
    ('a b\n', '#version'),
    ('', '#version'),
    ('#version: 0.2\n', 'no merges'),
    (b'#version: 0.2\na \xff\n', 'not UTF-8'),
    ('[' * 100000, '#version'),
], ids=['three symbols', 'one symbol', 'empty line', 'no header', 'empty', 'no merges', 'not UTF-8', 'deep list'])
def test_gpt1_merges_must_be_well_formed(tmp_path, content, said):
    path = write(tmp_path / 'merges.bpe', content)
    assert said in refused(load_bpe_ranks, path)


NOT_JSON = {'deep list': '[' * 100000, 'deep object': '{"a": ' * 100000, 'NaN': '{"a": NaN}',
            'Infinity': '{"a": 0, "b": Infinity}', 'html': '<html>404</html>', 'cut': '{"a": 0'}


@pytest.mark.parametrize('content', list(NOT_JSON.values()), ids=list(NOT_JSON))
def test_gpt1_encoder_that_is_not_a_json_vocabulary(tmp_path, content):
    assert 'not a JSON vocabulary' in refused(load_encoder, write(tmp_path / 'enc.json', content))


def test_gpt1_encoder_that_is_not_utf8(tmp_path):
    assert 'not UTF-8' in refused(load_encoder, write(tmp_path / 'enc.json', b'{"\xff": 0}'))


# --- GPT-2 -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('change, said', [
    ({'!': True}, 'not an integer'),                  # '!' is id 0: a bool in its place
    ({'!': 0.0}, 'not an integer'),
    ({'!': '0'}, 'not an integer'),
    ({'!': 50257}, 'must be 0..50256, once each'),    # an id past the tokens
    ({'!': 1}, 'which another token has'),           # a duplicate
])
def test_gpt2_encoder_ids_must_be_exactly_0_to_n_minus_1(tmp_path, change, said):
    encoder = json.loads((GPT2_DIR / 'encoder.json').read_bytes())
    path = write(tmp_path / 'encoder.json', json.dumps(dict(encoder, **change)))
    message = refused(encoder_gpt2.read_encoder_json, path)
    assert said in message and 'encoder.json' in message


def test_gpt2_permuted_ids_are_refused_as_a_pair(tmp_path):
    """Two ids swapped: each file alone is well formed, but the ids are not the merge order: refused, both named."""
    encoder = json.loads((GPT2_DIR / 'encoder.json').read_bytes())
    encoder['!'], encoder['"'] = encoder['"'], encoder['!']
    enc = write(tmp_path / 'encoder.json', json.dumps(encoder))
    with pytest.raises(untrusted.BadFile) as err:
        encoder_gpt2.encoder_from_files(enc, GPT2_DIR / 'vocab.bpe')
    assert str(enc) in str(err.value) and 'not the merge order' in str(err.value)
    (tmp_path / 'vocab.bpe').write_bytes((GPT2_DIR / 'vocab.bpe').read_bytes())
    with pytest.raises(untrusted.BadFile, match='not the merge order'):
        encoder_gpt2.get_encoder(tmp_path)


@pytest.mark.parametrize('content', ['[' * 100000, '{"a": ' * 100000, '[1, 2]', '{"<|endoftext|>": NaN}', ''],
                         ids=['deep list', 'deep object', 'list', 'NaN', 'empty'])
def test_gpt2_encoder_that_is_not_json_of_the_vocabulary(tmp_path, content):
    refused(encoder_gpt2.read_encoder_json, write(tmp_path / 'encoder.json', content))


@pytest.mark.parametrize('content', ['#version: 0.2\na b c\n', 'a b\n', '#version: 0.2\na b', '[' * 100000,
                                     b'#version: 0.2\n\xff \xfe\n'],
                         ids=['three symbols', 'no header', 'no final newline', 'deep list', 'not UTF-8'])
def test_gpt2_merges_must_be_well_formed(tmp_path, content):
    refused(encoder_gpt2.read_merges, write(tmp_path / 'vocab.bpe', content))


def test_small_gpt2_vocabulary_reads(tmp_path):
    enc = write(tmp_path / 'encoder.json', SMALL_GPT2[0])
    bpe = write(tmp_path / 'vocab.bpe', SMALL_GPT2[1])
    encoder = encoder_gpt2.encoder_from_files(enc, bpe)
    assert encoder.encode(' the') == [258] and encoder.eot_token == 259


# --- not regular files, too large, missing: the four readers alike ---------------------------------------------

READERS = {'gpt1 encoder': load_encoder, 'gpt1 merges': load_bpe_ranks, 'gpt2 encoder': encoder_gpt2.read_encoder_json,
           'gpt2 merges': encoder_gpt2.read_merges}


@pytest.mark.parametrize('reader', sorted(READERS))
def test_a_fifo_a_folder_and_a_huge_file_are_refused_within_bounds(tmp_path, reader):
    fifo = tmp_path / 'fifo'
    os.mkfifo(fifo)
    assert 'not a regular file' in assert_refused(READERS[reader], str(fifo), names=fifo, seconds=20)
    folder = tmp_path / 'folder'
    folder.mkdir()
    assert 'folder' in refused(READERS[reader], folder)
    huge = tmp_path / 'huge'
    with open(huge, 'wb') as f:
        f.truncate(1 << 40)  # sparse: 1 TB stated, nothing read
    assert_refused(READERS[reader], str(huge), names=huge, memory=256 << 20, seconds=20)
    with pytest.raises(untrusted.MissingFile) as err:
        READERS[reader](tmp_path / 'nope')
    assert isinstance(err.value, FileNotFoundError) and str(tmp_path / 'nope') in str(err.value)


@pytest.mark.parametrize('reader', sorted(READERS))
def test_a_symlink_leaving_its_folder_is_refused(tmp_path, reader):
    outside = tmp_path / 'outside'
    outside.mkdir()
    target = write(outside / 'target', json.dumps(SMALL_ENCODER))
    (tmp_path / 'inside').mkdir()
    link = tmp_path / 'inside' / 'vocab'
    link.symlink_to(target)
    message = refused(READERS[reader], link)
    # what to do is to pass the real path, not to fetch another copy of the file
    assert "is a link that leads outside" in message and "pass the file's real path" in message, message
    assert 'unmodified file' not in message and 'put the released' not in message, message


# --- one reader, one id rule for both families ---------------------------------------------------------------

def test_one_size_limit_for_the_four_readers(tmp_path, monkeypatch):
    """The vocabulary size limit is one constant (text_utils.VOCAB_MAX_BYTES), read by GPT-1's and GPT-2's readers
    alike: lowered, it refuses every file above it."""
    import text_utils
    monkeypatch.setattr(text_utils, 'VOCAB_MAX_BYTES', 10)
    files = {'gpt1 encoder': json.dumps(SMALL_ENCODER), 'gpt1 merges': SMALL_MERGES,
             'gpt2 encoder': SMALL_GPT2[0], 'gpt2 merges': SMALL_GPT2[1]}
    for reader, content in files.items():
        path = write(tmp_path / reader.replace(' ', '_'), content)
        assert 'more than any' in refused(READERS[reader], path), reader


@pytest.mark.parametrize('change, said', [
    (dict(b=True), "token 'b' has id True, not an integer"),
    (dict(b=0), "token 'b' has id 0, which another token has: the ids must be 0..{top}, once each"),
    (dict(b=10 ** 6), "token 'b' has id 1000000, but the ids of {n} tokens must be 0..{top}, once each"),
], ids=['bool', 'duplicate', 'past the end'])
def test_one_id_rule_for_both_families(tmp_path, change, said):
    """The ids-exactly-0..n-1 rule is one check (text_utils.check_token_ids): GPT-1's and GPT-2's encoders with the
    same fault are refused in the same words."""
    gpt1 = dict({'a</w>': 0, 'b': 1}, **change)
    gpt2 = dict(json.loads(SMALL_GPT2[0]), **change)
    for reader, encoder in ((load_encoder, gpt1), (encoder_gpt2.read_encoder_json, gpt2)):
        path = write(tmp_path / 'enc.json', json.dumps(encoder))
        message = refused(reader, path)
        assert said.format(n=len(encoder), top=len(encoder) - 1) in message, message


# --- mutations: only BadFile escapes -----------------------------------------------------------------------------

def mutate(data, flips, cut):
    """Return data with each (position, byte) of flips XORed in and then cut to at most cut bytes."""
    data = bytearray(data)
    for position, byte in flips:
        if data:
            data[position % len(data)] ^= byte
    return bytes(data[:cut])


MUTATIONS = dict(flips=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(1, 255)), max_size=4),
                 cut=st.integers(0, 1 << 20))


@settings(max_examples=60, deadline=None)
@given(which=st.sampled_from(['encoder', 'merges']), **MUTATIONS)
def test_gpt1_mutated_vocabulary_is_read_or_one_bad_file(tmp_path_factory, which, flips, cut):
    folder = tmp_path_factory.mktemp('gpt1', numbered=True)
    original = json.dumps(SMALL_ENCODER).encode() if which == 'encoder' else SMALL_MERGES.encode()
    path = write(folder / 'vocab', mutate(original, flips, cut))
    reader = load_encoder if which == 'encoder' else load_bpe_ranks
    try:
        value = reader(path)
    except untrusted.BadFile as err:
        assert str(path) in str(err) and '\n' not in str(err)
        return
    if which == 'encoder':  # what is read is a vocabulary the model can use: ids exactly 0..n-1
        assert sorted(value.values()) == list(range(len(value)))
        assert all(untrusted.is_int(i) for i in value.values())
    else:
        assert value and all(len(pair) == 2 for pair in value)


@settings(max_examples=40, deadline=None)
@given(which=st.sampled_from(['encoder', 'merges']), **MUTATIONS)
def test_gpt2_mutated_vocabulary_is_read_or_one_bad_file(tmp_path_factory, which, flips, cut):
    folder = tmp_path_factory.mktemp('gpt2', numbered=True)
    encoder, merges = SMALL_GPT2
    if which == 'encoder':
        encoder = mutate(encoder, flips, cut)
    else:
        merges = mutate(merges, flips, cut)
    enc, bpe = write(folder / 'encoder.json', encoder), write(folder / 'vocab.bpe', merges)
    try:
        result = encoder_gpt2.encoder_from_files(enc, bpe)
    except untrusted.BadFile as err:
        assert (str(enc) if which == 'encoder' else str(bpe)) in str(err) and '\n' not in str(err)
        return
    assert sorted(result.encoder.values()) == list(range(result.n_vocab))
