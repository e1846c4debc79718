"""Fetch and verify the released GPT-1 `model/` folder of openai/finetune-transformer-lm, or a released GPT-2 model
folder of openai/gpt-2 (`--model gpt2-124M`, ...).

The original code reads `model/params_{0..9}.npy`, `model/params_shapes.json` (TF: train.py, main) and
the BPE files `model/encoder_bpe_40000.json`, `model/vocab_40000.bpe` (TF: text_utils.TextEncoder).
integrity.py holds the git blob SHA-1 of each of those 13 files, so this script can tell a user exactly
which file is missing, a Git-LFS pointer, an HTML error page, truncated or corrupt, and it downloads what is
missing over HTTP(S), resuming cut transfers from a `.part` file and renaming a file into place only
once its hash verifies. The vocabulary ships in this repository (model/, model/gpt2/): it is copied from there,
verified, never downloaded.

Only a transfer cut after it started is retried (--retries); a host that cannot be reached (no name resolution,
a refused connection, no route, a connect timeout) stops the whole run at once, since every other file would fail
the same way. The last line of the output is one summary: on stdout when every file verifies, else on stderr
(`download_model.py: error: ...`, exit status 1) saying what failed and what to do.

    python download_model.py                     # fetch what is missing into model/, verify all
    python download_model.py --verify-only       # only check model/
    python download_model.py --files params_0.npy --base_url https://example.org/mirror/model/
    python download_model.py --model gpt2-124M       # into models/124M/, as openai/gpt-2's download_model.py

A GPT-2 folder (checkpoint, hparams.json, model.ckpt.index, model.ckpt.data-00000-of-00001, model.ckpt.meta,
encoder.json, vocab.bpe) is verified without TensorFlow: the vocabulary by its SHA-256, hparams.json by the size's
values, the index by its block CRC32Cs and every tensor's name and shape, the data by every tensor's CRC32C and the
file's size (model.ckpt.meta, a TensorFlow graph no reader of the weights needs, only for being a plain file). Those
checks (gpt2_file_problem) live here, not in integrity.py: they read the files through weights.py's GPT-2 reader and
take the sizes from model_gpt2.py, and weights.py itself imports integrity.py.
"""
import argparse
import errno
import http.client
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

import tf_bundle
import untrusted
from integrity import (GPT2_FILES, GPT2_VOCAB_SHA256, RELEASED_FILES, check_file, find_problem, problem_line,
                       resolve_names)
from model_gpt2 import GPT2_SIZES
from untrusted import BadFile, file_sha256
from utils import progress as progress_bar
from weights import HPARAMS_NAME, TF_PREFIX, VOCAB_FILES, check_gpt2_entries, download_command, read_hparams

# The shards are ordinary git blobs in that repository (it has no .gitattributes routing them to
# Git LFS, and integrity.RELEASED_FILES hashes their full contents), so raw.githubusercontent.com serves them.
BASE_URL = 'https://raw.githubusercontent.com/openai/finetune-transformer-lm/master/model/'
# Where GitHub serves Git-LFS objects; tried only when BASE_URL answers with an LFS pointer.
LFS_BASE_URL = 'https://media.githubusercontent.com/media/openai/finetune-transformer-lm/master/model/'
# Where openai/gpt-2's download_model.py fetches a size's files: GPT2_BASE_URL + '<size>/<file>'.
GPT2_BASE_URL = 'https://openaipublic.blob.core.windows.net/gpt-2/models/'

USER_AGENT = 'gpt1-pytorch-download_model/1.0 (+urllib)'
MODELS = ('gpt1',) + tuple(f'gpt2-{size}' for size in GPT2_SIZES)
REPO_ROOT = os.path.dirname(os.path.abspath(__file__))
# Where the repository ships the released vocabulary, byte-identical to the release (tests/test_download_model.py
# checks the hashes): GPT-1's in model/, GPT-2's (the same for every size) in model/gpt2/.
SHIPPED_DIRS = {'gpt1': os.path.join(REPO_ROOT, 'model'), 'gpt2': os.path.join(REPO_ROOT, 'model', 'gpt2')}
SHIPPED_NAMES = {'gpt1': VOCAB_FILES, 'gpt2': tuple(GPT2_VOCAB_SHA256)}
# OSError numbers that mean no connection can be opened at all: retrying cannot help within a run.
UNREACHABLE_ERRNOS = {errno.ENETUNREACH: 'network is unreachable', errno.EHOSTUNREACH: 'no route to host',
                      errno.ECONNREFUSED: 'connection refused'}


@dataclass(frozen=True)
class TransferSettings:
    """How a download transfers: retries after a cut connection (retries + 1 attempts), the connect/read timeout in
    seconds, the backoff (the n-th retry waits backoff * n seconds), the read size and whether a bar shows."""
    retries: int = 3
    timeout: float = 30.0
    backoff: float = 1.0
    chunk_size: int = 1 << 20
    progress: bool = True


@dataclass(frozen=True)
class DownloadSettings:
    """What download_model.py's command line asks for: the model, its folder, the URLs to fetch from, the files (in
    the order they are checked), whether only to verify, and how to transfer."""
    model: str
    model_dir: str
    base_url: str
    lfs_base_url: str
    names: tuple
    verify_only: bool = False
    transfer: TransferSettings = TransferSettings()


class DownloadError(RuntimeError):
    """A download that failed; str() is one line naming the URL and what went wrong. kind says what failed
    ('unreachable': no connection could be opened; `host` and `reason` then say where and why, `part` is the file's
    .part)."""

    def __init__(self, message, kind=None, host=None, reason=None, part=None):
        super().__init__(message)
        self.kind = kind
        self.host = host
        self.reason = reason
        self.part = part


def unreachable_reason(err):
    """Return why no connection could be opened (a name that does not resolve, a refused connection, no route, a
    connect timeout), in words, for an error urlopen raised; None for any other error (an HTTP status, a cut)."""
    if isinstance(err, urllib.error.HTTPError):
        return None
    # urllib wraps what fails while connecting and sending the request in a URLError; a reset or timeout while
    # waiting for the answer comes bare (the server was reached: retried as a cut)
    reason = err.reason if isinstance(err, urllib.error.URLError) else err
    if isinstance(reason, socket.gaierror):
        return f'name resolution failed: {reason.strerror or reason}'
    if isinstance(reason, OSError) and reason.errno in UNREACHABLE_ERRNOS:
        return UNREACHABLE_ERRNOS[reason.errno]
    if isinstance(err, urllib.error.URLError) and isinstance(reason, (TimeoutError, socket.timeout)):
        return 'timed out connecting'
    return None


def saved_part(part):
    """Return the bytes a .part file holds (0 when there is none)."""
    return os.path.getsize(part) if part and os.path.isfile(part) else 0


def resume_hint(part):
    """Return '; run again to resume from PART (N bytes saved)' when a .part with bytes exists, else '; run again'."""
    size = saved_part(part)
    return f'; run again to resume from {part} ({size} bytes saved)' if size else '; run again'


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


def _read_body(resp, url, part, offset, transfer, desc):
    """Write resp's body to part (appending at offset on a 206); return None when complete, else why it stopped."""
    ctype = resp.headers.get('Content-Type', '') or ''
    if ctype.split(';')[0].strip().lower() in ('text/html', 'application/xhtml+xml'):
        raise DownloadError(f'{url}: the server sent an HTML page (Content-Type {ctype}), not the file; '
                            'check the URL', kind='html')
    os.makedirs(os.path.dirname(os.path.abspath(part)), exist_ok=True)  # a folder only once the server answers
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
                                             unit_divisor=1024, desc=desc, disable=not transfer.progress,
                                             leave=False) as bar:
        while True:
            try:
                chunk = resp.read(transfer.chunk_size)
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


def _fetch_to_part(url, part, transfer, desc):
    """Transfer url into part, resuming with Range requests across up to transfer.retries + 1 attempts."""
    last = None
    for attempt in range(transfer.retries + 1):
        if attempt and transfer.backoff:
            time.sleep(transfer.backoff * attempt)
        offset = os.path.getsize(part) if os.path.exists(part) else 0
        headers = {'User-Agent': USER_AGENT, 'Accept-Encoding': 'identity'}
        if offset:
            headers['Range'] = f'bytes={offset}-'
        request = urllib.request.Request(url, headers=headers)
        try:
            resp = urllib.request.urlopen(request, timeout=transfer.timeout)
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
            reason = unreachable_reason(e)
            if reason is not None:  # no connection at all: another attempt would fail the same way
                host = urllib.parse.urlsplit(url).netloc
                raise DownloadError(f'{url}: could not reach {host} ({reason})', kind='unreachable', host=host,
                                    reason=reason, part=part) from None
            last = f'{type(e).__name__}: {getattr(e, "reason", e)}'
            continue
        with resp:
            last = _read_body(resp, url, part, offset, transfer, desc)
        if last is None:
            return
    raise DownloadError(f'{url}: download failed after {transfer.retries + 1} attempts ({last}){resume_hint(part)}',
                        kind='network')


def download(url, dest, expected_sha1=None, *, check=None, transfer=TransferSettings()):
    """Download url to dest through dest + '.part' (resumed, fsynced, verified, renamed into place) as transfer
    (TransferSettings) says; return dest.

    The part file is verified by its git blob SHA-1 (expected_sha1), or by check(part) -> (kind, description) of
    what is wrong, (None, None) when it verifies."""
    _check_url(url)
    dest = os.fspath(dest)
    part = dest + '.part'
    # A .part left by an earlier run may hold something else (an HTML page, an older file): if resuming
    # from it gives a bad file, start once more from zero before giving up.
    fresh_retry = os.path.exists(part) and os.path.getsize(part) > 0
    while True:
        _fetch_to_part(url, part, transfer, os.path.basename(dest))
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
    """Make model_dir/name a verified copy of the released file; return (path, 'ok', 'copied' (from the vocabulary
    this repository ships) or 'downloaded')."""
    if expected_sha1 is None:
        if name not in RELEASED_FILES:
            raise ValueError(f'unknown file {name!r}; the released model/ files are: {", ".join(RELEASED_FILES)}')
        expected_sha1 = RELEASED_FILES[name]
    path = os.path.join(model_dir, name)
    if check_file(path, expected_sha1) is None:
        return path, 'ok'
    if name in SHIPPED_NAMES['gpt1'] and expected_sha1 == RELEASED_FILES[name]:  # the repository's copy is the release
        return copy_shipped(os.path.join(SHIPPED_DIRS['gpt1'], name), path,
                            lambda p: find_problem(p, expected_sha1)), 'copied'
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
    """Fetch every released file (or names) not already verified in model_dir (the vocabulary copied from the
    repository's); return their paths.

    Raises DownloadError (one line naming the URL) on the first file that cannot be fetched and verified.
    `expected` maps name -> git blob SHA-1 and defaults to RELEASED_FILES; download_kw go to download().
    """
    expected = RELEASED_FILES if expected is None else expected
    return [fetch_file(n, model_dir, base_url, expected[n], lfs_base_url=lfs_base_url, **download_kw)[0]
            for n in resolve_names(names, expected)]


def copy_shipped(src, dest, problem):
    """Copy src, the repository's copy of a released file, to dest once problem(path) -> (kind, description) finds
    nothing wrong with it, and again with the copy; return dest, or raise a DownloadError naming the damaged file."""
    kind, what = problem(src)
    if kind is not None:
        raise DownloadError(f'{src}: {what}; this repository ships it: restore it (git checkout -- '
                            f'{os.path.relpath(src, REPO_ROOT)}) and run again', kind='shipped')
    data = untrusted.read_bytes(src, what='vocabulary file', limit=untrusted.JSON_MAX_BYTES)
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    untrusted.write_atomically(dest, data)
    kind, what = problem(dest)
    if kind is not None:  # changed between the check and the read
        os.remove(dest)
        raise DownloadError(f'{dest}: the copy of {src} {what}; run again', kind=kind)
    return dest


def gpt2_hparams(size):
    """Return the hparams.json dict of a released GPT-2 size ('124M', ...)."""
    n_embd, n_head, n_layer = GPT2_SIZES[size]
    return dict(n_vocab=50257, n_ctx=1024, n_embd=n_embd, n_head=n_head, n_layer=n_layer)


def gpt2_file_problem(folder, name, size, path=None):
    """Return (kind, plain-words description) of what is wrong with the released GPT-2 file `name` of the size
    `size` in folder (read from path when given: a download's .part), or (None, None) when it verifies: the
    vocabulary by SHA-256, hparams.json and `checkpoint` by their content (every path `checkpoint` names inside the
    folder), the index by its block CRC32Cs and every tensor's name, dtype (float32) and shape, the data by every
    tensor's CRC32C and its size; model.ckpt.meta, a TensorFlow graph no reader of the weights needs, only for being a
    plain non-empty file. Never raises for a bad file: every problem is returned."""
    try:
        with untrusted.reading(folder if path is None else path):
            path = os.path.join(folder, name) if path is None else os.fspath(path)
            untrusted.check_path_text(path)
            kind, what = find_problem(path)  # missing, empty, a Git-LFS pointer, an HTML page
            if kind is not None:
                return kind, what
            return gpt2_content_problem(folder, name, size, path)
    except untrusted.BadFile as err:
        return 'corrupt', str(err)


def gpt2_content_problem(folder, name, size, path):
    """Return gpt2_file_problem's (kind, description) for the content of a file that find_problem passed."""
    if name in GPT2_VOCAB_SHA256:
        digest = file_sha256(path)
        if digest != GPT2_VOCAB_SHA256[name]:
            return 'sha256', f'corrupt or truncated: expected SHA-256 {GPT2_VOCAB_SHA256[name]}, got {digest}'
    elif name == HPARAMS_NAME:
        if read_hparams(path) != gpt2_hparams(size):
            return 'content', f'not the hparams of GPT-2 {size}: expected {json.dumps(gpt2_hparams(size))}'
    elif name == 'checkpoint':
        prefix = tf_bundle.latest_checkpoint(folder, path)  # every path it names inside the folder, else a BadFile
        if os.path.normpath(prefix) != os.path.normpath(os.path.join(folder, TF_PREFIX)):
            return 'content', f'does not name {TF_PREFIX} as the checkpoint'
    elif name == 'model.ckpt.index':
        entries = tf_bundle.tf_checkpoint_entries(os.path.join(folder, TF_PREFIX), index_path=path)
        try:  # the reader's check, every variable counted as used: the released index holds no other
            check_gpt2_entries(entries, list(entries), gpt2_hparams(size), path, f'the hparams of GPT-2 {size}')
        except BadFile as err:
            what = str(err)[len(path) + 2:] if str(err).startswith(f'{path}: ') else str(err)
            return 'content', f'not the index of GPT-2 {size}: {what}'
    elif name.startswith('model.ckpt.data-'):
        tf_bundle.verify_tf_checkpoint(os.path.join(folder, TF_PREFIX), data_paths={0: path}, dtype='float32')
    return None, None


def fetch_gpt2_file(name, size, model_dir, base_url=GPT2_BASE_URL, **download_kw):
    """Make model_dir/name a verified copy of the released GPT-2 file of that size; return (path, 'ok', 'copied'
    (the vocabulary, from this repository's model/gpt2/) or 'downloaded'). Verified as gpt2_file_problem says: the
    vocabulary by SHA-256, the checkpoint by its CRC32Cs, names, shapes and sizes."""
    path = os.path.join(model_dir, name)
    if gpt2_file_problem(model_dir, name, size)[0] is None:
        return path, 'ok'
    if name in SHIPPED_NAMES['gpt2']:  # the vocabulary, the same for every size, ships in model/gpt2/
        src = os.path.join(SHIPPED_DIRS['gpt2'], name)
        return copy_shipped(src, path, lambda p: gpt2_file_problem(os.path.dirname(p), name, size, p)), 'copied'
    url = f"{base_url.rstrip('/')}/{size}/{urllib.parse.quote(name)}"
    download(url, path, check=lambda part: gpt2_file_problem(model_dir, name, size, part), **download_kw)
    return path, 'downloaded'


def gpt2_size(model):
    """Return the released size a --model names ('gpt2-124M' -> '124M')."""
    return model[len('gpt2-'):]


def description():
    """Return the command line's description: the first paragraph of this module's docstring, on one line."""
    return ' '.join(__doc__.split('\n\n')[0].split())


def parse_args(argv=None):
    """Return the parsed command line of download_model.py (settings_of checks it)."""
    p = argparse.ArgumentParser(description=description())
    p.add_argument('--model', choices=MODELS, default='gpt1',
                   help='gpt1 (the released model/ folder of openai/finetune-transformer-lm) or a released GPT-2 size '
                        '(openai/gpt-2) (default: gpt1)')
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
                   help=f'only these released files (default: all 13 of GPT-1: {", ".join(RELEASED_FILES)}; all 7 '
                        f'of a GPT-2: {", ".join(GPT2_FILES)})')
    p.add_argument('--retries', type=int, default=3,
                   help='retries per file after a transfer cut once it started; a host that cannot be reached is '
                        'never retried (default: 3)')
    p.add_argument('--timeout', type=float, default=30.0, help='connect/read timeout in seconds (default: 30)')
    p.add_argument('--no_progress', action='store_true', help='no progress bars on stderr')
    return p.parse_args(argv)


def settings_of(namespace):
    """Return the DownloadSettings of the parsed command line (the --model's folder and URL where not given), or raise
    a one-line ValueError naming a bad flag."""
    if namespace.retries < 0 or namespace.timeout <= 0:
        raise ValueError('--retries must be >= 0 and --timeout > 0')
    names = RELEASED_FILES if namespace.model == 'gpt1' else GPT2_FILES
    unknown = [name for name in namespace.files or () if name not in names]
    if unknown:
        raise ValueError(f'--files {unknown[0]} is not a file of {namespace.model}: choose among {", ".join(names)}')
    model_dir = namespace.model_dir
    if model_dir is None:
        model_dir = 'model/' if namespace.model == 'gpt1' else os.path.join('models', gpt2_size(namespace.model))
    base_url = namespace.base_url
    if base_url is None:
        base_url = BASE_URL if namespace.model == 'gpt1' else GPT2_BASE_URL
    wanted = namespace.files or names
    transfer = TransferSettings(retries=namespace.retries, timeout=namespace.timeout,
                                progress=not namespace.no_progress)
    # GPT-2's index before the data it describes; the vocabulary, copied from this repository, after what is
    # downloaded: a run that cannot reach the host leaves no folder behind
    shipped = SHIPPED_NAMES['gpt1' if namespace.model == 'gpt1' else 'gpt2']
    ordered = sorted((n for n in names if n in wanted), key=lambda n: n in shipped)
    return DownloadSettings(model=namespace.model, model_dir=model_dir, base_url=base_url,
                            lfs_base_url=namespace.lfs_base_url, names=tuple(ordered),
                            verify_only=namespace.verify_only, transfer=transfer)


def check_one(settings, name):
    """Return (path, status) of one released file after --verify-only's check or a fetch, as the DownloadSettings
    say; raise on a problem."""
    if settings.model == 'gpt1':
        path = os.path.join(settings.model_dir, name)
        if settings.verify_only:
            problem = check_file(path, RELEASED_FILES[name])
            if problem:
                raise ValueError(problem)
            return path, 'ok'
        return fetch_file(name, settings.model_dir, settings.base_url, lfs_base_url=settings.lfs_base_url,
                          transfer=settings.transfer)
    size = gpt2_size(settings.model)
    if settings.verify_only:
        kind, what = gpt2_file_problem(settings.model_dir, name, size)
        if kind is not None:
            raise ValueError(problem_line(os.path.join(settings.model_dir, name), kind, what))
        return os.path.join(settings.model_dir, name), 'ok'
    return fetch_gpt2_file(name, size, settings.model_dir, settings.base_url, transfer=settings.transfer)


@dataclass
class Outcome:
    """What a run of main did: the status of each file that verified ({name: 'ok', 'copied' or 'downloaded'}), the
    names that did not, and the DownloadError that stopped the run (a host that cannot be reached), if any."""
    done: dict
    failed: list
    stopped: DownloadError = None


def run_files(settings):
    """Check (and unless --verify-only, fetch) each file of the DownloadSettings, printing one line per file; return
    the Outcome. The first host that cannot be reached stops the run: every other file would fail the same way."""
    outcome = Outcome({}, [])
    for name in settings.names:
        try:
            path, status = check_one(settings, name)
        except DownloadError as e:
            if e.kind == 'unreachable':
                outcome.stopped = e
                break
            outcome.failed.append(name)
            print(f'problem    {name}: {e}', file=sys.stderr, flush=True)
            continue
        except (ValueError, OSError) as e:
            outcome.failed.append(name)
            print(f'problem    {e if settings.verify_only else f"{name}: {e}"}', file=sys.stderr, flush=True)
            continue
        outcome.done[name] = status
        print(f'{status:<10} {path}', flush=True)
    return outcome


def counted(done):
    """Return how many files each status counts, in words: '2 downloaded, 1 copied from this repository, ...'."""
    words = {'downloaded': 'downloaded', 'copied': 'copied from this repository', 'ok': 'already there'}
    counts = [(sum(1 for s in done.values() if s == status), text) for status, text in words.items()]
    return ', '.join(f'{n} {text}' for n, text in counts if n)


def summary_line(settings, outcome):
    """Return (the one summary line that ends the output, whether the run failed)."""
    folder, model = settings.model_dir, settings.model
    if outcome.stopped is not None:
        err = outcome.stopped
        lead = 'could not reach' if err.reason == 'connection refused' else 'no network: could not reach'
        fetched = sum(1 for s in outcome.done.values() if s == 'downloaded')
        before = f'{fetched} file(s) were downloaded before it' if fetched else 'nothing was downloaded'
        # a .part left by an earlier run is named only when it holds bytes to resume from
        resume = f'; {err.part} ({saved_part(err.part)} bytes) resumes then' if saved_part(err.part) else ''
        return (f'download_model.py: error: {lead} {err.host} ({err.reason}); {before}. Connect to the internet (or '
                f'give --base_url a mirror that answers) and run download_model.py again{resume}'), True
    if outcome.failed:
        size = None if model == 'gpt1' else gpt2_size(model)
        fix = (f'fetch them with {download_command(folder, size)}' if settings.verify_only else
               'fix what the problem lines above say and run again')
        return (f'download_model.py: error: {len(outcome.failed)} of {len(settings.names)} file(s) of {model} did not '
                f'verify in {folder} ({", ".join(outcome.failed)}); {fix}'), True
    if settings.verify_only:
        return f'download_model.py: all {len(settings.names)} file(s) of {model} verify in {folder}', False
    return (f'download_model.py: {folder} holds {len(settings.names)} verified file(s) of {model}: '
            f'{counted(outcome.done)}'), False


def main(argv=None):
    """Verify (and unless --verify-only, fetch) the released files; print one line per file, then one summary line;
    return the exit code."""
    try:
        settings = settings_of(parse_args(argv))
    except ValueError as err:
        print(f'download_model.py: error: {err}', file=sys.stderr)
        return 2
    line, failed = summary_line(settings, run_files(settings))
    sys.stdout.flush()  # the per-file lines first: the summary is the last line whichever stream carries it
    print(line, file=sys.stderr if failed else sys.stdout, flush=True)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
