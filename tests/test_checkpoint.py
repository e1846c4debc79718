"""Tests for checkpoint.py: exact resume, atomic saves, no code execution from checkpoints."""
import os
import pickle
import random

import numpy as np
import pytest
import torch

import checkpoint
from model_pytorch import DoubleHeadModel
from opt import OpenAIAdam
from tests.helpers import small_cfg


def make_run(seed=0):
    torch.manual_seed(seed)
    model = DoubleHeadModel(small_cfg(pdrop=0.2), clf_token=49, task_head_type='multiple_choice', vocab=70,
                            n_ctx=10).train()
    opt = OpenAIAdam(model.parameters(), lr=1e-3, schedule='warmup_linear', warmup=0.1, t_total=10, l2=0.01,
                     max_grad_norm=1)
    return model, opt


def batch():
    """A random batch drawn from every RNG the training loop uses (python, numpy, torch)."""
    n = random.randint(2, 3)
    x = torch.from_numpy(np.random.randint(0, 48, (n, 2, 10))).long()
    x = torch.stack([x, torch.arange(60, 70).expand(n, 2, 10)], -1)
    x[..., -1, 0] = 49
    return x, torch.randint(0, 2, (n,))


def step(model, opt):
    x, y = batch()
    lm_logits, clf_logits = model(x)  # dropout draws from torch's generator
    loss = torch.nn.functional.cross_entropy(clf_logits, y) + 0.5 * lm_logits.square().mean()
    loss.backward()
    opt.step()
    opt.zero_grad()


def seed_all(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def test_resume_is_identical_to_an_uninterrupted_run(tmp_path):
    model_a, opt_a = make_run()
    seed_all(1)
    for _ in range(6):
        step(model_a, opt_a)

    model_b, opt_b = make_run()
    seed_all(1)
    for _ in range(3):
        step(model_b, opt_b)
    path = tmp_path / 'state.safetensors'
    checkpoint.save_training_state(str(path), model_b, opt_b, {'n_updates': 3, 'log': [{'a': 1}]})
    del model_b, opt_b
    seed_all(99)  # whatever happened since is undone by the restore

    model_c, opt_c = make_run(seed=5)
    progress, n_saved = checkpoint.load_training_state(str(path), model_c, opt_c)
    assert progress == {'n_updates': 3, 'log': [{'a': 1}]} and n_saved == 1
    for _ in range(3):
        step(model_c, opt_c)
    for (name, a), c in zip(model_a.named_parameters(), model_c.parameters()):
        assert torch.equal(a, c), name
    assert all(opt_c.state[p]['step'] == 6 for p in model_c.parameters())


def test_the_tied_decoder_is_stored_once_and_restored(tmp_path):
    model, opt = make_run()
    path = str(tmp_path / 's.safetensors')
    checkpoint.save_training_state(path, model, opt, {})
    other, opt2 = make_run(seed=3)
    checkpoint.load_training_state(path, other, opt2)
    assert other.lm_head.decoder.weight is other.transformer.embed.weight
    assert torch.equal(other.lm_head.decoder.weight, model.transformer.embed.weight)


def test_a_crash_during_a_save_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    model, opt = make_run()
    path = tmp_path / 'best.safetensors'
    checkpoint.save_params(model, str(path))
    before = path.read_bytes()
    with torch.no_grad():
        model.transformer.embed.weight.add_(1.0)

    def torn_write(tensors, filename, **kwargs):
        with open(filename, 'wb') as f:
            f.write(b'half a file')
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(checkpoint, 'save_file', torn_write)
    with pytest.raises(OSError, match='No space left'):
        checkpoint.save_params(model, str(path))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ['best.safetensors']
    writer = checkpoint.StateWriter()  # in the background: the error reaches the training thread at wait()
    checkpoint.save_params(model, str(path), writer=writer)
    with pytest.raises(OSError, match='No space left'):
        writer.wait()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ['best.safetensors']
    writer.wait()  # the error is reported once


def test_background_save_writes_the_state_of_the_moment_it_was_called(tmp_path, monkeypatch):
    """Weights and optimizer moments are copied when save_training_state returns: updates made while the file is
    still being written do not reach it; the file equals a synchronous save of the same moment."""
    import threading
    model, opt = make_run()
    step(model, opt)
    progress = {'n_updates': 1}
    sync_path, bg_path = str(tmp_path / 'sync.safetensors'), str(tmp_path / 'bg.safetensors')
    np.random.seed(3)
    checkpoint.save_training_state(sync_path, model, opt, progress)
    release, real_save_file = threading.Event(), checkpoint.save_file

    def held_save_file(tensors, filename, **kwargs):
        release.wait(timeout=60)  # the training thread moves on first
        return real_save_file(tensors, filename, **kwargs)

    monkeypatch.setattr(checkpoint, 'save_file', held_save_file)
    writer = checkpoint.StateWriter()
    np.random.seed(3)
    checkpoint.save_training_state(bg_path, model, opt, progress, writer=writer)
    step(model, opt)  # weights and moments change in place while the write is held
    progress['n_updates'] = 2
    assert not os.path.exists(bg_path)
    release.set()
    writer.wait()
    assert open(bg_path, 'rb').read() == open(sync_path, 'rb').read()


def test_next_save_waits_for_the_previous_one(tmp_path, monkeypatch):
    import threading
    import time
    events, real_save_file = [], checkpoint.save_file

    def slow_save_file(tensors, filename, **kwargs):
        events.append(('start', threading.current_thread().name))
        time.sleep(0.2)
        real_save_file(tensors, filename, **kwargs)
        events.append(('end', threading.current_thread().name))

    monkeypatch.setattr(checkpoint, 'save_file', slow_save_file)
    model, _ = make_run()
    writer = checkpoint.StateWriter()
    for k in range(3):
        checkpoint.save_params(model, str(tmp_path / f'w{k}.safetensors'), writer=writer)
    writer.wait()
    assert [e for e, _ in events] == ['start', 'end'] * 3  # never two writes at once
    assert all(name == 'state-writer' for _, name in events)
    other, _ = make_run(seed=1)
    checkpoint.load_params(other, str(tmp_path / 'w2.safetensors'))
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), model.state_dict().values()))


WRITER_SCRIPT = '''
import sys, torch
sys.path.insert(0, sys.argv[2])
import checkpoint
writer = checkpoint.StateWriter()
for k in range(1, 1000):
    checkpoint.write_tensors(sys.argv[1], {'x': torch.full((4_000_000,), float(k))}, {'k': str(k)}, writer)
    print(k, flush=True)
'''


@pytest.mark.parametrize('n_written, pause_ms', [(1, 0), (2, 5), (3, 15), (4, 30), (6, 60)])
def test_killed_while_writing_in_the_background_leaves_a_complete_file(tmp_path, n_written, pause_ms):
    """SIGKILL a process that keeps saving 16 MB files in the background, at several points: the file on disk
    is always a whole one (loadable, every value that of a single save)."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path
    from safetensors import safe_open
    path = tmp_path / 'state.safetensors'
    proc = subprocess.Popen([sys.executable, '-c', WRITER_SCRIPT, str(path), str(Path(checkpoint.__file__).parent)],
                            stdout=subprocess.PIPE, text=True)
    for _ in range(n_written):  # each printed line: one more save handed to the writer
        proc.stdout.readline()
    time.sleep(pause_ms / 1000)  # kill at different moments of the write under way
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdout.close()
    # a second save waits for the first one: from then on the first file is in place
    assert path.exists() or n_written == 1
    if path.exists():
        with safe_open(str(path), framework='pt') as f:
            k = float(f.metadata()['k'])
            x = f.get_tensor('x')
        assert x.shape == (4_000_000,) and torch.all(x == k) and k >= 1  # one whole save, whichever
    # what else a kill leaves is a temporary (ours, or safetensors' own), never a file under the real name
    assert all(p.name.startswith(('state.safetensors.tmp', '.tmp')) for p in tmp_path.iterdir() if p != path)


class RunsCode:
    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def test_a_crafted_pickle_checkpoint_cannot_run_code(tmp_path):
    marker = tmp_path / 'pwned'
    payload = RunsCode()
    payload.marker = marker
    evil = tmp_path / 'best_params.safetensors'
    evil.write_bytes(pickle.dumps(payload))
    model, opt = make_run()
    with pytest.raises(ValueError, match='not a safetensors file'):
        checkpoint.load_params(model, str(evil))
    with pytest.raises(ValueError, match='not a safetensors training state'):
        checkpoint.load_training_state(str(evil), model, opt)
    assert not marker.exists()
    # the same bytes would run code through plain pickle: the test payload is real
    pickle.loads(evil.read_bytes())
    assert marker.exists()


def test_a_state_of_another_model_is_refused(tmp_path):
    model, opt = make_run()
    path = str(tmp_path / 's.safetensors')
    checkpoint.save_training_state(path, model, opt, {})
    wider = DoubleHeadModel(small_cfg(n_embd=16), clf_token=49, task_head_type='multiple_choice', vocab=70,
                            n_ctx=10)
    with pytest.raises(ValueError, match=r'does not fit this model: transformer\.embed\.weight has shape \(70, 32\), the model \(70, 16\)'):
        checkpoint.load_training_state(path, wider, OpenAIAdam(wider.parameters(), 1e-3, 'warmup_linear', 0.1, 10))
    from safetensors.torch import save_file
    save_file({'x': torch.zeros(1)}, str(tmp_path / 'w.safetensors'))
    with pytest.raises(ValueError, match='not a training state of this port'):
        checkpoint.load_training_state(str(tmp_path / 'w.safetensors'), model, opt)


def test_a_state_with_an_unexpected_tensor_is_refused_like_weights(tmp_path):
    """Resume checks a model's tensors as loading weights does: a name the model lacks is refused, nothing copied."""
    model, opt = make_run()
    path = str(tmp_path / 's.safetensors')
    checkpoint.save_training_state(path, model, opt, {})
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(path, framework='pt') as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    tensors['model/transformer.h.9.ln_1.g'] = torch.ones(32)  # a block this model does not have
    save_file(tensors, path, metadata=metadata)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r'does not fit this model: unexpected transformer\.h\.9\.ln_1\.g'):
        checkpoint.load_training_state(path, model, opt)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_check_writable_names_the_folder(tmp_path):
    checkpoint.check_writable(str(tmp_path / 'new' / 'dir'))
    assert (tmp_path / 'new' / 'dir').is_dir()
    blocker = tmp_path / 'file'
    blocker.write_text('x')
    with pytest.raises(OSError, match=f'cannot write to {blocker}/sub'):
        checkpoint.check_writable(str(blocker / 'sub'))


def test_a_failed_write_is_one_line_naming_the_file(tmp_path, monkeypatch):
    model, _ = make_run()
    path = tmp_path / 'best.safetensors'

    def full_disk(tensors, filename, **kwargs):
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(checkpoint, 'save_file', full_disk)
    with pytest.raises(OSError) as err:
        checkpoint.save_params(model, str(path))
    assert str(err.value).startswith(f'cannot write {path} (No space left on device): free space')
    assert '\n' not in str(err.value) and err.value.errno == 28


LIMITED_WRITE = """
import resource, sys
sys.path.insert(0, {root!r})
import torch, checkpoint
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))  # a quota: no file over 100 kB
try:
    checkpoint.write_tensors({path!r}, {{'w': torch.zeros(100_000)}})
except OSError as err:
    print(err)
"""


def test_a_file_over_the_size_limit_is_refused_by_the_kernel_and_reported(tmp_path):
    """A real write past RLIMIT_FSIZE (EFBIG, reported by safetensors inside its own error): one line naming the
    file, the previous file kept, no temporary left."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = tmp_path / 'state.safetensors'
    checkpoint.write_tensors(str(path), {'w': torch.ones(3)})
    before = path.read_bytes()
    out = subprocess.run([sys.executable, '-c', LIMITED_WRITE.format(root=root, path=str(path))], capture_output=True,
                         text=True, timeout=120)
    assert out.stdout == f'cannot write {path} (File too large): free space or choose another folder; the files ' \
                         f'written before stay as they were\n', out.stderr
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ['state.safetensors']


def test_a_failed_background_write_is_reported_by_check_without_waiting_for_one_under_way(tmp_path, monkeypatch):
    import threading
    writer = checkpoint.StateWriter()
    writer.check()  # nothing written yet
    release = threading.Event()
    writer.submit(release.wait)
    timer = threading.Timer(30, release.set)  # a check that waited would wait for this: the test fails, not hangs
    timer.start()
    writer.check()  # under way: returns at once
    assert not release.is_set()
    timer.cancel()
    release.set()
    writer.wait()

    def fails():
        raise OSError(28, 'No space left on device')
    writer.submit(fails)
    writer._thread.join()
    with pytest.raises(OSError, match='No space left'):
        writer.check()
    writer.check()  # reported once


def rank_records(progress_values):
    """Return rank_record of two ranks whose torch generators stand at different points."""
    records = []
    for r, value in enumerate(progress_values):
        torch.manual_seed(100 + r)
        records.append(checkpoint.rank_record({'loss_sum': value}, ('loss_sum',)))
    return records


def test_every_rank_gets_back_its_own_random_states_and_counters(tmp_path):
    model, opt = make_run()
    path = str(tmp_path / 's.safetensors')
    records = rank_records([1.5, 2.5])
    checkpoint.save_training_state(path, model, opt, {'n_updates': 4, 'loss_sum': 1.5}, ranks=records)
    for rank in (0, 1):
        torch.manual_seed(7)
        progress, n_saved = checkpoint.load_training_state(path, model, opt, checkpoint.Expected(rank=rank, world_size=2))
        assert n_saved == 2 and progress == {'n_updates': 4, 'loss_sum': [1.5, 2.5][rank]}
        assert torch.equal(torch.get_rng_state(), records[rank]['tensors']['torch'])


def test_resumed_by_another_number_of_processes_the_counters_keep_their_sum(tmp_path):
    model, opt = make_run()
    path = str(tmp_path / 's.safetensors')
    checkpoint.save_training_state(path, model, opt, {'n_updates': 4, 'loss_sum': 1.5}, ranks=rank_records([1.5, 2.5]))
    sums = [checkpoint.load_training_state(path, model, opt, checkpoint.Expected(rank=r, world_size=3))[0]['loss_sum'] for r in range(3)]
    assert sums == [4.0, 0.0, 0.0]
    assert checkpoint.load_training_state(path, model, opt, checkpoint.Expected(rank=0, world_size=1))[1] == 2


def snapshot(model, opt):
    """Return what a restore could change: the weights, the optimizer's state, the torch and numpy generators."""
    return ({k: v.clone() for k, v in model.state_dict().items()}, {id(p): dict(s) for p, s in opt.state.items()},
            torch.get_rng_state(), np.random.get_state()[1].copy())


def assert_unchanged(before, model, opt):
    weights, opt_state, torch_rng, numpy_rng = before
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert {id(p): dict(s) for p, s in opt.state.items()} == opt_state
    assert torch.equal(torch.get_rng_state(), torch_rng)
    assert np.array_equal(np.random.get_state()[1], numpy_rng)


def damaged_states(tmp_path, model, opt):
    """Yield (name, path, expected message) of training states this run must refuse."""
    identity = {'--dataset': 'rocstories', 'model': 'GPTConfig(n_embd=32)'}
    good = str(tmp_path / 'good.safetensors')
    checkpoint.save_training_state(good, model, opt, {'n_updates': 1}, identity=identity)
    data = open(good, 'rb').read()
    truncated = tmp_path / 'truncated.safetensors'
    truncated.write_bytes(data[:len(data) // 2])
    yield 'truncated', str(truncated), identity, f'{truncated} is not a safetensors training state (.*): truncated'
    other_task = dict(identity, **{'--dataset': 'sst2'})
    yield 'another task', good, other_task, (rf"{good} was saved by another run \(--dataset 'rocstories'; this run "
                                             rf"has 'sst2'\): resume it with its own arguments")
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(good, framework='pt') as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    older = str(tmp_path / 'older.safetensors')
    save_file(tensors, older, metadata={'state': meta['state'].replace(checkpoint.STATE_FORMAT, 'gpt1-train-state-v1')})
    yield 'another version', older, identity, (rf'{older} is a training state of another version of this port '
                                               rf'\(gpt1-train-state-v1; this version resumes gpt-train-state-v2\)')
    bigger_opt = str(tmp_path / 'opt.safetensors')
    tensors['opt/0/m'] = torch.zeros(3, 3)
    save_file(tensors, bigger_opt, metadata=meta)
    yield 'optimizer of another model', bigger_opt, identity, (rf'{bigger_opt} does not fit this model: optimizer '
                                                               rf'moment m of parameter 0 has shape \(3, 3\)')


def test_a_damaged_or_foreign_state_is_refused_in_one_line_and_nothing_is_restored(tmp_path):
    model, opt = make_run()
    step(model, opt)  # a state to lose: moments, counters
    cases = list(damaged_states(tmp_path, model, opt))
    assert [c[0] for c in cases] == ['truncated', 'another task', 'another version', 'optimizer of another model']
    for name, path, identity, expected in cases:
        other, other_opt = make_run(seed=9)
        step(other, other_opt)
        before = snapshot(other, other_opt)
        with pytest.raises(ValueError, match=expected) as err:
            checkpoint.load_training_state(path, other, other_opt, checkpoint.Expected(identity=identity))
        assert '\n' not in str(err.value), name
        assert_unchanged(before, other, other_opt)


def test_a_state_of_another_size_restores_nothing(tmp_path):
    model, opt = make_run()
    path = str(tmp_path / 's.safetensors')
    checkpoint.save_training_state(path, model, opt, {})
    wider = DoubleHeadModel(small_cfg(n_embd=16), clf_token=49, task_head_type='multiple_choice', vocab=70, n_ctx=10)
    wider_opt = OpenAIAdam(wider.parameters(), 1e-3, 'warmup_linear', 0.1, 10)
    before = snapshot(wider, wider_opt)
    with pytest.raises(ValueError, match='does not fit this model'):
        checkpoint.load_training_state(path, wider, wider_opt)
    assert_unchanged(before, wider, wider_opt)
