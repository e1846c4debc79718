"""What a download of the released weights looks like, and how a local file is checked against it: the git blob
SHA-1 of every file of GPT-1's released model/ folder, GPT-2's released file list and vocabulary SHA-256s, the
sniffing of a file that is no weights at all (a Git-LFS pointer, an HTML page), what a .npy header promises (its size,
and whether it is byte for byte the one numpy writes), and the one-line problem of each file with its fix.

download_model.py checks every file it fetches with these; weights.py uses them to tell a Git-LFS pointer or an HTML
page from the weights, to recognise the released shards, and to verify a released folder before reading it
(read_released(verify=True): train.py --verify_weights, convert.py --verify). This module imports no format or model
code: GPT-2's per-file checks (download_model.gpt2_file_problem) read hparams.json and the checkpoint's index through
weights.py and take the sizes from model_gpt2.py, so they sit in the download script above both.

No TF counterpart: the original reads the files it finds.
"""
import io
import math
import os
import tokenize
import warnings

import numpy as np

import untrusted
from untrusted import BadFile, MissingFile, git_blob_sha1

# Git blob SHA-1, sha1(b"blob %d\0" % len(data) + data), of each file of the released model/ folder
# (the same value `git hash-object FILE` prints).
RELEASED_FILES = {
    'encoder_bpe_40000.json': '9dc3f0af5a80956e57dc8d9401e16dfadcade7c2',
    'params_0.npy': '84d83ac1f1cc878f56f33b167482c184491875d2',
    'params_1.npy': '0f19f4d4cda3d8f908e3faffd2cb2a8b9a4039da',
    'params_2.npy': '25bc19c72fdff69505a828ec6d73b32063532148',
    'params_3.npy': '5b2e6958d42a930966c9d602a012eb846ca67c83',
    'params_4.npy': '87ad158987e307e6aa64952610f466d750b73bc7',
    'params_5.npy': '74f3853316bba327229605dbedfe921996f11448',
    'params_6.npy': '5ef44e40bc076d0c9686d1273d54cbc16c3f0980',
    'params_7.npy': 'd8d5c8d3bee9b20a677605ac1fe6c7af4df57c94',
    'params_8.npy': 'f980f4b393716f396ae5ae6401708dcf4f270dc9',
    'params_9.npy': 'd389eb2074dd74754444b8062aba78b49f6a9053',
    'params_shapes.json': '29fac299ae848d7e447be84a33345edcf1b5353c',
    'vocab_40000.bpe': '0023a687b3d4d0b795a5e97cc914bdabb5a253df',
}

# The files of a released GPT-2 folder, in the order they can be checked (the index before the data it describes).
GPT2_FILES = ('hparams.json', 'checkpoint', 'model.ckpt.index', 'model.ckpt.data-00000-of-00001', 'model.ckpt.meta',
              'encoder.json', 'vocab.bpe')
# SHA-256 of the released vocabulary (the same for every size; the values tiktoken checks).
GPT2_VOCAB_SHA256 = {'encoder.json': '196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783',
                     'vocab.bpe': '1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5'}

SNIFF_BYTES = 1024
LFS_PREFIX = b'version https://git-lfs'
HTML_PREFIXES = (b'<!doctype', b'<html')

# What to tell the user for each kind of problem found in a local file.
FIXES = {
    'missing': 'run download_model.py to fetch it',
    'lfs': 'fetch the real file (`git lfs pull` in a clone, or run download_model.py)',
}
DEFAULT_FIX = 'delete it and run download_model.py again'


def sniff(head):
    """Return 'lfs' or 'html' when the first bytes of a file are a Git-LFS pointer or an HTML page, else None."""
    if head.startswith(LFS_PREFIX):
        return 'lfs'
    text = head.lstrip(b'\xef\xbb\xbf').lstrip().lower()  # a UTF-8 BOM and whitespace may precede the tag
    if text.startswith(HTML_PREFIXES):
        return 'html'
    return None


# What numpy's .npy header parser raises on a corrupt header: its fallback for headers written by
# Python 2 goes through `tokenize`, hence TokenError. None of these may reach the user as a traceback.
NPY_HEADER_ERRORS = (ValueError, SyntaxError, TypeError, EOFError, OverflowError, MemoryError, RecursionError,
                     tokenize.TokenError)


def canonical_npy_dict(shape, fortran_order, dtype):
    """Return the header dictionary text numpy writes for these values, without its padding (bytes)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {'descr': np.lib.format.dtype_to_descr(dtype),
                                              'fortran_order': fortran_order, 'shape': shape})
    return buf.getvalue()[10:].rstrip(b' \n')  # after the magic, the version and the 2-byte length


def read_npy_header(f):
    """Return (shape, fortran_order, dtype, canonical) of the .npy header at f's position, or None when numpy
    cannot read one there.

    canonical says whether the header is byte for byte the one numpy writes for those values (up to its
    space padding): a header corrupted into another one that still parses is not. f is left just past the
    header, at the first data byte.
    """
    start = f.tell()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # numpy warns when it falls back to its Python-2 header parser
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                return None
        end = f.tell()
        f.seek(start + (10 if version == (1, 0) else 12))
        text = f.read(end - f.tell())
        canonical = (text.endswith(b'\n') and
                     text[:-1].rstrip(b' ') == canonical_npy_dict(shape, fortran_order, dtype))
    except NPY_HEADER_ERRORS:
        return None
    return shape, fortran_order, dtype, canonical


def npy_sizes(path, folder=None):
    """Return (size the .npy header promises, actual size), or None when the header cannot be read."""
    with untrusted.open_regular(path, folder) as f:
        header = read_npy_header(f)
        if header is None:
            return None
        shape, _, dtype, _ = header
        if dtype.hasobject:  # pickled payload: its size is not in the header
            return None
        return f.tell() + math.prod(shape) * dtype.itemsize, os.fstat(f.fileno()).st_size


def find_problem(path, expected_sha1=None, is_npy=False, folder=None):
    """Return (kind, plain-words description) of what is wrong with the file at path, or (None, None); only a regular
    file is read (a symlink whose target stays inside folder, default path's own folder)."""
    try:
        with untrusted.open_regular(path, folder) as f:
            head = f.read(SNIFF_BYTES)
    except MissingFile:
        return 'missing', 'missing'
    except BadFile as err:  # a folder, pipe or device, a link out of the folder, an unreadable file
        what = str(err)
        return 'not_file', f'not a regular file ({what[len(path):].lstrip(": ") if what.startswith(path) else what})'
    if not head:
        return 'empty', 'empty file (0 bytes)'
    kind = sniff(head)
    if kind == 'lfs':
        return 'lfs', 'a Git-LFS pointer, not the file itself'
    if kind == 'html':
        return 'html', 'an HTML page (an error or login page saved in place of the file)'
    if is_npy:
        sizes = npy_sizes(path, folder)
        if sizes is None and expected_sha1 is None:
            return 'bad_npy', 'not a .npy file (unreadable header)'
        if sizes is not None and sizes[0] != sizes[1]:
            what = 'truncated' if sizes[1] < sizes[0] else 'too long'
            return 'size', f'{what}: its .npy header needs {sizes[0]} bytes, the file has {sizes[1]}'
    if expected_sha1 is not None:
        got = git_blob_sha1(path)
        if got != expected_sha1.lower():
            return 'sha1', f'corrupt or truncated: expected {expected_sha1.lower()}, got {got}'
    return None, None


def check_file(path, expected_sha1=None, folder=None):
    """Return None when the file at path is sound (and matches expected_sha1 if given), else a one-line problem."""
    path = untrusted.check_path_text(path)
    kind, what = find_problem(path, expected_sha1, is_npy=path.endswith('.npy'), folder=folder)
    return None if kind is None else problem_line(path, kind, what)


def problem_line(path, kind, what):
    """Return the one-line problem of a file: the path, what is wrong, and the fix for that kind of problem."""
    return f'{path}: {what}; {FIXES.get(kind, DEFAULT_FIX)}'


def resolve_names(names, expected):
    """Return the list of file names to handle, checking each against the known ones."""
    if names is None:
        return sorted(expected)
    unknown = [n for n in names if n not in expected]
    if unknown:
        raise ValueError(f'unknown file {unknown[0]!r}; the released model/ files are: {", ".join(sorted(expected))}')
    return list(names)


def verify_model_dir(model_dir, names=None, expected=None):
    """Check released files in model_dir (all 13, or names); return one-line problems, empty when all verify. Only a
    BadFile naming model_dir escapes (an unknown name, a path with a NUL byte), as from weights.py's entry points."""
    model_dir = untrusted.check_path_text(model_dir)
    with untrusted.reading(model_dir):
        expected = RELEASED_FILES if expected is None else expected
        return [p for p in (check_file(os.path.join(model_dir, n), expected[n], folder=model_dir)
                            for n in resolve_names(names, expected)) if p is not None]


def is_released_file(path):
    """Return whether the file at path is byte for byte the released file of its name (git blob SHA-1)."""
    expected = RELEASED_FILES.get(os.path.basename(path))
    return expected is not None and git_blob_sha1(path) == expected
