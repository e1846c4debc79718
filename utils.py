"""Data helpers: dataset encoding, minibatch iteration, JSON-lines logging (TF: utils.py, numpy-only parts).

The original's TensorFlow-only helpers (shape_list, find_trainable_variables, convert_gradient_to_tensor,
assign_to_gpu, average_grads, the initialisers) have no counterpart here.
"""
import json
import math
import os
import re
import sys
import threading
import time
import weakref

import numpy as np
from tqdm import tqdm


def train_test_indices(n_samples, n_test, seed):
    """Return the (train, test) indices of scikit-learn's train_test_split(..., test_size=n_test, random_state=seed)
    over n_samples, without importing scikit-learn (about 2 s of a run's start): its ShuffleSplit draws one
    permutation from RandomState(seed) and takes its first n_test indices as the test set, the rest as train."""
    if not 0 < n_test < n_samples:
        raise ValueError(f'a split of {n_samples} examples cannot hold out {n_test}: give between 1 and '
                         f'{n_samples - 1}')
    permutation = np.random.RandomState(seed).permutation(n_samples)
    return permutation[n_test:], permutation[:n_test]


def shuffled_indices(n, random_state):
    """Return the order of n examples scikit-learn's shuffle(np.arange(n), random_state=random_state) gives (a
    numpy RandomState), without importing scikit-learn: arange(n) shuffled in place by that generator."""
    indices = np.arange(n)
    random_state.shuffle(indices)
    return indices


def write_failure(path, err):
    """Return the one-line OSError of a failed write of path (a full disk, a file too large, an I/O error), its errno
    kept."""
    code = getattr(err, 'errno', None)
    reason = err.strerror if isinstance(err, OSError) and err.strerror else None
    if reason is None:  # safetensors reports the OS error inside its message: "I/O error: ... (os error 27)"
        found = re.search(r'os error (\d+)', str(err))
        code = int(found.group(1)) if found else code
        reason = os.strerror(code) if found else str(err).splitlines()[0]
    failure = OSError(f'cannot write {path} ({reason}): free space or choose another folder; the files written before '
                      f'stay as they were')
    failure.errno = code
    return failure


def encode_dataset(*splits, encoder, verbose=True):
    """Return the splits with every field of strings replaced by encoder.encode(field) (TF: encode_dataset).

    Called as the original is, with one tuple of splits: encode_dataset(rocstories(data_dir), encoder=...).
    Each str field is encoded by one batched encode() call (with a progress bar when verbose); other
    fields (labels) are kept as they are.
    """
    # The original iterates splits[0] only, silently ignoring further arguments; several arguments are
    # taken here as the splits themselves: encode_dataset(train, valid, encoder=...).
    splits = splits[0] if len(splits) == 1 else splits
    encoded_splits = []
    for split in splits:
        if isinstance(split, str) or any(isinstance(field, str) for field in split):
            raise ValueError('encode_dataset() takes splits of fields (lists of texts), got a split holding a '
                             'bare str; pass e.g. encode_dataset(rocstories(data_dir), encoder=text_encoder)')
        fields = []
        for field in split:
            # the original tests field[0] only, which fails on an empty field
            if field is not None and len(field) > 0 and isinstance(field[0], str):
                field = encoder.encode(field, verbose=verbose)
            fields.append(field)
        encoded_splits.append(fields)
    return encoded_splits


def stsb_label_encoding(labels, nclass=6):
    """Return [len(labels), nclass] float32 targets spreading each score over its two nearest classes.

    The label encoding of the Tree-LSTM paper (Tai, Socher, Manning): y = 2.4 gives 0.6 at class 2 and 0.4
    at class 3.
    """
    labels = np.asarray(labels, dtype=np.float64)
    # The original silently writes nothing for a score outside [0, nclass - 1] (or drops its upper part);
    # such a label is an error here.
    if labels.size and (np.any(~np.isfinite(labels)) or labels.min() < 0 or labels.max() > nclass - 1):
        raise ValueError(f'stsb_label_encoding: labels must lie in [0, {nclass - 1}], '
                         f'got min {labels.min()} max {labels.max()}; pass nclass=max label + 1')
    Y = np.zeros((len(labels), nclass), dtype=np.float32)
    for j, y in enumerate(labels):
        lo = int(np.floor(y))
        Y[j, lo] = lo - y + 1
        if lo + 1 < nclass:
            Y[j, lo + 1] = y - lo
    return Y


def np_softmax(x, t=1):
    """Return the softmax of x / t over the last axis (TF: np_softmax)."""
    x = np.asarray(x) / t
    x = x - np.max(x, axis=-1, keepdims=True)
    ex = np.exp(x)
    return ex / np.sum(ex, axis=-1, keepdims=True)


def make_path(f):
    """Return f after creating its parent folder if missing (TF: make_path)."""
    d = os.path.dirname(f)
    if d:
        os.makedirs(d, exist_ok=True)
    return f


def flatten(outer):
    """Return the list of the elements of the inner sequences of outer, in order (TF: flatten)."""
    return [el for inner in outer for el in inner]


def iter_data(*datas, n_batch=128, truncate=False, verbose=False, max_batches=float('inf')):
    """Yield minibatches of datas: the slice itself for one data, a tuple of slices for several (TF: iter_data).

    truncate drops the last partial batch; at most max_batches batches are yielded. A tqdm bar goes to
    stderr when verbose, nothing is printed otherwise.
    """
    if n_batch < 1:
        raise ValueError(f'iter_data: n_batch must be >= 1, got {n_batch}')
    n = len(datas[0])
    # The original does not check this and yields misaligned batches when lengths differ.
    if any(len(d) != n for d in datas[1:]):
        raise ValueError(f'iter_data: all datas must have the same length, got {[len(d) for d in datas]}')
    if truncate:
        n = (n // n_batch) * n_batch
    n = int(min(n, max_batches * n_batch))
    # The original yields a generator of slices for several datas; a tuple unpacks the same way and can be
    # indexed. Its total n // n_batch undercounts a last partial batch; the bar's total counts it.
    with progress(range(0, n, n_batch), total=math.ceil(n / n_batch), ncols=80, leave=False,
                  disable=not verbose) as bar:
        for i in bar:
            if len(datas) == 1:
                yield datas[0][i:i + n_batch]
            else:
                yield tuple(d[i:i + n_batch] for d in datas)
    return  # the original's `raise StopIteration` is a RuntimeError inside a generator since Python 3.7


PROGRESS_INTERVAL_S = 30.0  # where stderr is not a terminal: a progress line at most this often


def progress(iterable=None, file=None, **options):
    """Return the progress bar of every script and module (the one place bars are made): tqdm's on a terminal;
    where the stream is not one (a scheduler's log file, a pipe), a LineProgress, which writes whole lines now and
    then, never a carriage return or an escape sequence. options are tqdm's (total, initial, desc, unit, unit_scale,
    unit_divisor, leave, disable, ncols, ...); the bar goes to file, default stderr."""
    file = sys.stderr if file is None else file
    if is_terminal(file):
        return tqdm(iterable, file=file, **options)
    return LineProgress(iterable, file=file, **options)


def is_terminal(stream):
    """Return whether stream is an open terminal."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class LineProgress:
    """A progress bar for a stream that is not a terminal: a whole line `desc: n/total unit (pct%), rate, elapsed<left`
    every PROGRESS_INTERVAL_S seconds at most and one when it ends complete; nothing when it is closed by an error
    (the error is then the last line of the log) or left to the garbage collector. Offers what this project uses of
    tqdm: iteration, update, set_postfix(_str), set_description, close and the with-statement."""

    _open = weakref.WeakSet()  # the bars not closed yet, for close_bars()
    _lock = threading.Lock()

    def __init__(self, iterable=None, total=None, initial=0, desc=None, unit='it', unit_scale=False,
                 unit_divisor=1000, leave=True, disable=False, file=None, interval=None, **ignored):
        self.iterable, self.n, self.initial, self.desc, self.unit = iterable, initial, initial, desc, unit
        if total is None and iterable is not None:
            try:
                total = len(iterable)
            except (TypeError, AttributeError):
                total = None
        self.total, self.unit_scale, self.unit_divisor, self.leave = total, unit_scale, unit_divisor, leave
        self.disable, self.file = disable, sys.stderr if file is None else file
        self.interval = PROGRESS_INTERVAL_S if interval is None else interval
        self.postfix = ''
        self.start = self.last = time.monotonic()
        if not disable:
            with LineProgress._lock:
                LineProgress._open.add(self)

    def __iter__(self):
        if self.disable:
            yield from self.iterable
            return
        for item in self.iterable:
            yield item
            self.update(1)
        self.total = self.n if self.total is None else self.total  # exhausted: complete, as tqdm ends then
        self.close()

    def __len__(self):
        return len(self.iterable) if self.total is None else self.total

    def update(self, n=1):
        """Count n more; write a line when PROGRESS_INTERVAL_S has passed since the last one."""
        if self.disable:
            return
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._write(now)

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        """Show key=value pairs after the counts (tqdm's set_postfix)."""
        items = dict(ordered_dict or {}, **kwargs)
        self.postfix = ', '.join(f'{k}={v}' for k, v in items.items())

    def set_postfix_str(self, s='', refresh=True):
        """Show s after the counts (tqdm's set_postfix_str)."""
        self.postfix = str(s)

    def set_description(self, desc=None, refresh=True):
        """Set the text before the counts."""
        self.desc = desc

    def refresh(self):
        """Nothing to redraw: lines are written as the counts go on."""

    def line(self, now=None):
        """Return the progress line as it stands."""
        elapsed = (time.monotonic() if now is None else now) - self.start
        count = self._amount(self.n)
        if self.total:
            count += f'/{self._amount(self.total)} {self.unit} ({100 * self.n / self.total:.0f}%)'
        else:
            count += f' {self.unit}'
        done = self.n - self.initial
        if done > 0 and elapsed > 0:
            rate = done / elapsed
            speed = (f'{self._amount(rate)}{self.unit}/s' if rate >= 1 or self.unit_scale
                     else f'{1 / rate:.2f}s/{self.unit}')
        else:
            speed = f'?{self.unit}/s'
        times = tqdm.format_interval(elapsed)
        if self.total and 0 < done and self.n < self.total:  # the time left at the rate so far (tqdm's elapsed<left)
            times += f'<{tqdm.format_interval((self.total - self.n) * elapsed / done)}'
        parts = [count, speed, times] + ([self.postfix] if self.postfix else [])
        return (f'{self.desc}: ' if self.desc else '') + ', '.join(parts)

    def _amount(self, value):
        if self.unit_scale:
            return tqdm.format_sizeof(value, divisor=self.unit_divisor)
        return f'{value:.2f}' if isinstance(value, float) else str(value)

    def _write(self, now=None):
        try:
            self.file.write(self.line(now) + '\n')
            self.file.flush()
        except (OSError, ValueError):  # a closed or broken stream: progress is not worth an error
            pass

    def close(self, quietly=False):
        """End the bar: its last line when it counted something, is complete (or has no total) and is to be left (tqdm's
        leave: a bar tqdm would erase writes none), nothing when it is not (an error or a stop ended it) or quietly."""
        if self.disable:
            return
        self.disable = True
        with LineProgress._lock:
            LineProgress._open.discard(self)
        complete = self.n > self.initial and (self.total is None or self.n >= self.total)
        if complete and self.leave and not quietly:
            self._write()

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        self.close(quietly=kind is not None)
        return False


def close_bars():
    """Close every progress bar still open, without a last line (tqdm's clear their line): call it before printing
    an error, so that the error is the last line and no bar writes after it."""
    with LineProgress._lock:
        lines = list(LineProgress._open)
    for bar in lines:
        bar.close(quietly=True)
    for bar in list(getattr(tqdm, '_instances', ())):
        try:
            bar.close()
        except (AttributeError, OSError, ValueError):
            pass


def _to_json(obj):
    """Return a JSON-serialisable stand-in for numpy scalars and arrays (json.dumps default=)."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f'ResultLogger: cannot write {type(obj).__name__} {obj!r} as JSON; log numbers or strings')


class ResultLogger:
    """JSON-lines log: the run's arguments plus time first, then one line per log() call (TF: ResultLogger)."""

    def __init__(self, path, *args, **kwargs):
        if 'time' not in kwargs:
            kwargs['time'] = time.time()
        self.path = path
        try:
            self.f_log = open(make_path(path), 'wb', buffering=0)  # unbuffered: closed by close() / __exit__
        except OSError as err:
            raise write_failure(path, err) from None
        self._write(kwargs)

    def _write(self, record):
        """Write one JSON line straight to the file so that a crashed run keeps its log; a write that fails (a full
        disk) is one OSError naming the log, which keeps its whole lines only."""
        data = memoryview((json.dumps(record, default=_to_json) + '\n').encode('utf-8'))
        start = self.f_log.tell()
        try:
            while data:
                data = data[self.f_log.write(data):]
        except OSError as err:
            try:
                self.f_log.truncate(start)  # no torn last line
            except OSError:
                pass
            raise write_failure(self.path, err) from None

    def log(self, **kwargs):
        """Append one line with kwargs plus the time (unless given) and flush; return None."""
        if 'time' not in kwargs:
            kwargs['time'] = time.time()
        self._write(kwargs)

    def close(self):
        """Close the log file; return None."""
        self.f_log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
