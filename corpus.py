"""A pre-training corpus as prepare_corpus.py writes it: train.bin and val.bin (little-endian uint16 token ids,
`doc1 SEP doc2 SEP ...`, SEP GPT-1's extra separator id or GPT-2's <|endoftext|>) and meta.json; reading one back for
pretrain.py.

A corpus folder may come from elsewhere, so reading one checks it (every problem is one untrusted.BadFile naming the
file):
- meta.json: every field's type and range, the format, and the vocabulary it names. A vocabulary file is either one
  that this repository ships (named as in the repository, e.g. `model/encoder_bpe_40000.json`, the family's own) or
  a file inside the corpus folder (prepare_corpus.py copies any other vocabulary there); each must have the SHA-256
  that meta.json records, and the encoder must hold n_vocab tokens. Any other path is refused without being looked
  at. A meta.json of an older prepare_corpus.py (absolute vocabulary paths, git blob SHA-1s, no SHA-256) is accepted
  when its SHA-1s are those of the vocabulary files this repository ships: those files are read, never the paths it
  records; any other older record is refused (its vocabulary is not in the folder), with the remedy.
- every file written into a corpus folder goes through a temporary made with O_CREAT | O_EXCL (untrusted.create_temporary)
  and is renamed onto its name: a symlink planted in a downloaded folder is replaced, never written through.
- train.bin / val.bin: regular files inside the folder, of 2 bytes an id, as many ids as meta.json counts, the last
  one the separator, and every id a row tokens may use (below n_vocab + n_special; a larger id would read a position
  row, or past the table). That maximum is found once by a scan of the file and recorded in checked_ids.json with the
  file's stamp (size, modification and change times, inode): an open whose file still has that stamp trusts the
  record and costs nothing. The change time (ctime) is set by the kernel whenever a file is written, renamed or
  copied in, and cannot be set to a chosen value, so a record written elsewhere (a downloaded checked_ids.json) never
  matches a file here: such a file is scanned, and the record is written back when the folder is writable.
  checked_ids.json is this machine's cache, apart from meta.json (which stays byte-identical across runs of
  prepare_corpus.py, and records each split's largest id too); an unreadable one is ignored (the files are scanned).

No TF counterpart (OpenAI released no pre-training code).
"""
import json
import os
import re
from functools import lru_cache

import numpy as np

import untrusted

CORPUS_FORMATS = {'gpt1': 'gpt1-corpus-v1', 'gpt2': 'gpt2-corpus-v1'}  # meta.json's format, by the tokenizer's family
SPLITS = ('train', 'val')
DTYPE = np.dtype('<u2')  # little-endian uint16 on every machine
MAX_ROWS = 1 << 16  # uint16 ids address at most 65536 rows
N_SPECIAL = {'gpt1': 1, 'gpt2': 0}  # GPT-1's separator is its own special row; GPT-2's is a token (<|endoftext|>)
ROLES = ('encoder', 'bpe')
REPOSITORY = os.path.dirname(os.path.abspath(__file__))
# The vocabulary files this repository ships, named relative to it, by family: (encoder, bpe).
SHIPPED_VOCABULARY = {'gpt1': ('model/encoder_bpe_40000.json', 'model/vocab_40000.bpe'),
                      'gpt2': ('model/gpt2/encoder.json', 'model/gpt2/vocab.bpe')}
# The names under which prepare_corpus.py copies any other vocabulary into the corpus folder, by family.
CORPUS_VOCABULARY = {'gpt1': ('encoder_bpe_40000.json', 'vocab_40000.bpe'), 'gpt2': ('encoder.json', 'vocab.bpe')}
META_MAX_BYTES = 1 << 20  # a meta.json is about 2 kB
MAX_TOKENS = 1 << 50  # more ids than any disk holds
SCAN_IDS = 1 << 24  # ids a chunk of the maximum scan (32 MB)
STAMP_KEYS = ('size', 'mtime_ns', 'ctime_ns', 'inode')
CHECKED_IDS = 'checked_ids.json'  # the largest id of each split file and the stamp of the file it was found on
MAX_ID_NOTE = ('max_id is the largest id of the split file (pretrain.py checks it against the model\'s rows once per '
               f'file, recording the file\'s stamp in {CHECKED_IDS})')
_SHA256 = re.compile(r'[0-9a-f]{64}')
_SHA1 = re.compile(r'[0-9a-f]{40}')
AGAIN = 'prepare the corpus again with this prepare_corpus.py'


# --- meta.json -------------------------------------------------------------------------------------------------

def meta_path_of(folder):
    """Return the path of a corpus folder's meta.json, after checking the folder exists."""
    folder = untrusted.check_path_text(folder, 'corpus folder')
    if not os.path.isdir(folder):
        raise untrusted.MissingFile(f'{folder}: no such corpus folder; make it with python prepare_corpus.py --input '
                                    f'TEXT --out {folder}', folder)
    return os.path.join(folder, 'meta.json')


def read_meta(folder):
    """Return the meta dict of a corpus folder, every field checked (check_meta); any problem is one BadFile naming
    meta.json (a MissingFile when it or the folder is missing)."""
    path = meta_path_of(folder)
    data = untrusted.read_bytes(path, folder, META_MAX_BYTES, 'corpus meta.json',
                                missing=f'{folder} holds no finished corpus (an interrupted run?); run '
                                        f'prepare_corpus.py --out {folder} again')
    with untrusted.reading(path):
        try:
            text = data.decode('utf-8')
        except UnicodeDecodeError as err:
            raise untrusted.bad(path, f'is not UTF-8 text (byte {err.start}); {AGAIN}') from None
        meta = untrusted.parse_json(text, path)
        if not isinstance(meta, dict):
            raise untrusted.bad(path, f'must hold a JSON object, not {type(meta).__name__}; {AGAIN}')
        try:
            check_meta(meta)
        except ValueError as err:
            raise untrusted.bad(path, f'{untrusted.one_line(err)}; {AGAIN}') from None
    return meta


def _no(key, where):
    """Return the message for a field that is absent: where (e.g. 'splits.train.') has no key."""
    return f'no {key!r}' + (f' in {where.rstrip(".")}' if where else '')


def _field(record, key, where, kind, required=True):
    """Return record[key] checked to be of type kind (str, dict, list or bool); None when absent and not required."""
    if key not in record:
        if required:
            raise ValueError(_no(key, where))
        return None
    value = record[key]
    if not isinstance(value, kind):
        raise ValueError(f'{where}{key} must be a JSON {kind.__name__}, not {untrusted.show(value)}')
    return value


def _int(record, key, where, low=0, high=None, required=True):
    """Return the int record[key] in [low, high] (None when absent and not required)."""
    if key not in record and not required:
        return None
    if key not in record:
        raise ValueError(_no(key, where))
    return untrusted.int_field(f'{where}{key}', record[key], low, MAX_TOKENS if high is None else high)


def check_meta(meta):
    """Check every field of a meta dict (types, ranges, the format's constants); raise a ValueError naming the field.

    Fields only prepare_corpus.py's report reads (settings, notes) are checked for their type too."""
    fmt = meta.get('format')
    if fmt not in CORPUS_FORMATS.values():
        raise ValueError(f'format {untrusted.show(fmt)}, expected one of {sorted(CORPUS_FORMATS.values())}')
    family = corpus_family(meta)
    if meta.get('dtype') != 'uint16' or meta.get('byteorder') != 'little':
        raise ValueError(f'dtype {untrusted.show(meta.get("dtype"))} ({untrusted.show(meta.get("byteorder"))}), '
                         f'expected uint16 (little)')
    n_vocab = _int(meta, 'n_vocab', '', 1, MAX_ROWS)
    n_special = _int(meta, 'n_special', '', 0, MAX_ROWS)
    if n_special != N_SPECIAL[family]:
        raise ValueError(f'n_special={n_special}, but a {fmt} corpus has {N_SPECIAL[family]} special rows')
    rows = n_vocab + n_special
    if rows > MAX_ROWS:
        raise ValueError(f'n_vocab + n_special = {rows} rows, more than uint16 ids address ({MAX_ROWS})')
    separator = _int(meta, 'separator_id', '', 0, rows - 1)
    if family == 'gpt1' and separator != n_vocab:
        raise ValueError(f'separator_id={separator}, but a {fmt} corpus separates documents by n_vocab={n_vocab}')
    for key in ('separator', 'n_tokens_note', 'max_id_note'):
        _field(meta, key, '', str, required=False)
    splits = _field(meta, 'splits', '', dict)
    for split in SPLITS:
        counts = _field(splits, split, 'splits ', dict)
        where = f'splits.{split}.'
        if _field(counts, 'file', where, str, required=False) not in (None, f'{split}.bin'):
            raise ValueError(f'{where}file is {untrusted.show(counts["file"])}, not {split}.bin')
        _int(counts, 'n_tokens', where)
        _int(counts, 'n_documents', where, required=False)
        _int(counts, 'n_empty_skipped', where, required=False)
        _int(counts, 'n_tail_tokens', where, required=False)
        _int(counts, 'max_id', where, 0, MAX_ROWS - 1, required=False)
    check_vocabulary_record(_field(meta, 'vocabulary', '', dict))
    settings = _field(meta, 'settings', '', dict, required=False)
    if settings is not None:
        for key in ('input', 'errors'):
            _field(settings, key, 'settings.', str, required=False)
        if settings.get('text_field') is not None:
            _field(settings, 'text_field', 'settings.', str)
        _int(settings, 'seed', 'settings.', -(1 << 63), 1 << 64, required=False)
        if 'val_fraction' in settings:
            fraction = settings['val_fraction']
            if not (untrusted.is_int(fraction) or isinstance(fraction, float)) or not 0 <= fraction <= 1:
                raise ValueError(f'settings.val_fraction must be a number in [0, 1], not {untrusted.show(fraction)}')
    return meta


def check_vocabulary_record(vocabulary):
    """Check meta.json's vocabulary record: each file's path (a string) and SHA-256 (64 hex digits); a record of an
    older prepare_corpus.py (no SHA-256, only the git blob SHA-1 of 40 hex digits) passes here, and
    vocabulary_files accepts it only for the files this repository ships."""
    for role in ROLES:
        _field(vocabulary, f'{role}_path', 'vocabulary.', str)
        digest, sha1 = vocabulary.get(f'{role}_sha256'), vocabulary.get(f'{role}_sha1')
        if digest is None and sha1 is None:
            raise ValueError('records no SHA-256 of its vocabulary files (an older prepare_corpus.py wrote it), so '
                             'the files it names cannot be checked')
        if digest is not None and (not isinstance(digest, str) or not _SHA256.fullmatch(digest)):
            raise ValueError(f'vocabulary.{role}_sha256 must be 64 hex digits, not {untrusted.show(digest)}')
        if sha1 is not None and (not isinstance(sha1, str) or not _SHA1.fullmatch(sha1)):
            raise ValueError(f'vocabulary.{role}_sha1 must be 40 hex digits, not {untrusted.show(sha1)}')


def is_old_record(vocabulary):
    """Return whether a (checked) vocabulary record is an older prepare_corpus.py's: git blob SHA-1s, no SHA-256."""
    return any(vocabulary.get(f'{role}_sha256') is None for role in ROLES)


def corpus_family(meta):
    """Return the model family a corpus was encoded for: 'gpt1' or 'gpt2' (its tokenizer's)."""
    return {fmt: family for family, fmt in CORPUS_FORMATS.items()}[meta['format']]


# --- the vocabulary --------------------------------------------------------------------------------------------

def shipped_path(family, role):
    """Return the absolute path of the vocabulary file of a family (role 'encoder' or 'bpe') this repository ships."""
    return os.path.join(REPOSITORY, *SHIPPED_VOCABULARY[family][ROLES.index(role)].split('/'))


@lru_cache(maxsize=8)
def _shipped_digest(path, size, mtime_ns, kind):
    """Return untrusted.file_sha256(path) (kind 'sha256') or untrusted.git_blob_sha1(path) ('sha1'), cached for a file
    of that size and modification time."""
    return untrusted.file_sha256(path) if kind == 'sha256' else untrusted.git_blob_sha1(path)


def shipped_digest(family, role, kind='sha256'):
    """Return the SHA-256 (kind 'sha256') or git blob SHA-1 ('sha1') of a shipped vocabulary file (hashed once a
    process while it is unchanged), or None when this checkout lacks it."""
    path = shipped_path(family, role)
    try:
        st = os.stat(path)
        return _shipped_digest(path, st.st_size, st.st_mtime_ns, kind)
    except (OSError, untrusted.BadFile):
        return None


def shipped_sha256(family, role):
    """Return the SHA-256 of a shipped vocabulary file, or None when this checkout lacks it."""
    return shipped_digest(family, role, 'sha256')


def vocabulary_files(folder, meta):
    """Return (encoder path, bpe path) of the vocabulary meta.json names, each checked: the family's shipped file
    (named as in the repository) or a file inside the corpus folder, with the SHA-256 meta.json records; the encoder
    holds n_vocab tokens (GPT-2's: <|endoftext|> is the separator). Anything else is one BadFile naming meta.json."""
    meta_path = os.path.join(folder, 'meta.json')
    family = corpus_family(meta)
    record = meta['vocabulary']
    with untrusted.reading(meta_path):
        if is_old_record(record):
            paths = old_vocabulary_files(family, record, meta_path)
        else:
            paths = tuple(recorded_vocabulary_file(folder, family, record, role, meta_path) for role in ROLES)
        check_vocabulary_size(family, paths[0], meta, meta_path)
    return paths


def recorded_vocabulary_file(folder, family, record, role, meta_path):
    """Return the path of the vocabulary file (role 'encoder' or 'bpe') a record of this prepare_corpus.py names: the
    family's shipped file (named as in the repository) or a file inside the corpus folder, with the recorded
    SHA-256."""
    name = record[f'{role}_path']
    shipped = name == SHIPPED_VOCABULARY[family][ROLES.index(role)]
    path = shipped_path(family, role) if shipped else untrusted.contained(folder, name, meta_path)
    if not os.path.lexists(path):
        where = (f'this repository ships at {path}: restore it from git' if shipped
                 else f'{folder} does not hold; {AGAIN}')
        raise untrusted.MissingFile(f'{meta_path}: names the vocabulary file {untrusted.show(name)}, which {where}',
                                    meta_path)
    digest = untrusted.file_sha256(path, folder if path.startswith(os.path.join(folder, '')) else None)
    if digest != record[f'{role}_sha256']:
        raise untrusted.bad(meta_path, f'the vocabulary file {path} has SHA-256 {digest[:16]}..., not the '
                                       f'{record[f"{role}_sha256"][:16]}... meta.json records: it is not the '
                                       f'vocabulary the corpus was encoded with; {AGAIN}')
    return path


def old_vocabulary_files(family, record, meta_path):
    """Return (encoder path, bpe path) of the vocabulary an older prepare_corpus.py recorded (each file's path, often
    absolute, and git blob SHA-1, no SHA-256): the files this repository ships when the recorded SHA-1s are theirs
    (the recorded paths are then not used: the shipped files are read); any other vocabulary is refused, as its files
    are not in the corpus folder and cannot be trusted."""
    paths = []
    for role in ROLES:
        sha1 = record.get(f'{role}_sha1')
        path = shipped_path(family, role)
        if sha1 is None or sha1 != shipped_digest(family, role, 'sha1'):
            lacks = '' if os.path.lexists(path) else f' (this checkout lacks {path}: restore it from git)'
            raise untrusted.bad(meta_path, f'records no SHA-256 of its vocabulary files (an older prepare_corpus.py '
                                           f'wrote it), and its {role} file (git blob SHA-1 {untrusted.show(sha1)}) is '
                                           f'not the one this repository ships{lacks}: a vocabulary outside the '
                                           f'corpus folder cannot be trusted; {AGAIN}')
        paths.append(path)
    return tuple(paths)


def check_vocabulary_size(family, encoder_path, meta, meta_path):
    """Raise a BadFile naming meta.json when the encoder file does not hold meta's n_vocab tokens (or, for GPT-2,
    its <|endoftext|> is not the separator)."""
    if family == 'gpt1':
        from text_utils import load_encoder
        encoder = load_encoder(encoder_path)
        separator = meta['n_vocab']
    else:
        from encoder_gpt2 import ENDOFTEXT, read_encoder_json
        encoder = read_encoder_json(encoder_path)
        separator = encoder[ENDOFTEXT]
    if len(encoder) != meta['n_vocab'] or separator != meta['separator_id']:
        raise untrusted.bad(meta_path, f'n_vocab={meta["n_vocab"]} and separator_id={meta["separator_id"]}, but its '
                                       f'vocabulary {encoder_path} holds {len(encoder)} tokens (separator '
                                       f'{separator}); {AGAIN}')


# --- the split files -------------------------------------------------------------------------------------------

def file_stamp(st):
    """Return the stamp of a file from its os.stat result: what the largest id recorded for it is bound to."""
    return dict(size=st.st_size, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns, inode=st.st_ino)


def read_checked_ids(folder):
    """Return {split: (largest id, stamp)} of the folder's checked_ids.json, or {} when it is missing or unreadable
    (a cache: the split files are then scanned)."""
    path = os.path.join(folder, CHECKED_IDS)
    try:
        record = untrusted.read_json(path, folder, limit=1 << 16)
        checked = {}
        for split in SPLITS:
            if split in record:
                entry = record[split]
                stamp = {key: untrusted.int_field(key, entry['stamp'][key], 0, 1 << 64) for key in STAMP_KEYS}
                checked[split] = (untrusted.int_field('max_id', entry['max_id'], 0, MAX_ROWS - 1), stamp)
        return checked
    except (untrusted.BadFile, ValueError, TypeError, KeyError):
        return {}


def write_checked_ids(folder, checked):
    """Write {split: (largest id, stamp)} to the folder's checked_ids.json atomically; False when it cannot."""
    record = {split: dict(max_id=largest, stamp=stamp) for split, (largest, stamp) in checked.items()}
    try:
        untrusted.write_atomically(os.path.join(folder, CHECKED_IDS), (json.dumps(record, indent=1) + '\n').encode('utf-8'))
        return True
    except OSError:
        return False


def scan_ids(ids, limit):
    """Return (the largest id of ids, the position of the first id >= limit or None), in chunks of SCAN_IDS ids."""
    top = 0
    for start in range(0, len(ids), SCAN_IDS):
        chunk = ids[start:start + SCAN_IDS]
        largest = int(chunk.max())
        if largest >= limit:
            return largest, start + int(np.argmax(chunk >= limit))
        top = max(top, largest)
    return top, None


def open_split(folder, split, meta, checked=None):
    """Return the ids of one split as a read-only uint16 array (a memmap unless empty), checked against meta: a
    regular file inside folder, 2 bytes an id, n_tokens ids, the separator last, every id below n_vocab + n_special.

    checked ({split: (largest id, stamp)}, read_checked_ids's): the largest id is trusted when its stamp is this
    file's, else the file is scanned and checked[split] updated."""
    checked = {} if checked is None else checked
    path = os.path.join(folder, f'{split}.bin')
    n_tokens, rows = meta['splits'][split]['n_tokens'], meta['n_vocab'] + meta['n_special']
    with untrusted.reading(path):
        with untrusted.open_regular(path, folder, missing='meta.json lists it; run prepare_corpus.py again') as f:
            st = os.fstat(f.fileno())
            size = st.st_size
            if size % DTYPE.itemsize:
                raise untrusted.bad(path, f'{size} bytes is not a whole number of 2-byte uint16 ids; the file is '
                                          f'damaged, run prepare_corpus.py again')
            if size // DTYPE.itemsize != n_tokens:
                raise untrusted.bad(path, f'{size // DTYPE.itemsize} ids, but meta.json says {n_tokens}; the files '
                                          f'are from different runs, run prepare_corpus.py again')
            if n_tokens == 0:  # np.memmap cannot map an empty file
                ids = np.zeros(0, dtype=DTYPE)
                ids.flags.writeable = False
                return ids
            ids = np.memmap(f, dtype=DTYPE, mode='r', shape=(n_tokens,))
        if ids[-1] != meta['separator_id']:
            raise untrusted.bad(path, f'the last id is {ids[-1]}, not the separator {meta["separator_id"]}; the file '
                                      f'is damaged, run prepare_corpus.py again')
        stamp = file_stamp(st)
        recorded = checked.get(split)
        if recorded is not None and recorded[1] == stamp and recorded[0] < rows:
            return ids  # scanned before, and the file has not changed since
        largest, bad_at = scan_ids(ids, rows)
        if bad_at is not None:
            raise untrusted.bad(path, f'token id {int(ids[bad_at])} at position {bad_at} (byte {2 * bad_at}) is not '
                                      f'below n_vocab + n_special = {rows}, the rows tokens may use (a larger id would '
                                      f'read a position row, or past the table); the file is damaged or not the '
                                      f'one meta.json describes: run prepare_corpus.py again')
        checked[split] = (largest, stamp)
    return ids


def load_corpus(folder, meta=None):
    """Return (train ids, val ids, meta dict) of a folder written by prepare_corpus.py, every file checked (see the
    module docstring); ids are read-only uint16. meta is meta.json's (read here unless given: read_meta's record of
    it, so that a caller that read it first works on the same record), with its vocabulary paths resolved to the files
    checked (absolute paths), as the tokenizer is built from them. Any problem is one untrusted.BadFile."""
    meta = read_meta(folder) if meta is None else meta
    folder = os.fspath(folder)
    encoder_path, bpe_path = vocabulary_files(folder, meta)
    checked = read_checked_ids(folder)
    before = dict(checked)
    train, val = (open_split(folder, split, meta, checked) for split in SPLITS)
    if checked != before and os.access(folder, os.W_OK):
        write_checked_ids(folder, checked)  # a failure only costs a scan at the next open
    meta = dict(meta, vocabulary=dict(meta['vocabulary'], encoder_path=encoder_path, bpe_path=bpe_path))
    return train, val, meta
