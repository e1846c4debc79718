"""Encode your own text into GPT-1 (or, with --arch gpt2, GPT-2) token ids for pre-training: train.bin, val.bin and
meta.json.

    python prepare_corpus.py --input books/ --out corpus/                        # a folder of .txt files
    python prepare_corpus.py --input notes.txt --out corpus/                     # one file, blank-line paragraphs
    python prepare_corpus.py --input web.jsonl --text_field text --out corpus/  # one JSON object a line

Input (--input), read as UTF-8 (--errors strict|replace|ignore, default strict):
- a folder: every .txt file below it (searched recursively, any case of the suffix) is one document, in
  sorted path order;
- a single .txt file: documents are separated by one or more blank lines (lines that are empty or hold only
  whitespace); lines end at '\\n' ('\\r\\n' works too);
- a .jsonl file with --text_field NAME: one document per line, the string value of that field; blank lines
  are skipped. A leading UTF-8 byte-order mark is dropped.

Each document is encoded exactly as `TextEncoder().encode([doc])[0]` (the original's ftfy, text_standardize,
spaCy, lower-casing and BPE), or with --arch gpt2 exactly as openai/gpt-2's encoder.py (encoder_gpt2.py) encodes
it. Documents without tokens are skipped and counted.

Output (--out): `train.bin` and `val.bin` hold little-endian uint16 ids, readable with
`np.memmap(path, dtype=np.uint16, mode='r')` or `corpus.load_corpus(folder)`, as `doc1 SEP doc2 SEP ...`;
`meta.json` records the format, the vocabulary, the separator, the counts, each split's largest id and the
settings (checked_ids.json records the largest ids with the stamps of the files, so that pretrain.py need not scan
them again). The vocabulary is named by its files and their SHA-256 (and git blob SHA-1): the files this repository
ships (the --arch's, recognised by their SHA-256) by their names in the repository (`model/encoder_bpe_40000.json`),
any other vocabulary by its copy in --out (`encoder_bpe_40000.json`, `vocab_40000.bpe`, or GPT-2's `encoder.json`,
`vocab.bpe`): a corpus folder holds everything needed to read it.

Document boundaries: the released vocabulary has no end-of-text token, so the separator is one extra id, the
number of BPE tokens (40478 for the released vocabulary): the first "special" row of GPT-1's embedding table
[tokens; special; positions], which pre-training gives an embedding of its own (n_special 1), as GPT-2 does with
<|endoftext|>, which --arch gpt2 writes after every document (a token of GPT-2's vocabulary: n_special 0); training
windows may cross it.

A document goes to val when a seeded blake2b hash of its text falls below --val_fraction, so the split
depends on nothing but the text and --seed: not on the order or the other documents, and duplicates share a
split. When the documents so picked hold fewer than --min_val_windows (default 4) windows of the family's paper context
(GPT-1: 4 x 513 ids, GPT-2: 4 x 1025) and --val_fraction is between 0 and 1 (a small corpus, or a folder holding one long document), the
last ids of the training text move to val to make up the difference (at most a tenth of them; the document cut
there ends in train with a separator), said in one line and recorded as val's n_tail_tokens in meta.json. Encoding runs in --workers processes on chunks of documents read lazily, and tokens are appended to
the output as they come, so a corpus larger than memory works; serial and parallel runs write the same
bytes. Files are written to temporaries and renamed, meta.json last (an old meta.json is removed first):
a folder with meta.json holds a complete corpus.
"""
import argparse
import hashlib
import json
import multiprocessing
import os
import re
import sys
import time
from dataclasses import dataclass
from functools import lru_cache, partial

import numpy as np

import untrusted
from corpus import (CORPUS_FORMATS, CORPUS_VOCABULARY, DTYPE, MAX_ID_NOTE, ROLES, SHIPPED_VOCABULARY, SPLITS,
                    corpus_family, file_stamp, shipped_sha256, write_checked_ids)
from encoder_gpt2 import DEFAULT_MODEL_DIR as GPT2_DIR
from encoder_gpt2 import encoder_from_files
from models import tokenizer_from_files
from text_utils import BPE_PATH, ENCODER_PATH, VOCAB_MAX_BYTES, load_bpe_ranks, load_encoder
from utils import close_bars, progress
from weights import FAMILIES as ARCHES
from weights import GPT2_VOCAB_FILES

MAX_ID = np.iinfo(np.uint16).max
CHUNK_DOCS = 256  # documents handed to a worker at once
CHUNK_CHARS = 1 << 22  # ... or fewer, once they hold this many characters (bounds memory with large documents)
ERRORS = ('strict', 'replace', 'ignore')
SEPARATOR_NOTES = {
    'gpt1': ('written after every document (doc1 SEP doc2 SEP ...); the released vocabulary has no end-of-text token, '
             'so it is id n_vocab, the first special row of the embedding table'),
    'gpt2': 'written after every document (doc1 SEP doc2 SEP ...): GPT-2\'s <|endoftext|>, a token of its vocabulary'}
DEFAULT_VOCABULARY = {'gpt1': (ENCODER_PATH, BPE_PATH),
                      'gpt2': tuple(str(GPT2_DIR / name) for name in GPT2_VOCAB_FILES)}
N_TOKENS_NOTE = 'n_tokens counts every id in the split file, the separator after each document included'
VOCABULARY_NOTE = ('encoder_path and bpe_path are the vocabulary the ids were encoded with: a file this repository '
                   'ships (model/...) or, for any other vocabulary, its copy in the corpus folder; pretrain.py reads '
                   'them after checking their SHA-256')
# A validation split of at least this many windows of the family's paper context (GPT-1 512, GPT-2 1024 tokens, each
# window n_ctx + 1 ids), topped up from the end of the training text when the documents --val_fraction picks hold
# fewer (a small corpus, or one long document): pretrain.py needs whole windows to validate.
MIN_VAL_WINDOWS = 4
PAPER_N_CTX = {'gpt1': 512, 'gpt2': 1024}
MAX_TAIL_SHARE = 10  # the top-up takes at most a tenth of the training tokens
_STALE_TMP = re.compile(r'^(train\.bin|val\.bin|meta\.json|checked_ids\.json|encoder_bpe_40000\.json|vocab_40000\.bpe|'
                        r'encoder\.json|vocab\.bpe)\.tmp[a-z0-9_]+$')  # untrusted.create_temporary's names


@dataclass(frozen=True)
class CorpusSettings:
    """What prepare_corpus.py's command line asks for: the input and how to read it, the output folder, the split,
    the encoding processes and the tokenizer (its vocabulary files, the --arch's shipped ones unless given)."""
    input: str
    out: str
    text_field: str = None      # the field holding the text of a .jsonl input
    errors: str = 'strict'      # what to do with bytes that are not UTF-8 (one of ERRORS)
    val_fraction: float = 0.005
    seed: int = 0               # of the train/val hash
    min_val_windows: int = MIN_VAL_WINDOWS  # val topped up from train's end to this many paper windows (0: never)
    workers: int = 1            # encoding processes (the command line's default: all cores)
    arch: str = 'gpt1'
    encoder_path: str = ENCODER_PATH
    bpe_path: str = BPE_PATH
    quiet: bool = False         # no progress bar


def parse_args(argv=None):
    """Return the CorpusSettings of the command line."""
    parser = argparse.ArgumentParser(
        description='Encode text into GPT-1 or GPT-2 token ids for pre-training: train.bin, val.bin (little-endian '
                    'uint16) and meta.json in --out.')
    parser.add_argument('--input', required=True,
                        help='a folder of .txt files (searched recursively; each file is one document), a .txt file '
                             '(documents separated by one or more blank lines, i.e. lines empty or only whitespace) '
                             'or a .jsonl file (one document per line, see --text_field)')
    parser.add_argument('--out', required=True, help='output folder for train.bin, val.bin and meta.json')
    parser.add_argument('--text_field', help='the field holding the text in each line of a .jsonl input (required '
                                             'for .jsonl, not allowed otherwise; default: none)')
    parser.add_argument('--errors', choices=ERRORS, default='strict',
                        help='what to do with bytes that are not UTF-8: stop with an error naming the offset '
                             '(strict, the default), U+FFFD (replace) or drop them (ignore)')
    parser.add_argument('--val_fraction', type=float, default=0.005,
                        help='share of documents, by a seeded hash of their text, that go to val (default 0.005)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the train/val hash (default 0)')
    parser.add_argument('--min_val_windows', type=int, default=MIN_VAL_WINDOWS,
                        help=f'when the documents --val_fraction picks hold fewer ids than this many windows of the '
                             f'family\'s paper context (512 or 1024 tokens), move the last ids of the training text '
                             f'to val to make up the difference, at most a tenth of them (default {MIN_VAL_WINDOWS}; '
                             f'0: never)')
    parser.add_argument('--workers', type=int, default=os.cpu_count() or 1,
                        help='encoding processes (default: all cores); 1 encodes in this process')
    parser.add_argument('--arch', choices=ARCHES, default='gpt1',
                        help="whose tokenizer: gpt1 (the original's TextEncoder, documents separated by an extra id) "
                             "or gpt2 (byte-level BPE, documents joined by <|endoftext|>); default gpt1")
    parser.add_argument('--encoder_path', default=None,
                        help="BPE vocabulary (default: the released file shipped in model/, the --arch's)")
    parser.add_argument('--bpe_path', default=None, help="BPE merges (default: the released file shipped in model/)")
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    namespace = parser.parse_args(argv)
    default_encoder, default_bpe = DEFAULT_VOCABULARY[namespace.arch]
    return CorpusSettings(**dict(vars(namespace), encoder_path=namespace.encoder_path or default_encoder,
                                 bpe_path=namespace.bpe_path or default_bpe))


def input_layout(path, text_field):
    """Return 'folder', 'txt' or 'jsonl': how --input path is read, checked against --text_field."""
    if not os.path.exists(path):
        raise FileNotFoundError(f'--input {path}: no such file or folder; give a folder of .txt files, a .txt file '
                                f'or a .jsonl file')
    if os.path.isdir(path):
        layout = 'folder'
    else:
        layout = {'.txt': 'txt', '.jsonl': 'jsonl'}.get(os.path.splitext(path)[1].lower())
        if layout is None:
            raise ValueError(f'--input {path}: not a folder, .txt or .jsonl file; rename it or give its folder')
    if layout == 'jsonl' and not text_field:
        raise ValueError(f'--input {path} is a .jsonl file: pass --text_field NAME, the field holding the text')
    if layout != 'jsonl' and text_field:
        what = 'a folder of .txt files' if layout == 'folder' else 'a .txt file'
        raise ValueError(f'--text_field {text_field!r} is for .jsonl input, and {path} is {what}: drop --text_field')
    return layout


def check_settings(settings):
    """Return the CorpusSettings after checking their numbers, raising a one-line ValueError for a bad one."""
    if settings.min_val_windows < 0:
        raise ValueError(f'--min_val_windows {settings.min_val_windows}: give 0 or more')
    if not 0.0 <= settings.val_fraction <= 1.0:
        raise ValueError(f'--val_fraction {settings.val_fraction}: give a share between 0 and 1')
    if settings.workers < 1:
        raise ValueError(f'--workers {settings.workers}: give 1 or more')
    return settings


def separator_id_for(encoder, encoder_path):
    """Return the separator id of a token -> id vocabulary (its size), checked to be a new id that fits uint16."""
    n_vocab = len(encoder)
    top = max(encoder.values())
    if top >= n_vocab:
        raise ValueError(f'{encoder_path}: token id {top} is not below the number of tokens {n_vocab}, so the '
                         f'separator id {n_vocab} would collide; use a vocabulary with ids 0..{n_vocab - 1}')
    if n_vocab > MAX_ID:
        raise ValueError(f'{encoder_path}: {n_vocab} tokens and the separator do not fit uint16 ids (at most '
                         f'{MAX_ID} tokens); use a smaller vocabulary')
    return n_vocab


def check_vocabulary(arch, encoder_path, bpe_path):
    """Return (n_vocab, separator id, n_special) of the --arch's vocabulary files, raising a one-line error when
    either is unusable: GPT-1 separates documents by one extra id (a special row), GPT-2 by <|endoftext|>."""
    if arch == 'gpt2':
        encoder = encoder_from_files(encoder_path, bpe_path)
        if encoder.n_vocab - 1 > MAX_ID:
            raise ValueError(f'{encoder_path}: {encoder.n_vocab} tokens do not fit uint16 ids; use a smaller vocabulary')
        return encoder.n_vocab, encoder.eot_token, 0
    encoder = load_encoder(encoder_path)
    load_bpe_ranks(bpe_path)
    separator_id = separator_id_for(encoder, encoder_path)
    return separator_id, separator_id, 1


def vocabulary_record(arch, encoder_path, bpe_path):
    """Return (meta.json's vocabulary record, {name in the corpus folder: bytes} of the files to copy there): each
    file the repository ships (the --arch's, recognised by its SHA-256) is named as in the repository, any other is
    copied into the corpus folder under the family's name; each with its SHA-256 and git blob SHA-1."""
    record, copies = {}, {}
    for role, path, shipped, name in zip(ROLES, (encoder_path, bpe_path), SHIPPED_VOCABULARY[arch],
                                         CORPUS_VOCABULARY[arch]):
        data = untrusted.read_bytes(path, limit=VOCAB_MAX_BYTES, what='vocabulary file')
        digest = hashlib.sha256(data).hexdigest()
        if digest != shipped_sha256(arch, role):
            copies[name] = data
            shipped = name
        record.update({f'{role}_path': shipped, f'{role}_sha256': digest, f'{role}_sha1': untrusted.git_blob_sha1(data)})
    record['note'] = VOCABULARY_NOTE
    return record, copies


def decode_error(path, offset, byte, lineno=None):
    """Return the one-line ValueError for an undecodable byte at offset of path."""
    where = f'{path}: line {lineno}' if lineno else path
    return ValueError(f'{where}: byte offset {offset} (0x{byte:02x}) is not UTF-8; convert the file to UTF-8 or '
                      f'pass --errors replace (U+FFFD) or --errors ignore (drop it) (choices: {", ".join(ERRORS)})')


def decode(data, path, errors, offset=0, lineno=None):
    """Return bytes data (found at offset of path) decoded as UTF-8 under errors."""
    try:
        return data.decode('utf-8', errors)
    except UnicodeDecodeError as err:
        raise decode_error(path, offset + err.start, data[err.start], lineno) from None


def read_lines(path, errors):
    """Yield (line number, text with its line end) for each line of a UTF-8 file, one line at a time."""
    offset = 0
    with open(path, 'rb') as f:
        # '\n' never occurs inside a UTF-8 sequence, so decoding line by line equals decoding the whole file
        for lineno, raw in enumerate(f, start=1):
            line = decode(raw, path, errors, offset, lineno)
            if lineno == 1 and line.startswith('\ufeff'):
                line = line[1:]
            offset += len(raw)
            yield lineno, line


def txt_files(folder):
    """Return the .txt files under folder (recursively, any case of the suffix), sorted by path."""
    found = []
    for root, _, names in os.walk(folder):
        found += [os.path.join(root, name) for name in names if name.lower().endswith('.txt')]
    # sorted by path components, as pathlib compares paths ('a/x.txt' before 'a-b/x.txt')
    found.sort(key=lambda path: os.path.relpath(path, folder).split(os.sep))
    if not found:
        raise ValueError(f'--input {folder}: no .txt files in this folder or below it; each .txt file is a document')
    return found


def folder_documents(folder, errors):
    """Yield the text of each .txt file under folder, one file at a time, in sorted path order."""
    for path in txt_files(folder):
        with open(path, 'rb') as f:
            text = decode(f.read(), path, errors)
        yield text[1:] if text.startswith('\ufeff') else text


def paragraph_documents(path, errors):
    """Yield the documents of one .txt file: runs of lines between blank (empty or whitespace-only) lines."""
    lines = []
    for _, line in read_lines(path, errors):
        if line.strip():
            lines.append(line)
        elif lines:
            yield ''.join(lines).rstrip('\r\n')
            lines = []
    if lines:
        yield ''.join(lines).rstrip('\r\n')


def jsonl_documents(path, text_field, errors):
    """Yield the string in text_field of each non-blank line of a .jsonl file, one line at a time."""
    for lineno, line in read_lines(path, errors):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f'{path}: line {lineno}: not valid JSON ({err.msg} at column {err.colno}); each line '
                             f'must be one JSON object') from None
        if not isinstance(record, dict):
            raise ValueError(f'{path}: line {lineno}: a JSON {type(record).__name__}, not an object; each line '
                             f'must be an object with the field {text_field!r}')
        if text_field not in record:
            fields = ', '.join(repr(k) for k in list(record)[:8]) or 'none'
            raise ValueError(f'{path}: line {lineno}: no field {text_field!r} (fields: {fields}); '
                             f'pass the right --text_field or fix the line')
        text = record[text_field]
        if not isinstance(text, str):
            raise ValueError(f'{path}: line {lineno}: field {text_field!r} is a {type(text).__name__}, not a '
                             f'string; every document must be text')
        yield text


def documents(path, layout, text_field, errors):
    """Return a generator of the documents of --input path, read lazily."""
    if layout == 'folder':
        return folder_documents(path, errors)
    if layout == 'txt':
        return paragraph_documents(path, errors)
    return jsonl_documents(path, text_field, errors)


def chunks(docs, max_docs, max_chars):
    """Yield lists of consecutive documents of docs, each of at most max_docs documents and about max_chars."""
    chunk, n_chars = [], 0
    for doc in docs:
        chunk.append(doc)
        n_chars += len(doc)
        if len(chunk) >= max_docs or n_chars >= max_chars:
            yield chunk
            chunk, n_chars = [], 0
    if chunk:
        yield chunk


def val_score(text, seed):
    """Return a number in [0, 1) set by seed and text alone (blake2b): the document goes to val below val_fraction."""
    h = hashlib.blake2b(f'{seed}\n'.encode(), digest_size=8)
    h.update(text.encode('utf-8', 'surrogatepass'))  # surrogatepass: JSON may hold lone surrogates
    return (int.from_bytes(h.digest(), 'big') >> 11) / (1 << 53)  # 53 bits: exact in a float, so always < 1


def in_val(text, seed, val_fraction):
    """Return whether the document text goes to val."""
    return val_score(text, seed) < val_fraction


def empty_counts():
    """Return zeroed per-split counts: {split: {n_documents, n_tokens, n_empty_skipped}}."""
    return {split: dict(n_documents=0, n_tokens=0, n_empty_skipped=0) for split in SPLITS}


def encode_chunk(text_encoder, docs, seed, val_fraction, separator_id):
    """Return ({split: uint16 bytes of its documents, each followed by separator_id}, per-split counts) of docs."""
    ids = {split: [] for split in SPLITS}
    counts = empty_counts()
    for text, tokens in zip(docs, text_encoder.encode(docs, verbose=False)):
        split = 'val' if in_val(text, seed, val_fraction) else 'train'
        if not tokens:
            counts[split]['n_empty_skipped'] += 1
            continue
        ids[split] += tokens
        ids[split].append(separator_id)
        counts[split]['n_documents'] += 1
        counts[split]['n_tokens'] += len(tokens) + 1
    # every id fits: check_vocabulary put all token ids below separator_id <= MAX_ID
    return {split: np.asarray(ids[split], dtype=DTYPE).tobytes() for split in SPLITS}, counts


# Each pool process builds one tokenizer, kept here between chunks (a pool worker has no other state).
@lru_cache(maxsize=1)
def worker_encoder(arch, encoder_path, bpe_path):
    """Return this process's tokenizer, built on its first chunk (an error then reaches the parent)."""
    return tokenizer_from_files(arch, encoder_path, bpe_path)


def encode_in_worker(docs, arch, encoder_path, bpe_path, seed, val_fraction, separator_id):
    """Return encode_chunk(docs) with this worker process's tokenizer."""
    return encode_chunk(worker_encoder(arch, encoder_path, bpe_path), docs, seed, val_fraction, separator_id)


def write_chunks(results, files, progress):
    """Append each (bytes, counts) of results, in order, to files {split: file}; return the summed counts."""
    totals = empty_counts()
    start = time.perf_counter()
    for data, counts in results:
        for split in SPLITS:
            files[split].write(data[split])
            if data[split]:  # the largest id, recorded so that pretrain.py need not scan the file
                largest = int(np.frombuffer(data[split], dtype=DTYPE).max())
                totals[split]['max_id'] = max(totals[split].get('max_id', 0), largest)
            for key, n in counts[split].items():
                totals[split][key] += n
        n_tokens = sum(c['n_tokens'] for c in totals.values())
        progress.set_postfix_str(f'{n_tokens / max(time.perf_counter() - start, 1e-9):,.0f} tokens/s', refresh=False)
        progress.update(sum(c['n_documents'] + c['n_empty_skipped'] for c in counts.values()))
    return totals


def encode_corpus(settings, layout, separator_id, files):
    """Encode every document of the CorpusSettings' input into files {split: file}, in document order; return the
    counts."""
    docs = documents(settings.input, layout, settings.text_field, settings.errors)
    work = chunks(docs, CHUNK_DOCS, CHUNK_CHARS)
    options = dict(seed=settings.seed, val_fraction=settings.val_fraction, separator_id=separator_id)
    bar = partial(progress, unit='doc', desc='encoding', disable=settings.quiet, leave=False)
    if settings.workers == 1:
        encode = partial(encode_chunk, tokenizer_from_files(settings.arch, settings.encoder_path, settings.bpe_path),
                         **options)
        with bar() as bar:
            return write_chunks(map(encode, work), files, bar)
    # imap returns chunks in order, so the files equal the serial ones; its feeder thread reads the input only
    # as fast as the task pipe drains, which keeps the documents in memory to a few chunks.
    encode = partial(encode_in_worker, arch=settings.arch, encoder_path=settings.encoder_path,
                     bpe_path=settings.bpe_path, **options)
    with multiprocessing.Pool(settings.workers) as pool:
        with bar() as bar:
            counts = write_chunks(pool.imap(encode, work), files, bar)
        pool.close()  # let the workers exit cleanly; the with block's terminate() is for errors
        pool.join()
    return counts


def tail_tokens(counts, arch, min_val_windows):
    """Return how many ids to move from the end of train to val (0 when val holds min_val_windows windows of the
    arch's paper context already): the shortfall, at most a tenth of train."""
    shortfall = min_val_windows * (PAPER_N_CTX[arch] + 1) - counts['val']['n_tokens']
    return max(0, min(shortfall, counts['train']['n_tokens'] // MAX_TAIL_SHARE))


def top_up_val(tmp, counts, n_tail, separator_id):
    """Move the last n_tail ids of the train temporary to the end of the val one ({split: (fd, path)}, written and
    still open), ending train with separator_id where the cut falls inside a document (the document cut in two is two
    documents, as every split file ends with the separator), and record the move in counts (val's n_tail_tokens,
    both splits' n_tokens, n_documents and max_id)."""
    if n_tail == 0:
        return
    itemsize = DTYPE.itemsize
    train_fd, train_path = tmp['train']
    n_train, n_val = counts['train']['n_tokens'], counts['val']['n_tokens']
    keep = n_train - n_tail
    tail = np.frombuffer(read_exactly(train_fd, n_tail * itemsize, keep * itemsize), dtype=DTYPE)
    before = np.frombuffer(read_exactly(train_fd, itemsize, (keep - 1) * itemsize), dtype=DTYPE)[0]
    write_exactly(tmp['val'][0], tail.tobytes(), n_val * itemsize)
    os.ftruncate(train_fd, keep * itemsize)
    n_moved = int((tail == separator_id).sum())  # the documents that end in the tail: val's now
    cut_inside = bool(before != separator_id)
    if cut_inside:  # the cut document's first part stays in train, a document of its own
        write_exactly(train_fd, np.asarray([separator_id], dtype=DTYPE).tobytes(), keep * itemsize)
    counts['train']['n_tokens'] = keep + int(cut_inside)
    counts['train']['n_documents'] += int(cut_inside) - n_moved
    counts['val']['n_tokens'] += n_tail
    counts['val']['n_documents'] += n_moved
    counts['val']['n_tail_tokens'] = n_tail
    counts['val']['max_id'] = max(counts['val'].get('max_id', 0), int(tail.max()))
    train = np.memmap(train_path, dtype=DTYPE, mode='r', shape=(counts['train']['n_tokens'],))
    counts['train']['max_id'] = int(train.max())  # the tail may have held train's largest id
    del train


def read_exactly(fd, size, offset):
    """Return size bytes of fd at offset (os.pread may return fewer at once: it is called until they are read)."""
    parts = []
    while size:
        part = os.pread(fd, size, offset)
        if not part:
            raise OSError(f'a temporary of the corpus ended {size} bytes early')
        parts.append(part)
        size, offset = size - len(part), offset + len(part)
    return b''.join(parts)


def write_exactly(fd, data, offset):
    """Write all of data to fd at offset (os.pwrite may write fewer bytes at once)."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def build_meta(settings, vocabulary, counts, record):
    """Return the meta.json dict: format, vocabulary, separator, per-split counts (and largest id) and the
    CorpusSettings that set the ids (no timestamps); vocabulary is check_vocabulary's (n_vocab, separator id,
    n_special), record vocabulary_record's."""
    n_vocab, separator_id, n_special = vocabulary
    splits = {split: dict(file=f'{split}.bin', **counts[split]) for split in SPLITS}
    return dict(format=CORPUS_FORMATS[settings.arch], dtype='uint16', byteorder='little', n_vocab=n_vocab,
                separator_id=separator_id, n_special=n_special, separator=SEPARATOR_NOTES[settings.arch],
                vocabulary=record, splits=splits, n_tokens_note=N_TOKENS_NOTE, max_id_note=MAX_ID_NOTE,
                settings=dict(input=settings.input, text_field=settings.text_field, errors=settings.errors,
                              seed=settings.seed, val_fraction=settings.val_fraction,
                              min_val_windows=settings.min_val_windows))


def make_out_folder(out):
    """Create the output folder and delete temporaries that interrupted runs left there; return out."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f'--out {out} is a file: give a folder for train.bin, val.bin and meta.json')
    os.makedirs(out, exist_ok=True)
    for name in os.listdir(out):
        if _STALE_TMP.match(name):
            os.remove(os.path.join(out, name))
    return out


def publish(out, tmp, meta, copies=None):
    """Move the temporary split files ({split: (fd, path)} of untrusted.create_temporary, written) onto train.bin/val.bin,
    record their largest ids with their stamps in checked_ids.json (so that pretrain.py need not scan them), write the
    vocabulary copies ({name: bytes}) and write meta.json last, each durably through a temporary made safely (a
    link planted in --out is replaced, never written through); return out."""
    meta_path = os.path.join(out, 'meta.json')
    if os.path.lexists(meta_path):  # an older meta.json must not vouch for a half-replaced pair of .bin files
        os.remove(meta_path)
    checked = {}
    for split in SPLITS:
        fd, path = tmp.pop(split)
        path = untrusted.replace_durably(fd, path, os.path.join(out, f'{split}.bin'))
        if 'max_id' in meta['splits'][split]:  # stamped after the rename, which changes the file's ctime
            checked[split] = (meta['splits'][split]['max_id'], file_stamp(os.stat(path)))
    write_checked_ids(out, checked)  # a cache: when it cannot be written, pretrain.py scans the files once
    for name, data in (copies or {}).items():
        untrusted.write_atomically(os.path.join(out, name), data)
    untrusted.write_atomically(meta_path, (json.dumps(meta, indent=2, ensure_ascii=False) + '\n').encode('utf-8'))
    return out


def prepare_corpus(settings):
    """Encode the CorpusSettings' input into their out folder (train.bin, val.bin, then meta.json); return the meta
    dict."""
    layout = input_layout(settings.input, settings.text_field)
    check_settings(settings)
    vocabulary = check_vocabulary(settings.arch, settings.encoder_path, settings.bpe_path)
    record, copies = vocabulary_record(settings.arch, settings.encoder_path, settings.bpe_path)
    make_out_folder(settings.out)
    tmp = {}  # split -> (fd, path) of its temporary, until publish renames it
    try:
        for split in SPLITS:
            tmp[split] = untrusted.create_temporary(os.path.join(settings.out, f'{split}.bin'))
        # closefd=False: publish flushes each to disk before closing it
        with open(tmp['train'][0], 'wb', closefd=False) as train_file, \
                open(tmp['val'][0], 'wb', closefd=False) as val_file:
            counts = encode_corpus(settings, layout, vocabulary[1], {'train': train_file, 'val': val_file})
        if not any(counts[split]['n_documents'] for split in SPLITS):
            n_empty = sum(counts[split]['n_empty_skipped'] for split in SPLITS)
            raise ValueError(f'--input {settings.input}: no document with text ({n_empty} empty); nothing to write')
        if 0 < settings.val_fraction < 1:
            top_up_val(tmp, counts, tail_tokens(counts, settings.arch, settings.min_val_windows), vocabulary[1])
        meta = build_meta(settings, vocabulary, counts, record)
        publish(settings.out, tmp, meta, copies)
    finally:
        for fd, path in tmp.values():  # what publish did not rename
            os.close(fd)
            if os.path.lexists(path):
                os.remove(path)
    return meta


def report(meta, out):
    """Return the summary lines for stdout and the warning lines for stderr of a finished run."""
    lines, warnings = [], []
    for split in SPLITS:
        c = meta['splits'][split]
        lines.append(f'{split}: {c["n_documents"]} documents, {c["n_tokens"]} tokens (separators included) -> '
                     f'{os.path.join(out, c["file"])}')
    n_empty = sum(meta['splits'][split]['n_empty_skipped'] for split in SPLITS)
    if n_empty:
        lines.append(f'skipped {n_empty} empty documents (no tokens)')
    n_tail = meta['splits']['val'].get('n_tail_tokens', 0)
    if n_tail:
        lines.append(f'val: the documents --val_fraction picked held fewer than '
                     f'{meta["settings"]["min_val_windows"]} windows of '
                     f'{PAPER_N_CTX[corpus_family(meta)]} tokens, so the last {n_tail} tokens of the training text '
                     f'went to val')
    n_docs = sum(meta['splits'][split]['n_documents'] for split in SPLITS)
    fraction = meta['settings']['val_fraction']
    for split, wanted in (('val', fraction > 0), ('train', fraction < 1)):
        if wanted and not meta['splits'][split]['n_tokens']:
            warnings.append(f'warning: {split} is empty: none of the {n_docs} documents fell in it with '
                            f'--val_fraction {fraction}; change --val_fraction (or --seed) to fill it')
    return lines, warnings


def main(argv=None):
    """Run the command line; return 0, or 2 with one line on stderr."""
    settings = parse_args(argv)
    try:
        meta = prepare_corpus(settings)
    except (OSError, ValueError) as err:
        close_bars()  # the error is the last line, after no bar's debris
        print(f'prepare_corpus.py: error: {err}', file=sys.stderr)
        return 2
    lines, warnings = report(meta, settings.out)
    for line in warnings:
        print(line, file=sys.stderr)
    print('\n'.join(lines))
    return 0


if __name__ == '__main__':
    sys.exit(main())
