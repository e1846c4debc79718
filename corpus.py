"""A pre-training corpus as prepare_corpus.py writes it: train.bin and val.bin (little-endian uint16 token ids,
`doc1 SEP doc2 SEP ...`, SEP GPT-1's extra separator id or GPT-2's <|endoftext|>) and meta.json; reading one back for
pretrain.py.

No TF counterpart (OpenAI released no pre-training code).
"""
import json
import os

import numpy as np

CORPUS_FORMATS = {'gpt1': 'gpt1-corpus-v1', 'gpt2': 'gpt2-corpus-v1'}  # meta.json's format, by the tokenizer's family
SPLITS = ('train', 'val')
DTYPE = np.dtype('<u2')  # little-endian uint16 on every machine


def read_meta(folder):
    """Return the meta dict of a corpus folder, checked to be this format."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f'{folder}: no such corpus folder; make it with '
                                f'python prepare_corpus.py --input TEXT --out {folder}')
    path = os.path.join(folder, 'meta.json')
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path} is missing: {folder} holds no finished corpus (an interrupted run?); '
                                f'run prepare_corpus.py --out {folder} again')
    try:
        with open(path, encoding='utf-8') as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f'{path}: not valid JSON ({err}); run prepare_corpus.py again') from None
    fmt = meta.get('format') if isinstance(meta, dict) else None
    if fmt not in CORPUS_FORMATS.values():
        raise ValueError(f'{path}: format {fmt!r}, expected one of {sorted(CORPUS_FORMATS.values())}; prepare the '
                         f'corpus again with this prepare_corpus.py')
    if meta.get('dtype') != 'uint16' or meta.get('byteorder') != 'little':
        raise ValueError(f'{path}: dtype {meta.get("dtype")!r} ({meta.get("byteorder")}), expected uint16 (little); '
                         f'prepare the corpus again')
    missing = [key for key in ('separator_id', 'n_special', 'splits') if key not in meta]
    if missing:
        raise ValueError(f'{path}: no {missing[0]!r}; prepare the corpus again with this prepare_corpus.py')
    return meta


def open_split(folder, split, meta):
    """Return the ids of one split as a read-only uint16 array (a memmap unless empty), checked against meta."""
    path = os.path.join(folder, f'{split}.bin')
    try:
        n_tokens = int(meta['splits'][split]['n_tokens'])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f'{os.path.join(folder, "meta.json")}: no token count for {split}; prepare the corpus '
                         f'again') from None
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path} is missing though meta.json lists it; run prepare_corpus.py again')
    size = os.path.getsize(path)
    if size % DTYPE.itemsize:
        raise ValueError(f'{path}: {size} bytes is not a whole number of 2-byte uint16 ids; the file is damaged, '
                         f'run prepare_corpus.py again')
    if size // DTYPE.itemsize != n_tokens:
        raise ValueError(f'{path}: {size // DTYPE.itemsize} ids, but meta.json says {n_tokens}; the files are from '
                         f'different runs, run prepare_corpus.py again')
    if n_tokens == 0:  # np.memmap cannot map an empty file
        ids = np.zeros(0, dtype=DTYPE)
        ids.flags.writeable = False
        return ids
    ids = np.memmap(path, dtype=DTYPE, mode='r')
    if ids[-1] != meta['separator_id']:
        raise ValueError(f'{path}: the last id is {ids[-1]}, not the separator {meta["separator_id"]}; the file is '
                         f'damaged, run prepare_corpus.py again')
    return ids


def load_corpus(folder):
    """Return (train ids, val ids, meta dict) of a folder written by prepare_corpus.py; ids are read-only uint16."""
    meta = read_meta(folder)
    train, val = (open_split(folder, split, meta) for split in SPLITS)
    return train, val, meta


def corpus_family(meta):
    """Return the model family a corpus was encoded for: 'gpt1' or 'gpt2' (its tokenizer's)."""
    return {fmt: family for family, fmt in CORPUS_FORMATS.items()}[meta['format']]
