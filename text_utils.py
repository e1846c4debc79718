"""Text to BPE ids with GPT-1's vocabulary (TF: text_utils.py).

The pipeline is the original's: ftfy.fix_text, text_standardize, spaCy's rule-based English tokenizer,
lower-casing, byte-pair encoding with '</w>' word ends, unknown pieces to id 0. It gives the original's
ids for every text (tests/fixtures/bpe_reference.json holds the original's output).
"""
import os
import re
import sys

import untrusted
from utils import progress

VOCAB_SOURCE = 'the model/ folder of github.com/openai/finetune-transformer-lm'
# The released vocabulary ships in this repository's model/ folder (byte-identical, checked by SHA-1).
MODEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'model')
ENCODER_PATH = os.path.join(MODEL_DIR, 'encoder_bpe_40000.json')
BPE_PATH = os.path.join(MODEL_DIR, 'vocab_40000.bpe')
# The largest vocabulary or merges file read (the released ones are 0.8 and 0.5 MB, GPT-2's 1.0 and 0.5 MB).
VOCAB_MAX_BYTES = 32 << 20
UNKNOWN_ID = 0  # the original maps every piece missing from the vocabulary to id 0 ('<unk>')

# text_standardize's rules, in the original's order (compiled here; patterns are constants, not state).
_DASHES_ETC = (('—', '-'), ('–', '-'), ('―', '-'), ('…', '...'), ('´', "'"))
# The original writes this pattern in a non-raw string, where \\+ becomes the regex \+ (one more '+'
# alternative), so backslashes are not split off; the pattern below is the one the original compiles.
_SPLIT_PUNCT = re.compile(r'''(-+|~+|!+|"+|;+|\?+|\++|,+|\)+|\(+|\+|/+|\*+|\[+|\]+|}+|{+|\|+|_+)''')
_NEWLINE = re.compile(r'\s*\n\s*')
_SPACES = re.compile(r'[^\S\n]+')


def get_pairs(word):
    """Return the set of adjacent symbol pairs in word (a tuple of symbols) (TF: get_pairs)."""
    return set(zip(word[:-1], word[1:]))


def text_standardize(text):
    """Return text with dashes/ellipses normalised, punctuation runs spaced out and whitespace collapsed."""
    for old, new in _DASHES_ETC:
        text = text.replace(old, new)
    text = _SPLIT_PUNCT.sub(r' \1 ', text)
    text = _NEWLINE.sub(' \n ', text)
    text = _SPACES.sub(' ', text)
    return text.strip()


def _vocab_error(path, problem):
    """Return the one-line BadFile for a malformed vocabulary file."""
    return untrusted.bad(path, f'{problem}; use the unmodified file from {VOCAB_SOURCE}')


def read_vocab_text(path, what, remedy, missing=None):
    """Return the UTF-8 text of a vocabulary file (GPT-1's or GPT-2's), a regular file of at most VOCAB_MAX_BYTES, or
    raise one untrusted.BadFile naming it (a MissingFile, with the hint missing, when it is not there).

    A symlink leading out of the file's folder is refused, saying to pass the file's real path (the user named the
    file: the fix is the path, not the file); any other problem (not UTF-8, too large, not a regular file) ends with
    remedy, where to get the released file."""
    path = untrusted.check_path_text(path, f'{what} path')
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.islink(path) and not untrusted.is_inside(path, folder):
        raise untrusted.bad(path, f"is a link that leads outside {folder}: pass the file's real path")
    try:
        return untrusted.read_text(path, limit=VOCAB_MAX_BYTES, what=f'{what} file', missing=missing)
    except untrusted.MissingFile:
        raise
    except untrusted.BadFile as err:
        raise untrusted.bad(path, f'{_without_path(err, path)}; {remedy}') from None


def _without_path(err, path):
    """Return a BadFile's message without the leading 'path: ' that names the file (the caller names it)."""
    text = str(err)
    return text[len(path) + 2:] if text.startswith(f'{path}: ') else text


def check_token_ids(encoder):
    """Raise a ValueError naming the first token of a token -> id dict (a vocabulary read from a file) that is not a
    non-empty string or whose id is not one of 0..n-1 once each (an id past the tokens would read a special or
    position row of the model; a bool is no id); return encoder. One pass, memory of n bytes."""
    n = len(encoder)
    if n > untrusted.SIZE_LIMITS['n_vocab']:
        raise ValueError(f'{n} tokens, more than any vocabulary ({untrusted.SIZE_LIMITS["n_vocab"]} at most)')
    seen = bytearray(n)
    for token, i in encoder.items():
        if not isinstance(token, str) or not token:
            raise ValueError(f'token {untrusted.show(token)} is not a non-empty string')
        if not untrusted.is_int(i):
            raise ValueError(f'token {untrusted.show(token)} has id {untrusted.show(i)}, not an integer')
        if not 0 <= i < n:
            raise ValueError(f'token {untrusted.show(token)} has id {i}, but the ids of {n} tokens must be '
                             f'0..{n - 1}, once each (a larger id would read a special or position row)')
        if seen[i]:
            raise ValueError(f'token {untrusted.show(token)} has id {i}, which another token has: the ids must be '
                             f'0..{n - 1}, once each')
        seen[i] = 1
    return encoder


def load_encoder(encoder_path):
    """Return the BPE token -> id dict read from encoder_path (encoder_bpe_40000.json), checked: a JSON object of
    non-empty string tokens whose ids are exactly 0..n-1, each once (check_token_ids). Any problem is one
    untrusted.BadFile naming the file."""
    with untrusted.reading(encoder_path):
        path = untrusted.check_path_text(encoder_path, 'vocabulary path')
        text = read_vocab_text(path, 'encoder_bpe_40000.json', f'use the unmodified file from {VOCAB_SOURCE}',
                               missing=f'copy encoder_bpe_40000.json from {VOCAB_SOURCE}')
        try:
            encoder = untrusted.parse_json(text, path)
        except untrusted.BadFile as err:
            hint = '' if text.lstrip()[:1] in ('{', '[') else '; an HTML page or Git LFS pointer?'
            raise _vocab_error(path, f'not a JSON vocabulary ({_without_path(err, path)}{hint})') from None
        if not isinstance(encoder, dict) or not encoder:
            raise _vocab_error(path, 'expected a non-empty JSON object mapping tokens to ids')
        try:
            return check_token_ids(encoder)
        except ValueError as err:
            raise _vocab_error(path, str(err)) from None


def load_bpe_ranks(bpe_path):
    """Return the merge (first, second) -> rank dict read from bpe_path (vocab_40000.bpe), checked: a '#version'
    header, then lines of two symbols each; the file is a regular file of at most VOCAB_MAX_BYTES. Any problem is one
    untrusted.BadFile naming the file."""
    with untrusted.reading(bpe_path):
        path = untrusted.check_path_text(bpe_path, 'merges path')
        lines = read_vocab_text(path, 'vocab_40000.bpe', f'use the unmodified file from {VOCAB_SOURCE}',
                                missing=f'copy vocab_40000.bpe from {VOCAB_SOURCE}').split('\n')
        if not lines[0].startswith('#version'):
            raise _vocab_error(path, f'line 1 is {untrusted.show(lines[0][:40])}, expected the "#version" header')
        # The original drops the first and the last line unconditionally ([1:-1]); the last line is empty in the
        # released file. Only a trailing empty line is dropped here, so a file without a final newline keeps
        # its last merge instead of losing it silently.
        body = lines[1:-1] if lines[-1] == '' else lines[1:]
        ranks = {}
        for lineno, line in enumerate(body, start=2):
            merge = tuple(line.split())
            if len(merge) != 2:
                raise _vocab_error(path, f'line {lineno} is {untrusted.show(line[:40])}, expected two symbols')
            ranks[merge] = lineno - 2  # later duplicates overwrite earlier ones, as dict(zip(...)) does
        if not ranks:
            raise _vocab_error(path, 'no merges found')
        return ranks


class TextEncoder:
    """Texts to BPE ids and back (TF: TextEncoder).

    `encoder` (token -> id) and `decoder` (id -> token) hold the released vocabulary; callers may add
    special tokens to `encoder` after construction (train.py adds '_start_', '_delimiter_', '_classify_'),
    and decode() shows those by name. The default paths are the released files shipped in this
    repository's model/ folder, wherever the caller's working directory is.
    """

    def __init__(self, encoder_path=ENCODER_PATH, bpe_path=BPE_PATH, cache_size=1 << 18):
        if cache_size < 1:
            raise ValueError(f'TextEncoder: cache_size must be >= 1, got {cache_size}')
        self.encoder = load_encoder(encoder_path)
        self.decoder = {i: token for token, i in self.encoder.items()}
        self.bpe_ranks = load_bpe_ranks(bpe_path)
        self._nlp = None  # spaCy's tokenizer, loaded by the first encode (a run that reads cached ids never loads it)
        # Per-instance BPE cache keyed by lower-cased token, as in the original, but bounded: it is emptied
        # when it reaches cache_size entries so that memory stays flat on an unbounded stream of texts.
        self.cache = {}
        self.cache_size = cache_size
        self._added = {}  # id -> name of tokens added to .encoder after construction
        self._n_encoder_seen = len(self.encoder)

    @property
    def nlp(self):
        """Return spaCy's blank English pipeline, loaded on first use (spaCy takes about a second to load)."""
        if self._nlp is None:
            # spacy.blank('en') is the rule-based English tokenizer the original got from spacy.load('en') with
            # the parser, tagger, ner and textcat disabled; the 'en' shortcut model no longer exists.
            import spacy
            nlp = spacy.blank('en')
            # spaCy refuses texts over 1,000,000 characters (E088), a guard for its parser and NER, which a blank
            # pipeline does not run; its tokenizer is linear in the text, so a long document (a book, a play in one
            # file) is tokenized whole. An intentional difference (docs/faithfulness.md): the original kept the
            # guard.
            nlp.max_length = sys.maxsize
            self._nlp = nlp
        return self._nlp

    @staticmethod
    def fix_text(text):
        """Return ftfy.fix_text(text) (ftfy imported on first use)."""
        import ftfy
        return ftfy.fix_text(text)

    def bpe(self, token):
        """Return the BPE pieces of token joined by spaces, the last one ending in '</w>' (TF: bpe)."""
        if token in self.cache:
            return self.cache[token]
        word = self._merge(token)
        if len(self.cache) >= self.cache_size:
            self.cache.clear()
        self.cache[token] = word
        return word

    def _merge(self, token):
        """Return the uncached BPE of token, as bpe() does (the original's merge loop)."""
        word = tuple(token[:-1]) + (token[-1] + '</w>',)
        if len(word) == 1:
            return word[0]
        ranks = self.bpe_ranks
        pairs = get_pairs(word)
        while True:
            bigram = min(pairs, key=lambda pair: ranks.get(pair, float('inf')))
            if bigram not in ranks:
                break
            first, second = bigram
            new_word = []
            i = 0
            while i < len(word):  # merge every non-overlapping occurrence, left to right
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
            if len(word) == 1:
                break
            pairs = get_pairs(word)
        word = ' '.join(word)
        # spaCy's token '\n ' (newline plus space) becomes '\n' and ' </w>'; the original maps it to the
        # single piece '\n</w>'.
        if word == '\n  </w>':
            word = '\n</w>'
        return word

    def standardize(self, text):
        """Return text as the tokenizer sees it: text_standardize(ftfy.fix_text(text))."""
        return text_standardize(self.fix_text(text))

    def encode(self, texts, verbose=True, batch_size=256):
        """Return a list of BPE id lists, one per text (TF: encode)."""
        if isinstance(texts, str):  # the original would encode each character as a text of its own
            raise TypeError('encode() takes a list of texts, not one str; wrap it: encode([text])')
        encoder = self.encoder
        token_ids = {}  # lower-cased token -> ids, bounded like the cache, for this call only (.encoder is fixed)
        texts = progress(texts, ncols=80, leave=False, disable=not verbose)
        docs = self.nlp.pipe((self.standardize(text) for text in texts), batch_size=batch_size)
        texts_tokens = []
        for doc in docs:
            text_tokens = []
            for token in doc:
                token = token.text.lower()
                ids = token_ids.get(token)
                if ids is None:
                    if len(token_ids) >= self.cache_size:
                        token_ids.clear()
                    # the original splits the joined pieces on ' ', so a piece never holds a space
                    ids = token_ids[token] = [encoder.get(piece, UNKNOWN_ID) for piece in self.bpe(token).split(' ')]
                text_tokens.extend(ids)
            texts_tokens.append(text_tokens)
        return texts_tokens

    def _name(self, i):
        """Return the vocabulary piece or added special token with id i, or None when there is none."""
        name = self.decoder.get(i)
        if name is not None:
            return name
        if len(self.encoder) != self._n_encoder_seen:  # tokens were added to .encoder since the last look
            self._added = {v: k for k, v in self.encoder.items() if v not in self.decoder}
            self._n_encoder_seen = len(self.encoder)
        return self._added.get(i)

    def decode(self, ids):
        """Return the text spelled by ids: '</w>' ends a word, other pieces join the next one.

        Ids of tokens added to `.encoder` after construction (special tokens) are shown by name as words of
        their own; ids in neither (position ids, anything out of range) are skipped. Id 0 is the
        vocabulary's '<unk>', which encode() gives to every unknown piece, so it decodes as '<unk>'.
        """
        out = []
        for i in ids:
            i = int(i)
            name = self._name(i)
            if name is None:
                continue
            if i in self.decoder:
                out.append(name.replace('</w>', ' '))
            else:  # a special token is a word of its own, even after a piece that does not end a word
                out.append((' ' if out and not out[-1].endswith(' ') else '') + name + ' ')
        text = ''.join(out)
        return text[:-1] if text.endswith(' ') else text
