"""Tests for download_model.py: hashes, local checks, and downloads from a local HTTP server (no internet)."""
import errno
import http.client
import io
import json
import socket
import subprocess
import sys
import threading
import urllib.error
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

import download_model as dm
import integrity
import model_gpt2
import untrusted

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / 'tests' / 'fixtures'
SMALL_FILES = ['encoder_bpe_40000.json', 'params_shapes.json', 'vocab_40000.bpe']
# where the repository keeps a byte-identical copy of each released small file
SMALL_FILE_COPIES = {'encoder_bpe_40000.json': ROOT / 'model' / 'encoder_bpe_40000.json',
                     'vocab_40000.bpe': ROOT / 'model' / 'vocab_40000.bpe',
                     'params_shapes.json': FIXTURES / 'released_params_shapes.json'}
FAST = dict(transfer=dm.TransferSettings(retries=2, timeout=5.0, backoff=0, progress=False))
SUMMARY = 'download_model.py:'  # how the one summary line that ends every run begins


def file_statuses(out):
    """Return {file name: status} of the per-file lines of main's stdout (the summary line left out)."""
    lines = [line.split() for line in out.splitlines() if not line.startswith(SUMMARY)]
    return {Path(words[1]).name: words[0] for words in lines}


def last_line(text):
    """Return the last line of an output."""
    return text.splitlines()[-1]


def random_bytes(n, seed=0):
    """Synthetic file contents."""
    return np.random.default_rng(seed).bytes(n)


def npy_bytes(n, seed=0):
    """A .npy file holding n float32 values, as bytes."""
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(seed).standard_normal(n).astype(np.float32))
    return buf.getvalue()


def released_bytes(name):
    """Return the contents of a released small file, from the repository's copy."""
    return SMALL_FILE_COPIES[name].read_bytes()


class Handler(BaseHTTPRequestHandler):
    """Serves server.routes[path] = dict(body=..., mode=..., ctype=...) with Range support, logging requests.

    mode: None (normal), 'cut' (first request stops after `cut` bytes), 'cut_always' (every request stops
    after `cut` bytes), 'ignore_range' (always 200 with the whole body), 'stall' (sends `cut` bytes, then
    nothing until server.release is set or 5 s have passed), 'status' (the error status route['status']).
    """

    def log_message(self, *args):
        pass

    def do_GET(self):
        srv = self.server
        with srv.lock:
            srv.requests.append((self.path, self.headers.get('Range')))
            n_seen = sum(1 for p, _ in srv.requests if p == self.path)
        route = srv.routes.get(self.path)
        if route is None:
            self.send_error(404, 'Not Found')
            return
        body, mode = route['body'], route.get('mode')
        if mode == 'status':  # an error status for every request
            self.send_error(route['status'])
            return
        start = 0
        rng = self.headers.get('Range')
        if rng and mode != 'ignore_range':
            start = int(rng.split('=')[1].split('-')[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header('Content-Range', f'bytes */{len(body)}')
                self.send_header('Content-Length', '0')
                self.end_headers()
                return
            self.send_response(206)
            self.send_header('Content-Range', f'bytes {start}-{len(body) - 1}/{len(body)}')
        else:
            self.send_response(200)
        rest = body[start:]
        self.send_header('Content-Type', route.get('ctype', 'application/octet-stream'))
        self.send_header('Content-Length', str(len(rest)))
        self.end_headers()
        if mode == 'stall':
            self.wfile.write(rest[:route['cut']])
            self.wfile.flush()
            srv.release.wait(5)
            self.wfile.write(rest[route['cut']:])
            return
        if mode == 'cut_always' or (mode == 'cut' and n_seen == 1):
            self.wfile.write(rest[:route['cut']])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(rest)


@pytest.fixture
def server():
    """A ThreadingHTTPServer on 127.0.0.1 serving server.routes; server.url(path) gives a URL."""
    httpd = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    httpd.daemon_threads = True
    httpd.routes, httpd.requests, httpd.lock, httpd.release = {}, [], threading.Lock(), threading.Event()
    httpd.url = lambda path: f'http://127.0.0.1:{httpd.server_address[1]}{path}'
    thread = threading.Thread(target=httpd.serve_forever, kwargs={'poll_interval': 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.release.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


# --- hashes and the embedded table -------------------------------------------------------------------

@pytest.mark.parametrize('size', [0, 1, 4096, 4097, 300_001])
def test_git_blob_sha1_matches_git_hash_object(tmp_path, size):
    data = random_bytes(size, seed=size)
    path = tmp_path / 'blob.bin'
    path.write_bytes(data)
    want = subprocess.run(['git', 'hash-object', str(path)], capture_output=True, text=True, check=True,
                          timeout=30).stdout.strip()
    assert untrusted.git_blob_sha1(path, chunk_size=4096) == want  # streamed across chunk boundaries
    assert untrusted.git_blob_sha1(str(path)) == want
    assert untrusted.git_blob_sha1(data) == want
    assert untrusted.git_blob_sha1(bytearray(data)) == want


def test_embedded_hashes_equal_reference_json():
    """The table equals the SHA-1s recorded from the shared reference (make_oracle_fixtures.py copies them)."""
    assert dm.RELEASED_FILES == json.loads((FIXTURES / 'released_files.json').read_text())['files']
    assert len(dm.RELEASED_FILES) == 13


def test_shipped_vocabulary_is_byte_identical_to_the_release():
    """model/ ships the two released vocabulary files; their git blob SHA-1s are the released ones."""
    for name in ('encoder_bpe_40000.json', 'vocab_40000.bpe'):
        assert untrusted.git_blob_sha1(ROOT / 'model' / name) == dm.RELEASED_FILES[name], name
    assert integrity.verify_model_dir(ROOT / 'model', names=['encoder_bpe_40000.json', 'vocab_40000.bpe']) == []
    tracked = subprocess.run(['git', 'ls-files', '-s', 'model/'], cwd=ROOT, capture_output=True, text=True,
                             timeout=30).stdout
    if tracked:  # in a git checkout, the committed blobs are the released ones too (no weights committed)
        blobs = {line.split()[-1]: line.split()[1] for line in tracked.splitlines()}
        assert blobs == {'model/README.md': blobs['model/README.md'],
                         'model/encoder_bpe_40000.json': dm.RELEASED_FILES['encoder_bpe_40000.json'],
                         'model/vocab_40000.bpe': dm.RELEASED_FILES['vocab_40000.bpe'],
                         # GPT-2's vocabulary (its SHA-256 are checked in tests/test_encoder_gpt2.py)
                         'model/gpt2/encoder.json': '1f1d9aaca301414e7f6c9396df506798ff4eb9a6',
                         'model/gpt2/vocab.bpe': '226b0752cac7789c48f0cb3ec53eda48b7be36cc'}


def test_released_small_files_verify(tmp_path):
    for n in SMALL_FILES:
        (tmp_path / n).write_bytes(released_bytes(n))
        assert dm.check_file(tmp_path / n, dm.RELEASED_FILES[n]) is None
    assert integrity.verify_model_dir(tmp_path, names=SMALL_FILES) == []
    problems = integrity.verify_model_dir(tmp_path)  # the ten shards are absent
    assert len(problems) == 10 and all('params_' in p and 'missing' in p for p in problems)


# --- local checks ------------------------------------------------------------------------------------

def test_verify_model_dir_names_each_problem(tmp_path):
    real_npy = npy_bytes(5000)
    (tmp_path / 'params_1.npy').write_bytes(
        b'version https://git-lfs.github.com/spec/v1\noid sha256:' + b'0' * 64 + b'\nsize 46622848\n')
    (tmp_path / 'params_2.npy').write_bytes(b'\n  <!DOCTYPE html>\n<html><body>Rate limited</body></html>\n')
    (tmp_path / 'params_3.npy').write_bytes(real_npy[:-1000])           # truncated shard
    (tmp_path / 'params_4.npy').write_bytes(real_npy)                   # complete, but not the released one
    (tmp_path / 'params_5.npy').write_bytes(b'')
    (tmp_path / 'params_6.npy').write_bytes(b'  <HTML><head></head></HTML>')  # case-insensitive
    names = [f'params_{i}.npy' for i in range(7)]
    problems = integrity.verify_model_dir(tmp_path, names=names)
    assert len(problems) == 7
    by_file = {n: [p for p in problems if n in p] for n in names}
    assert all(len(v) == 1 for v in by_file.values()), by_file
    assert 'missing' in by_file['params_0.npy'][0]
    assert 'Git-LFS pointer' in by_file['params_1.npy'][0]
    assert 'HTML page' in by_file['params_2.npy'][0]
    assert 'HTML page' in by_file['params_6.npy'][0]
    assert 'truncated' in by_file['params_3.npy'][0]
    assert f'the file has {len(real_npy) - 1000}' in by_file['params_3.npy'][0]
    got = untrusted.git_blob_sha1(real_npy)
    assert (f'corrupt or truncated: expected {dm.RELEASED_FILES["params_4.npy"]}, got {got}; '
            'delete it and run download_model.py again') in by_file['params_4.npy'][0]
    assert 'empty' in by_file['params_5.npy'][0]
    assert all('\n' not in p for p in problems)


def test_truncated_json_is_reported_by_hash(tmp_path):
    data = released_bytes('params_shapes.json')
    (tmp_path / 'params_shapes.json').write_bytes(data[:-10])
    [problem] = integrity.verify_model_dir(tmp_path, names=['params_shapes.json'])
    assert str(tmp_path / 'params_shapes.json') in problem
    assert 'corrupt or truncated' in problem and dm.RELEASED_FILES['params_shapes.json'] in problem


def test_check_file_with_and_without_hash(tmp_path):
    path = tmp_path / 'x.bin'
    path.write_bytes(random_bytes(1000))
    assert dm.check_file(path) is None
    assert dm.check_file(path, untrusted.git_blob_sha1(path)) is None
    assert 'corrupt' in dm.check_file(path, '0' * 40)
    assert 'not a regular file' in dm.check_file(tmp_path)


def test_verify_model_dir_rejects_unknown_name(tmp_path):
    with pytest.raises(ValueError, match='params_10.npy'):
        integrity.verify_model_dir(tmp_path, names=['params_10.npy'])


# --- downloads from the local server ----------------------------------------------------------------

def test_download_fresh(server, tmp_path):
    data = random_bytes(300_000)
    server.routes['/m/a.bin'] = dict(body=data)
    dest = tmp_path / 'sub' / 'a.bin'
    assert dm.download(server.url('/m/a.bin'), dest, untrusted.git_blob_sha1(data), **FAST) == str(dest)
    assert dest.read_bytes() == data
    assert not Path(str(dest) + '.part').exists()
    assert server.requests == [('/m/a.bin', None)]


def test_download_resumes_after_cut(server, tmp_path):
    data, cut = random_bytes(300_000), 123_457
    server.routes['/a.bin'] = dict(body=data, mode='cut', cut=cut)
    dest = tmp_path / 'a.bin'
    dm.download(server.url('/a.bin'), dest, untrusted.git_blob_sha1(data), **FAST)
    assert dest.read_bytes() == data
    assert server.requests == [('/a.bin', None), ('/a.bin', f'bytes={cut}-')]


def test_download_resumes_across_runs(server, tmp_path):
    data, cut = random_bytes(300_000), 100_000
    server.routes['/a.bin'] = dict(body=data, mode='cut_always', cut=cut)
    dest, sha = tmp_path / 'a.bin', untrusted.git_blob_sha1(data)
    with pytest.raises(dm.DownloadError, match='resume') as e:
        dm.download(server.url('/a.bin'), dest, sha, transfer=replace(FAST['transfer'], retries=1))
    assert server.url('/a.bin') in str(e.value) and '\n' not in str(e.value)
    part = Path(str(dest) + '.part')
    assert part.read_bytes() == data[:2 * cut] and not dest.exists()
    server.routes['/a.bin'] = dict(body=data)
    dm.download(server.url('/a.bin'), dest, sha, **FAST)
    assert dest.read_bytes() == data and not part.exists()
    assert [r for _, r in server.requests] == [None, f'bytes={cut}-', f'bytes={2 * cut}-']


def test_download_corrupt_is_deleted(server, tmp_path):
    data = random_bytes(200_000)
    bad = bytearray(data)
    bad[1234] ^= 0xFF
    server.routes['/a.bin'] = dict(body=bytes(bad))
    dest, sha = tmp_path / 'a.bin', untrusted.git_blob_sha1(data)
    with pytest.raises(dm.DownloadError) as e:
        dm.download(server.url('/a.bin'), dest, sha, **FAST)
    msg = str(e.value)
    assert server.url('/a.bin') in msg and 'corrupt or truncated' in msg and sha in msg
    assert list(tmp_path.iterdir()) == []


def test_download_404_names_url(server, tmp_path):
    url = server.url('/nowhere/params_0.npy')
    with pytest.raises(dm.DownloadError) as e:
        dm.download(url, tmp_path / 'params_0.npy', '0' * 40, **FAST)
    assert url in str(e.value) and '404' in str(e.value)
    assert list(tmp_path.iterdir()) == []
    assert len(server.requests) == 1  # a 404 is not retried


@pytest.mark.parametrize('ctype', ['text/html; charset=utf-8', 'application/octet-stream'])
def test_download_html_page_is_refused(server, tmp_path, ctype):
    server.routes['/params_0.npy'] = dict(body=b'<!DOCTYPE html><html><body>Sign in</body></html>', ctype=ctype)
    with pytest.raises(dm.DownloadError, match='HTML page') as e:
        dm.download(server.url('/params_0.npy'), tmp_path / 'params_0.npy', '0' * 40, **FAST)
    assert server.url('/params_0.npy') in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_download_restarts_when_server_ignores_range(server, tmp_path):
    data = random_bytes(250_000)
    server.routes['/a.bin'] = dict(body=data, mode='ignore_range')
    dest = tmp_path / 'a.bin'
    Path(str(dest) + '.part').write_bytes(b'x' * 1000)  # appending to this would give a wrong file
    dm.download(server.url('/a.bin'), dest, untrusted.git_blob_sha1(data), **FAST)
    assert dest.read_bytes() == data
    assert server.requests == [('/a.bin', 'bytes=1000-')]


def test_download_416_means_part_is_complete(server, tmp_path):
    data = random_bytes(250_000)
    server.routes['/a.bin'] = dict(body=data)
    dest = tmp_path / 'a.bin'
    Path(str(dest) + '.part').write_bytes(data)
    dm.download(server.url('/a.bin'), dest, untrusted.git_blob_sha1(data), **FAST)
    assert dest.read_bytes() == data and not Path(str(dest) + '.part').exists()
    assert server.requests == [('/a.bin', f'bytes={len(data)}-')]


def test_download_stale_part_restarts_from_zero(server, tmp_path):
    data = random_bytes(250_000)
    server.routes['/a.bin'] = dict(body=data)
    dest = tmp_path / 'a.bin'
    Path(str(dest) + '.part').write_bytes(b'y' * 5000)  # left by something else: resuming gives a bad file
    dm.download(server.url('/a.bin'), dest, untrusted.git_blob_sha1(data), **FAST)
    assert dest.read_bytes() == data
    assert server.requests == [('/a.bin', 'bytes=5000-'), ('/a.bin', None)]


def test_download_rejects_non_http_url(tmp_path):
    with pytest.raises(ValueError, match='not an http'):
        dm.download((tmp_path / 'x').as_uri(), tmp_path / 'y')


def test_download_model_skips_verified_and_follows_lfs_pointer(server, tmp_path):
    a, b = random_bytes(10_000, seed=1), npy_bytes(20_000, seed=2)
    expected = {'a.bin': untrusted.git_blob_sha1(a), 'b.npy': untrusted.git_blob_sha1(b)}
    (tmp_path / 'a.bin').write_bytes(a)
    server.routes['/raw/b.npy'] = dict(body=b'version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1\n')
    server.routes['/media/b.npy'] = dict(body=b)
    paths = dm.download_model(tmp_path, server.url('/raw/'), expected=expected,
                              lfs_base_url=server.url('/media/'), **FAST)
    assert paths == [str(tmp_path / 'a.bin'), str(tmp_path / 'b.npy')]
    assert (tmp_path / 'b.npy').read_bytes() == b
    assert [p for p, _ in server.requests] == ['/raw/b.npy', '/media/b.npy']
    assert dm.download_model(tmp_path, server.url('/raw/'), expected=expected, **FAST) == paths
    assert len(server.requests) == 2  # everything verified: nothing fetched


def test_download_model_into_the_repository_layout_fetches_only_the_weights(server, tmp_path):
    """model/ as cloned holds the vocabulary: only params_shapes.json and the ten shards are fetched."""
    for name in ('encoder_bpe_40000.json', 'vocab_40000.bpe'):
        (tmp_path / name).write_bytes(released_bytes(name))
    expected = dict(dm.RELEASED_FILES)
    server.routes['/model/params_shapes.json'] = dict(body=released_bytes('params_shapes.json'))
    for n in range(10):  # stand-in shards: the downloader is told their hashes
        body = npy_bytes(100 + n, seed=n)
        expected[f'params_{n}.npy'] = untrusted.git_blob_sha1(body)
        server.routes[f'/model/params_{n}.npy'] = dict(body=body)
    paths = dm.download_model(tmp_path, server.url('/model/'), expected=expected, **FAST)
    assert sorted(p.split('/')[-1] for p in paths) == sorted(expected)
    fetched = sorted(path.split('/')[-1] for path, _ in server.requests)
    assert fetched == sorted(['params_shapes.json'] + [f'params_{n}.npy' for n in range(10)])
    assert integrity.verify_model_dir(tmp_path, expected=expected) == []


def test_download_model_lfs_pointer_without_fallback_is_an_error(server, tmp_path):
    server.routes['/raw/b.npy'] = dict(body=b'version https://git-lfs.github.com/spec/v1\n')
    with pytest.raises(dm.DownloadError, match='Git-LFS pointer'):
        dm.download_model(tmp_path, server.url('/raw/'), expected={'b.npy': '0' * 40}, lfs_base_url='', **FAST)
    assert not (tmp_path / 'b.npy').exists()


# --- command line ------------------------------------------------------------------------------------

def test_cli_verify_only_on_empty_dir_fails(tmp_path, capsys):
    assert dm.main(['--model_dir', str(tmp_path), '--verify-only']) == 1
    out, err = capsys.readouterr()
    problem_lines = [line for line in err.splitlines() if line.startswith('problem')]
    assert out == '' and len(problem_lines) == 13 and all('missing' in line for line in problem_lines)
    assert list(tmp_path.iterdir()) == []  # --verify-only downloads nothing


def test_cli_downloads_then_verifies(server, tmp_path, capsys):
    for n in SMALL_FILES:
        server.routes[f'/model/{n}'] = dict(body=released_bytes(n), ctype='text/plain')
    args = ['--model_dir', str(tmp_path), '--base_url', server.url('/model/'), '--timeout', '5', '--no_progress',
            '--files'] + SMALL_FILES
    assert dm.main(args) == 0
    out, err = capsys.readouterr()
    # the vocabulary ships in model/: copied from there, never downloaded
    assert file_statuses(out) == {'params_shapes.json': 'downloaded', 'encoder_bpe_40000.json': 'copied',
                                  'vocab_40000.bpe': 'copied'}
    assert [p for p, _ in server.requests] == ['/model/params_shapes.json'] and err == ''
    assert last_line(out) == (f'download_model.py: {tmp_path} holds 3 verified file(s) of gpt1: 1 downloaded, '
                              '2 copied from this repository')
    assert dm.main(args) == 0
    out = capsys.readouterr().out
    assert set(file_statuses(out).values()) == {'ok'} and last_line(out).endswith('3 already there')
    assert len(server.requests) == 1
    assert dm.main(['--model_dir', str(tmp_path), '--verify-only', '--files'] + SMALL_FILES) == 0
    assert last_line(capsys.readouterr().out) == f'download_model.py: all 3 file(s) of gpt1 verify in {tmp_path}'
    for name in SMALL_FILES:
        assert (tmp_path / name).read_bytes() == released_bytes(name)


def test_cli_http_error_is_one_line(server, tmp_path, capsys):
    code = dm.main(['--model_dir', str(tmp_path), '--base_url', server.url('/model/'), '--timeout', '5',
                    '--no_progress', '--files', 'params_0.npy'])
    assert code == 1
    out, err = capsys.readouterr()
    [problem] = [line for line in err.splitlines() if line.startswith('problem')]
    assert server.url('/model/params_0.npy') in problem and '404' in problem
    assert 'Traceback' not in err and out == ''
    assert last_line(err) == (f'download_model.py: error: 1 of 1 file(s) of gpt1 did not verify in {tmp_path} '
                              '(params_0.npy); fix what the problem lines above say and run again')


def test_cli_unknown_file_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        dm.main(['--model_dir', str(tmp_path), '--files', 'params_10.npy'])
    assert e.value.code == 2


def test_cli_script_exit_code(tmp_path):
    script = Path(dm.__file__).resolve()
    r = subprocess.run([sys.executable, str(script), '--model_dir', str(tmp_path), '--verify-only',
                        '--files', 'params_0.npy'], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert 'params_0.npy: missing' in r.stderr and 'Traceback' not in r.stderr


# --- every flag of the command line, each checked by its effect -------------------------------------------

def serve_small_files(server, prefix='/model/'):
    """Serve the three released small files under prefix."""
    for n in SMALL_FILES:
        server.routes[f'{prefix}{n}'] = dict(body=released_bytes(n))


def test_cli_verify_only_downloads_nothing_even_with_a_server(server, tmp_path, capsys):
    serve_small_files(server)
    argv = ['--model_dir', str(tmp_path), '--base_url', server.url('/model/'), '--no_progress', '--files'] + SMALL_FILES
    assert dm.main(argv + ['--verify-only']) == 1
    out, err = capsys.readouterr()
    assert out == '' and err.count('missing') == 3 and server.requests == [] and list(tmp_path.iterdir()) == []
    assert last_line(err).startswith('download_model.py: error: 3 of 3 file(s) of gpt1 did not verify')
    assert last_line(err).endswith(f'; fetch them with python download_model.py --model_dir {tmp_path}')
    assert dm.main(argv) == 0  # the same command without --verify-only fetches them (the vocabulary: copies it)
    assert len(server.requests) == 1 and sorted(p.name for p in tmp_path.iterdir()) == sorted(SMALL_FILES)


def test_cli_retries_n_makes_n_plus_1_attempts(server, tmp_path, capsys, monkeypatch):
    sleeps = []
    monkeypatch.setattr(dm.time, 'sleep', sleeps.append)  # the backoff between attempts, not waited here
    data = released_bytes('params_shapes.json')
    server.routes['/model/params_shapes.json'] = dict(body=data, mode='cut_always', cut=100)
    argv = ['--model_dir', str(tmp_path), '--base_url', server.url('/model/'), '--no_progress', '--timeout', '5',
            '--files', 'params_shapes.json']
    for retries in (0, 2):
        server.requests.clear()
        for part in tmp_path.iterdir():
            part.unlink()
        sleeps.clear()
        assert dm.main(argv + ['--retries', str(retries)]) == 1
        err = capsys.readouterr().err
        assert f'download failed after {retries + 1} attempts' in err
        assert [r for _, r in server.requests] == [None] + [f'bytes={100 * k}-' for k in range(1, retries + 1)]
        assert sleeps == [float(k) for k in range(1, retries + 1)]
    assert dm.main(argv + ['--retries', '-1']) == 2
    assert '--retries must be >= 0' in capsys.readouterr().err


def test_cli_timeout_gives_up_on_a_stalled_server(server, tmp_path, capsys):
    data = released_bytes('params_shapes.json')
    server.routes['/model/params_shapes.json'] = dict(body=data, mode='stall', cut=100)
    code = dm.main(['--model_dir', str(tmp_path), '--base_url', server.url('/model/'), '--no_progress', '--retries',
                    '0', '--timeout', '0.5', '--files', 'params_shapes.json'])
    server.release.set()
    assert code == 1  # with the default 30 s it would wait, get the whole file after 5 s and succeed
    err = capsys.readouterr().err
    assert 'download failed after 1 attempts (TimeoutError: timed out)' in err
    assert not (tmp_path / 'params_shapes.json').exists() and len(server.requests) == 1
    assert dm.main(['--model_dir', str(tmp_path), '--timeout', '0', '--verify-only']) == 2
    assert '--timeout > 0' in capsys.readouterr().err


def test_cli_no_progress_silences_the_progress_bars(server, tmp_path, capsys, monkeypatch):
    import utils
    monkeypatch.setattr(utils, 'PROGRESS_INTERVAL_S', 0)  # stderr is no terminal here: a line at every update
    serve_small_files(server)
    base = ['--base_url', server.url('/model/'), '--files', 'params_shapes.json', 'vocab_40000.bpe']
    assert dm.main(['--model_dir', str(tmp_path / 'a'), '--no_progress'] + base) == 0
    out, err = capsys.readouterr()
    assert err == '' and file_statuses(out) == {'params_shapes.json': 'downloaded', 'vocab_40000.bpe': 'copied'}
    assert dm.main(['--model_dir', str(tmp_path / 'b')] + base) == 0
    out, err = capsys.readouterr()
    assert file_statuses(out)['params_shapes.json'] == 'downloaded' and 'params_shapes.json' in err and 'B/s' in err


def test_cli_lfs_base_url_is_the_fallback_for_a_pointer(server, tmp_path, capsys):
    server.routes['/raw/params_shapes.json'] = dict(body=b'version https://git-lfs.github.com/spec/v1\noid x\n')
    server.routes['/media/params_shapes.json'] = dict(body=released_bytes('params_shapes.json'))
    argv = ['--model_dir', str(tmp_path), '--base_url', server.url('/raw/'), '--no_progress', '--files',
            'params_shapes.json']
    assert dm.main(argv + ['--lfs_base_url', '']) == 1
    assert 'Git-LFS pointer' in capsys.readouterr().err and not (tmp_path / 'params_shapes.json').exists()
    assert [p for p, _ in server.requests] == ['/raw/params_shapes.json']
    assert dm.main(argv + ['--lfs_base_url', server.url('/media/')]) == 0
    assert capsys.readouterr().out.startswith('downloaded')
    assert [p for p, _ in server.requests[1:]] == ['/raw/params_shapes.json', '/media/params_shapes.json']
    assert (tmp_path / 'params_shapes.json').read_bytes() == released_bytes('params_shapes.json')


# --- GPT-2 ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def gpt2_release(tmp_path_factory):
    """{file name: bytes} of a released GPT-2 folder with tiny blocks (32 states, 4 heads, 2 layers) and the released
    vocabulary and context (50257 tokens, 1024 positions), as tf.train.Saver writes it."""
    from tests.helpers import write_tiny_gpt2
    folder = write_tiny_gpt2(tmp_path_factory.mktemp('release') / '124M', n_ctx=1024)
    files = {name: (folder / name).read_bytes() for name in ('checkpoint', 'hparams.json', 'model.ckpt.index',
                                                             'model.ckpt.data-00000-of-00001')}
    files['model.ckpt.meta'] = random_bytes(5000, seed=9)  # a TensorFlow graph: only its plain presence is checked
    for name in ('encoder.json', 'vocab.bpe'):
        files[name] = (ROOT / 'model' / 'gpt2' / name).read_bytes()
    return files


@pytest.fixture
def tiny_124m(monkeypatch):
    """Make the size '124M' the tiny one of gpt2_release (its blocks), for this test."""
    monkeypatch.setitem(model_gpt2.GPT2_SIZES, '124M', (32, 4, 2))


def serve_gpt2(server, files, **routes):
    for name, body in files.items():
        server.routes[f'/gpt2/124M/{name}'] = dict(body=body, **routes.get(name, {}))


def test_gpt2_download_fetches_verifies_resumes_and_skips_what_verifies(server, tmp_path, gpt2_release, tiny_124m,
                                                                         capsys):
    data = 'model.ckpt.data-00000-of-00001'
    serve_gpt2(server, gpt2_release, **{data: dict(mode='cut', cut=1_000_000)})  # the first transfer is cut
    argv = ['--model', 'gpt2-124M', '--model_dir', str(tmp_path / 'models' / '124M'), '--base_url',
            server.url('/gpt2/'), '--retries', '2', '--timeout', '5', '--no_progress']
    assert dm.main(argv) == 0
    out = capsys.readouterr().out
    # the vocabulary, the same for every size, is copied from model/gpt2/ (the folder stays a complete release)
    assert file_statuses(out) == {name: 'copied' if name in ('encoder.json', 'vocab.bpe') else 'downloaded'
                                  for name in gpt2_release}
    assert not any(p.endswith(('encoder.json', 'vocab.bpe')) for p, _ in server.requests)
    assert last_line(out).endswith('holds 7 verified file(s) of gpt2-124M: 5 downloaded, 2 copied from this repository')
    for name, body in gpt2_release.items():
        assert (tmp_path / 'models' / '124M' / name).read_bytes() == body, name
    ranges = [r for p, r in server.requests if p.endswith(data)]
    assert ranges == [None, 'bytes=1000000-']  # resumed where the cut left it
    n_requests = len(server.requests)
    assert dm.main(argv) == 0 and len(server.requests) == n_requests  # every file verifies: nothing fetched
    assert list(file_statuses(capsys.readouterr().out).values()) == ['ok'] * 7
    assert dm.main(argv[:4] + ['--verify-only']) == 0
    import models  # the folder loads: the tiny GPT-2 with the released vocabulary and context
    model = models.load_model(str(tmp_path / 'models' / '124M'), lm=True)
    assert (model.cfg.n_vocab, model.cfg.n_ctx, model.cfg.n_layer) == (50257, 1024, 2)


def flipped(body, offset):
    raw = bytearray(body)
    raw[offset] ^= 0x10
    return bytes(raw)


def test_gpt2_download_refuses_a_corrupt_tensor_and_keeps_nothing(server, tmp_path, gpt2_release, tiny_124m, capsys):
    data = 'model.ckpt.data-00000-of-00001'
    files = dict(gpt2_release, **{data: flipped(gpt2_release[data], 3_000_000)})
    serve_gpt2(server, files)
    folder = tmp_path / '124M'
    argv = ['--model', 'gpt2-124M', '--model_dir', str(folder), '--base_url', server.url('/gpt2/'), '--retries', '0',
            '--no_progress']
    assert dm.main(argv) == 1
    err = capsys.readouterr().err
    assert f'{data}:' in err and 'fails its CRC32C check' in err and "tensor 'model/wte'" in err
    assert not (folder / data).exists() and not (folder / (data + '.part')).exists()
    assert (folder / 'model.ckpt.index').is_file()  # the files that verified stay


@pytest.mark.parametrize('name, damage, message', [
    ('model.ckpt.data-00000-of-00001', lambda b: flipped(b, 123_456), 'fails its CRC32C check'),
    ('model.ckpt.data-00000-of-00001', lambda b: b[:-10], 'is truncated'),
    ('model.ckpt.index', lambda b: b[:-7], 'not a usable TensorFlow checkpoint index'),
    ('hparams.json', lambda b: b.replace(b'1024', b'512'), 'not the hparams of GPT-2 124M'),
    ('encoder.json', lambda b: b[:-1], 'expected SHA-256 196139668be6'),
    ('model.ckpt.meta', lambda b: b'<html><body>Not Found</body></html>', 'an HTML page'),
])
def test_gpt2_verify_only_names_each_damaged_file(tmp_path, gpt2_release, tiny_124m, capsys, name, damage, message):
    folder = tmp_path / '124M'
    folder.mkdir()
    for file, body in gpt2_release.items():
        (folder / file).write_bytes(damage(body) if file == name else body)
    assert dm.main(['--model', 'gpt2-124M', '--model_dir', str(folder), '--verify-only']) == 1
    problems = [line for line in capsys.readouterr().err.splitlines() if line.startswith('problem')]
    assert str(folder / name) in problems[0] and message in problems[0], problems
    # one problem, the damaged file's; a damaged index also leaves the data it describes unverifiable
    assert len(problems) == 1 or (name == 'model.ckpt.index' and all(str(folder / name) in p for p in problems))


# --- a host that cannot be reached: one attempt, the run stops, one summary line -------------------------------------

def closed_port():
    """Return a localhost port nothing listens on (bound, then closed): a connection to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


@pytest.fixture
def attempts(monkeypatch):
    """Record the URL of every connection download_model.py opens (its urlopen calls) and every backoff sleep."""
    calls = dict(urls=[], sleeps=[])
    real = dm.urllib.request.urlopen

    def counted(request, timeout=None):
        calls['urls'].append(request.full_url)
        return real(request, timeout=timeout)

    monkeypatch.setattr(dm.urllib.request, 'urlopen', counted)
    monkeypatch.setattr(dm.time, 'sleep', calls['sleeps'].append)
    return calls


@pytest.mark.parametrize('where', ['unresolvable', 'refused'])
@pytest.mark.parametrize('model', ['gpt1', 'gpt2-124M'])
def test_unreachable_host_is_tried_once_and_stops_the_run(tmp_path, capsys, attempts, where, model):
    # .invalid never resolves (RFC 2606), and a closed port refuses: no network is needed to fail either way
    url = 'http://nonexistent.invalid/' if where == 'unresolvable' else f'http://127.0.0.1:{closed_port()}/'
    folder = tmp_path / 'm'
    assert dm.main(['--model', model, '--model_dir', str(folder), '--base_url', url, '--retries', '3',
                    '--no_progress']) == 1
    out, err = capsys.readouterr()
    assert len(attempts['urls']) == 1 and attempts['sleeps'] == []  # no retry, and no other file tried
    assert out == '' and err.count('\n') == 1  # the summary is the only line
    host = 'nonexistent.invalid' if where == 'unresolvable' else url[len('http://'):-1]
    reason = 'name resolution failed' if where == 'unresolvable' else 'connection refused'
    assert err.startswith(f'download_model.py: error: {"no network: " if where == "unresolvable" else ""}'
                          f'could not reach {host} ({reason}')
    assert 'nothing was downloaded' in err and '--base_url' in err and 'run download_model.py again' in err
    assert '.part' not in err and 'resume' not in err  # no .part exists to resume from
    assert not folder.exists()  # the vocabulary is copied after the downloads: nothing is left behind


def test_unreachable_summary_names_a_part_only_when_it_holds_bytes(tmp_path, capsys, attempts):
    url = f'http://127.0.0.1:{closed_port()}/'
    part = tmp_path / 'params_0.npy.part'  # the first file fetched
    part.write_bytes(b'')
    argv = ['--model_dir', str(tmp_path), '--base_url', url, '--no_progress']
    assert dm.main(argv) == 1
    assert '.part' not in capsys.readouterr().err
    part.write_bytes(b'x' * 10)  # left by an earlier run cut mid-way
    assert dm.main(argv) == 1
    assert last_line(capsys.readouterr().err).endswith(f'; {part} (10 bytes) resumes then')
    assert len(attempts['urls']) == 2


def test_cut_transfers_are_retried_but_a_refused_one_is_not(server, tmp_path, attempts):
    data = random_bytes(50_000)
    server.routes['/a.bin'] = dict(body=data, mode='cut', cut=1000)  # the server was reached: a cut is retried
    dm.download(server.url('/a.bin'), tmp_path / 'a.bin', untrusted.git_blob_sha1(data), **FAST)
    assert len(attempts['urls']) == 2
    with pytest.raises(dm.DownloadError) as e:
        dm.download(f'http://127.0.0.1:{closed_port()}/a.bin', tmp_path / 'b.bin', '0' * 40, **FAST)
    assert e.value.kind == 'unreachable' and e.value.reason == 'connection refused'
    assert len(attempts['urls']) == 3 and not (tmp_path / 'b.bin.part').exists()


@pytest.mark.parametrize('error, reason', [
    (urllib.error.URLError(socket.gaierror(-2, 'Name or service not known')),
     'name resolution failed: Name or service not known'),
    (urllib.error.URLError(ConnectionRefusedError(errno.ECONNREFUSED, 'Connection refused')), 'connection refused'),
    (urllib.error.URLError(OSError(errno.ENETUNREACH, 'Network is unreachable')), 'network is unreachable'),
    (urllib.error.URLError(OSError(errno.EHOSTUNREACH, 'No route to host')), 'no route to host'),
    (urllib.error.URLError(TimeoutError('timed out')), 'timed out connecting'),
    (ConnectionRefusedError(errno.ECONNREFUSED, 'Connection refused'), 'connection refused'),
    # the server was reached: these are cuts, retried
    (ConnectionResetError(errno.ECONNRESET, 'Connection reset by peer'), None),
    (TimeoutError('timed out'), None),
    (http.client.RemoteDisconnected('Remote end closed connection without response'), None),
    (urllib.error.URLError(ConnectionResetError(errno.ECONNRESET, 'reset')), None),
    (urllib.error.HTTPError('http://x/', 503, 'Service Unavailable', {}, None), None),
])
def test_unreachable_reason_tells_no_connection_from_a_cut(error, reason):
    assert dm.unreachable_reason(error) == reason


def test_network_unreachable_is_not_retried(tmp_path, capsys, monkeypatch):
    calls = []

    def unreachable(request, timeout=None):
        calls.append(request.full_url)
        raise urllib.error.URLError(OSError(errno.ENETUNREACH, 'Network is unreachable'))

    monkeypatch.setattr(dm.urllib.request, 'urlopen', unreachable)
    assert dm.main(['--model', 'gpt2-355M', '--model_dir', str(tmp_path / 'x'), '--no_progress']) == 1
    err = capsys.readouterr().err
    assert calls == [dm.GPT2_BASE_URL + '355M/hparams.json']
    assert err == ('download_model.py: error: no network: could not reach openaipublic.blob.core.windows.net '
                   '(network is unreachable); nothing was downloaded. Connect to the internet (or give --base_url a '
                   'mirror that answers) and run download_model.py again\n')


def test_failed_transfer_names_a_part_only_when_it_holds_bytes(server, tmp_path, attempts):
    server.routes['/a.bin'] = dict(body=b'', mode='status', status=503)  # retried, yet no byte ever arrives
    with pytest.raises(dm.DownloadError) as e:
        dm.download(server.url('/a.bin'), tmp_path / 'a.bin', '0' * 40, **FAST)
    assert str(e.value).endswith('download failed after 3 attempts (HTTP 503 Service Unavailable); run again')
    assert len(attempts['urls']) == 3 and list(tmp_path.iterdir()) == []


def test_script_without_network_fails_with_one_summary_line(tmp_path):
    """The done-when of an offline run, through the script itself: exit status 1, the last line the summary."""
    r = subprocess.run([sys.executable, str(ROOT / 'download_model.py'), '--model_dir', str(tmp_path / 'm'),
                        '--base_url', 'http://nonexistent.invalid/model/'], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1 and r.stdout == '' and 'Traceback' not in r.stderr
    assert r.stderr.splitlines() == [r.stderr.splitlines()[-1]]
    assert r.stderr.startswith('download_model.py: error: no network: could not reach nonexistent.invalid')


# --- the vocabulary ships in this repository: copied, verified, never downloaded ------------------------------------

@pytest.mark.parametrize('model, names', [('gpt1', ['encoder_bpe_40000.json', 'vocab_40000.bpe']),
                                          ('gpt2-124M', ['encoder.json', 'vocab.bpe'])])
def test_shipped_vocabulary_is_copied_not_downloaded(tmp_path, capsys, attempts, model, names):
    folder = tmp_path / 'm'
    argv = ['--model', model, '--model_dir', str(folder), '--base_url', 'http://nonexistent.invalid/', '--files',
            *names]
    assert dm.main(argv) == 0
    out = capsys.readouterr().out
    assert file_statuses(out) == {name: 'copied' for name in names} and attempts['urls'] == []
    shipped = ROOT / 'model' / ('' if model == 'gpt1' else 'gpt2')
    assert all((folder / name).read_bytes() == (shipped / name).read_bytes() for name in names)
    assert dm.main(argv + ['--verify-only']) == 0


def test_the_repository_model_folder_is_verified_in_place(capsys, attempts):
    """Into model/ itself (the default folder), the shipped vocabulary is already there: checked, not rewritten."""
    before = {name: (ROOT / 'model' / name).stat().st_mtime_ns for name in ('encoder_bpe_40000.json', 'vocab_40000.bpe')}
    assert dm.main(['--model_dir', str(ROOT / 'model'), '--base_url', 'http://nonexistent.invalid/', '--files',
                    *before]) == 0
    assert set(file_statuses(capsys.readouterr().out).values()) == {'ok'} and attempts['urls'] == []
    assert {name: (ROOT / 'model' / name).stat().st_mtime_ns for name in before} == before


def test_a_damaged_shipped_vocabulary_is_named_with_its_fix(tmp_path, capsys, attempts, monkeypatch):
    shipped = tmp_path / 'repo_model'
    shipped.mkdir()
    (shipped / 'vocab_40000.bpe').write_bytes(released_bytes('vocab_40000.bpe')[:-5])
    monkeypatch.setitem(dm.SHIPPED_DIRS, 'gpt1', str(shipped))
    assert dm.main(['--model_dir', str(tmp_path / 'm'), '--base_url', 'http://nonexistent.invalid/', '--files',
                    'vocab_40000.bpe']) == 1
    err = capsys.readouterr().err
    assert f'{shipped / "vocab_40000.bpe"}: corrupt or truncated' in err and 'restore it (git checkout --' in err
    assert attempts['urls'] == [] and not (tmp_path / 'm' / 'vocab_40000.bpe').exists()
