"""Tests for runlock.py: a second holder is refused at once naming the first, a lock left by a dead process is taken
over with a message, released locks leave no file, a lock file replaced under a waiter is re-checked."""
import json
import os
import subprocess
import sys

import pytest

from runlock import RunLock, RunLocked

HOLD = """
import sys, time
sys.path.insert(0, {root!r})
from runlock import RunLock
lock = RunLock([{path!r}]).acquire()
print('locked', flush=True)
sys.stdin.readline()  # hold until told
lock.release()
"""


def holder(path):
    """Start a process that takes the lock at path; return it once it holds it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, '-c', HOLD.format(root=root, path=str(path))], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == 'locked\n'
    return proc


def test_a_second_run_is_refused_naming_the_folder_and_the_running_process(tmp_path):
    path = tmp_path / 'out' / 'run.lock'
    proc = holder(path)
    try:
        with pytest.raises(RunLocked) as err:
            RunLock([str(path)]).acquire()
        message = str(err.value)
        assert '\n' not in message
        assert f'{tmp_path / "out"} is in use by a running job, process {proc.pid} on ' in message
        assert 'other output folders' in message
    finally:
        proc.communicate('\n', timeout=30)
    assert not path.exists()  # the holder removed its lock file on release


def test_a_lock_left_by_a_killed_process_is_taken_over_with_a_message(tmp_path):
    path = tmp_path / 'run.lock'
    proc = holder(path)
    proc.kill()
    proc.wait(timeout=30)
    assert json.loads(path.read_text())['pid'] == proc.pid  # the file stays, the kernel dropped the lock
    said = []
    with RunLock([str(path)], say=said.append):
        assert json.loads(path.read_text())['pid'] == os.getpid()
    assert len(said) == 1 and f'taking over {path}, left by process {proc.pid} on ' in said[0]
    assert 'no longer running' in said[0]
    assert not path.exists()


def test_every_path_is_locked_or_none(tmp_path):
    """A refusal on the second path releases the first: nothing stays locked by a run that did not start."""
    first, second = tmp_path / 'a.lock', tmp_path / 'b.lock'
    proc = holder(second)
    try:
        with pytest.raises(RunLocked):
            RunLock([str(first), str(second)]).acquire()
        assert not first.exists()
        with RunLock([str(first)]):  # free again
            pass
    finally:
        proc.communicate('\n', timeout=30)


def test_a_lock_file_replaced_after_opening_is_locked_anew(tmp_path, monkeypatch):
    """The holder may remove its file between a waiter's open and flock: the waiter locks the file now at the
    path, not the removed one (else two runs would hold 'the' lock)."""
    import fcntl

    import runlock
    path = tmp_path / 'run.lock'
    real_flock, calls = fcntl.flock, []

    def flock(fd, op):
        calls.append(fd)
        if len(calls) == 1:  # the first file opened is replaced before it is locked
            os.remove(path)
            path.write_text('')
        return real_flock(fd, op)
    monkeypatch.setattr(runlock.fcntl, 'flock', flock)
    with RunLock([str(path)]):
        assert len(calls) == 2
        assert json.loads(path.read_text())['pid'] == os.getpid()


def test_a_filesystem_without_locks_runs_unlocked_and_says_so(tmp_path, monkeypatch):
    import errno

    import runlock

    def flock(fd, op):
        raise OSError(errno.ENOLCK, 'No locks available')
    monkeypatch.setattr(runlock.fcntl, 'flock', flock)
    said = []
    with RunLock([str(tmp_path / 'run.lock')], say=said.append) as lock:
        assert lock._held == []
    assert len(said) == 1 and 'cannot lock files (No locks available)' in said[0]
