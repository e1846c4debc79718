"""Tests for text_utils (TF: text_utils.py): the original's ids, decode, errors, properties."""
import json
import string
from pathlib import Path

import ftfy
import numpy as np
import pytest
import spacy
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import utils
from text_utils import TextEncoder, get_pairs, text_standardize

MODEL_DIR = Path(__file__).resolve().parents[1] / 'model'
ENCODER_PATH = MODEL_DIR / 'encoder_bpe_40000.json'
BPE_PATH = MODEL_DIR / 'vocab_40000.bpe'
FIXTURES = Path(__file__).resolve().parent / 'fixtures'


@pytest.fixture(scope='module')
def text_encoder():
    return TextEncoder(ENCODER_PATH, BPE_PATH)


@pytest.fixture(scope='module')
def reference():
    with open(FIXTURES / 'bpe_reference.json', encoding='utf-8') as f:
        ref = json.load(f)
    with open(FIXTURES / 'bpe_texts.json', encoding='utf-8') as f:
        texts = json.load(f)
    assert [r['text'] for r in ref] == texts
    return texts, [r['ids'] for r in ref]


@pytest.fixture(scope='module')
def blank_nlp():
    return spacy.blank('en')


@pytest.fixture(scope='module')
def original():
    """The original TF-era text_utils' outputs on 400 texts and 150 lists of texts (make_oracle_fixtures.py)."""
    with open(FIXTURES / 'original_text_utils.json', encoding='ascii') as f:
        return json.load(f)


def normalised_tokens(nlp, text):
    """The tokens encode() sees, computed independently: lower-cased spaCy tokens of the standardised text.

    The original maps spaCy's token '\\n ' (newline plus space) to the single piece '\\n</w>', so it is '\\n'.
    """
    tokens = [t.text.lower() for t in nlp(text_standardize(ftfy.fix_text(text)))]
    return ['\n' if t == '\n ' else t for t in tokens]


def test_encode_matches_original_ids(text_encoder, reference):
    texts, ids = reference
    assert text_encoder.encode(texts, verbose=False) == ids


def test_encode_one_at_a_time_and_uncached_match_batched(reference):
    texts, ids = reference
    fresh = TextEncoder(ENCODER_PATH, BPE_PATH, cache_size=3)  # a tiny cache is cleared over and over
    assert [fresh.encode([t], verbose=False)[0] for t in texts] == ids
    assert len(fresh.cache) <= 3
    assert fresh.encode(texts, verbose=False, batch_size=2) == ids


def test_cache_holds_tokens_and_bpe_is_consistent(text_encoder):
    text_encoder.encode(['Jim bought a chew toy.'], verbose=False)
    assert 'chew' in text_encoder.cache
    for token in ['chew', 'bachelorette', 'unbelievably', 'a', 'qzxv']:
        pieces = text_encoder.bpe(token).split(' ')
        assert pieces[-1].endswith('</w>') and not any(p.endswith('</w>') for p in pieces[:-1])
        assert ''.join(pieces).replace('</w>', '') == token


def test_encode_progress_goes_to_stderr_only(text_encoder, capsys, monkeypatch):
    # not on a terminal, the bar (one tqdm would erase: leave=False) writes a line every PROGRESS_INTERVAL_S and none
    # at its end: a line at every text here
    monkeypatch.setattr(utils, 'PROGRESS_INTERVAL_S', 0)
    text_encoder.encode(['Hello there.'] * 3, verbose=True)
    captured = capsys.readouterr()
    assert captured.out == '' and captured.err != ''
    text_encoder.encode(['Hello there.'] * 3, verbose=False)
    captured = capsys.readouterr()
    assert captured.out == '' and captured.err == ''


def test_encode_rejects_a_bare_str(text_encoder):
    with pytest.raises(TypeError, match=r'encode\(\[text\]\)'):
        text_encoder.encode('Hello', verbose=False)


def test_a_text_longer_than_spacys_guard_is_tokenized_whole(text_encoder):
    """spaCy refuses texts over nlp.max_length characters (1,000,000 by default); the encoder lifts the guard, and the
    long text's ids are those of its lines encoded one by one, joined by the newline's id."""
    line = 'Thou art a villain, sir.'
    n = 1_000_000 // len(line) + 1
    text = '\n'.join([line] * n)
    assert len(text) > 1_000_000
    newline = text_encoder.encoder['\n</w>']
    one = text_encoder.encode([line], verbose=False)[0]
    assert text_encoder.encode([text], verbose=False)[0] == ((one + [newline]) * n)[:-1]


def test_text_standardize_hand_computed():
    assert text_standardize('a—b–c―d') == 'a - b - c - d'
    assert text_standardize('wait…') == 'wait...'
    assert text_standardize('it´s') == "it's"
    assert text_standardize('(hi)!!') == '( hi ) !!'
    assert text_standardize('  x \t\n\n  y  ') == 'x \n y'
    assert text_standardize('a/b\\c') == 'a / b\\c'  # the original does not split backslashes (see text_utils)


def test_get_pairs():
    assert get_pairs(('h', 'e', 'l', 'l', 'o</w>')) == {('h', 'e'), ('e', 'l'), ('l', 'l'), ('l', 'o</w>')}
    assert get_pairs(('a</w>',)) == set()


def test_newline_token_special_case(text_encoder):
    newline_id = text_encoder.encoder['\n</w>']
    assert text_encoder.bpe('\n ') == '\n</w>'
    ids = text_encoder.encode(['one\ntwo'], verbose=False)[0]
    assert ids == [text_encoder.encoder['one</w>'], newline_id, text_encoder.encoder['two</w>']]
    assert text_encoder.decode(ids) == 'one \n two'


def test_decode_joins_pieces_and_ends_words(text_encoder):
    enc = text_encoder.encoder
    ids = text_encoder.encode(['Max loved the bachelorette party.'], verbose=False)[0]
    assert text_encoder.decode(ids) == 'max loved the bachelorette party .'
    assert text_encoder.decode([enc['mo'], enc['ji'], enc['bake</w>'], enc['world</w>']]) == 'mojibake world'
    assert text_encoder.decode([enc['mo'], enc['ji']]) == 'moji'  # an unfinished word stays unfinished
    assert text_encoder.decode(np.array(ids)) == text_encoder.decode(ids)
    assert text_encoder.decode([]) == ''


def test_decode_unknown_special_and_position_ids():
    te = TextEncoder(ENCODER_PATH, BPE_PATH)
    n_vocab = len(te.encoder)
    hi = te.encoder['hi</w>']
    assert te.decode([0, hi]) == '<unk>hi'  # id 0 is the vocabulary's '<unk>'
    assert te.decode([hi, n_vocab, n_vocab + 7, -1, hi]) == 'hi hi'  # ids outside the vocabulary skipped
    # tokens added to .encoder after construction (and after a first decode) are shown by name
    te.encoder['_start_'] = len(te.encoder)
    te.encoder['_delimiter_'] = len(te.encoder)
    te.encoder['_classify_'] = len(te.encoder)
    start, delim, clf = (te.encoder[k] for k in ('_start_', '_delimiter_', '_classify_'))
    assert te.decode([start, hi, te.encoder['he'], delim, hi, clf, clf + 1]) == \
        '_start_ hi he _delimiter_ hi _classify_'


@pytest.mark.parametrize('which', ['encoder', 'bpe'])
def test_missing_vocabulary_file(tmp_path, which):
    paths = {'encoder': ENCODER_PATH, 'bpe': BPE_PATH}
    paths[which] = tmp_path / 'nope'
    with pytest.raises(FileNotFoundError) as e:
        TextEncoder(paths['encoder'], paths['bpe'])
    msg = str(e.value)
    assert str(tmp_path / 'nope') in msg and 'finetune-transformer-lm' in msg and '\n' not in msg


@pytest.mark.parametrize('content, match', [
    ('<html>404</html>', 'not a JSON vocabulary'),
    ('version https://git-lfs.github.com/spec/v1\n', 'not a JSON vocabulary'),
    ('[1, 2]', 'JSON object'),
    ('{"a": "1"}', "token 'a' has id '1'"),
])
def test_malformed_encoder_file(tmp_path, content, match):
    path = tmp_path / 'encoder.json'
    path.write_text(content, encoding='utf-8')
    with pytest.raises(ValueError, match=match) as e:
        TextEncoder(path, BPE_PATH)
    assert str(path) in str(e.value) and 'finetune-transformer-lm' in str(e.value) and '\n' not in str(e.value)


@pytest.mark.parametrize('content, match', [
    ('t h\nth e\n', 'line 1 .* expected the "#version" header'),
    ('#version: 0.2\nt h\nth e r\n', 'line 3 .* expected two symbols'),
    ('#version: 0.2\n', 'no merges'),
])
def test_malformed_bpe_file(tmp_path, content, match):
    path = tmp_path / 'vocab.bpe'
    path.write_text(content, encoding='utf-8')
    with pytest.raises(ValueError, match=match) as e:
        TextEncoder(ENCODER_PATH, path)
    assert str(path) in str(e.value) and '\n' not in str(e.value)


def test_bpe_file_without_final_newline_keeps_last_merge(tmp_path):
    path = tmp_path / 'vocab.bpe'
    path.write_text('#version: 0.2\nt h\nth e</w>', encoding='utf-8')
    te = TextEncoder(ENCODER_PATH, path)
    assert te.bpe_ranks == {('t', 'h'): 0, ('th', 'e</w>'): 1}
    assert te.bpe('the') == 'the</w>'


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=80))
def test_any_text_encodes_to_valid_ids(text_encoder, blank_nlp, text):
    ids = text_encoder.encode([text], verbose=False)[0]
    assert all(isinstance(i, int) and 0 <= i < len(text_encoder.decoder) for i in ids)
    assert len(ids) >= len(normalised_tokens(blank_nlp, text))  # every token gives at least one piece


ROUND_TRIP_ALPHABET = string.ascii_letters + string.digits + string.punctuation + ' \n\téèàçüñ€£'


@settings(max_examples=80, deadline=None)
@given(st.text(alphabet=ROUND_TRIP_ALPHABET, max_size=80))
def test_decode_inverts_encode_up_to_normalisation(text_encoder, blank_nlp, text):
    """decode(encode(s)) is the normalised tokens of s joined by single spaces.

    Normalised tokens: the lower-cased spaCy tokens of text_standardize(ftfy.fix_text(s)), with '\\n '
    written '\\n'. Holds for texts whose BPE pieces are all in the vocabulary (the rest become id 0).
    """
    tokens = normalised_tokens(blank_nlp, text)
    assume(all(p in text_encoder.encoder for t in tokens for p in text_encoder.bpe(t).split(' ')))
    ids = text_encoder.encode([text], verbose=False)[0]
    assert text_encoder.decode(ids) == ' '.join(tokens)


def test_text_standardize_matches_original(original):
    for text, expected in original['standardize']:
        assert text_standardize(text) == expected, text


def test_encode_matches_original_code(text_encoder, original):
    """The original TextEncoder (spaCy's blank English tokenizer standing in for spacy.load('en')) as oracle."""
    for texts, expected in original['encode']:
        assert text_encoder.encode(texts, verbose=False) == expected, texts
