"""Data helpers: dataset encoding, minibatch iteration, JSON-lines logging (TF: utils.py, numpy-only parts).

The original's TensorFlow-only helpers (shape_list, find_trainable_variables, convert_gradient_to_tensor,
assign_to_gpu, average_grads, the initialisers) have no counterpart here.
"""
import json
import math
import os
import re
import sys
import time

import numpy as np
from tqdm import tqdm


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
    bar = tqdm(range(0, n, n_batch), total=math.ceil(n / n_batch), file=sys.stderr, ncols=80, leave=False,
               disable=not verbose)
    for i in bar:
        if len(datas) == 1:
            yield datas[0][i:i + n_batch]
        else:
            yield tuple(d[i:i + n_batch] for d in datas)
    return  # the original's `raise StopIteration` is a RuntimeError inside a generator since Python 3.7


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


def task_dirs(specs, flag, choices=None):
    """Return [(task, data_dir)] of TASK=DATA_DIR command-line values of flag, each task once (and one of choices,
    when given), or raise a one-line ValueError naming the value."""
    tasks = []
    for spec in specs:
        task, sep, data_dir = spec.partition('=')
        if not sep or not task or not data_dir or (choices is not None and task not in choices):
            one_of = '' if choices is None else f' with TASK one of {", ".join(choices)}'
            raise ValueError(f'{flag} {spec!r}: give TASK=DATA_DIR{one_of}')
        if task in dict(tasks):
            raise ValueError(f'{flag} {task} is given twice')
        tasks.append((task, data_dir))
    return tasks
