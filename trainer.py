"""The training machinery shared by fine-tuning (train.py) and pre-training (pretrain.py): the Run.

TF counterpart: the update of train.py's `mgpu_train` (towers' gradients averaged, then one `adam` step) and
the run-level plumbing of its `__main__` (seeding, the devices, the timing of a run). What is specific to a
task (its inputs, its loss, its evaluation) stays in the scripts, whose training step reads forward, loss,
backward, step; the plumbing of an update is here, once: micro-batches accumulated under one autocast region,
DDP's `no_sync` on all but the last, loss scaling for fp16, the non-finite stop before any weight moves (checked
once per update, on the device), one optimizer step (OpenAIAdam clips by the global norm inside it).

The faults of a cluster job are handled here too: a stop signal (SIGTERM, SIGUSR1, or Ctrl-C's SIGINT) ends the run
after the update in progress with its training state saved, every rank at the same update, and a second Ctrl-C at once
(saying which update the state on disk holds); the training state holds every rank's random states; `--resume auto`
resumes when the run's state exists; a run never starts afresh over an unfinished run's state (it is refused unless
--restart); the run's output folders are locked (runlock.py).
"""
import math
import os
import random
import shlex
import signal
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

import untrusted
from checkpoint import (StateWriter, check_writable, load_training_state, rank_record,
                        read_state_metadata, save_training_state)
from distributed import (DistInfo, all_reduce_sum, close_distributed, dist_info, gather_objects, init_distributed,
                         resolve_device, wrap_ddp)
from precision import autocast_context, configure_precision, no_autocast
from runlock import RunLock
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


@dataclass
class Run:
    """One training run: its arguments, device and files, the model and optimizer it trains, where it stands, and
    the plumbing of an update (accumulate, backward, step), handed to each piece of the loop as one object."""
    args: Any                        # the parsed command line
    device: torch.device = torch.device('cpu')
    paths: dict = field(default_factory=dict)  # the files the run writes (log, best weights, training state, ...)
    info: DistInfo = DistInfo()
    model: torch.nn.Module = None    # the model that is evaluated and saved
    opt: torch.optim.Optimizer = None
    net: torch.nn.Module = None      # what a training step calls: the model, or it wrapped by DDP/compile
    scaler: Any = None               # a GradScaler for fp16, else None
    progress: dict = None            # where the run stands; JSON-able, saved with the training state
    logger: Any = None               # the ResultLogger (main rank), else a no-op context
    clock: PhaseClock = field(default_factory=PhaseClock)
    writer: StateWriter = field(default_factory=StateWriter)
    best: dict = None                # host copies of the best weights saved so far by this process, if any
    loss_sum: torch.Tensor = None    # the update's weighted losses so far, on the device (the non-finite check)
    identity: dict = None            # what a training state must match to be resumed by this run
    rank_keys: tuple = ()            # the progress counters that differ between ranks (each saved per rank)
    stop: StopSignals = field(default_factory=StopSignals)
    stop_requested: bool = False     # a stop signal reached some rank by the last update's step
    lock: RunLock = None

    @classmethod
    def begin(cls, args, paths, folders, locks, info=DistInfo(), standing=None):
        """Return a Run that can start: its device (args.device becomes its name), --resume auto resolved (True when
        paths['state'] exists), a training state there with --resume, the output folders writable and the lock files
        locks taken (main rank), an unfinished run's state at paths['state'] refused without --resume (deleted by the
        main rank with --restart), the process group joined, every rank seeded alike. standing(metadata) returns
        (finished, where it stands in words) of a training state's metadata (check_not_unfinished). end() (or leaving
        a with-block on the Run) releases the locks; leaving it on Ctrl-C raises Interrupted."""
        device = resolve_device(args.device, info)
        args.device = str(device)
        restart = getattr(args, 'restart', False)
        if restart and args.resume:
            raise ValueError('--restart starts the run over, --resume continues it: give one of them')
        if restart and restarted_attempt():
            # the same command again after a failure (torchrun --max-restarts, a requeued job): its first attempt
            # started over, so this one continues that attempt's state instead of deleting it again
            restart, args.restart, args.resume = False, False, 'auto'
            if info.is_main:
                print('--restart: this is a restarted attempt of the job, so it continues the state the first attempt '
                      'began (as --resume auto)', flush=True)
        if args.resume == 'auto':
            args.resume = os.path.isfile(paths['state'])
            if info.is_main:
                print(f"--resume auto: {'resuming from' if args.resume else 'starting afresh, no'} {paths['state']}",
                      flush=True)
        elif args.resume and not os.path.isfile(paths['state']):
            raise FileNotFoundError(f"{paths['state']} is missing: nothing to resume (run without --resume, or with "
                                    f"--resume auto)")
        run = cls(args, device, paths, info)
        if info.is_main:
            for folder in folders:
                check_writable(folder)
            run.lock = RunLock(locks).acquire()
        try:
            # every rank reads the same file before any rank can write it (the process group is not joined yet), so
            # all decide alike; with --restart only the main rank deletes it (under the lock) and none reads it
            if not args.resume and not restart and standing is not None:
                check_not_unfinished(paths['state'], standing)  # an unfinished run's state is never overwritten
            if not args.resume and info.is_main and os.path.lexists(paths['state']):
                # a finished run's state (or with --restart any state) goes now, not at this run's first save: a run
                # stopped before that save must not leave it behind for --resume auto to take for this run's own
                os.remove(paths['state'])
                print(f"{'--restart' if restart else 'starting afresh'}: removed {paths['state']}", flush=True)
            init_distributed(info, device)
        except BaseException:
            run.end()
            raise
        set_seed(args.seed)  # every rank: the same initial weights, special rows and shuffles
        return run

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

    def end(self):
        """Release what begin() took: the output folders' locks."""
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
        done = None if self.progress is None else self.progress.get('n_updates')
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

    def attach(self, model, opt):
        """Make model (on the run's device) and opt what the run trains, evaluates and saves."""
        self.model, self.opt, self.net = model, opt, model

    def restore(self, template=None):
        """Return the progress saved in the training state, model, optimizer and this rank's RNG states restored from
        it, with --resume (after wrap(), whose per-rank seeding it replaces); None without. template: a fresh progress
        of the script, whose counters the saved one must hold (and rank_keys each rank's), checked before anything is
        restored."""
        if not self.args.resume:
            return None
        info = self.info
        progress, n_saved = load_training_state(self.paths['state'], self.model, self.opt, self.identity, info.rank,
                                                info.world_size, self.device, template=template,
                                                rank_keys=None if template is None else self.rank_keys)
        if n_saved != info.world_size:
            # rank 0's numpy and python states (the shuffles, alike on every rank) are kept; dropout is reseeded
            torch.manual_seed(self.args.seed + info.rank + 7919 * (progress['n_updates'] + 1))
            if info.is_main:
                print(f"note: resuming with {info.world_size} process(es) a state saved by {n_saved}: the weights, "
                      f"optimizer, schedule and data order continue exactly, but each process's dropout masks are "
                      f"drawn afresh, so the run no longer equals an uninterrupted run of {n_saved}", flush=True)
        return progress

    def wrap(self, module, dynamic=None):
        """Make module what a training step calls: wrapped by DDP under several processes (each rank then drawing its
        own dropout masks) and by torch.compile with --compile (dynamic: its shapes argument); set the precision."""
        if self.info.world_size > 1:
            torch.manual_seed(self.args.seed + self.info.rank)  # different dropout masks on each rank's share
        net = wrap_ddp(module, self.device, self.info)
        self.net = torch.compile(net, dynamic=dynamic) if self.args.compile else net
        self.scaler = configure_precision(self.device, self.args.precision)

    def accumulate(self, micro_batches):
        """Yield (micro-batch, weight) of [(weight, micro-batch)] inside one autocast region (its cast cache converts
        each weight to the low precision once), DDP's gradient all-reduce on the last one only; the weights of all
        ranks sum to 1, so the gradient is the whole batch's weighted mean, as one device would compute it."""
        self.loss_sum = torch.zeros((), device=self.device)
        with autocast_context(self.device, self.args.precision):
            for k, (weight, batch) in enumerate(micro_batches):
                sync = self.info.world_size == 1 or k == len(micro_batches) - 1
                with nullcontext() if sync else self.net.no_sync():
                    yield batch, weight

    def backward(self, loss):
        """Back-propagate a micro-batch's weighted loss (scaled for fp16, outside autocast as torch recommends)."""
        loss = loss * self.info.world_size  # DDP averages the ranks' gradients
        self.loss_sum = self.loss_sum + loss.detach().float()
        with no_autocast(self.device.type):
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, report=None):
        """Make the optimizer step of the update; return report (a 0-dim tensor on the device, such as the update's
        summed loss) as a float, read to the host with the non-finite check and the stop flag in one transfer: the
        update's one host read, so a GPU is not held back by the host. Under several processes the loss and the stop
        flag are summed over the ranks first, so every rank sees a non-finite loss or a stop signal of any rank at the
        same update. Raise NonFiniteLoss before any weight moves when the update's loss is not finite."""
        report = self.loss_sum if report is None else report
        stop = torch.full((), float(self.stop.signum is not None), dtype=torch.float64, device=self.device)
        shared = all_reduce_sum(torch.stack([self.loss_sum.double(), stop]), self.info)
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


def model_identity(model):
    """Return what a training state's model must match, in words: its config's class and sizes, its task head."""
    cfg = model.cfg
    sizes = ', '.join(f'{k}={getattr(cfg, k)}' for k in ('n_vocab', 'n_special', 'n_ctx', 'n_embd', 'n_head', 'n_layer'))
    head = getattr(model, 'task_head', None)
    return f"{type(cfg).__name__}({sizes})" + ('' if head is None else f', {type(head).__name__}'
                                               f"({getattr(getattr(head, 'clf', None), 'nf', '')})")


def run_identity(args, names, model, **more):
    """Return a run's identity: the flags names (as '--name': value), the model's identity and more."""
    return dict({f'--{name}': getattr(args, name) for name in names}, model=model_identity(model), **more)


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
    ranks = gather_objects(rank_record(run.progress, run.rank_keys, run.device), run.info)
    if run.info.is_main:
        with run.clock.phase('write'):
            save_training_state(run.paths['state'], run.model, run.opt, run.progress, writer=run.writer, ranks=ranks,
                                identity=run.identity)


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


def to_tensors(device, *arrays):
    """Return the numpy arrays as torch tensors on device."""
    return [torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in arrays]


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
