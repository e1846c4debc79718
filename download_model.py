"""Fetch and verify the released GPT-1 `model/` folder of openai/finetune-transformer-lm.

The original code reads `model/params_{0..9}.npy`, `model/params_shapes.json` (TF: train.py, main) and
the BPE files `model/encoder_bpe_40000.json`, `model/vocab_40000.bpe` (TF: text_utils.TextEncoder).
This module knows the git blob SHA-1 of each of those 13 files, so it can tell a user exactly which
file is missing, a Git-LFS pointer, an HTML error page, truncated or corrupt, and it downloads what is
missing over HTTP(S), resuming cut transfers from a `.part` file and renaming a file into place only
once its hash verifies.

    python download_model.py                     # fetch what is missing into model/, verify all
    python download_model.py --verify-only       # only check model/
    python download_model.py --files params_0.npy --base_url https://example.org/mirror/model/
"""
import argparse
import hashlib
import http.client
import io
import math
import os
import sys
import time
import tokenize
import urllib.error
import urllib.parse
import urllib.request
import warnings

import numpy as np
from tqdm import tqdm

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

# The shards are ordinary git blobs in that repository (it has no .gitattributes routing them to
# Git LFS, and the hashes above are of the full contents), so raw.githubusercontent.com serves them.
BASE_URL = 'https://raw.githubusercontent.com/openai/finetune-transformer-lm/master/model/'
# Where GitHub serves Git-LFS objects; tried only when BASE_URL answers with an LFS pointer.
LFS_BASE_URL = 'https://media.githubusercontent.com/media/openai/finetune-transformer-lm/master/model/'

USER_AGENT = 'gpt1-pytorch-download_model/1.0 (+urllib)'
SNIFF_BYTES = 1024
LFS_PREFIX = b'version https://git-lfs'
HTML_PREFIXES = (b'<!doctype', b'<html')

# What to tell the user for each kind of problem found in a local file.
FIXES = {
    'missing': 'run download_model.py to fetch it',
    'lfs': 'fetch the real file (`git lfs pull` in a clone, or run download_model.py)',
}
DEFAULT_FIX = 'delete it and run download_model.py again'


class DownloadError(RuntimeError):
    """A download that failed; str() is one line naming the URL and what went wrong."""

    def __init__(self, message, kind=None):
        super().__init__(message)
        self.kind = kind


def git_blob_sha1(path_or_bytes, chunk_size=1 << 20):
    """Return the git blob SHA-1 hex digest of bytes-like data or of a file (str/PathLike), streamed."""
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        data = memoryview(path_or_bytes).cast('B')
        h = hashlib.sha1(b'blob %d\0' % len(data))
        h.update(data)
        return h.hexdigest()
    with open(path_or_bytes, 'rb') as f:
        size = os.fstat(f.fileno()).st_size
        h = hashlib.sha1(b'blob %d\0' % size)
        n_read = 0
        while chunk := f.read(chunk_size):
            h.update(chunk)
            n_read += len(chunk)
    if n_read != size:  # the file changed while we read it: the header would be wrong
        raise OSError(f'{os.fspath(path_or_bytes)}: changed size while being hashed; try again')
    return h.hexdigest()


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


def _npy_sizes(path):
    """Return (size the .npy header promises, actual size), or None when the header cannot be read."""
    with open(path, 'rb') as f:
        header = read_npy_header(f)
        if header is None:
            return None
        shape, _, dtype, _ = header
        if dtype.hasobject:  # pickled payload: its size is not in the header
            return None
        return f.tell() + math.prod(shape) * dtype.itemsize, os.fstat(f.fileno()).st_size


def _find_problem(path, expected_sha1=None, is_npy=False):
    """Return (kind, plain-words description) of what is wrong with the file at path, or (None, None)."""
    if not os.path.exists(path):
        return 'missing', 'missing'
    if not os.path.isfile(path):
        return 'not_file', 'not a regular file'
    with open(path, 'rb') as f:
        head = f.read(SNIFF_BYTES)
    if not head:
        return 'empty', 'empty file (0 bytes)'
    kind = sniff(head)
    if kind == 'lfs':
        return 'lfs', 'a Git-LFS pointer, not the file itself'
    if kind == 'html':
        return 'html', 'an HTML page (an error or login page saved in place of the file)'
    if is_npy:
        sizes = _npy_sizes(path)
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


def check_file(path, expected_sha1=None):
    """Return None when the file at path is sound (and matches expected_sha1 if given), else a one-line problem."""
    path = os.fspath(path)
    kind, what = _find_problem(path, expected_sha1, is_npy=path.endswith('.npy'))
    if kind is None:
        return None
    return f'{path}: {what}; {FIXES.get(kind, DEFAULT_FIX)}'


def _resolve_names(names, expected):
    """Return the list of file names to handle, checking each against the known ones."""
    if names is None:
        return sorted(expected)
    unknown = [n for n in names if n not in expected]
    if unknown:
        raise ValueError(f'unknown file {unknown[0]!r}; the released model/ files are: {", ".join(sorted(expected))}')
    return list(names)


def verify_model_dir(model_dir, names=None, expected=None):
    """Check released files in model_dir (all 13, or names); return one-line problems, empty when all verify."""
    expected = RELEASED_FILES if expected is None else expected
    return [p for p in (check_file(os.path.join(model_dir, n), expected[n]) for n in _resolve_names(names, expected))
            if p is not None]


def _check_url(url):
    """Reject URLs urllib would open but that are not HTTP(S) downloads (file:, ftp:, typos)."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ('http', 'https'):
        raise ValueError(f'{url}: not an http(s) URL; pass a URL like {BASE_URL}')


def _content_range_start(value):
    """Return the first byte position of a 'bytes START-END/TOTAL' Content-Range header, or None."""
    if not value or not value.strip().lower().startswith('bytes '):
        return None
    span = value.strip()[6:].split('/')[0]
    start = span.split('-')[0].strip()
    return int(start) if start.isdigit() else None


def _read_body(resp, url, part, offset, chunk_size, progress, desc):
    """Write resp's body to part (appending at offset on a 206); return None when complete, else why it stopped."""
    ctype = resp.headers.get('Content-Type', '') or ''
    if ctype.split(';')[0].strip().lower() in ('text/html', 'application/xhtml+xml'):
        raise DownloadError(f'{url}: the server sent an HTML page (Content-Type {ctype}), not the file; '
                            'check the URL', kind='html')
    if resp.status == 206:
        start = _content_range_start(resp.headers.get('Content-Range'))
        if start is not None and start != offset:
            os.remove(part)  # a range we did not ask for: start over from zero on the next attempt
            return f'server resumed at byte {start}, not {offset}'
        mode = 'ab'
    else:  # 200: the server ignored the Range header and sends the whole file, so restart from zero
        offset, mode = 0, 'wb'
    length = resp.headers.get('Content-Length')
    length = int(length) if length and length.strip().isdigit() else None
    total = offset + length if length is not None else None
    received, stopped = 0, None
    with open(part, mode) as f, tqdm(total=total, initial=offset, unit='B', unit_scale=True, unit_divisor=1024,
                                     desc=desc, file=sys.stderr, disable=not progress, leave=False) as bar:
        while True:
            try:
                chunk = resp.read(chunk_size)
            except (OSError, http.client.HTTPException) as e:  # cut connection or read timeout
                stopped = f'{type(e).__name__}: {e}'
                break
            if not chunk:
                break
            f.write(chunk)
            received += len(chunk)
            bar.update(len(chunk))
        f.flush()
        os.fsync(f.fileno())
    if stopped is None and length is not None and received < length:
        stopped = f'connection closed after {received} of {length} bytes'
    return stopped


def _fetch_to_part(url, part, retries, timeout, backoff, chunk_size, progress, desc):
    """Transfer url into part, resuming with Range requests across up to retries + 1 attempts."""
    last = None
    for attempt in range(retries + 1):
        if attempt and backoff:
            time.sleep(backoff * attempt)
        offset = os.path.getsize(part) if os.path.exists(part) else 0
        headers = {'User-Agent': USER_AGENT, 'Accept-Encoding': 'identity'}
        if offset:
            headers['Range'] = f'bytes={offset}-'
        request = urllib.request.Request(url, headers=headers)
        try:
            resp = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as e:
            e.close()
            if e.code == 416 and offset:  # nothing left past offset: the part file already holds it all
                return
            if e.code >= 500 or e.code == 429:
                last = f'HTTP {e.code} {e.reason}'
                continue
            hint = ' (not found: check --base_url and the file name)' if e.code == 404 else ''
            raise DownloadError(f'{url}: HTTP {e.code} {e.reason}{hint}', kind='http') from None
        except (OSError, http.client.HTTPException) as e:  # URLError, refused, reset, timeout
            last = f'{type(e).__name__}: {getattr(e, "reason", e)}'
            continue
        with resp:
            last = _read_body(resp, url, part, offset, chunk_size, progress, desc)
        if last is None:
            return
    raise DownloadError(f'{url}: download failed after {retries + 1} attempts ({last}); '
                        f'run again to resume from {part}', kind='network')


def download(url, dest, expected_sha1=None, *, retries=3, timeout=30.0, backoff=1.0, chunk_size=1 << 20,
             progress=True):
    """Download url to dest through dest + '.part' (resumed, fsynced, verified, renamed into place); return dest."""
    _check_url(url)
    dest = os.fspath(dest)
    part = dest + '.part'
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    # A .part left by an earlier run may hold something else (an HTML page, an older file): if resuming
    # from it gives a bad file, start once more from zero before giving up.
    fresh_retry = os.path.exists(part) and os.path.getsize(part) > 0
    while True:
        _fetch_to_part(url, part, retries, timeout, backoff, chunk_size, progress, os.path.basename(dest))
        kind, what = _find_problem(part, expected_sha1, is_npy=dest.endswith('.npy'))
        if kind is None:
            break
        if os.path.exists(part):
            os.remove(part)
        if not fresh_retry or kind in ('missing', 'lfs', 'html'):
            raise DownloadError(f'{url}: {what}; the download was deleted, check the URL or run again', kind=kind)
        fresh_retry = False
    os.replace(part, dest)
    if hasattr(os, 'O_DIRECTORY'):  # make the rename itself durable
        fd = os.open(os.path.dirname(os.path.abspath(dest)), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return dest


def fetch_file(name, model_dir='model/', base_url=BASE_URL, expected_sha1=None, *, lfs_base_url=LFS_BASE_URL,
               **download_kw):
    """Make model_dir/name a verified copy of the released file; return (path, 'ok' or 'downloaded')."""
    if expected_sha1 is None:
        if name not in RELEASED_FILES:
            raise ValueError(f'unknown file {name!r}; the released model/ files are: {", ".join(RELEASED_FILES)}')
        expected_sha1 = RELEASED_FILES[name]
    path = os.path.join(model_dir, name)
    if check_file(path, expected_sha1) is None:
        return path, 'ok'
    quoted = urllib.parse.quote(name)
    try:
        download(base_url.rstrip('/') + '/' + quoted, path, expected_sha1, **download_kw)
    except DownloadError as e:
        if e.kind != 'lfs' or not lfs_base_url or lfs_base_url.rstrip('/') == base_url.rstrip('/'):
            raise
        download(lfs_base_url.rstrip('/') + '/' + quoted, path, expected_sha1, **download_kw)
    return path, 'downloaded'


def download_model(model_dir='model/', base_url=BASE_URL, names=None, *, lfs_base_url=LFS_BASE_URL, expected=None,
                   **download_kw):
    """Fetch every released file (or names) not already verified in model_dir; return their paths.

    Raises DownloadError (one line naming the URL) on the first file that cannot be fetched and verified.
    `expected` maps name -> git blob SHA-1 and defaults to RELEASED_FILES; download_kw go to download().
    """
    expected = RELEASED_FILES if expected is None else expected
    os.makedirs(model_dir, exist_ok=True)
    return [fetch_file(n, model_dir, base_url, expected[n], lfs_base_url=lfs_base_url, **download_kw)[0]
            for n in _resolve_names(names, expected)]


def parse_args(argv=None):
    """Parse the command line of download_model.py."""
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model_dir', default='model/', help='folder holding the released files (default: model/)')
    p.add_argument('--base_url', default=BASE_URL, help=f'URL of the folder to fetch from (default: {BASE_URL})')
    p.add_argument('--lfs_base_url', default=LFS_BASE_URL,
                   help='fallback URL when --base_url answers with a Git-LFS pointer; "" to disable '
                        f'(default: {LFS_BASE_URL})')
    p.add_argument('--verify-only', dest='verify_only', action='store_true', help='check the files, download nothing')
    p.add_argument('--files', nargs='+', metavar='NAME', choices=sorted(RELEASED_FILES),
                   help='only these released files (default: all 13)')
    p.add_argument('--retries', type=int, default=3, help='retries per file after a cut connection (default: 3)')
    p.add_argument('--timeout', type=float, default=30.0, help='connect/read timeout in seconds (default: 30)')
    p.add_argument('--no_progress', action='store_true', help='no progress bars on stderr')
    return p.parse_args(argv)


def main(argv=None):
    """Verify (and unless --verify-only, fetch) the released files; print one line per file; return the exit code."""
    args = parse_args(argv)
    if args.retries < 0 or args.timeout <= 0:
        print('error: --retries must be >= 0 and --timeout > 0', file=sys.stderr)
        return 2
    n_bad = 0
    for name in args.files or sorted(RELEASED_FILES):
        path = os.path.join(args.model_dir, name)
        if args.verify_only:
            problem = check_file(path, RELEASED_FILES[name])
            status = 'ok'
        else:
            try:
                path, status = fetch_file(name, args.model_dir, args.base_url, lfs_base_url=args.lfs_base_url,
                                          retries=args.retries, timeout=args.timeout,
                                          progress=not args.no_progress)
                problem = None
            except (DownloadError, ValueError, OSError) as e:
                problem = f'{name}: {e}'
        if problem is None:
            print(f'{status:<10} {path}', flush=True)
        else:
            n_bad += 1
            print(f'problem    {problem}', file=sys.stderr, flush=True)
    if n_bad:
        print(f'error: {n_bad} file(s) did not verify in {args.model_dir}', file=sys.stderr)
    return 1 if n_bad else 0


if __name__ == '__main__':
    sys.exit(main())
