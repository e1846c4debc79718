"""The training machinery shared by fine-tuning (train.py) and pre-training (pretrain.py): the Run.

TF counterpart: the update of train.py's `mgpu_train` (towers' gradients averaged, then one `adam` step) and
the run-level plumbing of its `__main__` (seeding, the devices, the timing of a run). What is specific to a
task (its inputs, its loss, its evaluation) stays in the scripts, whose training step reads forward, loss,
backward, step; the plumbing of an update is here, once: micro-batches accumulated under one autocast region,
the gradients synchronized on the last only (DDP's `no_sync` on the others, or with --shard FSDP2's gradient sync),
loss scaling for fp16, the non-finite stop before any weight moves (checked once per update, on the device), one
optimizer step (OpenAIAdam clips by the global norm inside it). With --shard (sharding.py) the model's parameters,
gradients and optimizer state are sharded over the processes, and what is not training (evaluation, samples, the
weights and training state written) runs on whole copies gathered from the shards.

The faults of a cluster job are handled here too: a stop signal (SIGTERM, SIGUSR1, or Ctrl-C's SIGINT) ends the run
after the update in progress with its training state saved, every rank at the same update, and a second Ctrl-C at once
(saying which update the state on disk holds); the training state holds every rank's random states; `--resume auto`
resumes when the run's state exists; a run never starts afresh over an unfinished run's state (it is refused unless
--restart); the run's output folders are locked (runlock.py).
"""
import copy
import dataclasses
import math
import os
import random
import shlex
import signal
import sys
import threading
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

import untrusted
from checkpoint import (Expected, StateWriter, check_writable, load_params, load_training_state, load_weights,
                        optimizer_tensors, rank_record, read_state_metadata, save_params, save_training_state)
from distributed import (DistInfo, all_reduce_sum, barrier, close_distributed, dist_info, gather_objects,
                         init_distributed, resolve_device, wrap_ddp)
from precision import autocast_context, configure_precision, no_autocast
from runlock import RunLock
from sharding import held_memory, replica, set_gradient_sync, shard_model, skeleton, wholes
from utils import ResultLogger, close_bars


class NonFiniteLoss(ValueError):
    """The loss of a batch is NaN or infinite; no update was made."""


# schedulers' notice (SLURM, Kubernetes, spot instances) and Ctrl-C
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class Preempted(Exception):
    """A stop signal arrived: the run saved its training state after the update in progress and stops."""

    def __init__(self, signum, n_updates, state_path):
        super().__init__(f'stopped by {signal.Signals(signum).name} after update {n_updates}; the training state is '
                         f'in {state_path}')
        self.signum, self.n_updates, self.state_path = signum, n_updates, state_path


class StopNow(KeyboardInterrupt):
    """A second Ctrl-C: the run stops at once, wherever it is (Run's with-block says what the state on disk holds)."""


class Interrupted(Exception):
    """The run stopped at once on Ctrl-C (a second one during training, or one outside it): message says which update
    the training state on disk holds; no process waits for the others."""

    def __init__(self, message, signum=signal.SIGINT):
        super().__init__(message)
        self.signum = signum


class StopSignals:
    """Records the first stop signal while installed (the run acts on it between updates); a later SIGTERM or SIGUSR1
    is ignored, so a second notice during the save changes nothing, but a Ctrl-C after any stop signal raises StopNow:
    the one who pressed it twice wants the run to stop now."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def install(self):
        """Catch STOP_SIGNALS (from the main thread only, where Python runs signal handlers; an ignored SIGINT, as a
        shell gives its background jobs, stays ignored); return self."""
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                if signum == signal.SIGINT and signal.getsignal(signum) == signal.SIG_IGN:
                    continue
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is None:
            self.signum = signum
        elif signum == signal.SIGINT:
            raise StopNow()

    def restore(self):
        """Put back the handlers that were there before install()."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


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


@dataclass(frozen=True)
class RunSettings:
    """How a training run runs (flags.add_run_args): its seed, device (None: cuda when available), precision,
    torch.compile, the model sharded over the processes (FSDP2) or whole on each (DDP), and whether it resumes its
    training state (True, False or 'auto': when the state exists) or starts over, deleting an unfinished one
    (restart)."""
    seed: int = 42
    device: str = None
    precision: str = 'fp32'
    compile: bool = False
    shard: bool = False
    resume: object = False
    restart: bool = False

    @classmethod
    def of(cls, settings):
        """Return the RunSettings of a script's settings (train.FineTuneSettings, pretrain.PretrainSettings), which
        hold the flags of flags.add_run_args under the same names."""
        return cls(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class Evaluation:
    """How a split is evaluated: in batches of n_batch on device, in precision, with a progress bar when verbose."""
    n_batch: int
    device: torch.device
    precision: str = 'fp32'
    verbose: bool = False


@dataclass(frozen=True)
class RunFiles:
    """What a run writes and guards: its files by name (log, training state, best weights, ...), the folders that
    must be writable, the lock files taken while it runs, and standing(metadata) -> (finished, where it stands in
    words) of a training state found at files['state'] (check_not_unfinished)."""
    paths: dict
    folders: tuple
    locks: tuple
    standing: Any = None


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
RETAINED_BLOCK = 1 << 30  # host allocations up to this size come from malloc's heap and return to it


def retain_freed_memory():
    """Make glibc's malloc keep the host memory a run frees for its next allocations: blocks up to 1 GiB from its heap
    (not each one a fresh mapping) and the heap never trimmed; return whether it took (False without glibc).

    An update allocates and frees the same activations every time. By default each block over malloc's threshold is
    mapped afresh and its pages faulted in again, which took about 10% of a GPT-2 124M update on a 2-core CPU
    (BENCHMARKS.md, Issue 31); the process's peak memory grows by about as much. Called by Launch.begin: a run's
    process, not a library import, makes the choice."""
    import ctypes
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl): its allocator stays as it is
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, RETAINED_BLOCK)) and bool(mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))


@dataclass
class Launch:
    """Where a run starts, before anything is built: its settings resolved (the device's name, --resume auto decided),
    its device, files and the locks on them, its clock and background writer. Launch.begin makes one for a run that
    writes files; a Launch built directly writes none and takes no lock (benchmarks, tests). Used as a with-block
    around the run: leaving it releases the locks, and leaving it on Ctrl-C raises Interrupted, saying which update
    the training state on disk holds."""
    settings: RunSettings
    device: torch.device = torch.device('cpu')
    info: DistInfo = DistInfo()
    paths: dict = field(default_factory=dict)  # the files the run writes (log, best weights, training state, ...)
    clock: PhaseClock = field(default_factory=PhaseClock)
    writer: StateWriter = field(default_factory=StateWriter)
    lock: RunLock = None
    run: Any = None  # the Run built in it, once built (where the run stands, for the Ctrl-C message)
    frame: Any = None  # with --shard, the model's skeleton (sharding.skeleton), whole copies are made of it

    def place(self, model):
        """Return model on the run's device, and with --shard its parameters sharded over the processes
        (sharding.shard_model; in bf16, the gathered parameters in bf16, the shards and gradient reductions in fp32).
        Call it before the optimizer is built: sharding replaces the parameters."""
        model.to(self.device)
        if self.settings.shard:
            # FSDP2 warns of a block returning views: its present (k, v) are views of the attention's projection,
            # which nothing changes in place
            warnings.filterwarnings('ignore', message='FSDP2-wrapped module .* returned a view tensor')
            self.frame = skeleton(model)
            shard_model(model, param_dtype=torch.bfloat16 if self.settings.precision == 'bf16' else None)
        return model

    @classmethod
    def begin(cls, settings, files, info=DistInfo()):
        """Return the Launch of a run that can start: settings resolved (resolved_settings), the output folders
        checked writable and the lock files taken (main rank), an unfinished run's state refused without --resume
        (deleted by the main rank with --restart), the process group joined, every rank seeded alike. files: a
        RunFiles."""
        resolved = resolved_settings(settings, files.paths['state'], info)
        retain_freed_memory()
        launch = cls(resolved, torch.device(resolved.device), info, dict(files.paths))
        if info.is_main:
            for folder in files.folders:
                check_writable(folder)
            launch.lock = RunLock(list(files.locks)).acquire()
        try:
            prepare_state_file(resolved, files, info)
            init_distributed(info, launch.device)
        except BaseException:
            launch.end()
            raise
        set_seed(resolved.seed)  # every rank: the same initial weights, special rows and shuffles
        return launch

    def end(self):
        """Release the output folders' locks."""
        if self.lock is not None:
            self.lock.release()

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        try:
            if kind is not None and issubclass(kind, KeyboardInterrupt):
                raise Interrupted(self.interrupted_message(isinstance(value, StopNow))) from None
        finally:
            self.end()
        return False

    def interrupted_message(self, second):
        """Return the one line of a run stopped at once by Ctrl-C (second: a second one, during training): where it
        stopped and which update the training state on disk holds, once a save under way has ended (further Ctrl-Cs
        are ignored meanwhile: the file is whole either way, and the message says which it is)."""
        state = self.paths.get('state')
        main = self.info.is_main and threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        failed = ''
        try:
            self.writer.wait()
        except Exception as err:  # noqa: BLE001 - a failed save is reported in the message
            failed = f' (the save under way failed: {untrusted.describe(err)})'
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        done = None if self.run is None else self.run.progress.get('n_updates')
        how = 'a second Ctrl-C' if second else 'Ctrl-C'
        where = 'before any update' if not done else f'after update {done}'
        if not self.info.is_main or state is None:
            return f'stopped at once by {how} {where}'
        try:
            meta = read_state_metadata(state)
        except untrusted.MissingFile:
            return f'stopped at once by {how} {where}; no training state was saved ({state} does not exist){failed}'
        except untrusted.BadFile as err:
            return f'stopped at once by {how} {where}; {err}{failed}'
        saved = meta['progress'].get('n_updates')
        lost = ''
        if isinstance(saved, int) and done and done > saved:
            lost = f': update {done} is lost' if done == saved + 1 else f': updates {saved + 1} to {done} are lost'
        return (f'stopped at once by {how} {where}; the training state in {state} is that of update {saved}, '
                f'its last save{lost}{failed}')


def resolved_settings(settings, state_path, info=DistInfo()):
    """Return settings with the device resolved (its name), --resume auto decided (True when state_path exists) and a
    restarted attempt of a --restart job turned into --resume auto; raise on --resume without a state, or with
    --restart."""
    device = str(resolve_device(settings.device, info))
    resume, restart = settings.resume, settings.restart
    if restart and resume:
        raise ValueError('--restart starts the run over, --resume continues it: give one of them')
    if settings.shard and info.world_size < 2:
        raise ValueError('--shard shards the model over several processes: run it under torchrun '
                         '--nproc_per_node=N with N of 2 or more, or leave --shard out')
    if settings.shard and settings.precision == 'fp16':
        raise ValueError('--shard --precision fp16: fp16\'s loss scaler does not serve sharded gradients; use '
                         '--precision bf16 (no loss scaling needed) or leave --shard out')
    if restart and restarted_attempt():
        # the same command again after a failure (torchrun --max-restarts, a requeued job): its first attempt
        # started over, so this one continues that attempt's state instead of deleting it again
        restart, resume = False, 'auto'
        if info.is_main:
            print('--restart: this is a restarted attempt of the job, so it continues the state the first attempt '
                  'began (as --resume auto)', flush=True)
    if resume == 'auto':
        resume = os.path.isfile(state_path)
        if info.is_main:
            print(f"--resume auto: {'resuming from' if resume else 'starting afresh, no'} {state_path}", flush=True)
    elif resume and not os.path.isfile(state_path):
        raise FileNotFoundError(f"{state_path} is missing: nothing to resume (run without --resume, or with "
                                f"--resume auto)")
    return dataclasses.replace(settings, device=device, resume=resume, restart=restart)


def prepare_state_file(settings, files, info):
    """Refuse to start afresh over an unfinished run's training state (every rank reads the file before any rank can
    write it, so all decide alike); remove a finished run's state, or with --restart any (main rank, under the lock);
    settings: resolved."""
    state = files.paths['state']
    if not settings.resume and not settings.restart and files.standing is not None:
        check_not_unfinished(state, files.standing)  # an unfinished run's state is never overwritten
    if not settings.resume and info.is_main and os.path.lexists(state):
        # a finished run's state (or with --restart any state) goes now, not at this run's first save: a run
        # stopped before that save must not leave it behind for --resume auto to take for this run's own
        os.remove(state)
        print(f"{'--restart' if settings.restart else 'starting afresh'}: removed {state}", flush=True)


@dataclass(frozen=True)
class StateSpec:
    """What a run's training state holds beyond the model and optimizer: the run's identity (what a state must match
    to be resumed), a fresh progress (its counters, JSON-able) and the counters that differ between ranks (each
    saved per rank)."""
    identity: dict
    template: dict
    rank_keys: tuple = ()


class Run:
    """One training run, built whole: the launch it runs in, the model and optimizer it trains, what a training step
    calls (the model, or it wrapped by DDP and torch.compile; with --shard, sharded), fp16's loss scaler, and where it stands (progress,
    restored with --resume); with the plumbing of an update (autocast, gradient sync, backward, step), the log and
    the best weights, handed to each piece of the loop as one object."""

    def __init__(self, launch, model, opt, state, trained=None, dynamic=None):
        """Make model (on the launch's device) and opt what the run trains, evaluates and saves; trained (default:
        model) what a training step calls, wrapped by DDP under several processes unless launch.place sharded the
        model (each rank then drawing its own dropout masks) and by torch.compile with --compile (dynamic: its shapes argument); then, with --resume, the
        model, optimizer, progress and this rank's random states restored from the training state (state: a
        StateSpec, checked before anything is restored), else state.template's fresh progress."""
        self.launch, self.model, self.opt, self.state = launch, model, opt, state
        self.settings, self.device, self.info = launch.settings, launch.device, launch.info
        self.paths, self.clock, self.writer = launch.paths, launch.clock, launch.writer
        self.stop = StopSignals()
        self.stop_requested = False   # a stop signal reached some rank by the last update's step
        self.logger = nullcontext()   # the ResultLogger while open_log's block runs (main rank)
        self.best_weights = None      # host copies of the best weights saved so far by this process, if any
        self.sharded = self.settings.shard  # the model was sharded by launch.place (FSDP2), not wrapped by DDP
        if self.info.world_size > 1:
            torch.manual_seed(self.settings.seed + self.info.rank)  # different dropout masks on each rank's share
        net = model if trained is None else trained
        net = net if self.sharded else wrap_ddp(net, self.device, self.info)
        self.net = torch.compile(net, dynamic=dynamic) if self.settings.compile else net
        self.scaler = configure_precision(self.device, self.settings.precision)
        self.progress = self.restore() or copy.deepcopy(state.template)
        launch.run = self

    def restore(self):
        """Return the progress saved in the training state, model, optimizer and this rank's RNG states restored from
        it, with --resume (after the wrap, whose per-rank seeding it replaces); None without."""
        if not self.settings.resume:
            return None
        info = self.info
        expected = Expected(self.state.identity, self.state.template, self.state.rank_keys, info.rank,
                            info.world_size, self.device)
        progress, n_saved = load_training_state(self.paths['state'], self.model, self.opt, expected)
        if n_saved != info.world_size:
            # rank 0's numpy and python states (the shuffles, alike on every rank) are kept; dropout is reseeded
            torch.manual_seed(self.settings.seed + info.rank + 7919 * (progress['n_updates'] + 1))
            if info.is_main:
                print(f"note: resuming with {info.world_size} process(es) a state saved by {n_saved}: the weights, "
                      f"optimizer, schedule and data order continue exactly, but each process's dropout masks are "
                      f"drawn afresh, so the run no longer equals an uninterrupted run of {n_saved}", flush=True)
        return progress

    @contextmanager
    def open_log(self, path, header):
        """Within the block, self.logger is the run's ResultLogger at path (main rank): a new log whose first record is
        header (the run's settings as given and resolved), or on resume the saved records rewritten."""
        with result_logger(path, header, self.progress, self.info) as logger:
            self.logger = logger
            try:
                yield logger
            finally:
                self.logger = nullcontext()

    @contextmanager
    def stop_signals(self):
        """Within the block (the training loop), a stop signal is recorded, and the run stops after the update in
        progress (stop_if_requested); one that comes during the last update, its evaluation or its save ends the run
        when the block ends (Preempted: the last state is saved, --resume auto finishes the run's remaining steps).
        Outside the block a signal acts as it would without this port: nothing unsaved is lost there (before training
        nothing is trained, after it the last state is written)."""
        self.stop.install()
        try:
            yield
        finally:
            self.stop.restore()
        if self.stop.signum is not None:  # during the last update, its evaluation or save: the state is saved
            with self.clock.phase('write'):
                self.writer.wait()
            raise Preempted(self.stop.signum, self.progress['n_updates'], self.paths['state'])

    def autocast(self):
        """Return the autocast region of the run's precision: one for all of an update's micro-batches, so its cast
        cache converts each weight to the low precision once."""
        return autocast_context(self.device, self.settings.precision)

    def sync_gradients(self, last):
        """Return the context of one micro-batch's forward and backward: DDP all-reduces (FSDP2 reduce-scatters) the
        gradients on the update's last micro-batch only; a no-op in one process."""
        if self.sharded:
            set_gradient_sync(self.model, last)
            return nullcontext()
        return nullcontext() if self.info.world_size == 1 or last else self.net.no_sync()

    @contextmanager
    def whole_model(self, host=False, keep=True):
        """Within the block, the model whole, for what is not training (evaluation, samples, writing weights): the
        model itself, or with --shard a plain copy gathered from the shards (every rank enters the block; on the
        device, or with host=True on the host; None where keep is False)."""
        yield self.model if not self.sharded else replica(self.model, self.launch.frame, host=host, keep=keep)

    def backward(self, loss):
        """Back-propagate a micro-batch's loss (scaled for fp16, outside autocast as torch recommends)."""
        with no_autocast(self.device.type):
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, loss_sum, report):
        """Make the optimizer step of the update whose micro-batch losses add up to loss_sum (a 0-dim tensor on the
        device); return report (a 0-dim tensor on the device) as a float, read to the host with the non-finite check
        and the stop flag in one transfer: the update's one host read, so a GPU is not held back by the host. Under
        several processes the loss and the stop flag are summed over the ranks first, so every rank sees a non-finite
        loss or a stop signal of any rank at the same update. Raise NonFiniteLoss before any weight moves when the
        update's loss is not finite."""
        stop = torch.full((), float(self.stop.signum is not None), dtype=torch.float64, device=self.device)
        shared = all_reduce_sum(torch.stack([loss_sum.double(), stop]), self.info)
        total, stopping, reported = torch.cat([shared, report.detach().double().view(1)]).tolist()  # one host read
        self.stop_requested = self.stop_requested or stopping > 0
        if not math.isfinite(total):
            self.opt.zero_grad(set_to_none=True)
            raise NonFiniteLoss(f'non-finite loss {total}')
        if self.scaler is not None:
            self.scaler.step(self.opt)  # unscales first, so OpenAIAdam clips the true gradients; skipped on overflow
            self.scaler.update()
        else:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return reported

    def save_best(self, path):
        """Save the model's weights as the run's best so far at path (in the background; the main rank), keeping
        their host copy; with --shard every rank calls it (the weights are gathered)."""
        with self.whole_model(host=True, keep=self.info.is_main) as model:
            if self.info.is_main:
                self.best_weights = save_params(model, path, writer=self.writer)

    def load_best(self, path):
        """Load the run's best weights into the model: the host copy this process saved, else path (a resumed run's);
        with --shard every rank calls it and reads its shards from path once the main rank has written it."""
        if self.sharded:
            if self.info.is_main:
                self.writer.wait()
            barrier(self.info)
            load_params(self.model, path)
        elif self.best_weights is None:
            self.writer.wait()
            load_params(self.model, path)
        else:
            load_weights(self.model, self.best_weights, path)


def model_identity(model):
    """Return what a training state's model must match, in words: its config's class and sizes, its task head."""
    cfg = model.cfg
    sizes = ', '.join(f'{k}={getattr(cfg, k)}' for k in ('n_vocab', 'n_special', 'n_ctx', 'n_embd', 'n_head', 'n_layer'))
    head = getattr(model, 'task_head', None)
    return f"{type(cfg).__name__}({sizes})" + ('' if head is None else f', {type(head).__name__}'
                                               f"({getattr(getattr(head, 'clf', None), 'nf', '')})")


def run_identity(flags, model, **more):
    """Return a run's identity: the flags ({name: value}, as '--name': value), the model's identity and more."""
    return dict({f'--{name}': value for name, value in flags.items()}, model=model_identity(model), **more)


@contextmanager
def update_phase(run, update_no):
    """Count the with-block (update number update_no) as training time; a NonFiniteLoss in it stops the run with
    the one-line error naming the update and the last good training state; a background write that failed since
    stops it too."""
    try:
        with run.clock.phase('train'):
            yield
    except NonFiniteLoss as err:
        raise ValueError(f"{err} at update {update_no}: stopped; the last good training state is "
                         f"{run.paths['state']}") from None
    run.writer.check()


def save_state(run):
    """Save the training state: every rank's RNG states and own counters gathered (every rank calls it), the file
    written by the main rank, copied now and written in the background."""
    ranks = gather_objects(rank_record(run.progress, run.state.rank_keys, run.device), run.info)
    main = run.info.is_main
    with run.clock.phase('write'), run.whole_model(host=True, keep=main) as model:
        # with --shard, the whole state gathered onto the main rank's host: the same file as an unsharded run's, which
        # resumes on any number of processes, sharded or not
        opt_state = None
        if run.sharded:
            steps, moments = optimizer_tensors(run.opt)
            opt_state = steps, wholes(moments, keep=main, host=True)
        if main:
            save_training_state(run.paths['state'], model, run.opt, run.progress, writer=run.writer, ranks=ranks,
                                identity=run.state.identity, opt_state=opt_state)


def failed_run_exit(script, argv, err):
    """Return the exit code of a training script (train.py, pretrain.py) whose run ended with err, after printing its
    one line on stderr, progress bars closed first so that it is the last line: a stop signal (128 + the signal, with
    the resume command), Ctrl-C at once (130, the same), or one of the project's errors (2)."""
    close_bars()
    info = dist_info()
    if isinstance(err, Preempted):  # every rank stopped at the same update, its state saved
        close_distributed(synchronize=True)
        said, code = err, 128 + err.signum
    elif isinstance(err, (Interrupted, KeyboardInterrupt)):  # Ctrl-C: at once, no rank waits for the others
        said = err if isinstance(err, Interrupted) else 'stopped at once by Ctrl-C while no training was under way'
        code = 128 + signal.SIGINT
    else:
        print(f'{script}: error{f" (rank {info.rank})" if info.rank else ""}: {err}', file=sys.stderr, flush=True)
        return 2
    if info.is_main:
        print(f'{script}: {said}; resume with: {resume_command(script, argv, info)}', file=sys.stderr, flush=True)
    return code


# what failed_run_exit turns into an exit code: stops, Ctrl-C, and the project's one-line errors (OSError: a full disk)
RUN_ENDINGS = (Preempted, Interrupted, KeyboardInterrupt, OSError, ValueError)


def resume_command(script, argv=None, info=DistInfo()):
    """Return the command line that resumes a stopped run: the script with its arguments (without --restart, which
    would delete the state) and --resume auto."""
    argv = sys.argv[1:] if argv is None else list(argv)
    kept = []
    for k, arg in enumerate(argv):
        if arg in ('--resume', '--restart') or arg.startswith('--resume=') or \
                (arg == 'auto' and k and argv[k - 1] == '--resume'):
            continue
        kept.append(arg)
    launcher = 'python' if info.world_size == 1 else 'torchrun <the same torchrun flags>'
    return ' '.join([launcher, script] + [shlex.quote(a) for a in kept] + ['--resume', 'auto'])


def restarted_attempt():
    """Return whether this process is a restarted attempt of its job: torchrun's --max-restarts, or SLURM's requeue."""
    return any(int(os.environ.get(name, '0') or 0) > 0 for name in ('TORCHELASTIC_RESTART_COUNT', 'SLURM_RESTART_COUNT'))


def stop_if_requested(run, saved):
    """After an update's evaluation and saves: when a stop signal reached some rank, save the training state (unless
    saved is True: the update just saved it), wait until it is on disk and raise Preempted (every rank alike)."""
    if not run.stop_requested:
        return
    if not saved:
        save_state(run)
    with run.clock.phase('write'):
        run.writer.wait()
    raise Preempted(run.stop.signum or STOP_SIGNALS[0], run.progress['n_updates'], run.paths['state'])


class UnfinishedRun(ValueError):
    """A run would start afresh where an unfinished run's training state lies (and overwrite it)."""


def check_not_unfinished(path, standing):
    """Raise UnfinishedRun, one line naming --resume auto and --restart, when path holds the training state of a run
    that has not made its last update (standing(metadata) -> (finished, where it stands in words)), or a file there
    that cannot be told to be a finished run's; return quietly when there is none or it is a finished run's (whose
    outputs a new run may replace)."""
    if not os.path.lexists(path):
        return
    choices = 'continue it with --resume auto, or start over with --restart (which deletes it)'
    try:
        meta = read_state_metadata(path)
        with untrusted.reading(path):
            finished, where = standing(meta)
    except untrusted.BadFile as err:
        raise UnfinishedRun(f'{err}; it may be an unfinished run\'s: a new run does not overwrite it: start over with '
                            f'--restart (which deletes it), or move it away') from None
    if not finished:
        raise UnfinishedRun(f'{path} holds the training state of an unfinished run ({where}); a new run does not '
                            f'overwrite it: {choices}')


def result_logger(path, header, progress, info=DistInfo()):
    """Return a ResultLogger at path (main rank; nullcontext elsewhere): new, its first record header (a dict) and the
    time, or on resume the saved one rewritten."""
    if not info.is_main:
        if not progress['log']:
            progress['log'].append(dict(header))
        return nullcontext()
    if not progress['log']:
        header = dict(header, time=time.time())
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


def to_tensors(device, *arrays):
    """Return the numpy arrays as torch tensors on device."""
    return [torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in arrays]


def shard_memory_line(model, tokens_per_rank, run):
    """Return the line a --shard run prints before training: the bytes a rank holds (sharding.held_memory) with a
    micro-batch of tokens_per_rank tokens."""
    memory = held_memory(model, tokens_per_rank, 2 if run.settings.precision in ('bf16', 'fp16') else 4)
    return f'--shard: {run.info.world_size} processes; {memory.line()}'


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
