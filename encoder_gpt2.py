"""GPT-2's byte-level BPE tokenizer (openai/gpt-2 encoder.py: get_encoder, Encoder).

    enc = get_encoder()                 # reads model/gpt2/encoder.json and model/gpt2/vocab.bpe
    ids = enc.encode('Hello world')     # [15496, 995]
    enc.decode(ids)                     # 'Hello world'

What the original computes, and so what this module computes on every text:
1. split the text with the regex PATTERN (contractions, letters, numbers, other symbols, whitespace runs);
2. write each piece's UTF-8 bytes as printable characters, one per byte (bytes_to_unicode);
3. BPE each piece: repeatedly merge the adjacent pair that comes first in vocab.bpe (Encoder.bpe);
4. look each resulting token up in encoder.json.
`decode` joins the tokens' bytes and decodes them as UTF-8 with errors='replace', as the original does.
The text '<|endoftext|>' is ordinary text to `encode` (seven tokens: '<', '|', 'end', 'of', 'text', '|',
'>'), as in the original; append `enc.eot_token` (50256) yourself where a document ends.

Two implementations give the same ids:
- `Encoder.encode_python` is the original algorithm in plain Python (the `regex` package, `Encoder.bpe`
  with a per-encoder LRU cache), kept to read side by side with encoder.py;
- `Encoder.encode` runs tiktoken's Rust BPE (`tiktoken.Encoding.encode_ordinary`) built from the same two
  local files (nothing is downloaded). tiktoken merges by the rank of the merged bytes, the original by the
  rank of the pair; with the released vocabulary the two agree (tests/test_encoder_gpt2.py checks it on the
  recorded outputs of the original and on generated text). The one place the engines can differ is which
  code points count as letters, numbers or whitespace, because tiktoken's regex engine and the `regex`
  package may ship different Unicode versions: each Encoder probes both engines on every code point when it
  is built, and `encode` hands any text holding a code point they disagree on (or a lone surrogate, which
  the original refuses with UnicodeEncodeError) to `encode_python`.
"""
import array
import operator
import sys
from functools import cache, lru_cache
from pathlib import Path

import regex
import tiktoken

import untrusted
from text_utils import check_token_ids, read_vocab_text
from utils import progress

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / 'model' / 'gpt2'
ENCODER_FILE = 'encoder.json'
MERGES_FILE = 'vocab.bpe'
ENDOFTEXT = '<|endoftext|>'
# The original's split, character for character (its comment: it lacks re.IGNORECASE, so "DON'T" splits
# as "DON", "'", "T").
PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# The character classes PATTERN depends on, probed in both regex engines.
PATTERN_CLASSES = (r'\p{L}+', r'\p{N}+', r'\s+')
BPE_CACHE_SIZE = 1 << 16
RELEASE_URL = 'https://openaipublic.blob.core.windows.net/gpt-2/models/124M/'


def bytes_to_unicode():
    """Return the original's byte -> character dict: printable Latin-1 bytes to themselves, then the rest to 256+.

    Its order is the original's (the printable bytes first), which is the order of the single-byte ids.
    """
    printable = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1), *range(ord('®'), ord('ÿ') + 1)]
    table = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + n) for n, b in enumerate(others)})
    return table


def get_pairs(word):
    """Return the set of adjacent symbol pairs of word (a tuple of strings)."""
    return set(zip(word, word[1:]))


def merge_pair(word, pair):
    """Return word with every non-overlapping occurrence of pair, scanned left to right, merged into one symbol."""
    first, second = pair
    merged, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == first and word[i + 1] == second:
            merged.append(first + second)
            i += 2
        else:
            merged.append(word[i])
            i += 1
    return tuple(merged)


def byte_table(byte_decoder):
    """Return the str.translate table that turns bytes_to_unicode characters back into Latin-1 characters."""
    return {ord(c): b for c, b in byte_decoder.items()}


def token_bytes(token, table):
    """Return the bytes a vocabulary token stands for (table from byte_table; its characters must be in it)."""
    return token.translate(table).encode('latin-1')


def mergeable_ranks(encoder, bpe_merges):
    """Return tiktoken's ranks (token bytes -> id), after checking that ids follow merge order as tiktoken needs."""
    byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
    symbols = set(''.join(a + b for a, b in bpe_merges))
    if not symbols <= byte_decoder.keys():
        odd = min(symbols - byte_decoder.keys())
        raise ValueError(f'{MERGES_FILE} has a symbol with the character {odd!r}, not a byte-level one')
    table = byte_table(byte_decoder)
    singles = [token_bytes(c, table) for c in byte_decoder]
    merged = [token_bytes(first + second, table) for first, second in bpe_merges]
    from_merges = {t: rank for rank, t in enumerate(singles + merged)}
    from_encoder = {token_bytes(t, table): i for t, i in encoder.items() if t != ENDOFTEXT}
    if len(from_merges) != len(singles) + len(merged) or from_merges != from_encoder:
        raise ValueError(f'the ids of {ENCODER_FILE} are not the merge order of {MERGES_FILE}: '
                         'the two files are not a released pair')
    return from_encoder


def all_code_points():
    """Return a string of every Unicode code point except the surrogates."""
    code_points = array.array('I', [*range(0xD800), *range(0xE000, 0x110000)])
    return code_points.tobytes().decode(f'utf-32-{sys.byteorder[0]}e')


def engine_disagreements(classes=PATTERN_CLASSES):
    """Return the sorted code points that tiktoken's regex engine and the `regex` package put in different classes."""
    everything = all_code_points()
    single_bytes = {bytes([b]): b for b in range(256)}
    differ = set()
    for cls in classes:
        # tiktoken drops the text its pattern does not match, so this returns the matched characters only
        probe = tiktoken.Encoding(f'probe {cls}', pat_str=cls, mergeable_ranks=single_bytes, special_tokens={})
        rust = probe.decode_bytes(probe.encode_ordinary(everything)).decode('utf-8')
        python = ''.join(regex.findall(cls, everything))
        if rust != python:
            differ |= set(rust) ^ set(python)
    return sorted(map(ord, differ))


def code_point_ranges(code_points):
    """Return sorted code points as a list of inclusive (first, last) runs."""
    runs = []
    for cp in code_points:
        if runs and cp == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], cp)
        else:
            runs.append((cp, cp))
    return runs


def code_point_finder(code_points):
    """Return a tiktoken Encoding whose encode_ordinary(text) is non-empty iff text holds one of code_points, or None.

    It runs tiktoken's Rust regex (explicit code points, no Unicode tables) only as a fast search.
    """
    if not code_points:
        return None
    body = ''.join(f'\\x{{{lo:X}}}' if lo == hi else f'\\x{{{lo:X}}}-\\x{{{hi:X}}}'
                   for lo, hi in code_point_ranges(code_points))
    return tiktoken.Encoding('code point finder', pat_str=f'[{body}]',
                             mergeable_ranks={bytes([b]): b for b in range(256)}, special_tokens={})


@cache
def python_only_finder():
    """Return the code_point_finder of the engines' disagreements: the same for every Encoder of this process (it
    depends on the installed tiktoken and regex only), so it is found once (a scan of every code point, 0.2 s)."""
    return code_point_finder(engine_disagreements())


class Encoder:
    """Text <-> GPT-2 token ids, exactly as openai/gpt-2 encoder.py's Encoder (see the module docstring)."""

    def __init__(self, encoder, bpe_merges, errors='replace'):
        self.encoder = dict(encoder)
        self.decoder = {i: t for t, i in self.encoder.items()}
        self.errors = errors  # how decode treats invalid UTF-8, as in the original
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.bpe_ranks = {tuple(pair): rank for rank, pair in enumerate(bpe_merges)}
        self.pat = regex.compile(PATTERN)
        self.eot_token = self.encoder[ENDOFTEXT]
        self.n_vocab = len(self.encoder)
        self._byte_chars = str.maketrans({chr(b): c for b, c in self.byte_encoder.items()})
        table = byte_table(self.byte_decoder)
        self._id_bytes = {i: token_bytes(t, table) for t, i in self.encoder.items()}
        self._fast = tiktoken.Encoding('gpt2-local-files', pat_str=PATTERN,
                                       mergeable_ranks=mergeable_ranks(self.encoder, self.bpe_ranks),
                                       special_tokens={ENDOFTEXT: self.eot_token})
        self._python_only = python_only_finder()
        self._bpe_cached = lru_cache(maxsize=BPE_CACHE_SIZE)(self._bpe)

    def encode(self, text):
        """Return the token ids of text (tiktoken where it is exact, else encode_python): the original's ids."""
        if self.needs_python_path(text):
            return self.encode_python(text)
        return self._fast.encode_ordinary(text)

    def needs_python_path(self, text):
        """Return whether encode hands text to encode_python: it holds a lone surrogate or a contested character."""
        if not isinstance(text, str):
            raise TypeError(f'encode takes a str, not {type(text).__name__}')
        if text.isascii():
            return False
        try:
            text.encode('utf-8')
        except UnicodeEncodeError:  # tiktoken would write U+FFFD; the original raises this
            return True
        return self._python_only is not None and bool(self._python_only.encode_ordinary(text))

    def encode_python(self, text):
        """Return the token ids of text by the original's algorithm in pure Python (regex split, Encoder.bpe)."""
        ids = []
        for piece in self.pat.findall(text):
            chars = piece.encode('utf-8').decode('latin-1').translate(self._byte_chars)
            ids.extend(self.encoder[token] for token in self.bpe(chars).split(' '))
        return ids

    def bpe(self, token):
        """Return token (bytes written as bytes_to_unicode characters) split into BPE tokens, joined by spaces."""
        return self._bpe_cached(token)

    def _bpe(self, token):
        """Return bpe(token) without the cache: merge the best-ranked adjacent pair until no pair is a merge."""
        word = tuple(token)
        while len(word) > 1:
            best = min(get_pairs(word), key=lambda pair: self.bpe_ranks.get(pair, float('inf')))
            if best not in self.bpe_ranks:
                break
            word = merge_pair(word, best)
        return ' '.join(word)

    def decode(self, ids):
        """Return the text of token ids: their bytes joined, decoded as UTF-8 with self.errors ('replace')."""
        return b''.join(map(self.id_bytes, ids)).decode('utf-8', errors=self.errors)

    def id_bytes(self, token_id):
        """Return the bytes of one token id (a KeyError naming the id if it is not in the vocabulary)."""
        try:
            return self._id_bytes[operator.index(token_id)]
        except KeyError:
            raise KeyError(f'token id {token_id} is not in the vocabulary (0..{self.n_vocab - 1})') from None


def fix_hint(*names):
    """Return the one-line remedy for missing or broken released files, e.g. fix_hint('vocab.bpe')."""
    urls = ', '.join(RELEASE_URL + name for name in names)
    return (f'put the released GPT-2 {" and ".join(names)} there (this repository ships them in model/gpt2/; '
            f'OpenAI serves them at {urls})')


def read_text(path):
    """Return the UTF-8 text of a GPT-2 vocabulary file at path (text_utils.read_vocab_text: a regular file of at most
    text_utils.VOCAB_MAX_BYTES, no link out of its folder), or raise one untrusted.BadFile (a MissingFile when it is missing)
    naming it and the fix."""
    name = Path(path).name
    return read_vocab_text(path, f'GPT-2 {name}', fix_hint(name), missing=fix_hint(name))


def read_encoder_json(path):
    """Return encoder.json's token -> id dict, checked (ids exactly 0..n-1, ints and not bools: text_utils's
    check_token_ids; '<|endoftext|>'; byte-level tokens); any problem is one untrusted.BadFile naming the file."""
    path = Path(path)
    with untrusted.reading(path):
        text = read_text(path)
        try:
            encoder = untrusted.parse_json(text, str(path))
        except untrusted.BadFile as err:
            raise untrusted.BadFile(f'{err}: {fix_hint(path.name)}', path) from None
        alphabet = set(bytes_to_unicode().values())
        problem = None
        if not isinstance(encoder, dict) or ENDOFTEXT not in encoder:
            problem = f'it has no {ENDOFTEXT!r} entry'
        else:
            try:
                check_token_ids(encoder)
            except ValueError as err:
                problem = str(err)
        if problem is None and not all(set(t) <= alphabet for t in encoder):
            problem = 'it has tokens that are not byte-level BPE strings'
        if problem is None:
            return encoder
        raise untrusted.BadFile(f'{path} is not a GPT-2 {ENCODER_FILE}: {problem}: {fix_hint(path.name)}', path)


def read_merges(path):
    """Return vocab.bpe's merges as (first, second) pairs in rank order, checked (a '#version' line, then lines of two
    symbols each, a final newline); any problem is one untrusted.BadFile naming the file."""
    path = Path(path)
    with untrusted.reading(path):
        lines = read_text(path).split('\n')
        if not lines[0].startswith('#version'):
            problem = "it does not start with a '#version' line"
        elif lines[-1] != '':
            problem = 'it does not end with a newline (a truncated copy?)'
        else:
            merges = [tuple(line.split()) for line in lines[1:-1]]
            bad = next((n for n, m in enumerate(merges, start=2) if len(m) != 2), None)
            if bad is None:
                return merges
            problem = f'it has a line that is not two symbols (line {bad})'
        raise untrusted.BadFile(f'{path} is not a GPT-2 {MERGES_FILE}: {problem}: {fix_hint(path.name)}', path)


def get_encoder(model_dir=None):
    """Return the Encoder of model_dir's encoder.json and vocab.bpe (default: this repository's model/gpt2/); any
    problem with either file is one untrusted.BadFile naming it."""
    model_dir = DEFAULT_MODEL_DIR if model_dir is None else Path(model_dir)
    encoder = read_encoder_json(model_dir / ENCODER_FILE)
    merges = read_merges(model_dir / MERGES_FILE)
    try:
        return Encoder(encoder, merges)
    except untrusted.READ_ERRORS as e:
        raise untrusted.BadFile(f'{model_dir}: {untrusted.describe(e)}: {fix_hint(ENCODER_FILE, MERGES_FILE)}',
                                model_dir / ENCODER_FILE) from None


def encoder_from_files(encoder_path, bpe_path):
    """Return the Encoder of an encoder.json and a vocab.bpe given by path (transformers' vocab.json and merges.txt
    are the same two files under other names); any problem is one untrusted.BadFile naming the file."""
    encoder, merges = read_encoder_json(encoder_path), read_merges(bpe_path)
    try:
        return Encoder(encoder, merges)
    except untrusted.READ_ERRORS as e:
        raise untrusted.BadFile(f'{encoder_path} and {bpe_path}: {untrusted.describe(e)}', encoder_path) from None


class BatchEncoder:
    """GPT-2's Encoder through text_utils.TextEncoder's interface, so that the tools feed GPT-2 as they feed GPT-1:
    encode(a list of texts) -> a list of id lists, the `encoder` and `decoder` dicts to which callers add special
    tokens (train.py's _start_, _delimiter_, _classify_), and decode() showing those by name."""

    def __init__(self, encoder):
        self.base = encoder  # the Encoder: exactly the original's ids
        self.encoder = dict(encoder.encoder)
        self.decoder = dict(encoder.decoder)

    def encode(self, texts, verbose=True):
        """Return a list of token id lists, one per text (the original's ids; no text standardisation)."""
        if isinstance(texts, str):
            raise TypeError('encode() takes a list of texts, not one str; wrap it: encode([text])')
        return [self.base.encode(text) for text in progress(texts, ncols=80, leave=False, disable=not verbose)]

    def decode(self, ids):
        """Return the text of ids: GPT-2 tokens as the original decodes them, special tokens added to `encoder` by
        name as words of their own, other ids (position ids) skipped."""
        names = {i: t for t, i in self.encoder.items() if i >= self.base.n_vocab}
        parts, run = [], []
        for i in map(int, ids):
            if 0 <= i < self.base.n_vocab:
                run.append(i)
            elif i in names:
                parts += [self.base.decode(run), f' {names[i]} ']
                run = []
        return ''.join(parts + [self.base.decode(run)])
