"""Saving and restoring weights and whole training states, atomically and without pickle.

TF counterpart: train.py's `save` (joblib.dump of the parameters). Weights go to safetensors, which
cannot carry code; a training state is one safetensors file whose metadata holds the JSON of the
counters, RNG states and log, so a crash mid-write never leaves a torn pair of files.

Intentional difference (speed only): a save copies the tensors to host memory at once and, given a
StateWriter, writes the file in a background thread while training goes on; the next save waits for it.
Each write stays atomic (temporary file, fsync, rename), so a crash at any moment leaves the last
complete file, and a write that fails (a full disk) is one OSError naming the file, its temporary removed.

A training state holds every process's random states (each rank of a torchrun job draws its own dropout masks) and
what identifies its run (the task, the model's sizes, the recipe). Files are read as untrusted (docs/trust.md): by
read_safetensors (a regular file, every size checked against the bytes on disk before anything is built, the JSON
with a depth limit), then checked whole (load_training_state: all or nothing; load_params likewise); only
untrusted.BadFile escapes, one line naming the file, and nothing is restored from a file that is refused.
"""
import json
import math
import os
import random
import threading
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

import untrusted
from opt import moment_dtype
from sharding import copy_whole, placed_like
from untrusted import BadFile, show
from utils import write_failure

STATE_FORMAT = 'gpt-train-state-v2'


def make_parent(path):
    """Create path's folder when missing; return path."""
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    return path


def fsync_replace(tmp, path):
    """Flush tmp to disk and rename it onto path, so path always holds a whole file; return path."""
    with open(tmp, 'rb') as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    folder = os.path.dirname(os.path.abspath(path))
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)  # make the rename itself durable
    finally:
        os.close(fd)
    return path


def atomic_write(path, write):
    """Call write(tmp_path), then move tmp onto path atomically; return path. The temporary is removed on failure, and
    a failed write (OSError or safetensors' error) is one OSError naming path."""
    make_parent(path)
    fd, tmp = untrusted.create_temporary(path)  # a new file: a link planted at a temporary's name is never followed
    os.close(fd)
    try:
        write(tmp)
        return fsync_replace(tmp, path)
    except (OSError, SafetensorError) as err:
        remove_quietly(tmp)
        raise write_failure(path, err) from None
    except BaseException:
        remove_quietly(tmp)
        raise


def remove_quietly(path):
    """Remove path if it exists; a failure to remove is ignored (the caller reports the first error)."""
    try:
        os.remove(path)
    except OSError:
        pass


def write_json(path, obj, indent=1, end=''):
    """Write obj as JSON (then end) to path atomically; return path."""
    def write(tmp):
        with open(tmp, 'w', encoding='utf-8') as f:
            json.dump(obj, f, indent=indent)
            f.write(end)
    return atomic_write(path, write)


class StateWriter:
    """Writes files in a background thread, one at a time; the training thread only waits for a previous write."""

    def __init__(self):
        self._thread = None
        self._error = None

    def submit(self, write, *arguments):
        """Wait for the previous write (raising its error), then run write(*arguments) in the background."""
        self.wait()
        self._thread = threading.Thread(target=self._run, args=(write, arguments), name='state-writer')
        self._thread.start()

    def _run(self, write, arguments):
        try:
            write(*arguments)
        except BaseException as err:  # handed over to the training thread by wait()
            self._error = err

    def check(self):
        """Raise the error of a background write that has failed, without waiting for one under way."""
        if self._thread is not None and not self._thread.is_alive():
            self.wait()

    def wait(self):
        """Return once the write under way is on disk; raise its error if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err


def host_copy(tensor):
    """Return a contiguous copy of tensor in host memory, which later updates of the original cannot change."""
    return tensor.detach().to('cpu', copy=True).contiguous()


def unique_tensors(state, prefix=''):
    """Return {prefix + name: tensor} of a state dict with each storage once, under its first name (tied weights)."""
    seen, out = set(), {}
    for name, t in state.items():
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            out[prefix + name] = t
    return out


def write_tensors(path, tensors, metadata=None, writer=None):
    """Write tensors (already host copies) to path atomically, now or through writer in the background; return path."""
    def write(target):
        atomic_write(target, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    if writer is None:
        write(path)
    else:
        make_parent(path)
        writer.submit(write, path)  # the path named, so that a writer's submissions say what they write
    return path


def host_weights(model):
    """Return {name: host copy} of the model's weights, each tied storage once under its first name."""
    return {name: host_copy(t) for name, t in unique_tensors(model.state_dict()).items()}


def save_params(model, path, writer=None):
    """Write the model's weights to path (safetensors, tied weights once) atomically; return their host copies."""
    tensors = host_weights(model)
    write_tensors(path, tensors, writer=writer)
    return tensors


def tied_names(model):
    """Return {name: [every name of the same tensor]} of the model's parameters and buffers (tied weights: one
    parameter under several names), told by identity, which holds for a sharded model's too."""
    groups = {}
    for name, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        groups.setdefault(id(t), []).append(name)
    return {name: group for group in groups.values() for name in group}


def dtype_name(dtype):
    """Return a torch dtype's short name ('float32')."""
    return str(dtype).replace('torch.', '')


def check_weights(model, saved, source):
    """Return {name: saved tensor} for every tensor of model's state dict after checking that saved fits it exactly:
    every weight (a tied one under any of its names), no other name, each shape, each dtype the model's own (no
    silent cast of int, bool or float64 data), every value finite; a one-line BadFile naming source otherwise.
    Nothing is copied."""
    state = model.state_dict()
    ties = tied_names(model)
    # a tied weight may be stored under any of its names (save_params keeps the first, older files another)
    found = {name: next((saved[n] for n in ties.get(name, [name]) if n in saved), None) for name in state}
    missing = [name for name, t in found.items() if t is None]
    unexpected = sorted(set(saved) - set(state))
    if missing or unexpected:
        raise BadFile(f'{source} does not fit this model: '
                      + (f'no {missing[0]}' if missing else f'unexpected {unexpected[0][:120]}'), source)
    for name, t in state.items():  # every shape checked before anything is copied
        s = found[name]
        if not isinstance(s, torch.Tensor) or tuple(s.shape) != tuple(t.shape):
            raise BadFile(f'{source} does not fit this model: {name} has shape {tuple(s.shape)}, the model '
                          f'{tuple(t.shape)}', source)
        if s.dtype != t.dtype:
            raise BadFile(f'{source}: {name} has dtype {dtype_name(s.dtype)}, the model holds '
                          f'{dtype_name(t.dtype)}: refused rather than converted', source)
        if s.is_floating_point() and not bool(torch.isfinite(s).all()):
            raise BadFile(f'{source}: {name} holds a value that is not finite (NaN or infinity)', source)
    return found


def load_weights(model, saved, source):
    """Copy the tensors {name: tensor} into model (strictly, as check_weights checks: a BadFile naming source, and
    nothing copied, when they do not fit); return model."""
    found = check_weights(model, saved, source)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            copy_whole(t, found[name])  # a sharded model's tensor: this rank's rows
    return model


SAFETENSORS_MAX_HEADER = 100_000_000  # the safetensors library's own bound on a file's JSON header
SAFETENSORS_ALL = {'F64': torch.float64, 'F32': torch.float32, 'F16': torch.float16, 'BF16': torch.bfloat16,
                   'I64': torch.int64, 'I32': torch.int32, 'I16': torch.int16, 'I8': torch.int8, 'U8': torch.uint8,
                   'BOOL': torch.bool}  # what the states and weights of this project may hold


@contextmanager
def open_safetensors(path, folder=None, what='a safetensors file', advice='', missing=None):
    """Yield safetensors' own reader (safe_open, framework 'pt') on the file at path, after checking what the library
    would trust: a regular file (a symlink only inside folder, default its own; the library would hang on a FIFO)
    whose 8-byte header length fits in the file and the library's bound. The library then checks the header (JSON,
    every tensor's dtype, shape and byte range within the file, no overlap or gap). A file that is not one is a
    BadFile 'path is not <what> (<reason>)<advice>'."""
    def damaged(reason):
        return BadFile(f'{path} is not {what} ({reason}){advice}', path)

    with untrusted.open_regular(path, folder, missing=missing) as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
    if len(head) < 8:
        raise damaged(f'{size} bytes, too short for a safetensors header')
    n_header = int.from_bytes(head, 'little')
    if n_header > min(size - 8, SAFETENSORS_MAX_HEADER):
        raise damaged(f'its header claims {n_header} bytes, the file holds {size - 8} after the size field: '
                      f'truncated, or another kind of file')
    try:
        with safe_open(path, framework='pt') as reader:
            yield reader
    except SafetensorError as err:
        raise damaged(untrusted.one_line(err)[:200]) from None


def safetensors_dtypes(reader, path, allowed, what=None):
    """Raise a BadFile naming path (and what it is not, when given) unless every tensor of an open safetensors file
    has a dtype in allowed (codes such as 'F32'); checked from the header, before any tensor is read."""
    for name in reader.keys():
        dtype = reader.get_slice(name).get_dtype()
        if dtype not in allowed:
            reason = f'tensor {show(name, 80)} holds {dtype} values, not {" or ".join(allowed)}'
            raise BadFile(f'{path}: {reason}: refused rather than converted' if what is None else
                          f'{path} is not {what} ({reason})', path)


def read_safetensors(path, what='a safetensors file', advice='', missing=None, allowed=tuple(SAFETENSORS_ALL)):
    """Return (metadata {str: str}, {name: tensor}) of the safetensors file at path, read by open_safetensors (every
    size checked against the file before a tensor is built); a tensor of a dtype not in allowed is refused."""
    with open_safetensors(path, what=what, advice=advice, missing=missing) as reader:
        safetensors_dtypes(reader, path, allowed, what)
        return reader.metadata() or {}, {name: reader.get_tensor(name) for name in reader.keys()}


def safetensors_metadata(path, what='a safetensors file', advice='', missing=None):
    """Return the metadata {str: str} of the safetensors file at path, without reading its tensors."""
    with open_safetensors(path, what=what, advice=advice, missing=missing) as reader:
        return reader.metadata() or {}


def load_params(model, path):
    """Load weights written by save_params into model (strictly, as check_weights checks); return model. Only a
    BadFile (a MissingFile for a missing file) escapes, one line naming path; nothing is copied unless all fits."""
    with untrusted.reading(path):
        _, saved = read_safetensors(path, 'a safetensors file of weights', '; only safetensors are loaded',
                                    missing='no saved weights there')
        return load_weights(model, saved, path)


def check_writable(folder):
    """Create folder if needed and raise a one-line PermissionError/OSError when files cannot be written there."""
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f'.write_test{os.getpid()}')
        with open(probe, 'w') as f:
            f.write('ok')
        os.remove(probe)
    except OSError as err:
        raise OSError(f'cannot write to {folder} ({err.strerror or err}): choose a writable folder') from None


def rng_state(device=None):
    """Return this process's python, numpy (global) and torch RNG states, and its CUDA device's: (JSON-able dict,
    {name: tensor})."""
    np_state = np.random.get_state()
    meta = dict(python=[list(x) if isinstance(x, tuple) else x for x in random.getstate()],
                numpy=[np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])])
    tensors = {'torch': torch.get_rng_state()}
    if device is not None and torch.device(device).type == 'cuda':
        tensors['cuda'] = torch.cuda.get_rng_state(device)
    return meta, tensors


def _apply_rng_state(python, numpy, tensors, device):
    """Set the checked random states: python's, numpy's global, torch's and, with a CUDA device, its own."""
    random.setstate(python)
    np.random.set_state(numpy)
    torch.set_rng_state(tensors['torch'].clone())
    if 'cuda' in tensors and device is not None and torch.device(device).type == 'cuda':
        torch.cuda.set_rng_state(tensors['cuda'].clone(), device)


def rank_record(progress, rank_keys=(), device=None):
    """Return what one process adds to a training state: its RNG states and its own counters (progress[rank_keys])."""
    meta, tensors = rng_state(device)
    return dict(rng=meta, progress={k: progress[k] for k in rank_keys}, tensors=tensors)


def optimizer_tensors(opt):
    """Return (JSON-able per-parameter steps, {name: moment tensor}) of an OpenAIAdam's state."""
    steps, tensors = {}, {}
    params = [p for g in opt.param_groups for p in g['params']]
    for i, p in enumerate(params):
        state = opt.state.get(p)
        if state:
            steps[str(i)] = int(state['step'])
            tensors[f'opt/{i}/m'] = state['m']
            tensors[f'opt/{i}/v'] = state['v']
    return steps, tensors


def save_training_state(path, model, opt, progress, writer=None, ranks=None, identity=None, opt_state=None):
    """Write model, optimizer, every rank's RNG states and counters (ranks: rank_record of each rank in rank order;
    default this process's) and the JSON-able progress and identity dicts to one file atomically; return path.
    opt_state: the optimizer's (steps, whole moments) as optimizer_tensors gives them, when gathered from shards.

    Everything is copied at once; with a StateWriter the file is written in the background.
    """
    ranks = [rank_record(progress)] if ranks is None else ranks
    steps, tensors = optimizer_tensors(opt) if opt_state is None else (opt_state[0], dict(opt_state[1]))
    for r, record in enumerate(ranks):
        tensors.update({f'rng/{r}/{name}': t for name, t in record['tensors'].items()})
    # the tied LM decoder shares embed.weight: each storage is written once, under its first name
    tensors.update(unique_tensors(model.state_dict(), prefix='model/'))
    meta = dict(format=STATE_FORMAT, identity=identity or {}, progress=progress, opt_steps=steps,
                ranks=[dict(rng=record['rng'], progress=record['progress']) for record in ranks])
    tensors = {k: host_copy(v) for k, v in tensors.items()}
    return write_tensors(path, tensors, metadata={'state': json.dumps(meta)}, writer=writer)


STATE_WHAT = 'a safetensors training state'


def state_from_metadata(metadata, path):
    """Return the state dict in a training state's safetensors metadata, or raise a one-line BadFile naming path when
    it is not one of this version: its JSON read with a depth limit (NaN allowed: a log may hold a NaN loss), its
    format checked."""
    text = metadata.get('state')
    if not isinstance(text, str):
        raise BadFile(f'{path} is not a training state of this port (a safetensors file without its state)', path)
    meta = untrusted.parse_json(text, path, constants=True)
    found = meta.get('format') if isinstance(meta, dict) else None
    if found != STATE_FORMAT:
        if isinstance(found, str) and found.startswith(('gpt1-train-state-', 'gpt-train-state-')):
            raise BadFile(f'{path} is a training state of another version of this port ({found[:120]}; this version '
                          f'resumes {STATE_FORMAT}): finish that run with its version, or start afresh', path)
        raise BadFile(f'{path} is not a training state of this port (format {show(found)})', path)
    return meta


def read_training_state(path):
    """Return (metadata dict, {name: tensor}) of a training state file, or raise a one-line BadFile saying why it is
    not one this version can resume (a MissingFile when there is none). Only the file's kind is checked here (a
    safetensors file, read as read_safetensors reads it; its metadata JSON with a depth limit; its format);
    load_training_state checks the rest before restoring anything."""
    with untrusted.reading(path):
        metadata, tensors = read_safetensors(path, STATE_WHAT, ': truncated or damaged; delete it to start afresh',
                                             missing='nothing to resume (run without --resume to start afresh)')
        return state_from_metadata(metadata, path), tensors


def read_state_metadata(path):
    """Return the state dict (identity, progress, ...) of the training state at path, from its safetensors header
    only (no tensor read), checked as read_training_state checks it; a BadFile (MissingFile) otherwise."""
    with untrusted.reading(path):
        meta = state_from_metadata(safetensors_metadata(path, what=STATE_WHAT), path)
        if not isinstance(meta.get('progress'), dict):
            raise BadFile(f'{path} is not a training state of this port (no progress record)', path)
        return meta


def identity_mismatch(saved, identity):
    """Return the first 'key: saved value vs this value' where two run identities differ, or None."""
    for key in sorted(set(saved) | set(identity)):
        if saved.get(key) != identity.get(key):
            return key, saved.get(key), identity.get(key)
    return None


class Refused(ValueError):
    """What is wrong with a part of a training state (the caller names the file)."""


def _refuse(where, what):
    raise Refused(f'{where} {what}')


def _check_keys(where, value, keys):
    """Check that value is a dict with exactly the keys keys."""
    if not isinstance(value, dict):
        _refuse(where, f'must be an object, not {show(value)}')
    if set(value) != set(keys):
        extra, lacking = sorted(set(value) - set(keys)), sorted(set(keys) - set(value))
        _refuse(where, f'lacks {lacking[0]!r}' if lacking else f'holds an unexpected {show(extra[0])}')


# the largest counter or optimizer step: far more updates than any run makes, exact as a float, and a seed derived
# from it (Run.restore: seed + 7919 * (n_updates + 1)) still fits torch's 64 bits
MAX_STEP = 1 << 40


def _check_count(where, value, high=MAX_STEP):
    """Check that value is an int (not a bool) in [0, high]."""
    if not untrusted.is_int(value) or not 0 <= value <= high:
        _refuse(where, f'must be an integer in [0, {high}], not {show(value)}')


def _check_amount(where, value):
    """Check that value is a finite non-negative number (not a bool; an int at most MAX_STEP)."""
    if not (0 <= value <= MAX_STEP if untrusted.is_int(value) else isinstance(value, float) and 0 <= value < math.inf):
        _refuse(where, f'must be a finite non-negative number, not {show(value)}')


def _check_records(where, value):
    """Check that value is a list of objects (log records, samples)."""
    if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
        _refuse(where, f'must be a list of objects, not {show(value)}')


def _check_order(where, value):
    """Check that value is None or an epoch's order: a permutation of 0..len-1."""
    if value is None:
        return
    if not isinstance(value, list) or not all(untrusted.is_int(i) for i in value) \
            or sorted(value) != list(range(len(value))):
        _refuse(where, f'must be null or an order of the training examples (each index once), not {show(value)}')


# the counters train.py and pretrain.py keep in a training state's progress, each with its check
PROGRESS_CHECKS = dict(
    n_updates=_check_count, epoch=_check_count, batch=_check_count, seen=_check_count, tokens=_check_count,
    train_tokens=_check_count, best=_check_amount, train_time=_check_amount, train_loss_sum=_check_amount,
    order=_check_order, log=_check_records, samples=_check_records)


def _check_progress_value(where, key, value, template):
    """Check one progress counter: by its known check, else like the template's value, else as a JSON value
    whose numbers are finite and non-negative."""
    check = PROGRESS_CHECKS.get(key)
    like = None if template is None else template.get(key)
    if check is None:
        if untrusted.is_int(like):
            check = _check_count
        elif isinstance(like, float) or untrusted.is_int(value) or isinstance(value, (float, bool)):
            check = _check_amount
        elif isinstance(like, list) and not isinstance(value, list):
            _refuse(where, f'must be a list, not {show(value)}')
    if check is not None:
        check(where, value)


def check_progress(progress, template=None, rank_keys=None, ranks=()):
    """Check a training state's progress (and each rank's own counters): with template (a fresh progress of the
    script), exactly its keys; every known counter its type and range; ranks' counters the same keys (rank_keys when
    given), each a finite non-negative number. A Refused says what is wrong."""
    if not isinstance(progress, dict):
        _refuse('progress', f'must be an object, not {show(progress)}')
    if template is not None:
        _check_keys('progress', progress, template)
    for key, value in progress.items():
        _check_progress_value(f'progress.{key}', key, value, template)
    keys = None if rank_keys is None else list(rank_keys)
    for r, record in enumerate(ranks):
        own = record['progress']
        if not isinstance(own, dict):
            _refuse(f'ranks[{r}].progress', f'must be an object, not {show(own)}')
        keys = list(own) if keys is None else keys
        _check_keys(f'ranks[{r}].progress', own, keys)
        for key, value in own.items():
            if template is not None and key not in template:
                _refuse(f'ranks[{r}].progress', f'holds {show(key)}, not a counter of this run')
            _check_progress_value(f'ranks[{r}].progress.{key}', key, value, template)
            _check_amount(f'ranks[{r}].progress.{key}', value)  # summed when resumed by another number of ranks


MT_WORDS = 624  # the Mersenne twister's state: 624 32-bit words and a position


def _check_words(where, words, n):
    if not isinstance(words, list) or len(words) != n or not all(type(w) is int for w in words) \
            or min(words) < 0 or max(words) >= 1 << 32:  # type(w) is int: no bool
        _refuse(where, f'must be a list of {n} unsigned 32-bit integers')


def python_rng_state(where, value):
    """Return python random's state (for random.setstate) from its JSON form, checked."""
    if not isinstance(value, list) or len(value) != 3:
        _refuse(where, f'must be [version, 625 integers, gauss], not {show(value)}')
    version, internal, gauss = value
    if not untrusted.is_int(version) or version != 3:
        _refuse(f'{where}[0]', f'(the version) must be 3, not {show(version)}')
    if not isinstance(internal, list) or len(internal) != MT_WORDS + 1:
        _refuse(f'{where}[1]', f'must be a list of {MT_WORDS + 1} integers')
    _check_words(f'{where}[1]', internal[:MT_WORDS], MT_WORDS)
    _check_count(f'{where}[1][{MT_WORDS}]', internal[MT_WORDS], MT_WORDS)
    if gauss is not None and (not isinstance(gauss, float) or not math.isfinite(gauss)):
        _refuse(f'{where}[2]', f'must be null or a finite float, not {show(gauss)}')
    state = (version, tuple(internal), gauss)
    try:
        random.Random().setstate(state)  # on a generator of its own: the global one is untouched
    except (ValueError, TypeError, OverflowError) as err:
        _refuse(where, f'is not a state of python random ({untrusted.describe(err)})')
    return state


def numpy_rng_state(where, value):
    """Return numpy's global generator state (for np.random.set_state) from its JSON form, checked."""
    if not isinstance(value, list) or len(value) != 5:
        _refuse(where, f"must be ['MT19937', 624 integers, pos, has_gauss, cached_gaussian], not {show(value)}")
    name, keys, pos, has_gauss, cached = value
    if name != 'MT19937':
        _refuse(f'{where}[0]', f"must be 'MT19937', not {show(name)}")
    _check_words(f'{where}[1]', keys, MT_WORDS)
    _check_count(f'{where}[2]', pos, MT_WORDS)
    if not untrusted.is_int(has_gauss) or has_gauss not in (0, 1):
        _refuse(f'{where}[3]', f'(has_gauss) must be 0 or 1, not {show(has_gauss)}')
    if not isinstance(cached, float) or not math.isfinite(cached):
        _refuse(f'{where}[4]', f'(the cached gaussian) must be a finite float, not {show(cached)}')
    state = (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached)
    try:
        np.random.RandomState().set_state(state)  # on a generator of its own: the global one is untouched
    except (ValueError, TypeError) as err:
        _refuse(where, f'is not a state of numpy random ({untrusted.describe(err)})')
    return state


def _check_generator_state(where, tensor, device):
    """Check a torch generator state tensor (uint8, 1-D, the length and content that generator accepts), on a
    generator of its own."""
    like = torch.get_rng_state() if device is None else torch.cuda.get_rng_state(device)
    if tensor.dtype != torch.uint8 or tensor.dim() != 1 or tensor.numel() != like.numel():
        _refuse(where, f'must be a uint8 vector of {like.numel()} bytes, not {dtype_name(tensor.dtype)} of shape '
                       f'{tuple(tensor.shape)}')
    try:
        torch.Generator(device='cpu' if device is None else device).set_state(tensor.clone())
    except (RuntimeError, ValueError, TypeError) as err:
        _refuse(where, f'is not a state of the torch generator ({untrusted.describe(err)})')


def check_rank(r, record, own, device):
    """Return (python state, numpy state, own) of rank r's random states (own: its tensors {'torch': ..., 'cuda':
    ...}), checked."""
    _check_keys(f'ranks[{r}]', record, ('rng', 'progress'))
    _check_keys(f'ranks[{r}].rng', record['rng'], ('python', 'numpy'))
    python = python_rng_state(f'ranks[{r}].rng.python', record['rng']['python'])
    numpy = numpy_rng_state(f'ranks[{r}].rng.numpy', record['rng']['numpy'])
    if 'torch' not in own or set(own) - {'torch', 'cuda'}:
        _refuse(f'rank {r}', f"must have the random states torch (and cuda), not {show(sorted(own))}")
    _check_generator_state(f'rng/{r}/torch', own['torch'], None)
    if 'cuda' in own:
        t = own['cuda']
        if t.dtype != torch.uint8 or t.dim() != 1 or t.numel() > 1024:
            _refuse(f'rng/{r}/cuda', f'must be a uint8 vector, not {dtype_name(t.dtype)} of shape {tuple(t.shape)}')
        if device is not None and torch.device(device).type == 'cuda':
            _check_generator_state(f'rng/{r}/cuda', t, device)
    return python, numpy, own


def check_optimizer_tensors(opt, steps, tensors, source):
    """Return {parameter index: (step, m, v)} of a saved optimizer state after checking that it fits opt's
    parameters: steps an object {index: int step in [1, MAX_STEP]}, exactly the moments opt/{i}/m and opt/{i}/v of
    those indices, each the parameter's shape and moment dtype and finite (v non-negative); else a one-line
    BadFile naming source."""
    params = [p for g in opt.param_groups for p in g['params']]
    if not isinstance(steps, dict):
        raise BadFile(f'{source}: opt_steps must be an object, not {show(steps)}', source)
    out = {}
    for key, step in steps.items():
        if not key.isdigit() or key != str(int(key)):
            raise BadFile(f'{source}: opt_steps has the key {show(key)}, not a parameter index', source)
        i = int(key)
        if i >= len(params):
            raise BadFile(f'{source} does not fit this model: its optimizer has state for parameter {i}, the '
                          f'model has {len(params)}', source)
        if not untrusted.is_int(step) or not 1 <= step <= MAX_STEP:
            raise BadFile(f'{source}: the optimizer step of parameter {i} must be an integer in [1, {MAX_STEP}], '
                          f'not {show(step)}', source)
        moments = []
        for moment in ('m', 'v'):
            t = tensors.get(f'opt/{key}/{moment}')
            if t is None or tuple(t.shape) != tuple(params[i].shape):
                raise BadFile(f'{source} does not fit this model: optimizer moment {moment} of parameter {i} has '
                              f'shape {None if t is None else tuple(t.shape)}, the parameter '
                              f'{tuple(params[i].shape)}', source)
            if t.dtype != moment_dtype(params[i]):
                raise BadFile(f'{source}: optimizer moment {moment} of parameter {i} has dtype '
                              f'{dtype_name(t.dtype)}, not {dtype_name(moment_dtype(params[i]))}', source)
            if not bool(torch.isfinite(t).all()) or (moment == 'v' and bool((t < 0).any())):
                raise BadFile(f'{source}: optimizer moment {moment} of parameter {i} holds a value that is not '
                              f'{"finite" if moment == "m" else "finite and non-negative"}', source)
            moments.append(t)
        out[i] = (step, *moments)
    stray = sorted(k for k in tensors if k.startswith('opt/') and
                   (len(k.split('/')) != 3 or k.split('/')[1] not in steps or k.split('/')[2] not in ('m', 'v')))
    if stray:
        raise BadFile(f'{source}: holds the optimizer tensor {show(stray[0])} without a step in opt_steps', source)
    return out


def set_optimizer_tensors(opt, checked):
    """Restore the optimizer state checked by check_optimizer_tensors into opt (copies on each parameter's
    device)."""
    params = [p for g in opt.param_groups for p in g['params']]
    for i, (step, m, v) in checked.items():
        p = params[i]
        opt.state[p] = {'step': step, 'm': placed_like(p, m), 'v': placed_like(p, v)}


STATE_KEYS = ('format', 'identity', 'progress', 'opt_steps', 'ranks')


@dataclass(frozen=True)
class Expected:
    """What a resuming process expects of a training state: the run's identity (None: any), a fresh progress whose
    counters the saved one must hold exactly (None: any), the counters each rank keeps (rank_keys), this process's
    rank among world_size, and the device its random states go to."""
    identity: dict = None
    template: dict = None
    rank_keys: tuple = None
    rank: int = 0
    world_size: int = 1
    device: torch.device = None


def check_training_state(path, meta, tensors, model, opt, expected=Expected()):
    """Return what load_training_state restores, everything checked, nothing changed: (model tensors by the
    model's names, optimizer state, this rank's (python, numpy, torch tensors) random states, progress, number of
    ranks saved). A one-line BadFile naming path says what does not fit."""
    identity, rank, world_size = expected.identity, expected.rank, expected.world_size
    try:
        _check_keys('the state', meta, STATE_KEYS)
        if not isinstance(meta['identity'], dict):
            _refuse('identity', f'must be an object, not {show(meta["identity"])}')
    except Refused as err:
        raise BadFile(f'{path}: {err}: damaged; delete it to start afresh', path) from None
    if identity is not None:
        differs = identity_mismatch(meta['identity'], identity)
        if differs:
            key, saved, now = differs
            raise BadFile(f'{path} was saved by another run ({key} {show(saved)}; this run has {show(now)}): '
                          f'resume it with its own arguments, or give this run other output folders', path)
    ranks = meta['ranks']
    try:
        if not isinstance(ranks, list) or not ranks or not all(isinstance(r, dict) for r in ranks):
            _refuse('ranks', f'must be a non-empty list of objects, not {show(ranks)}')
        if len(ranks) > 1 << 16:
            _refuse('ranks', f'lists {len(ranks)} processes, more than any run has')
        for r, record in enumerate(ranks):
            _check_keys(f'ranks[{r}]', record, ('rng', 'progress'))
        check_progress(meta['progress'], expected.template, expected.rank_keys, ranks)
        own = rank if len(ranks) == world_size else 0
        by_rank = {str(r): {} for r in range(len(ranks))}  # 'rng/{r}/{name}' -> by_rank[str(r)][name]
        for key, t in tensors.items():
            parts = key.split('/')
            if parts[0] == 'rng':
                if len(parts) != 3 or parts[1] not in by_rank:
                    _refuse('the state', f'holds the random state {show(key)} of no rank it lists')
                by_rank[parts[1]][parts[2]] = t
        states = [check_rank(r, record, by_rank[str(r)], expected.device) for r, record in enumerate(ranks)]
        unknown = sorted(k for k in tensors if not k.startswith(('model/', 'opt/', 'rng/')))
        if unknown:
            _refuse('the state', f'holds the tensor {show(unknown[0])}, which no training state holds')
    except Refused as err:
        raise BadFile(f'{path}: {err}: damaged; delete it to start afresh', path) from None
    # the model's tensors, checked as strictly as loading weights: every one, each shape and dtype, no other name
    weights = check_weights(model, {k[len('model/'):]: t for k, t in tensors.items() if k.startswith('model/')},
                            path)
    optimizer = check_optimizer_tensors(opt, meta['opt_steps'], tensors, path)
    progress = dict(meta['progress'])
    if len(ranks) == world_size:
        progress.update(ranks[rank]['progress'])
    else:  # the counters' sums are kept: all on the first rank
        for key in ranks[0]['progress']:
            total = sum(r['progress'][key] for r in ranks)
            if not math.isfinite(total) or total > (MAX_STEP if untrusted.is_int(total) else math.inf):
                raise BadFile(f'{path}: the ranks\' {key} add up to {show(total)}, out of range: damaged; delete it '
                              f'to start afresh', path)
            progress[key] = total if rank == 0 else 0 * ranks[0]['progress'][key]
    return weights, optimizer, states[own], progress, len(ranks)


def load_training_state(path, model, opt, expected=Expected()):
    """Restore model, optimizer, and this rank's RNG states and counters from path; return (progress, the number of
    processes that saved it).

    All or nothing: the whole file is checked first (check_training_state: its format, identity, every rank's
    random states and counters, the progress, the optimizer's steps and moments, every model tensor's name, shape
    and dtype; with template, a fresh progress of the script, exactly its counters; with rank_keys, each rank's
    own counters), and only then is anything restored; a file that does not fit is one BadFile naming path (the
    only error that escapes) and the model, optimizer and every random generator (python, numpy, torch) are as
    they were. expected (Expected) says what the resuming process expects of the file. Resumed by another number of processes, each rank takes the first rank's RNG states seeded afresh by
    the caller, and the first rank the sum of the saved counters."""
    with untrusted.reading(path):
        meta, tensors = read_training_state(path)
        weights, optimizer, (python, numpy, rng), progress, n_saved = check_training_state(
            path, meta, tensors, model, opt, expected)
    # nothing below can fail on what the file holds: each piece was checked, the random states on generators of
    # their own
    with torch.no_grad():
        for name, t in model.state_dict().items():
            copy_whole(t, weights[name])  # a sharded model's tensor: this rank's rows
    set_optimizer_tensors(opt, optimizer)
    _apply_rng_state(python, numpy, rng, expected.device)
    return progress, n_saved
