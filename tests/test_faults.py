"""The faults a cluster job meets, on real processes: preemption signals, a SIGKILL of the whole job, a worker killed
under torchrun with restarts, a full disk, a second run on the same folders, a state that is not this run's.

train.py and pretrain.py on tiny models on the CPU; torchrun with gloo for the multi-process cases. A run that a
fault needs as a process of its own (a signal or a kill sent to it, a file size limit, a lock it holds) is a subprocess;
the rest (the resumes, a second run meeting the lock, a full disk simulated) call the script's main in this process.
Every wait is for an observable event (a state file written, a lock file taken, a line printed), never a fixed sleep.
"""
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import checkpoint
import pretrain
import train
import trainer
from tests.helpers import (children, roc_cli_args, roc_workdir, torchrun, torchrun_env, wait_for, wait_for_line,
                           wait_until_unlocked, write_structured_corpus)

ROOT = Path(__file__).resolve().parents[1]


def outputs(base):
    """Return train.py's output flags writing under base."""
    return ['--log_dir', str(base / 'log'), '--save_dir', str(base / 'save'), '--submission_dir',
            str(base / 'submission')]


def train_args(d, base, *extra):
    """Return train.py's arguments of the tiny ROCStories run of these tests (3 epochs of 5 updates, dropout on)."""
    return roc_cli_args(d, '--submit', '--n_iter', '3', *outputs(base), *extra)


def state_path(base):
    return base / 'save' / 'tiny' / 'train_state.safetensors'


def read_state(path):
    """Return (metadata, model tensors) of a training state."""
    with safe_open(str(path), framework='pt') as f:
        meta = json.loads(f.metadata()['state'])
        model = {k: f.get_tensor(k) for k in f.keys() if k.startswith('model/')}
    return meta, model


def log_records(path):
    """Return a log's records after its header, without their times."""
    with open(path) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in ('time', 'tokens_per_s')} for line in f][1:]


def assert_same_run(base, reference):
    """Assert that the train.py run under base ended exactly as the one under reference: log, submission, final
    weights, best weights."""
    assert log_records(base / 'log' / 'tiny.jsonl') == log_records(reference / 'log' / 'tiny.jsonl')
    assert ((base / 'submission' / 'ROCStories.tsv').read_text()
            == (reference / 'submission' / 'ROCStories.tsv').read_text())
    (meta, weights), (ref_meta, ref_weights) = read_state(state_path(base)), read_state(state_path(reference))
    assert meta['progress']['n_updates'] == ref_meta['progress']['n_updates'] == 15
    assert weights.keys() == ref_weights.keys() and all(torch.equal(weights[k], ref_weights[k]) for k in weights)
    best, ref_best = (load_file(str(p / 'save' / 'tiny' / 'best_params.safetensors')) for p in (base, reference))
    assert best.keys() == ref_best.keys() and all(torch.equal(best[k], ref_best[k]) for k in best)
    assert not [p for p in base.rglob('*') if '.tmp' in p.name or p.name.endswith('.lock')]






def worker_of_rank(agent_pid, rank):
    """Return the process id of torchrun's worker of rank (read from its environment), or None."""
    for pid in children(agent_pid):
        try:
            with open(f'/proc/{pid}/environ', 'rb') as f:
                env = dict(item.split(b'=', 1) for item in f.read().split(b'\0') if b'=' in item)
        except OSError:
            continue
        if env.get(b'RANK') == str(rank).encode():
            return pid
    return None


def resume_line(stderr, script):
    """Return the command a stopped run printed to resume it as the script's arguments (its main runs them here: the
    resumed run needs no fresh interpreter)."""
    line = next(line for line in stderr.splitlines() if 'resume with: ' in line)
    argv = shlex.split(line.split('resume with: ', 1)[1])
    assert argv[:2] == ['python', script] and argv[-2:] == ['--resume', 'auto'], line
    return argv[2:]


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    return roc_workdir(tmp_path_factory.mktemp('faults'))


@pytest.fixture(scope='module')
def reference_one(workdir):
    """The uninterrupted single-process run."""
    base = workdir / 'reference_one'
    assert train.main(train_args(workdir, base)) == 0
    return base


@pytest.fixture(scope='module')
def reference_two(workdir):
    """The uninterrupted two-process run (torchrun, gloo)."""
    base = workdir / 'reference_two'
    done = subprocess.run(torchrun('train.py', train_args(workdir, base)), cwd=workdir, env=torchrun_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-8000:]
    return base


# 1. Preemption

def test_sigterm_stops_after_the_update_in_progress_and_the_printed_command_resumes_exactly(workdir, reference_one,
                                                                                            monkeypatch, capsys):
    base = workdir / 'sigterm'
    proc = subprocess.Popen([sys.executable, str(ROOT / 'train.py'), *train_args(workdir, base)], cwd=workdir,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_line(proc, '1 5 ')  # the evaluation after the first epoch: the run is at update 5 of 15
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    meta, _ = read_state(state_path(base))
    stopped = meta['progress']['n_updates']
    assert 5 <= stopped < 15  # no periodic saves (--save_every 0): the stop itself saved the state
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f'train.py: stopped by SIGTERM after update {stopped}; the training state is in '
                           f'{state_path(base)}; resume with: python train.py ')
    assert 'Traceback' not in stderr
    monkeypatch.chdir(workdir)
    capsys.readouterr()
    assert train.main(resume_line(stderr, 'train.py')) == 0
    assert f'--resume auto: resuming from {state_path(base)}' in capsys.readouterr().out
    assert_same_run(base, reference_one)


def test_a_second_signal_during_the_save_changes_nothing(workdir, reference_one, monkeypatch, capsys):
    """Real signals to this process: the first during the save of update 2 (the run stops after update 3), the
    second during the stop's own save; the state is whole, and resuming it ends as the uninterrupted run."""
    base = workdir / 'two_signals'
    real_save, sent, before = trainer.save_training_state, [], signal.getsignal(signal.SIGTERM)

    def save_and_signal(*args, **kwargs):
        caught = [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)]
        assert all(callable(h) for h in caught), 'the stop signals are not caught: they would end pytest'
        os.kill(os.getpid(), signal.SIGTERM if not sent else signal.SIGUSR1)
        sent.append(1)
        return real_save(*args, **kwargs)
    monkeypatch.setattr(trainer, 'save_training_state', save_and_signal)
    assert train.main(train_args(workdir, base, '--save_every', '2')) == 128 + signal.SIGTERM
    assert len(sent) == 2  # update 2's save, then the stop's at update 3
    assert 'stopped by SIGTERM after update 3' in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before  # the handlers are put back
    monkeypatch.undo()
    meta, _ = read_state(state_path(base))
    assert meta['progress']['n_updates'] == 3
    assert train.main(train_args(workdir, base, '--save_every', '2', '--resume')) == 0
    assert_same_run(base, reference_one)


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    return write_structured_corpus(tmp_path_factory.mktemp('faults_corpus'))


def pretrain_args(corpus, out, *extra):
    """Return pretrain.py's arguments of a tiny run with dropout: 30 updates, evaluated every 5."""
    return ['--corpus', str(corpus), '--out', str(out), '--n_embd', '32', '--n_head', '4', '--n_layer', '2',
            '--n_ctx', '24', '--n_batch', '8', '--lr', '3e-3', '--warmup_updates', '5', '--n_updates', '30',
            '--eval_every', '5', '--eval_windows', '8', '--save_every', '0', '--device', 'cpu', '--quiet', *extra]


def assert_same_pretraining(out, reference):
    assert log_records(out / 'log.jsonl') == log_records(reference / 'log.jsonl')
    weights, ref = load_file(str(out / 'model.safetensors')), load_file(str(reference / 'model.safetensors'))
    assert weights.keys() == ref.keys() and all(torch.equal(weights[k], ref[k]) for k in ref)


@pytest.fixture(scope='module')
def pretrain_reference(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp('pretrain_reference') / 'run'
    assert pretrain.main(pretrain_args(corpus, out)) == 0
    return out


def test_pretraining_stops_on_sigusr1_and_resumes_exactly(corpus, pretrain_reference, tmp_path, monkeypatch):
    """SLURM's --signal=USR1@... notice, sent to pretrain.py after its evaluation at update 10."""
    out = tmp_path / 'run'
    proc = subprocess.Popen([sys.executable, str(ROOT / 'pretrain.py'), *pretrain_args(corpus, out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_line(proc, 'update 10:')
    proc.send_signal(signal.SIGUSR1)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGUSR1, stderr
    meta, _ = read_state(out / 'train_state.safetensors')
    assert 10 <= meta['progress']['n_updates'] < 30 and not (out / 'model.safetensors').exists()
    assert f"pretrain.py: stopped by SIGUSR1 after update {meta['progress']['n_updates']}" in stderr
    monkeypatch.chdir(ROOT)
    assert pretrain.main(resume_line(stderr, 'pretrain.py')) == 0
    assert_same_pretraining(out, pretrain_reference)


# 2. Exact resume under torchrun

def test_two_processes_killed_at_once_and_resumed_end_as_the_uninterrupted_two_process_run(workdir, reference_two):
    base = workdir / 'killed_two'
    argv = train_args(workdir, base, '--save_every', '1')
    proc = subprocess.Popen(torchrun('train.py', argv), cwd=workdir, env=torchrun_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_for(state_path(base).exists, proc, 'training state')
    for pid in [proc.pid] + children(proc.pid):  # the whole job: torchrun and both workers (in their own sessions)
        os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=60)
    wait_until_unlocked(base / 'save' / 'tiny' / 'run.lock')  # the workers are gone too (the kernel dropped it)
    meta, _ = read_state(state_path(base))
    assert meta['progress']['n_updates'] < 15 and len(meta['ranks']) == 2
    with safe_open(str(state_path(base)), framework='pt') as f:
        assert not torch.equal(f.get_tensor('rng/0/torch'), f.get_tensor('rng/1/torch'))  # each rank's dropout
    resumed = subprocess.run(torchrun('train.py', argv + ['--resume']), cwd=workdir, env=torchrun_env(),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-8000:]
    assert_same_run(base, reference_two)


def test_sigterm_to_torchrun_stops_every_rank_at_one_update_and_resumes_exactly(workdir, reference_two, capsys):
    base = workdir / 'sigterm_two'
    argv = train_args(workdir, base)
    proc = subprocess.Popen(torchrun('train.py', argv), cwd=workdir, env=torchrun_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for_line(proc, '1 5 ')  # the first epoch's evaluation
    proc.send_signal(signal.SIGTERM)  # torchrun passes it on to its workers
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode != 0
    meta, _ = read_state(state_path(base))
    stopped = meta['progress']['n_updates']
    assert 5 <= stopped < 15 and len(meta['ranks']) == 2
    assert stderr.count('stopped by SIGTERM') == 1  # the main rank's one line
    assert f'train.py: stopped by SIGTERM after update {stopped}; ' in stderr
    assert 'resume with: torchrun <the same torchrun flags> train.py ' in stderr
    one = workdir / 'sigterm_two_by_one'  # a copy, resumed by one process below
    shutil.copytree(base / 'save', one / 'save')
    resumed = subprocess.run(torchrun('train.py', argv + ['--resume', 'auto']), cwd=workdir, env=torchrun_env(),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-8000:]
    assert_same_run(base, reference_two)

    # the same state resumed by one process (this one): said what stays exact and what does not, and it finishes
    capsys.readouterr()
    assert train.main(train_args(workdir, one, '--resume')) == 0
    assert ('note: resuming with 1 process(es) a state saved by 2: the weights, optimizer, schedule and data order '
            'continue exactly, but each process\'s dropout masks are drawn afresh') in capsys.readouterr().out


def test_pretraining_on_two_processes_stops_and_resumes_with_each_ranks_counters(corpus, tmp_path):
    """Each rank's share of the training loss since the last record is saved per rank: the resumed log's
    train_loss is the uninterrupted two-process run's."""
    full = subprocess.run(torchrun('pretrain.py', pretrain_args(corpus, tmp_path / 'full', '--eval_every', '4')),
                          cwd=ROOT, env=torchrun_env(), capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr[-8000:]
    out = tmp_path / 'stopped'
    argv = pretrain_args(corpus, out, '--eval_every', '4')
    proc = subprocess.Popen(torchrun('pretrain.py', argv), cwd=ROOT, env=torchrun_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for_line(proc, 'update 8:')
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    meta, _ = read_state(out / 'train_state.safetensors')
    assert 8 <= meta['progress']['n_updates'] < 30, stderr[-8000:]
    resumed = subprocess.run(torchrun('pretrain.py', argv + ['--resume']), cwd=ROOT, env=torchrun_env(),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-8000:]
    assert_same_pretraining(out, tmp_path / 'full')


# 3. Automatic restarts

def test_a_worker_killed_under_torchrun_restarts_and_ends_as_the_uninterrupted_run(workdir, reference_two):
    base = workdir / 'restarted'
    argv = train_args(workdir, base, '--save_every', '1', '--resume', 'auto')
    proc = subprocess.Popen(torchrun('train.py', argv, 2, '--max-restarts=1'), cwd=workdir, env=torchrun_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(state_path(base).exists, proc, 'training state')
    victim = worker_of_rank(proc.pid, 1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-8000:]
    assert f'--resume auto: starting afresh, no {state_path(base)}' in stdout  # the first attempt
    assert f'--resume auto: resuming from {state_path(base)}' in stdout  # the restarted one
    assert_same_run(base, reference_two)


def test_resume_auto_starts_afresh_without_a_state_and_plain_resume_still_requires_one(workdir, capsys):
    base = workdir / 'auto'
    with pytest.raises(SystemExit):
        train.parse_args(train_args(workdir, base, '--resume', 'yes'))
    assert "argument --resume: give no value or 'auto', not 'yes'" in capsys.readouterr().err
    assert train.main(train_args(workdir, base, '--resume')) == 2
    assert f'{state_path(base)} is missing: nothing to resume' in capsys.readouterr().err


# 4. A full disk

def test_a_full_disk_at_a_state_save_stops_in_one_line_and_the_previous_state_resumes(workdir, reference_one,
                                                                                      monkeypatch, capsys):
    base = workdir / 'full_disk'
    real_save_file, calls = checkpoint.save_file, []

    def save_file(tensors, filename, metadata=None):
        if 'train_state' in filename:
            calls.append(filename)
            if len(calls) == 3:  # the third state: the disk is full
                with open(filename, 'wb') as f:
                    f.write(b'part of a state')
                raise OSError(28, 'No space left on device')
        return real_save_file(tensors, filename, metadata=metadata)
    monkeypatch.setattr(checkpoint, 'save_file', save_file)
    assert train.main(train_args(workdir, base, '--save_every', '1')) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f'train.py: error: cannot write {state_path(base)} (No space left on device): free space or choose '
                   f'another folder; the files written before stay as they were']
    monkeypatch.undo()
    meta, _ = read_state(state_path(base))
    assert meta['progress']['n_updates'] == 2  # the last state written whole
    assert not [p for p in base.rglob('*') if '.tmp' in p.name]
    assert train.main(train_args(workdir, base, '--save_every', '1', '--resume')) == 0
    assert_same_run(base, reference_one)


def test_a_file_size_limit_stops_a_real_run_in_one_line(workdir):
    """RLIMIT_FSIZE between the size of the best weights and of the training state: the kernel refuses the state's
    write (EFBIG); the run says so in one line, leaves no temporary, and its best weights load."""
    base = workdir / 'fsize'
    limit = 10 * 2 ** 20  # the tiny model's weights: ~5 MB; its state with Adam's moments: ~16 MB

    def limited():
        import resource
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    done = subprocess.run([sys.executable, str(ROOT / 'train.py'), *train_args(workdir, base, '--save_every', '1')],
                          cwd=workdir, capture_output=True, text=True, timeout=300, preexec_fn=limited)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f'train.py: error: cannot write {state_path(base)} (File too large): free space or choose another folder; '
        f'the files written before stay as they were']
    assert not state_path(base).exists() and not [p for p in base.rglob('*') if '.tmp' in p.name]
    assert load_file(str(base / 'save' / 'tiny' / 'best_params.safetensors'))


def test_a_full_disk_at_a_log_write_stops_in_one_line(workdir, monkeypatch, capsys):
    import utils
    base = workdir / 'full_log'
    real_write = utils.ResultLogger._write

    def write(self, record):
        if 'n_updates' in record:  # the first evaluation's record: the disk is full
            raise checkpoint.write_failure(self.path, OSError(28, 'No space left on device'))
        return real_write(self, record)
    monkeypatch.setattr(utils.ResultLogger, '_write', write)
    assert train.main(train_args(workdir, base)) == 2
    log = base / 'log' / 'tiny.jsonl'
    assert capsys.readouterr().err.strip().splitlines() == [
        f'train.py: error: cannot write {log} (No space left on device): free space or choose another folder; the '
        f'files written before stay as they were']


# 5. One run per folder

def test_a_second_run_on_the_same_folders_is_refused_and_the_first_is_not_disturbed(workdir, reference_one,
                                                                                     monkeypatch, capsys):
    """The first run is a process of its own; the second runs in this one (another process than the first)."""
    base = workdir / 'locked'
    lock = base / 'save' / 'tiny' / 'run.lock'
    first = subprocess.Popen([sys.executable, str(ROOT / 'train.py'), *train_args(workdir, base)], cwd=workdir,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: lock.exists() and lock.stat().st_size > 0, first, 'lock')
    first.send_signal(signal.SIGSTOP)  # held still: the second run certainly meets a running first
    monkeypatch.chdir(workdir)
    capsys.readouterr()
    try:
        second = train.main(train_args(workdir, base))
    finally:
        first.send_signal(signal.SIGCONT)
    second_err = capsys.readouterr().err
    assert second == 2
    assert second_err.strip().splitlines() == [
        line for line in second_err.strip().splitlines() if line.startswith('train.py: error: ')]
    assert (f'train.py: error: {base / "save" / "tiny"} is in use by a running job, process {first.pid} on '
            in second_err)
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert_same_run(base, reference_one)


def test_a_lock_left_by_a_killed_run_is_taken_over(corpus, tmp_path, monkeypatch, capsys):
    out = tmp_path / 'run'
    proc = subprocess.Popen([sys.executable, str(ROOT / 'pretrain.py'), *pretrain_args(corpus, out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    wait_for_line(proc, 'update 5:')
    proc.kill()
    proc.wait(timeout=60)
    proc.stdout.close()
    assert json.loads((out / 'run.lock').read_text())['pid'] == proc.pid
    monkeypatch.chdir(ROOT)
    capsys.readouterr()
    assert pretrain.main(pretrain_args(corpus, out, '--resume', 'auto')) == 0  # this process takes the lock over
    assert f'note: taking over {out / "run.lock"}, left by process {proc.pid} on ' in capsys.readouterr().out
    assert not (out / 'run.lock').exists()


# 6. A state that is not this run's

def test_a_state_of_another_run_is_refused_before_anything_is_restored(workdir, reference_one, capsys):
    base = workdir / 'mismatch'
    (base / 'save' / 'tiny').mkdir(parents=True)
    state_path(base).write_bytes(state_path(reference_one).read_bytes())
    assert train.main(train_args(workdir, base, '--lr', '2e-3', '--resume', 'auto')) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"train.py: error: {state_path(base)} was saved by another run (--lr 0.001; this run has 0.002): resume it "
        f"with its own arguments, or give this run other output folders"]
