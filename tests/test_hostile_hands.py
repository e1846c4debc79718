"""Careless hands: Ctrl-C stops a run as a scheduler's notice does (the update finished, the state saved, one line with
the command that resumes it, exit 130) and a second Ctrl-C stops it at once saying which update the state on disk
holds; the same command run again without --resume is refused instead of overwriting an unfinished run (a finished
run's outputs may be replaced, --restart starts over on purpose); and a run that fails ends its stderr with the error,
its progress written as whole lines when stderr is a file (no carriage returns, no escape sequences).

Real pretrain.py processes where the signal or the stream matters (tiny models, as test_faults.py), the rest in this
process (real signals to it, as test_faults.py's second-signal test); every wait is for a line the run prints, never a
fixed sleep.
"""
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

import checkpoint
import pretrain
import train
import trainer
import untrusted
import utils
from tests.helpers import roc_cli_args, roc_workdir, wait_for_line, write_structured_corpus

ROOT = Path(__file__).resolve().parents[1]


def default_sigint():
    """In the child: Ctrl-C's default disposition (a shell's background job would inherit it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def state_updates(path):
    """Return the n_updates of the training state at path."""
    with safe_open(str(path), framework='pt') as f:
        return json.loads(f.metadata()['state'])['progress']['n_updates']


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    return write_structured_corpus(tmp_path_factory.mktemp('hands_corpus'), n_docs=200)


def pretrain_args(corpus, out, *extra):
    """pretrain.py's arguments of a tiny run: 6 updates, evaluated every 2, no periodic saves."""
    return ['--corpus', str(corpus), '--out', str(out), '--n_embd', '32', '--n_head', '4', '--n_layer', '2',
            '--n_ctx', '24', '--n_batch', '8', '--lr', '3e-3', '--warmup_updates', '2', '--n_updates', '6',
            '--eval_every', '2', '--eval_windows', '4', '--save_every', '0', '--device', 'cpu', '--quiet', *extra]


class Began(Exception):
    """Raised in place of a run's training: Launch.begin let it start."""


def began(*arguments):
    raise Began()


def test_ctrl_c_stops_like_sigterm_and_the_same_command_never_overwrites_the_unfinished_run(corpus, tmp_path, capsys,
                                                                                            monkeypatch):
    out = tmp_path / 'run'
    state = out / 'train_state.safetensors'
    argv = pretrain_args(corpus, out)
    proc = subprocess.Popen([sys.executable, str(ROOT / 'pretrain.py'), *argv], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    wait_for_line(proc, 'update 2:')
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    assert 'Traceback' not in stderr and 'KeyboardInterrupt' not in stderr
    stopped = state_updates(state)
    assert 2 <= stopped < 6 and not (out / 'model.safetensors').exists()
    assert stderr.strip().splitlines()[-1] == (
        f'pretrain.py: stopped by SIGINT after update {stopped}; the training state is in {state}; resume with: '
        f'python pretrain.py {" ".join(argv)} --resume auto')

    # the same command again (one up-arrow): refused in one line, the state untouched
    saved = state.read_bytes()
    assert pretrain.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f'pretrain.py: error: {state} holds the training state of an unfinished run (update {stopped} of '
                   f'6); a new run does not overwrite it: continue it with --resume auto, or start over with '
                   f'--restart (which deletes it)']
    assert state.read_bytes() == saved

    # --resume auto continues it to its end
    assert pretrain.main(argv + ['--resume', 'auto']) == 0
    assert f'resuming at update {stopped} of 6' in capsys.readouterr().out
    assert state_updates(state) == 6 and (out / 'model.safetensors').is_file()

    # the same command over a finished run may start (training replaced by Began: only whether it starts matters); it
    # removes the finished state at once, so that a new run stopped before its first save leaves no old state behind
    # for --resume auto to take for its own
    finished = state.read_bytes()
    monkeypatch.setattr(pretrain, 'run_launched', began)
    with pytest.raises(Began):
        pretrain.main(argv)
    assert f'starting afresh: removed {state}' in capsys.readouterr().out
    assert not state.exists()
    state.write_bytes(finished)

    # the unfinished state again: --restart starts over on purpose, deleting it; not with --resume
    state.write_bytes(saved)
    assert pretrain.main(argv + ['--restart', '--resume']) == 2
    assert '--restart starts the run over, --resume continues it' in capsys.readouterr().err
    assert state.read_bytes() == saved
    with pytest.raises(Began):
        pretrain.main(argv + ['--restart'])
    assert f'--restart: removed {state}' in capsys.readouterr().out
    assert not state.exists()


def test_a_second_ctrl_c_stops_at_once_saying_which_update_the_state_holds(corpus, tmp_path, monkeypatch, capsys):
    """Real signals to this process: Ctrl-C during the save of update 2 (the run sees it at update 3's step), a second
    one as the stop's own save begins: the run stops before writing it, and says the state is update 2's."""
    # Ctrl-C caught as in a terminal, even where the suite runs as a shell's background job (SIGINT ignored)
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        argv = pretrain_args(corpus, tmp_path / 'run', '--save_every', '2')
        state = tmp_path / 'run' / 'train_state.safetensors'
        real_save, sent, before = trainer.save_training_state, [], signal.getsignal(signal.SIGINT)

        def save_and_interrupt(*args, **kwargs):
            sent.append(1)
            os.kill(os.getpid(), signal.SIGINT)
            return real_save(*args, **kwargs)
        monkeypatch.setattr(trainer, 'save_training_state', save_and_interrupt)
        assert pretrain.main(argv) == 130
        assert len(sent) == 2 and signal.getsignal(signal.SIGINT) is before  # the handler is put back
        monkeypatch.undo()
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f'pretrain.py: stopped at once by a second Ctrl-C after update 3; the training state in {state} '
                       f'is that of update 2, its last save: update 3 is lost; resume with: python pretrain.py '
                       f'{" ".join(argv)} --resume auto']
        assert state_updates(state) == 2 and not [p for p in tmp_path.rglob('*') if '.tmp' in p.name]
        assert not [p for p in tmp_path.rglob('*.lock')]  # the run's lock released
    finally:
        signal.signal(signal.SIGINT, outer)


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    return roc_workdir(tmp_path_factory.mktemp('hands'))


def write_state(path, progress, identity):
    """Write a training state with this progress and identity (and one tensor) at path; return its bytes."""
    import torch
    from safetensors.torch import save_file
    meta = dict(format=checkpoint.STATE_FORMAT, identity=identity, progress=progress, opt_steps={}, ranks=[])
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({'x': torch.zeros(1)}, str(path), metadata={'state': json.dumps(meta)})
    return path.read_bytes()


def test_train_py_never_starts_afresh_over_an_unfinished_run_either(workdir, tmp_path, monkeypatch, capsys):
    argv = roc_cli_args(workdir, '--log_dir', str(tmp_path / 'log'), '--save_dir', str(tmp_path / 'save'),
                        '--submission_dir', str(tmp_path / 'sub'))
    state = tmp_path / 'save' / 'tiny' / 'train_state.safetensors'
    saved = write_state(state, dict(epoch=1, n_updates=7), {'--n_iter': 2})
    monkeypatch.setattr(train, 'run_launched', began)
    assert train.main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f'train.py: error: {state} holds the training state of an unfinished run (1 of 2 epochs done, update 7); a '
        f'new run does not overwrite it: continue it with --resume auto, or start over with --restart (which '
        f'deletes it)']
    assert state.read_bytes() == saved
    write_state(state, dict(epoch=2, n_updates=10), {'--n_iter': 2})  # its last epoch saved: finished
    with pytest.raises(Began):
        train.main(argv)


def test_a_failing_run_ends_its_log_file_with_the_error_and_no_bar_debris(corpus, tmp_path):
    """stderr redirected to a file, the progress bar on: a non-finite loss (a learning rate of 1e30) while the bar is
    open; the error is the file's last line, and no '\\r' or escape sequence is in it (tqdm's would be)."""
    argv = [a for a in pretrain_args(corpus, tmp_path / 'run', '--lr', '1e30') if a != '--quiet']
    log = tmp_path / 'stderr.log'
    with open(log, 'wb') as f:
        done = subprocess.run([sys.executable, str(ROOT / 'pretrain.py'), *argv], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=f, timeout=300)
    text = log.read_bytes().decode('utf-8')
    assert done.returncode == 2, text
    assert '\r' not in text and '\x1b' not in text
    last = text.splitlines()[-1]
    assert text.endswith('\n') and last.startswith('pretrain.py: error: non-finite loss nan at update ')


# the pieces, in this process

def test_a_bar_on_a_stream_that_is_not_a_terminal_writes_whole_lines_and_nothing_when_an_error_ends_it(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(utils, 'PROGRESS_INTERVAL_S', 0.0)  # a line at every update
    bar = utils.progress(total=3, desc='pre-training', unit='update', file=stream)
    assert isinstance(bar, utils.LineProgress)
    with bar:
        for k in range(3):
            bar.update(1)
            bar.set_postfix(loss=f'{k:.3f}')
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4 and lines[-1].startswith('pre-training: 3/3 update (100%), ')
    assert lines[-1].endswith('loss=2.000') and '\r' not in stream.getvalue() and '\x1b' not in stream.getvalue()
    assert [len(list(utils.progress(range(5), file=stream)))] == [5]

    stream = io.StringIO()
    with pytest.raises(ValueError):
        with utils.progress(range(4), desc='encoding', file=io.StringIO()) as quiet, \
                utils.progress(range(4), desc='epoch', file=stream, interval=3600) as bar:
            for _ in bar:
                raise ValueError('boom')
    assert stream.getvalue() == '' and quiet.disable  # closed, silently: the error is printed last
    left = utils.progress(total=2, file=stream, interval=3600)
    left.update(1)
    utils.close_bars()  # what the scripts call before printing an error
    left.update(1)
    left.close()
    assert stream.getvalue() == ''


def test_resume_command_drops_restart_and_resume():
    argv = ['--corpus', 'c', '--restart', '--out', 'o', '--resume', 'auto']
    assert trainer.resume_command('pretrain.py', argv) == 'python pretrain.py --corpus c --out o --resume auto'


@pytest.mark.parametrize('content', [b'', b'\x00' * 7, (10 ** 9).to_bytes(8, 'little') + b'{}',
                                     (2).to_bytes(8, 'little') + b'{}', (5).to_bytes(8, 'little') + b'[1,2]'])
def test_a_state_that_cannot_be_told_finished_is_refused_too(tmp_path, content):
    path = tmp_path / 'train_state.safetensors'
    path.write_bytes(content)
    with pytest.raises(untrusted.BadFile, match='train_state.safetensors'):
        checkpoint.read_state_metadata(str(path))
    with pytest.raises(trainer.UnfinishedRun, match=r'it may be an unfinished run.s: .* --restart'):
        trainer.check_not_unfinished(str(path), pretrain.state_standing)
    assert path.read_bytes() == content


def test_a_stop_signal_during_the_last_update_ends_the_run_there_with_its_state_saved(tmp_path):
    """The last update skips stop_if_requested (its evaluation and save come next); a signal then must still end the
    run when the loop ends, not be forgotten (a sweep's next run would start, a scheduler's kill would follow)."""
    import torch
    model = torch.nn.Linear(2, 1)
    launch = trainer.Launch(trainer.RunSettings(), paths={'state': str(tmp_path / 'train_state.safetensors')})
    run = trainer.Run(launch, model, torch.optim.SGD(model.parameters(), lr=0.1),
                      trainer.StateSpec(identity={}, template={'n_updates': 6}))
    before = signal.getsignal(signal.SIGTERM)
    with run.stop_signals():
        pass  # no signal: the run goes on
    with pytest.raises(trainer.Preempted) as info:
        with run.stop_signals():
            os.kill(os.getpid(), signal.SIGTERM)  # recorded by the run's handler, acted on when the block ends
    assert info.value.signum == signal.SIGTERM and info.value.n_updates == 6
    assert signal.getsignal(signal.SIGTERM) == before


@pytest.mark.parametrize('variable', ['TORCHELASTIC_RESTART_COUNT', 'SLURM_RESTART_COUNT'])
def test_restart_in_a_restarted_attempt_continues_the_state_its_first_attempt_began(tmp_path, monkeypatch, variable):
    """torchrun --max-restarts and a requeued job run the same command again: --restart must not delete the progress
    that the job's first attempt made since it started over."""
    state = tmp_path / 'train_state.safetensors'
    state.write_bytes(b'the first attempt\'s state')
    files = trainer.RunFiles({'state': str(state)}, (str(tmp_path),), (str(tmp_path / 'run.lock'),))
    settings = trainer.RunSettings(seed=0, device='cpu', resume=False, restart=True)
    monkeypatch.setenv(variable, '1')
    with trainer.Launch.begin(settings, files) as launch:
        assert launch.settings.resume is True and launch.settings.restart is False
    assert state.read_bytes() == b'the first attempt\'s state'
    monkeypatch.setenv(variable, '0')  # the first attempt itself starts over
    with trainer.Launch.begin(settings, files):
        assert not state.exists()


def test_a_bar_tqdm_would_erase_writes_no_closing_line():
    kept, erased = io.StringIO(), io.StringIO()
    for stream, leave in ((kept, True), (erased, False)):
        for _ in utils.progress(range(3), file=stream, desc='evaluating', leave=leave):
            pass
    assert kept.getvalue().startswith('evaluating: 3/3 it (100%)') and erased.getvalue() == ''


def test_a_sweep_over_an_unfinished_later_run_is_refused_before_its_first_run(workdir, tmp_path, monkeypatch, capsys):
    """--n_runs 2 with the second seed's run unfinished: refused at once, not after the first was trained again."""
    argv = roc_cli_args(workdir, '--log_dir', str(tmp_path / 'log'), '--save_dir', str(tmp_path / 'save'),
                        '--submission_dir', str(tmp_path / 'sub'), '--n_runs', '2')
    state = tmp_path / 'save' / 'tiny_seed43' / 'train_state.safetensors'  # the second seed's run (--seed 42 + 1)
    saved = write_state(state, dict(epoch=1, n_updates=7), {'--n_iter': 2})
    started = []
    monkeypatch.setattr(train, 'run_fine_tuning', lambda settings: started.append(settings.desc))
    assert train.main(argv) == 2
    assert started == [] and f'{state} holds the training state of an unfinished run' in capsys.readouterr().err
    assert state.read_bytes() == saved
