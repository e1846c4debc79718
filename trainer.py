"""The training machinery shared by fine-tuning (train.py) and pre-training (pretrain.py).

TF counterpart: the update of train.py's `mgpu_train` (towers' gradients averaged, then one `adam` step) and
the run-level plumbing of its `__main__` (seeding, the devices, the timing of a run). What is specific to a
task (its inputs, its loss, its evaluation) stays in the scripts; the update itself is here, once:
micro-batches accumulated with their weights under one autocast region, DDP's `no_sync` on all but the
last, loss scaling for fp16, the non-finite stop before any weight moves, one optimizer step (OpenAIAdam
clips by the global norm inside it).
"""
import os
import random
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from checkpoint import StateWriter, check_writable, save_training_state
from distributed import DistInfo, init_distributed, wrap_ddp
from loss import no_autocast
from utils import ResultLogger



class NonFiniteLoss(ValueError):
    """The loss of a batch is NaN or infinite; no update was made."""


class PhaseClock:
    """Wall seconds a run spends in each named phase; a phase nested in another is counted in its own only."""

    def __init__(self):
        self.seconds = {}
        self._open = []  # [name, start, seconds of nested phases] of the phases running now

    @contextmanager
    def phase(self, name):
        """Count the time of the with-block under name (not under the enclosing phase)."""
        self._open.append([name, time.perf_counter(), 0.0])
        try:
            yield
        finally:
            _, start, nested = self._open.pop()
            elapsed = time.perf_counter() - start
            self.seconds[name] = self.seconds.get(name, 0.0) + elapsed - nested
            if self._open:
                self._open[-1][2] += elapsed


@dataclass
class Run:
    """One training run's parts, handed to each piece of the loop instead of a dozen positional arguments."""
    model: torch.nn.Module           # the model that is evaluated and saved
    opt: torch.optim.Optimizer
    args: Any                        # the parsed command line
    device: torch.device
    paths: dict                      # the files the run writes (log, best weights, training state, ...)
    progress: dict                   # where the run stands; JSON-able, saved with the training state
    net: torch.nn.Module = None      # what a training step calls: the model, or it wrapped by DDP/compile
    scaler: Any = None               # a GradScaler for fp16, else None
    logger: Any = None               # the ResultLogger (main rank), else a no-op context
    info: DistInfo = DistInfo()
    clock: PhaseClock = field(default_factory=PhaseClock)
    writer: StateWriter = field(default_factory=StateWriter)
    best: dict = None                # host copies of the best weights saved so far by this process, if any

    def __post_init__(self):
        if self.net is None:
            self.net = self.model


def start_run(args, state_path, folders, info, device):
    """Check that a run can start (a training state at state_path with --resume, the output folders writable on
    the main rank), join the process group and seed every rank alike; return the run's PhaseClock."""
    if args.resume and not os.path.isfile(state_path):
        raise FileNotFoundError(f'{state_path} is missing: nothing to resume (run without --resume)')
    if info.is_main:
        for folder in folders:
            check_writable(folder)
    init_distributed(info, device)
    set_seed(args.seed)  # every rank: the same initial weights, special rows and shuffles
    return PhaseClock()


@contextmanager
def update_phase(run, update_no):
    """Count the with-block (update number update_no) as training time; a NonFiniteLoss in it stops the run with
    the one-line error naming the update and the last good training state."""
    try:
        with run.clock.phase('train'):
            yield
    except NonFiniteLoss as err:
        raise ValueError(f"{err} at update {update_no}: stopped; the last good training state is "
                         f"{run.paths['state']}") from None


def save_state(run):
    """Save the training state (main rank): copied now, written in the background."""
    if run.info.is_main:
        with run.clock.phase('write'):
            save_training_state(run.paths['state'], run.model, run.opt, run.progress, writer=run.writer)


def resume_or_start(args, path, model, opt, info, fresh, describe):
    """Return the run's progress: with --resume restored from the training state at path (model, optimizer and RNGs
    too, and describe(progress) printed by the main rank), else fresh()."""
    from checkpoint import load_training_state
    if not args.resume:
        return fresh()
    progress = load_training_state(path, model, opt)
    if info.is_main:
        print(f'resuming at {describe(progress)}', flush=True)
    return progress


def make_run(model, opt, args, device, paths, progress, module, scaler, info, clock, dynamic=None):
    """Return the Run whose training step calls module: wrapped by DDP under several processes (each rank then
    drawing its own dropout masks) and by torch.compile with --compile (dynamic: its shapes argument)."""
    if info.world_size > 1:
        torch.manual_seed(args.seed + info.rank)  # different dropout masks on each rank's share
    net = wrap_ddp(module, device, info)
    if args.compile:
        net = torch.compile(net, dynamic=dynamic)
    return Run(model, opt, args, device, paths, progress, net=net, scaler=scaler, info=info, clock=clock)


def open_log(path, args, progress, info=DistInfo()):
    """Return a ResultLogger at path (main rank; nullcontext elsewhere): new, or on resume the saved one rewritten."""
    if not info.is_main:
        if not progress['log']:
            progress['log'].append(dict(vars(args)))
        return nullcontext()
    if not progress['log']:
        header = dict(vars(args), time=time.time())
        progress['log'].append(header)
        return ResultLogger(path, **header)
    logger = ResultLogger(path, **progress['log'][0])
    for record in progress['log'][1:]:
        logger.log(**record)
    return logger


def set_seed(seed):
    """Seed python, numpy's global generator (the original's source of special rows and shuffles) and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def autocast_context(device, precision):
    """Return the autocast context of a precision (a no-op context for fp32)."""
    if precision in ('bf16', 'fp16'):
        return torch.autocast(device.type, dtype=torch.bfloat16 if precision == 'bf16' else torch.float16)
    return nullcontext()


def configure_precision(device, precision):
    """Set TF32 matmuls on CUDA for fp32 (not fp32-strict); return a GradScaler for fp16 (CUDA or CPU), else None."""
    if device.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = precision != 'fp32-strict'
        torch.backends.cudnn.allow_tf32 = precision != 'fp32-strict'
    return torch.amp.GradScaler(device.type) if precision == 'fp16' else None


def check_device(name):
    """Return torch.device(name), or raise a ValueError naming --device when it is malformed or absent here."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f'--device {name!r} is not a torch device: give cpu, cuda or cuda:N') from None
    n_gpus = torch.cuda.device_count()
    if device.type == 'cuda' and (device.index or 0) >= n_gpus:
        raise ValueError(f'--device {name}: this machine has {n_gpus} CUDA device(s); use --device cpu')
    return device


def resolve_device(name, info=DistInfo()):
    """Return the torch device: the named one (checked to exist), else CUDA when present (this rank's GPU), else the CPU."""
    device = check_device(name) if name is not None else torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if device.type == 'cuda' and device.index is None:
        device = torch.device('cuda', info.local_rank)
    return device


def to_tensors(device, *arrays):
    """Return the numpy arrays as torch tensors on device."""
    return [torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in arrays]


def update(net, opt, micro_batches, loss_of, device, precision, scaler=None, info=DistInfo()):
    """Make one optimizer update from micro-batches; return the sum of the statistics loss_of reports.

    micro_batches: [(weight, batch)], weight the micro-batch's share of the whole (global) batch, so the
    weights of all ranks sum to 1. loss_of(net, batch) -> (mean loss tensor, statistic float). The gradient
    is that of the whole batch's weighted mean loss, as one device computing the batch at once would get it.
    """
    total = 0.0
    # one autocast region per update: its cast cache converts each weight to the low precision once
    with autocast_context(device, precision):
        for k, (weight, batch) in enumerate(micro_batches):
            # gradients are all-reduced once per update, on the last micro-batch only
            sync = info.world_size == 1 or k == len(micro_batches) - 1
            with nullcontext() if sync else net.no_sync():
                loss, stat = loss_of(net, batch)
                # DDP averages the ranks' gradients, hence * world_size
                loss = loss * (weight * info.world_size)
                if not torch.isfinite(loss.detach()).item():
                    opt.zero_grad(set_to_none=True)
                    raise NonFiniteLoss(f'non-finite loss {loss.item()}')
                with no_autocast(device.type):  # backward outside autocast, as torch recommends
                    (scaler.scale(loss) if scaler is not None else loss).backward()
            total += stat
    if scaler is not None:
        scaler.step(opt)  # unscales first, so OpenAIAdam clips the true gradients; skipped on overflow
        scaler.update()
    else:
        opt.step()
    opt.zero_grad(set_to_none=True)
    return total


def peak_memory_mib(device):
    """Return the peak memory of this process in MiB: CUDA's max allocated on a GPU, else the max RSS."""
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


PHASES = ('load', 'encode', 'train', 'eval', 'write')


def phase_record(clock, device):
    """Return where a run's wall time went as a record: {'load_s': ..., 'write_s': ..., 'peak_memory_mib': ...}."""
    record = {f'{name}_s': clock.seconds.get(name, 0.0) for name in PHASES}
    record['peak_memory_mib'] = peak_memory_mib(device)
    return record


def format_phases(record):
    """Return the one-line account of a phase_record: seconds by phase, then the peak memory."""
    parts = ', '.join(f"{name} {record[f'{name}_s']:.2f} s" for name in PHASES)
    return f"phases: {parts}, peak memory {record['peak_memory_mib']:.0f} MiB"
