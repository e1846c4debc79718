"""A cache of encoded texts on disk, so that a run on data already seen skips tokenization (TF: none).

A tokenizer's ids for a list of texts are kept in one safetensors file named by a SHA-256 key of everything they
depend on: the texts themselves (so an edited data file is a new key), the vocabulary (its token ids and BPE merges),
the tokenizer's own code and the versions of the libraries it calls (spaCy and ftfy for GPT-1, regex and tiktoken for
GPT-2), and this file's format. A hit returns the same ids the tokenizer gives, without loading spaCy.

The cache folder is treated as any folder from elsewhere: an entry is read only when it is a regular file whose
sizes the safetensors header states within the file, whose key matches its name, and whose ids are in the
vocabulary's range; anything else is reported in one line naming the file and encoded again. A folder that cannot
be written to only costs the saving.
"""
import hashlib
import importlib.metadata
import inspect
import itertools
import json
import os
import sys

import numpy as np
import torch

import untrusted
from checkpoint import atomic_write, read_safetensors

CACHE_FORMAT = '1'  # changes whenever the file layout or the key's recipe changes
TOKENIZER_LIBRARIES = ('spacy', 'ftfy', 'regex', 'tiktoken')
APP_FOLDER = 'gpt-pytorch'


CACHE_ENV = 'GPT_PYTORCH_CACHE'  # the project's cache folder, when set (the tests point it at a temporary folder)


def default_cache_dir():
    """Return the default folder of encoded texts: $GPT_PYTORCH_CACHE/encoded, else $XDG_CACHE_HOME (else ~/.cache)
    /gpt-pytorch/encoded."""
    base = os.environ.get(CACHE_ENV)
    if not base:
        base = os.path.join(os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache'),
                            APP_FOLDER)
    return os.path.join(base, 'encoded')


def library_version(name):
    """Return the installed version of a distribution, or 'none'."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return 'none'


def tokenizer_key(text_encoder):
    """Return the hex SHA-256 of what a tokenizer's ids depend on besides the texts: its vocabulary and merges (before
    any special token is added), the source of the module that defines it and its libraries' versions."""
    base = getattr(text_encoder, 'base', text_encoder)  # GPT-2's BatchEncoder wraps the original's Encoder
    h = hashlib.sha256(f'encode_cache {CACHE_FORMAT}\n'.encode())
    h.update(json.dumps(sorted(base.encoder.items())).encode())
    h.update(json.dumps(sorted((a, b, rank) for (a, b), rank in base.bpe_ranks.items())).encode())
    for source in sorted({inspect.getfile(type(text_encoder)), inspect.getfile(type(base))}):  # each file once
        h.update(untrusted.file_sha256(source).encode())
    h.update(json.dumps({name: library_version(name) for name in TOKENIZER_LIBRARIES}).encode())
    return h.hexdigest()


def texts_key(tokenizer, texts):
    """Return the hex SHA-256 naming the ids of texts under the tokenizer key: every text length-prefixed, so no two
    lists of texts share a key."""
    h = hashlib.sha256(tokenizer.encode())
    for text in texts:
        data = text.encode('utf-8', 'surrogatepass')
        h.update(len(data).to_bytes(8, 'little'))
        h.update(data)
    return h.hexdigest()


def packed_ids(ids):
    """Return (the ids of every text in one int32 array, the n + 1 offsets where each text's ids start and end)."""
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(offsets[-1]))
    return flat, offsets


def entry_problem(metadata, tensors, key, n_texts, n_ids):
    """Return why a cache entry cannot be the ids of key's n_texts texts (ids below n_ids), or None when it can."""
    if metadata.get('format') != CACHE_FORMAT or metadata.get('key') != key:
        return f"its metadata is not format {CACHE_FORMAT} for key {key[:12]}..."
    if set(tensors) != {'ids', 'offsets'}:
        return f'it holds tensors {sorted(tensors)}, not ids and offsets'
    ids, offsets = tensors['ids'], tensors['offsets']
    if ids.dtype != torch.int32 or ids.dim() != 1 or offsets.dtype != torch.int64 or offsets.shape != (n_texts + 1,):
        return f'its ids are {ids.dtype} {tuple(ids.shape)} and offsets {offsets.dtype} {tuple(offsets.shape)}, not ' \
               f'int32 (n,) and int64 ({n_texts + 1},)'
    if offsets[0] != 0 or offsets[-1] != len(ids) or bool((offsets[1:] < offsets[:-1]).any()):
        return 'its offsets do not run from 0 up to the number of ids'
    if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= n_ids):
        return f'it holds ids outside the vocabulary [0, {n_ids})'
    return None


class CachedEncoder:
    """A tokenizer (text_utils.TextEncoder's interface) whose encode() reads and writes the cache in folder; every
    other attribute is the tokenizer's own (its `encoder` dict is the same object, to which callers add tokens)."""

    def __init__(self, base, folder):
        self.base = base
        self.folder = folder
        self.key = tokenizer_key(base)
        self.n_ids = len(base.encoder)  # every id a text can have: special tokens are added later
        self.hits = 0

    def __getattr__(self, name):
        return getattr(self.base, name)

    def path(self, key):
        """Return the cache file of a texts key."""
        return os.path.join(self.folder, f'{key}.safetensors')

    def encode(self, texts, verbose=True):
        """Return the tokenizer's ids of texts (a list of id lists), from the cache when it holds them."""
        if isinstance(texts, str):
            return self.base.encode(texts, verbose=verbose)  # the tokenizer's own error
        texts = list(texts)
        key = texts_key(self.key, texts)
        ids = self.read(key, len(texts))
        if ids is not None:
            self.hits += 1
            return ids
        ids = self.base.encode(texts, verbose=verbose)
        self.write(key, ids)
        return ids

    def read(self, key, n_texts):
        """Return the cached ids of key's n_texts texts, or None when the cache has no usable entry."""
        path = self.path(key)
        if not os.path.lexists(path):
            return None
        try:
            metadata, tensors = read_safetensors(path, what='an encoded-text cache file', allowed=('I32', 'I64'))
        except untrusted.READ_ERRORS as err:
            problem = untrusted.one_line(err)
        else:
            problem = entry_problem(metadata, tensors, key, n_texts, self.n_ids)
        if problem is not None:
            print(f'{path}: ignored ({problem}); encoding the texts again', file=sys.stderr, flush=True)
            return None
        flat, offsets = tensors['ids'].tolist(), tensors['offsets'].tolist()
        return [flat[a:b] for a, b in zip(offsets[:-1], offsets[1:])]

    def write(self, key, ids):
        """Save the ids of key's texts in the cache; a folder that cannot be written to is reported and skipped."""
        from safetensors.numpy import save_file
        flat, offsets = packed_ids(ids)
        path = self.path(key)
        try:
            os.makedirs(self.folder, exist_ok=True)
            atomic_write(path, lambda tmp: save_file({'ids': flat, 'offsets': offsets}, tmp,
                                                     metadata={'format': CACHE_FORMAT, 'key': key}))
        except OSError as err:
            print(f'{path}: not cached ({untrusted.one_line(err)})', file=sys.stderr, flush=True)


def cache_folder(setting):
    """Return the folder an --encode_cache setting names: 'auto' the default folder (default_cache_dir), 'none' no
    cache (None), anything else that folder."""
    return {'auto': default_cache_dir(), 'none': None}.get(setting, setting)


def cached(text_encoder, setting):
    """Return text_encoder with its encodings cached where the --encode_cache setting says, or text_encoder itself
    with 'none'."""
    folder = cache_folder(setting)
    return text_encoder if folder is None else CachedEncoder(text_encoder, folder)
