"""Fetch and verify the released GPT-1 `model/` folder of openai/finetune-transformer-lm, or a released GPT-2 model
folder of openai/gpt-2 (`--model gpt2-124M`, ...).

The original code reads `model/params_{0..9}.npy`, `model/params_shapes.json` (TF: train.py, main) and
the BPE files `model/encoder_bpe_40000.json`, `model/vocab_40000.bpe` (TF: text_utils.TextEncoder).
This module knows the git blob SHA-1 of each of those 13 files, so it can tell a user exactly which
file is missing, a Git-LFS pointer, an HTML error page, truncated or corrupt, and it downloads what is
missing over HTTP(S), resuming cut transfers from a `.part` file and renaming a file into place only
once its hash verifies.

    python download_model.py                     # fetch what is missing into model/, verify all
    python download_model.py --verify-only       # only check model/
    python download_model.py --files params_0.npy --base_url https://example.org/mirror/model/
    python download_model.py --model gpt2-124M       # into models/124M/, as openai/gpt-2's download_model.py

A GPT-2 folder (checkpoint, hparams.json, model.ckpt.index, model.ckpt.data-00000-of-00001, model.ckpt.meta,
encoder.json, vocab.bpe) is verified without TensorFlow: the vocabulary by its SHA-256, hparams.json by the size's
values, the index by its block CRC32Cs and every tensor's name and shape, the data by every tensor's CRC32C and the
file's size (model.ckpt.meta, a TensorFlow graph no reader of the weights needs, only for being a plain file).
"""
import argparse
import http.client
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from utils import progress as progress_bar
from weights import (GPT2_BASE_URL, GPT2_FILES, GPT2_SIZES, RELEASED_FILES, check_file, find_problem, gpt2_file_problem,
                     problem_line, resolve_names)

# The shards are ordinary git blobs in that repository (it has no .gitattributes routing them to
# Git LFS, and the hashes above are of the full contents), so raw.githubusercontent.com serves them.
BASE_URL = 'https://raw.githubusercontent.com/openai/finetune-transformer-lm/master/model/'
# Where GitHub serves Git-LFS objects; tried only when BASE_URL answers with an LFS pointer.
LFS_BASE_URL = 'https://media.githubusercontent.com/media/openai/finetune-transformer-lm/master/model/'

USER_AGENT = 'gpt1-pytorch-download_model/1.0 (+urllib)'
MODELS = ('gpt1',) + tuple(f'gpt2-{size}' for size in GPT2_SIZES)
class DownloadError(RuntimeError):
    """A download that failed; str() is one line naming the URL and what went wrong."""

    def __init__(self, message, kind=None):
        super().__init__(message)
        self.kind = kind


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
    with open(part, mode) as f, progress_bar(total=total, initial=offset, unit='B', unit_scale=True,
                                             unit_divisor=1024, desc=desc, disable=not progress, leave=False) as bar:
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


def download(url, dest, expected_sha1=None, *, check=None, retries=3, timeout=30.0, backoff=1.0, chunk_size=1 << 20,
             progress=True):
    """Download url to dest through dest + '.part' (resumed, fsynced, verified, renamed into place); return dest.

    The part file is verified by its git blob SHA-1 (expected_sha1), or by check(part) -> (kind, description) of
    what is wrong, (None, None) when it verifies."""
    _check_url(url)
    dest = os.fspath(dest)
    part = dest + '.part'
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    # A .part left by an earlier run may hold something else (an HTML page, an older file): if resuming
    # from it gives a bad file, start once more from zero before giving up.
    fresh_retry = os.path.exists(part) and os.path.getsize(part) > 0
    while True:
        _fetch_to_part(url, part, retries, timeout, backoff, chunk_size, progress, os.path.basename(dest))
        kind, what = check(part) if check else find_problem(part, expected_sha1, is_npy=dest.endswith('.npy'))
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
            for n in resolve_names(names, expected)]


def fetch_gpt2_file(name, size, model_dir, base_url=GPT2_BASE_URL, **download_kw):
    """Make model_dir/name a verified copy of the released GPT-2 file of that size; return (path, 'ok' or
    'downloaded'). Verified as weights.gpt2_file_problem says: the vocabulary by SHA-256, the checkpoint by its
    CRC32Cs, names, shapes and sizes."""
    path = os.path.join(model_dir, name)
    if gpt2_file_problem(model_dir, name, size)[0] is None:
        return path, 'ok'
    url = f"{base_url.rstrip('/')}/{size}/{urllib.parse.quote(name)}"
    download(url, path, check=lambda part: gpt2_file_problem(model_dir, name, size, part), **download_kw)
    return path, 'downloaded'


def gpt2_size(model):
    """Return the released size a --model names ('gpt2-124M' -> '124M')."""
    return model[len('gpt2-'):]


def parse_args(argv=None):
    """Parse the command line of download_model.py."""
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model', choices=MODELS, default='gpt1',
                   help='gpt1 (the released model/ folder of openai/finetune-transformer-lm, the default) or a released '
                        'GPT-2 size (openai/gpt-2)')
    p.add_argument('--model_dir', default=None,
                   help='folder holding the released files (default: model/ for gpt1, models/<size>/ for GPT-2, as '
                        "openai/gpt-2's download_model.py)")
    p.add_argument('--base_url', default=None,
                   help=f'URL of the folder to fetch from (default: {BASE_URL}, for GPT-2 {GPT2_BASE_URL}<size>/)')
    p.add_argument('--lfs_base_url', default=LFS_BASE_URL,
                   help='fallback URL when --base_url answers with a Git-LFS pointer; "" to disable '
                        f'(default: {LFS_BASE_URL})')
    p.add_argument('--verify-only', dest='verify_only', action='store_true', help='check the files, download nothing')
    p.add_argument('--files', nargs='+', metavar='NAME', choices=sorted(set(RELEASED_FILES) | set(GPT2_FILES)),
                   help='only these released files (default: all 13 of GPT-1, all 7 of a GPT-2)')
    p.add_argument('--retries', type=int, default=3, help='retries per file after a cut connection (default: 3)')
    p.add_argument('--timeout', type=float, default=30.0, help='connect/read timeout in seconds (default: 30)')
    p.add_argument('--no_progress', action='store_true', help='no progress bars on stderr')
    return p.parse_args(argv)


def check_one(args, name):
    """Return (path, status) of one released file after --verify-only's check or a fetch; raise on a problem."""
    if args.model == 'gpt1':
        path = os.path.join(args.model_dir, name)
        if args.verify_only:
            problem = check_file(path, RELEASED_FILES[name])
            if problem:
                raise ValueError(problem)
            return path, 'ok'
        return fetch_file(name, args.model_dir, args.base_url, lfs_base_url=args.lfs_base_url, retries=args.retries,
                          timeout=args.timeout, progress=not args.no_progress)
    size = gpt2_size(args.model)
    if args.verify_only:
        kind, what = gpt2_file_problem(args.model_dir, name, size)
        if kind is not None:
            raise ValueError(problem_line(os.path.join(args.model_dir, name), kind, what))
        return os.path.join(args.model_dir, name), 'ok'
    return fetch_gpt2_file(name, size, args.model_dir, args.base_url, retries=args.retries, timeout=args.timeout,
                           progress=not args.no_progress)


def main(argv=None):
    """Verify (and unless --verify-only, fetch) the released files; print one line per file; return the exit code."""
    args = parse_args(argv)
    if args.retries < 0 or args.timeout <= 0:
        print('error: --retries must be >= 0 and --timeout > 0', file=sys.stderr)
        return 2
    names = RELEASED_FILES if args.model == 'gpt1' else GPT2_FILES
    unknown = [name for name in args.files or () if name not in names]
    if unknown:
        print(f'error: --files {unknown[0]} is not a file of {args.model}: choose among {", ".join(names)}',
              file=sys.stderr)
        return 2
    if args.model_dir is None:
        args.model_dir = 'model/' if args.model == 'gpt1' else os.path.join('models', gpt2_size(args.model))
    if args.base_url is None:
        args.base_url = BASE_URL if args.model == 'gpt1' else GPT2_BASE_URL
    n_bad = 0
    wanted = args.files or names
    for name in [n for n in names if n in wanted]:  # GPT-2's index before the data it describes
        try:
            path, status = check_one(args, name)
            print(f'{status:<10} {path}', flush=True)
        except (DownloadError, ValueError, OSError) as e:
            n_bad += 1
            message = str(e) if args.verify_only else f'{name}: {e}'
            print(f'problem    {message}', file=sys.stderr, flush=True)
    if n_bad:
        print(f'error: {n_bad} file(s) did not verify in {args.model_dir}', file=sys.stderr)
    return 1 if n_bad else 0


if __name__ == '__main__':
    sys.exit(main())
