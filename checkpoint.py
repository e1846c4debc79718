"""Saving and restoring weights and whole training states, atomically and without pickle.

TF counterpart: train.py's `save` (joblib.dump of the parameters). Weights go to safetensors, which
cannot carry code; a training state is one safetensors file whose metadata holds the JSON of the
counters, RNG states and log, so a crash mid-write never leaves a torn pair of files.

Intentional difference (speed only): a save copies the tensors to host memory at once and, given a
StateWriter, writes the file in a background thread while training goes on; the next save waits for it.
Each write stays atomic (temporary file, fsync, rename), so a crash at any moment leaves the last
complete file, and a write that fails (a full disk) is one OSError naming the file, its temporary removed.

A training state holds every process's random states (each rank of a torchrun job draws its own dropout masks) and
what identifies its run (the task, the model's sizes, the recipe), checked before anything is restored.
"""
import json
import os
import random
import threading

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

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
    tmp = f'{path}.tmp{os.getpid()}'
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

    def submit(self, write, *args):
        """Wait for the previous write (raising its error), then run write(*args) in the background."""
        self.wait()
        self._thread = threading.Thread(target=self._run, args=(write, args), name='state-writer')
        self._thread.start()

    def _run(self, write, args):
        try:
            write(*args)
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
    def write():
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    if writer is None:
        write()
    else:
        make_parent(path)
        writer.submit(write)
    return path


def host_weights(model):
    """Return {name: host copy} of the model's weights, each tied storage once under its first name."""
    return {name: host_copy(t) for name, t in unique_tensors(model.state_dict()).items()}


def save_params(model, path, writer=None):
    """Write the model's weights to path (safetensors, tied weights once) atomically; return their host copies."""
    tensors = host_weights(model)
    write_tensors(path, tensors, writer=writer)
    return tensors


def tied_names(state):
    """Return {name: [every name sharing its storage]} for a state dict."""
    groups = {}
    for name, t in state.items():
        groups.setdefault(t.data_ptr(), []).append(name)
    return {name: group for group in groups.values() for name in group}


def load_weights(model, saved, source):
    """Copy the tensors {name: tensor} into model (strictly: every weight, each shape; source names them in
    errors); return model."""
    state = model.state_dict()
    ties = tied_names(state)
    # a tied weight may be stored under any of its names (save_params keeps the first, older files another)
    found = {name: next((saved[n] for n in ties[name] if n in saved), None) for name in state}
    missing = [name for name, t in found.items() if t is None]
    unexpected = sorted(set(saved) - set(state))
    if missing or unexpected:
        raise ValueError(f'{source} does not fit this model: '
                         + (f'no {missing[0]}' if missing else f'unexpected {unexpected[0]}'))
    for name, t in state.items():  # every shape checked before anything is copied
        if tuple(found[name].shape) != tuple(t.shape):
            raise ValueError(f'{source} does not fit this model: {name} has shape {tuple(found[name].shape)}, '
                             f'the model {tuple(t.shape)}')
    with torch.no_grad():
        for name, t in state.items():
            t.copy_(found[name])
    return model


def load_params(model, path):
    """Load weights written by save_params into model (strictly: every weight, each shape); return model."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path} is missing: no saved weights there')
    try:
        with safe_open(path, framework='pt') as f:
            saved = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as err:
        raise ValueError(f'{path} is not a safetensors file of weights ({err}); only safetensors are loaded') from None
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


def set_rng_state(meta, tensors, device=None):
    """Restore the RNG states returned by rng_state (the CUDA one onto device)."""
    version, internal, gauss = meta['python']
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = meta['numpy']
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors['torch'])
    if 'cuda' in tensors and device is not None and torch.device(device).type == 'cuda':
        torch.cuda.set_rng_state(tensors['cuda'], device)


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


def set_optimizer_tensors(opt, steps, tensors):
    """Restore the state saved by optimizer_tensors into opt (built over the same parameters)."""
    params = [p for g in opt.param_groups for p in g['params']]
    for key, step in steps.items():
        p = params[int(key)]
        opt.state[p] = {'step': step, 'm': tensors[f'opt/{key}/m'].to(p.device),
                        'v': tensors[f'opt/{key}/v'].to(p.device)}


def save_training_state(path, model, opt, progress, writer=None, ranks=None, identity=None):
    """Write model, optimizer, every rank's RNG states and counters (ranks: rank_record of each rank in rank order;
    default this process's) and the JSON-able progress and identity dicts to one file atomically; return path.

    Everything is copied at once; with a StateWriter the file is written in the background.
    """
    ranks = [rank_record(progress)] if ranks is None else ranks
    steps, tensors = optimizer_tensors(opt)
    for r, record in enumerate(ranks):
        tensors.update({f'rng/{r}/{name}': t for name, t in record['tensors'].items()})
    # the tied LM decoder shares embed.weight: each storage is written once, under its first name
    tensors.update(unique_tensors(model.state_dict(), prefix='model/'))
    meta = dict(format=STATE_FORMAT, identity=identity or {}, progress=progress, opt_steps=steps,
                ranks=[dict(rng=record['rng'], progress=record['progress']) for record in ranks])
    tensors = {k: host_copy(v) for k, v in tensors.items()}
    return write_tensors(path, tensors, metadata={'state': json.dumps(meta)}, writer=writer)


def read_training_state(path):
    """Return (metadata dict, {name: tensor}) of a training state file, or raise a one-line error saying why it is
    not one this version can resume."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path} is missing: nothing to resume (run without --resume to start afresh)')
    try:
        with safe_open(path, framework='pt') as f:
            meta = json.loads((f.metadata() or {}).get('state', '{}'))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, json.JSONDecodeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f'{path} is not a safetensors training state ({reason}): truncated or damaged; delete it '
                         f'to start afresh') from None
    found = meta.get('format')
    if found != STATE_FORMAT:
        if isinstance(found, str) and found.startswith(('gpt1-train-state-', 'gpt-train-state-')):
            raise ValueError(f'{path} is a training state of another version of this port ({found}; this version '
                             f'resumes {STATE_FORMAT}): finish that run with its version, or start afresh')
        raise ValueError(f'{path} is not a training state of this port (format {found!r})')
    return meta, tensors


def identity_mismatch(saved, identity):
    """Return the first 'key: saved value vs this value' where two run identities differ, or None."""
    for key in sorted(set(saved) | set(identity)):
        if saved.get(key) != identity.get(key):
            return key, saved.get(key), identity.get(key)
    return None


def check_optimizer_tensors(opt, steps, tensors, source):
    """Raise a one-line ValueError when the saved optimizer state does not fit opt's parameters."""
    params = [p for g in opt.param_groups for p in g['params']]
    for key in steps:
        i = int(key)
        if i >= len(params):
            raise ValueError(f'{source} does not fit this model: its optimizer has state for parameter {i}, the '
                             f'model has {len(params)}')
        for moment in ('m', 'v'):
            t = tensors.get(f'opt/{key}/{moment}')
            if t is None or tuple(t.shape) != tuple(params[i].shape):
                raise ValueError(f'{source} does not fit this model: optimizer moment {moment} of parameter {i} has '
                                 f'shape {None if t is None else tuple(t.shape)}, the parameter '
                                 f'{tuple(params[i].shape)}')


def load_training_state(path, model, opt, identity=None, rank=0, world_size=1, device=None):
    """Restore model, optimizer, and this rank's RNG states and counters from path; return (progress, the number of
    processes that saved it). Everything is checked first (format, identity, every shape): a state that does not
    fit is a one-line ValueError and nothing is restored. Resumed by another number of processes, each rank takes
    the first rank's RNG states seeded afresh by the caller, and the first rank the sum of the saved counters."""
    meta, tensors = read_training_state(path)
    if identity is not None:
        differs = identity_mismatch(meta['identity'], identity)
        if differs:
            key, saved, now = differs
            raise ValueError(f'{path} was saved by another run ({key} {saved!r}; this run has {now!r}): resume it '
                             f'with its own arguments, or give this run other output folders')
    model_tensors = {k[len('model/'):]: t for k, t in tensors.items() if k.startswith('model/')}
    check_optimizer_tensors(opt, meta['opt_steps'], tensors, path)
    ranks = meta['ranks']
    own = rank if len(ranks) == world_size else 0
    rng = {k.split('/')[2]: t for k, t in tensors.items() if k.startswith(f'rng/{own}/')}
    if 'torch' not in rng:
        raise ValueError(f'{path} holds no random state of rank {own}: truncated or damaged; delete it to start afresh')
    # the model's tensors, checked as strictly as loading weights: every one, each shape, no unexpected name
    load_weights(model, model_tensors, path)
    set_optimizer_tensors(opt, meta['opt_steps'], tensors)
    set_rng_state(ranks[own]['rng'], rng, device)
    progress = meta['progress']
    if len(ranks) == world_size:
        progress.update(ranks[rank]['progress'])
    else:  # the counters' sums are kept: all on the first rank
        for key in ranks[0]['progress']:
            progress[key] = sum(r['progress'][key] for r in ranks) if rank == 0 else 0 * ranks[0]['progress'][key]
    return progress, len(ranks)
