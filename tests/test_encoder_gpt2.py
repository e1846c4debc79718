"""Tests for encoder_gpt2 (openai/gpt-2 encoder.py): the original's ids, transformers as an independent check,
properties on generated text, the shipped files' hashes, and the errors for missing or broken files."""
import hashlib
import inspect
import json
import shutil
import string
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import encoder_gpt2
from encoder_gpt2 import bytes_to_unicode, get_encoder

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / 'model' / 'gpt2'
FIXTURES = ROOT / 'tests' / 'fixtures' / 'gpt2'
# SHA-256 of the released files (model/gpt2/SOURCES.md of the shared material; the hashes tiktoken checks)
RELEASED_SHA256 = {
    'encoder.json': '196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783',
    'vocab.bpe': '1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5',
}
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "n't", "'", "''"]
# Letters and digits of Unicode 17 (2025): tiktoken's and tokenizers' regex engines may not know them yet
NEW_LETTERS = '\u088f\u0c5c\ua7ce\U00010940\U00010941\U00011de0\U00011de1\U00016ff4'
SYMBOLS = (' \t\n\r\x0b\x0c\xa0\u2028\u3000\u200b' + string.digits + string.punctuation
           + 'éüñçÆøß\u0301' + '日本語中文한국어テキスト' + 'Русскийعربية' + '😀🎉👍🏽🇫🇷\u200d' + '١٢٣½²Ⅻ①')


def texts(symbols=SYMBOLS):
    """Return a strategy of texts: any code points, the given symbols, contractions, '<|endoftext|>', runs of spaces."""
    alphabet = st.one_of(st.characters(exclude_categories=('Cs',)), st.sampled_from(symbols))
    piece = st.one_of(st.text(alphabet, max_size=8), st.sampled_from(CONTRACTIONS + ['<|endoftext|>', '  ', '\n\n']),
                      st.text(st.sampled_from('ab A1. '), max_size=6))
    return st.lists(piece, max_size=12).map(''.join)


def read_fixture(name):
    """Return the parsed JSON fixture tests/fixtures/gpt2/name."""
    return json.loads((FIXTURES / name).read_text(encoding='utf-8'))


REFERENCE = read_fixture('bpe_reference.json')
CASES = list(zip(REFERENCE['texts'], REFERENCE['ids'], REFERENCE['decoded']))


@pytest.fixture(scope='module')
def enc():
    return get_encoder()


@pytest.fixture(scope='module')
def hf():
    """transformers' GPT-2 tokenizer built from the shipped files, reading '<|endoftext|>' as text like the original."""
    from transformers import GPT2Tokenizer
    if 'vocab_file' in inspect.signature(GPT2Tokenizer.__init__).parameters:  # transformers 4
        files = dict(vocab_file=str(MODEL_DIR / 'encoder.json'), merges_file=str(MODEL_DIR / 'vocab.bpe'))
    else:  # transformers 5 ignores vocab_file=/merges_file= and builds an empty vocabulary
        files = dict(vocab=str(MODEL_DIR / 'encoder.json'), merges=str(MODEL_DIR / 'vocab.bpe'))
    tokenizer = GPT2Tokenizer(**files, split_special_tokens=True)
    assert len(tokenizer) == 50257
    return tokenizer


def hf_ids(tokenizer, text):
    """Return transformers' ids of text, without added special tokens."""
    return tokenizer.encode(text, add_special_tokens=False)


@pytest.fixture(scope='module')
def hf_unsure():
    """Return the characters that tokenizers' regex engine classes differently from the `regex` package."""
    import regex
    from tokenizers import Regex, pre_tokenizers
    everything = encoder_gpt2.all_code_points()
    unsure = set()
    for cls in encoder_gpt2.PATTERN_CLASSES:
        kept = pre_tokenizers.Split(Regex(cls), behavior='removed').pre_tokenize_str(everything)
        matched = set(everything) - set(''.join(piece for piece, _ in kept))
        unsure |= matched ^ set(''.join(regex.findall(cls, everything)))
    return frozenset(unsure)


def write_model_dir(path, encoder=None, merges=None):
    """Return path holding the shipped files, or the given bytes in their place (b'' left out = missing)."""
    path.mkdir(exist_ok=True)
    for name, data in (('encoder.json', encoder), ('vocab.bpe', merges)):
        if data is None:
            shutil.copyfile(MODEL_DIR / name, path / name)
        elif data != b'':
            (path / name).write_bytes(data)
    return path


@pytest.mark.parametrize('text, ids, decoded', CASES, ids=[f'text{i}' for i in range(len(CASES))])
def test_ids_and_decode_equal_the_original(enc, text, ids, decoded):
    assert enc.encode(text) == ids
    assert enc.decode(ids) == decoded == text


def test_fixtures_cover_the_hard_cases():
    assert read_fixture('bpe_texts.json') == REFERENCE['texts'] and len(CASES) == 31
    texts = ''.join(REFERENCE['texts'])
    for needle in ["'ll", 'DON\'T', '   ', '\r\n', '日本', '👨\u200d👩', 'é', '\xa0', '1,000']:
        assert needle in texts


def test_transformers_agrees_with_the_original(hf):
    for text, ids, _ in CASES:
        assert hf_ids(hf, text) == ids, text


@settings(max_examples=300, deadline=None)
@given(texts())
def test_ids_equal_transformers_and_decode_inverts(enc, hf, hf_unsure, text):
    ids = enc.encode(text)
    assert enc.decode(ids) == text
    assert all(0 <= i < enc.n_vocab for i in ids)
    if hf_unsure.isdisjoint(text):  # elsewhere transformers' regex engine is not the original's
        assert ids == hf_ids(hf, text)


@settings(max_examples=300, deadline=None)
@given(texts(SYMBOLS + NEW_LETTERS))
def test_fast_path_equals_pure_python_path(enc, text):
    assert enc.encode(text) == enc.encode_python(text)


def test_pure_python_path_equals_the_original(enc):
    for text, ids, _ in CASES:
        assert enc.encode_python(text) == ids, text
    assert enc.bpe('Ġworld') == 'Ġworld'
    assert enc.bpe('Ġhellooo') == 'Ġhell ooo'
    assert enc.bpe('x') == 'x'


def test_known_ids(enc):
    assert enc.encode('Hello world') == [15496, 995]
    assert enc.encode(' Hello') == [18435]
    assert enc.encode('') == []


def test_shipped_files_are_the_released_ones():
    for name, expected in RELEASED_SHA256.items():
        assert hashlib.sha256((MODEL_DIR / name).read_bytes()).hexdigest() == expected, name


def test_vocabulary_attributes(enc):
    assert enc.n_vocab == len(enc.encoder) == len(enc.decoder) == 50257
    assert enc.eot_token == enc.encoder['<|endoftext|>'] == 50256
    assert all(enc.encoder[token] == i for i, token in enc.decoder.items())
    assert enc.decode([enc.eot_token]) == '<|endoftext|>'


def test_endoftext_text_is_ordinary_text(enc):
    ids = enc.encode('a<|endoftext|>b')
    assert enc.eot_token not in ids
    assert [enc.decoder[i] for i in ids] == ['a', '<', '|', 'end', 'of', 'text', '|', '>', 'b']


def test_bytes_to_unicode_is_the_original_table():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    assert list(table)[:3] == [ord('!'), ord('"'), ord('#')]  # printable bytes first: the single-byte ids
    assert table[ord('A')] == 'A' and table[0xAE] == '®' and table[0xFF] == 'ÿ'
    assert table[0] == chr(256) and table[ord(' ')] == 'Ġ' and table[ord('\n')] == 'Ċ' and table[0xAD] == 'Ń'


def test_decode_replaces_invalid_utf8_and_refuses_unknown_ids(enc):
    lead_byte = enc.encoder[bytes_to_unicode()[0xE2]]
    assert enc.decode([lead_byte]) == '\ufffd'
    emoji = enc.encode('😀')
    assert len(emoji) == 2 and enc.decode(emoji[:1] + enc.encode('a')) == '\ufffda'
    with pytest.raises(KeyError, match='50257'):
        enc.decode([50257])
    with pytest.raises(KeyError, match='-1'):
        enc.decode([-1])


def test_lone_surrogate_is_refused_like_the_original(enc):
    for text in ('\ud800', 'ab\udc80cd'):
        with pytest.raises(UnicodeEncodeError):
            enc.encode(text)


def test_characters_the_engines_disagree_on_take_the_pure_python_path(enc, monkeypatch):
    class Refuse:
        def encode_ordinary(self, text):
            raise AssertionError(f'fast path used on {text!r}')

    disagreements = encoder_gpt2.engine_disagreements()
    fast = enc._fast
    monkeypatch.setattr(enc, '_fast', Refuse())
    for cp in disagreements[:50] + disagreements[-50:]:
        text = f"a{chr(cp)}b 1{chr(cp)}'s"
        assert enc.encode(text) == enc.encode_python(text)
    with pytest.raises(AssertionError, match='fast path used'):
        enc.encode('plain text')
    if 0x88F in disagreements:  # a Unicode 17 letter tiktoken reads as a symbol: "\u088f'" becomes one piece
        assert fast.encode_ordinary("\u088f's") != enc.encode_python("\u088f's") == enc.encode("\u088f's")


@pytest.mark.parametrize('missing', ['encoder.json', 'vocab.bpe'])
def test_missing_file_is_named(tmp_path, missing):
    files = {'encoder': b'' if missing == 'encoder.json' else None, 'merges': b'' if missing == 'vocab.bpe' else None}
    with pytest.raises(FileNotFoundError) as error:
        get_encoder(write_model_dir(tmp_path, **files))
    message = str(error.value)
    assert str(tmp_path / missing) in message and '\n' not in message


def broken_files():
    """Return (encoder.json bytes or None, vocab.bpe bytes or None, file named, problem said) for broken copies."""
    encoder = (MODEL_DIR / 'encoder.json').read_bytes()
    merges = (MODEL_DIR / 'vocab.bpe').read_bytes()
    lines = merges.split(b'\n')
    swapped = b'\n'.join(lines[:1] + [lines[2], lines[1]] + lines[3:])
    vocab = json.loads(encoder)
    return [
        (encoder[:-10], None, 'encoder.json', 'not valid JSON'),
        (json.dumps(dict(vocab, **{'with space': 50257})).encode(), None, 'encoder.json', 'not byte-level'),
        (json.dumps(dict(vocab, Hello=0)).encode(), None, 'encoder.json', 'which another token has: the ids must be 0..50256'),
        (json.dumps({k: v for k, v in vocab.items() if k != '<|endoftext|>'}).encode(), None, 'encoder.json',
         "no '<|endoftext|>' entry"),
        (None, merges[:-1], 'vocab.bpe', 'newline'),
        (None, merges.split(b'\n', 1)[1], 'vocab.bpe', '#version'),
        (None, merges.replace(b'\n', b'\n\xff', 1), 'vocab.bpe', 'not UTF-8'),
        (None, merges.replace(b'\n', b'\na b c\n', 1), 'vocab.bpe', 'not two symbols (line 2)'),
        (None, swapped, 'vocab.bpe', 'not the merge order'),
    ]


BROKEN = broken_files()


@pytest.mark.parametrize('encoder, merges, name, problem', BROKEN, ids=[f'broken{i}' for i in range(len(BROKEN))])
def test_broken_file_is_a_value_error_naming_it(tmp_path, encoder, merges, name, problem):
    with pytest.raises(ValueError) as error:
        get_encoder(write_model_dir(tmp_path, encoder, merges))
    message = str(error.value)
    assert name in message and str(tmp_path) in message and problem in message and '\n' not in message


def test_default_model_dir_is_the_repository_folder():
    assert encoder_gpt2.DEFAULT_MODEL_DIR == MODEL_DIR
