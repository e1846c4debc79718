"""One run per output folder: a lock that a second run on the same folders meets at once, and that a crashed run
does not leave stuck.

TF counterpart: none (the original writes its files without asking whether another run writes them too).

The lock is the kernel's flock on a small file (`run.lock` in the run's folder, `<file>.lock` beside a shared file
such as a submission): the kernel drops it when its process dies, however it dies, so a stale lock file is simply
taken over (with a message naming the process that left it). The file holds the owner's host, process id and
command line, for the message a second run prints. Where the filesystem has no flock (some cluster filesystems
mounted without it), the run goes on unlocked and says so.
"""
import errno
import fcntl
import json
import os
import socket
import sys
import time

UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class RunLocked(OSError):
    """Another running process holds the lock of an output folder or file."""


def owner_record(argv=None):
    """Return what a lock file says about its owner: host, process id, start time, command line."""
    return dict(host=socket.gethostname(), pid=os.getpid(), since=time.strftime('%Y-%m-%d %H:%M:%S'),
                command=' '.join(sys.argv if argv is None else argv))


def read_owner(fd):
    """Return the owner record written in an open lock file, or None when it holds none (empty, torn)."""
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        return json.loads(os.read(fd, 65536).decode('utf-8'))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def describe(owner):
    """Return 'process PID on HOST (since ..., COMMAND)' of an owner record."""
    if not owner:
        return 'another process'
    return f"process {owner.get('pid')} on {owner.get('host')} (since {owner.get('since')}: {owner.get('command')})"


class RunLock:
    """Locks of the paths a run writes (held from acquire() to release(); a context manager)."""

    def __init__(self, paths, say=print):
        self.paths = list(dict.fromkeys(paths))  # in order, each once
        self.say = say
        self._held = []  # [(path, fd)]

    def acquire(self):
        """Take every lock, or raise RunLocked naming the path and the process holding it (holding none then)."""
        try:
            for path in self.paths:
                fd = self._lock_one(path)
                if fd is not None:
                    self._held.append((path, fd))
        except BaseException:
            self.release()
            raise
        return self

    def _lock_one(self, path):
        """Return the open, locked descriptor of path (owner record written), or None where flock is unsupported."""
        os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                owner = read_owner(fd)
                os.close(fd)
                if err.errno in (errno.EWOULDBLOCK, errno.EACCES):
                    raise RunLocked(f'{os.path.dirname(path) or "."} is in use by a running job, {describe(owner)}: '
                                    f'wait for it, stop it, or give this run other output folders '
                                    f'(lock {path})') from None
                if err.errno in UNSUPPORTED:
                    self.say(f'note: {path}: this filesystem cannot lock files ({err.strerror}); a second run on '
                             f'the same folders will not be refused')
                    return None
                raise
            # the holder may have removed the file between our open and flock: lock the file that is there now
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        stale = read_owner(fd)
        if stale and stale.get('pid') != os.getpid():
            self.say(f'note: taking over {path}, left by {describe(stale)}, which is no longer running')
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(owner_record()).encode('utf-8'))
        return fd

    def release(self):
        """Remove the lock files this process holds and drop their locks."""
        while self._held:
            path, fd = self._held.pop()
            try:
                os.remove(path)  # removed while still locked: a waiter that opened it re-checks the path
            except OSError:
                pass
            os.close(fd)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False
