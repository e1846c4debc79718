"""Reading files that come from elsewhere: the project's one error type for a bad file, regular files only, paths
kept inside their folder, reads bounded by what is on disk, digests, JSON with a depth limit, typed fields; and
writing into such a folder through temporaries that a planted link cannot redirect.

Weight folders, corpora, vocabularies and run folders are downloaded or handed over by colleagues, so every reader
treats them as untrusted (docs/trust.md says what is checked). A reader raises only `BadFile` (a ValueError; its
`MissingFile` subclass is also a FileNotFoundError), with one line that names the file and what is wrong; the
command-line tools print that line. This module imports neither torch nor numpy.
"""
import hashlib
import json
import math
import os
import re
import stat
import struct
import tempfile
import zipfile
from contextlib import contextmanager

# The largest sizes any model file may state. The largest released model (GPT-2 1558M) has n_layer 48, n_embd 1600,
# n_head 25, n_ctx 1024 and 50257 tokens; these bounds leave room for models much larger than any released one while
# refusing a config whose shapes alone would exhaust memory before a tensor is read.
SIZE_LIMITS = {'n_layer': 1024, 'n_embd': 65536, 'n_head': 4096, 'n_ctx': 1 << 20, 'n_vocab': 1 << 22,
               'n_special': 1 << 16}
JSON_MAX_DEPTH = 64        # no config, vocabulary, index or state of this project nests deeper than 5
JSON_MAX_BYTES = 64 << 20  # GPT-2's encoder.json is 1 MB, GPT-1's 0.8 MB; a training state's metadata a few MB
MESSAGE_CHARS = 120        # a value shown in an error is cut to this many characters


class BadFile(ValueError):
    """A file from elsewhere that is refused: the message is one line naming the file and what is wrong."""

    def __init__(self, message, path=None):
        super().__init__(one_line(message))
        self.path = None if path is None else os.fspath(path)


class MissingFile(BadFile, FileNotFoundError):
    """A file a folder must hold is not there (also a FileNotFoundError)."""


class BadArgument(ValueError):
    """A caller's argument (a command-line flag) that is refused: a plain ValueError naming the argument, never blamed
    on a file (reading lets it pass as it is)."""


def one_line(text):
    """Return text on one line: every run of whitespace (newlines included) becomes one space."""
    return ' '.join(str(text).split())


def show(value, limit=MESSAGE_CHARS):
    """Return repr(value) cut to limit characters, for an error message about a value from a file."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + '...'


def bad(path, what):
    """Return the BadFile 'path: what'."""
    return BadFile(f'{os.fspath(path)}: {what}', path)


def describe(err):
    """Return what an exception says, on one line, with its type where the message alone would not tell."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    text = one_line(err)
    if isinstance(err, ValueError) and text:
        return text
    return f'{type(err).__name__}: {text}' if text else type(err).__name__


# What a reader may meet in a damaged or crafted file, besides its own checks: each becomes a BadFile naming the file.
# MemoryError is not among them: the readers bound every allocation by the file's size first.
READ_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError, OverflowError,
               UnicodeError, EOFError, struct.error, zipfile.BadZipFile, OSError)


@contextmanager
def reading(path):
    """Turn any error a reader meets while reading path into one BadFile naming it (kept as is when it already is
    one, a MissingFile for a missing file); a BadArgument, the caller's fault, passes as it is. The readers' entry
    points run inside this."""
    path = os.fspath(path)
    try:
        yield
    except (BadFile, BadArgument):
        raise
    except FileNotFoundError as err:
        raise MissingFile(_named(path, err), path) from None
    except READ_ERRORS as err:
        raise BadFile(_named(path, err), path) from None


def _named(path, err):
    """Return err's message naming path: as is when it begins with path (or a file inside it), else after it."""
    text = describe(err)
    if isinstance(err, OSError) and err.filename:
        text = f'{os.fsdecode(err.filename)}: {text}'
    return text if text.startswith(path) else f'{path}: {text}'


# --- paths and files -------------------------------------------------------------------------------------------

def check_path_text(path, what='path'):
    """Raise a BadFile when a path cannot name a file (a NUL byte, empty); return it as a str."""
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if not text or '\0' in text:
        raise BadFile(f'{what} {show(text)} is not a file name (empty or holding a NUL byte)')
    return text


def is_inside(path, folder):
    """Return whether path, with every symlink resolved, lies inside folder (also resolved) or, for a folder of the
    Hugging Face hub's cache (`<repo>/snapshots/<revision>/`, whose files link to `<repo>/blobs/`), inside its blobs."""
    real = os.path.realpath(path)
    return any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in trusted_roots(folder))


def trusted_roots(folder):
    """Return the resolved folders whose files a reader of folder may follow links into: folder itself and, for a
    snapshot of the Hugging Face hub's cache, the blobs folder of the same repository."""
    root = os.path.realpath(folder)
    parent = os.path.dirname(root)
    roots = [root]
    if os.path.basename(parent) == 'snapshots':  # <repo>/snapshots/<revision>: its files are links to <repo>/blobs
        roots.append(os.path.join(os.path.dirname(parent), 'blobs'))
    return roots


def contained(folder, name, source):
    """Return the path of a file that the file `source` names, after checking that it stays inside folder (symlinks
    resolved): a relative name is taken from folder, an absolute one must lie inside it (TensorFlow's `checkpoint`
    files may name absolute paths); anything else is refused without saying whether the outside path exists."""
    folder = check_path_text(folder, 'folder')
    if not isinstance(name, str) or not name or '\0' in name:
        raise bad(source, f'names {show(name)}, which is not a file name')
    path = name if os.path.isabs(name) else os.path.join(folder, name)
    if (os.path.isabs(name) or os.path.normpath(name).split(os.sep)[0] == '..') and not is_inside(path, folder):
        raise bad(source, f'names {show(name)}, a path outside its folder {folder}: only files inside it are read')
    if not is_inside(path, folder):
        raise bad(source, f'names {show(name)}, which leads outside its folder {folder} (through a link): only files '
                          f'inside it are read')
    return path


def open_regular(path, folder=None, missing=None):
    """Return a binary file object open on path after checking that it is a regular file (no FIFO, device or
    directory; a symlink only when its target stays inside folder, default path's own folder). missing: the hint a
    MissingFile adds."""
    path = check_path_text(path)
    folder = os.path.dirname(os.path.abspath(path)) if folder is None else folder
    if os.path.islink(path) and not is_inside(path, folder):
        raise bad(path, f'is a link that leads outside {folder}: only files inside the folder are read')
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, 'O_NONBLOCK', 0) | getattr(os, 'O_CLOEXEC', 0))
    except FileNotFoundError:
        raise MissingFile(f'{path} is missing' + (f': {missing}' if missing else ''), path) from None
    except OSError as err:
        raise bad(path, f'cannot be opened ({describe(err)})') from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = 'a folder' if stat.S_ISDIR(mode) else 'not a regular file (a pipe, device or socket)'
            raise bad(path, f'is {kind}: a file was expected there')
        return os.fdopen(fd, 'rb')
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path, folder=None, limit=None, what='file', missing=None):
    """Return the whole content of the regular file at path; one larger than limit bytes is refused before it is
    read."""
    with open_regular(path, folder, missing) as f:
        size = os.fstat(f.fileno()).st_size
        if limit is not None and size > limit:
            raise bad(path, f'is {size} bytes, more than any {what} ({limit} bytes at most)')
        data = f.read(size + 1)
    if len(data) != size:
        raise bad(path, f'changed size while being read ({size} bytes, then {len(data)}): read it again')
    return data


def read_text(path, folder=None, limit=JSON_MAX_BYTES, what='file', missing=None):
    """Return the UTF-8 text of the regular file at path (a leading BOM dropped), bounded as read_bytes."""
    data = read_bytes(path, folder, limit, what, missing)
    try:
        return data.decode('utf-8-sig')
    except UnicodeDecodeError as err:
        raise bad(path, f'is not UTF-8 text (byte {err.start})') from None


# --- digests ---------------------------------------------------------------------------------------------------

def file_sha256(path, folder=None, chunk_size=1 << 20):
    """Return the SHA-256 hex digest of the regular file at path (opened as open_regular opens it), streamed."""
    h = hashlib.sha256()
    with open_regular(path, folder) as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def git_blob_sha1(path_or_bytes, chunk_size=1 << 20, folder=None):
    """Return the git blob SHA-1 hex digest, sha1(b"blob <size>\\0" + data), of bytes-like data or of the regular file
    at a path (opened as open_regular opens it), streamed."""
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        data = memoryview(path_or_bytes).cast('B')
        h = hashlib.sha1(b'blob %d\0' % len(data))
        h.update(data)
        return h.hexdigest()
    with open_regular(path_or_bytes, folder) as f:
        size = os.fstat(f.fileno()).st_size
        h = hashlib.sha1(b'blob %d\0' % size)
        n_read = 0
        while chunk := f.read(chunk_size):
            h.update(chunk)
            n_read += len(chunk)
    if n_read != size:  # the file changed while we read it: the header would be wrong
        raise bad(path_or_bytes, 'changed size while being hashed; try again')
    return h.hexdigest()


# --- JSON ------------------------------------------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)


def json_depth(text, stop=None):
    """Return the deepest nesting of brackets in JSON text, strings left out (a bound checked before parsing); the
    count stops once it passes stop."""
    depth = deepest = 0
    for char in _STRING.sub('', text):
        if char in '[{':
            depth += 1
            deepest = max(deepest, depth)
            if stop is not None and deepest > stop:
                break
        elif char in ']}':
            depth -= 1
    return deepest


def _refuse_constant(name):
    """Raise on NaN and Infinity, which no config or vocabulary of this project holds."""
    raise ValueError(f'{name} is not a number a config may hold')


def parse_json(text, source, max_depth=JSON_MAX_DEPTH, constants=False):
    """Return the value of JSON text read from source (named in errors); nesting deeper than max_depth, NaN and
    Infinity (unless constants) are refused."""
    depth = json_depth(text, stop=max_depth) if text.count('[') + text.count('{') > max_depth else 0
    if depth > max_depth:
        raise bad(source, f'nests JSON more than {max_depth} deep, deeper than any file of this kind')
    try:
        return json.loads(text, **({} if constants else {'parse_constant': _refuse_constant}))
    except (ValueError, RecursionError) as err:
        raise bad(source, f'is not valid JSON ({one_line(err)[:MESSAGE_CHARS]})') from None


def read_json(path, folder=None, kind=dict, limit=JSON_MAX_BYTES, what='JSON file', missing=None, constants=False):
    """Return the JSON value in the regular file at path, checked to be of type kind (dict: an object)."""
    value = parse_json(read_text(path, folder, limit, what, missing), path, constants=constants)
    if kind is not None and not isinstance(value, kind):
        raise bad(path, f'must hold a JSON {"object" if kind is dict else kind.__name__}, not '
                        f'{type(value).__name__}')
    return value


# --- typed fields ----------------------------------------------------------------------------------------------

def is_int(value):
    """Return whether value is an int and not a bool (JSON's true is no size)."""
    return isinstance(value, int) and not isinstance(value, bool)


def int_field(name, value, low=0, high=None):
    """Return value after checking it is an int (not a bool) in [low, high]; a ValueError names the field."""
    high = SIZE_LIMITS.get(name) if high is None else high
    if not is_int(value):
        raise ValueError(f'{name} must be an integer, not {show(value)} ({type(value).__name__})')
    if value < low or (high is not None and value > high):
        raise ValueError(f'{name}={value} is out of range [{low}, {high}]')
    return value


def fraction_field(name, value):
    """Return value as a float after checking it is a finite number in [0, 1) (a dropout rate)."""
    if not (is_int(value) or isinstance(value, float)) or not math.isfinite(value) or not 0 <= value < 1:
        raise ValueError(f'{name} must be a number in [0, 1), not {show(value)}')
    return float(value)


def choice_field(name, value, choices):
    """Return value after checking it is one of choices."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f'{name} must be one of {", ".join(map(repr, sorted(choices)))}, not {show(value)}')
    return value


# --- writing into a folder that came from elsewhere ---------------------------------------------------------

def create_temporary(path):
    """Create a new empty temporary file beside path, for writing then renaming onto it; return (fd, its path).

    Its name (`NAME.tmpXXXXXXXX`, random) is made with O_CREAT | O_EXCL (tempfile.mkstemp): a file or symlink already
    there, planted by whoever made the folder, is never followed, opened or reused. The rename that follows replaces
    path itself, never what a symlink at path leads to."""
    folder, name = os.path.split(os.path.abspath(path))
    return tempfile.mkstemp(dir=folder, prefix=f'{name}.tmp')


def replace_durably(fd, tmp, path):
    """Flush the temporary file open on fd to disk, close it and rename tmp onto path, then make the rename durable
    (the folder flushed); return path. The temporary is removed when any step fails."""
    try:
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    folder = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
    return path


def write_atomically(path, data):
    """Write data (bytes, or an iterable of bytes chunks) to path through a safe temporary beside it
    (create_temporary), durably; return path."""
    fd, tmp = create_temporary(path)
    try:
        for chunk in [data] if isinstance(data, (bytes, bytearray, memoryview)) else data:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        os.remove(tmp)
        raise
    return replace_durably(fd, tmp, path)
