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
    progress = checkpoint.load_training_state(str(path), model_c, opt_c)
    assert progress == {'n_updates': 3, 'log': [{'a': 1}]}
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

    def torn_write(model, filename, **kwargs):
        with open(filename, 'wb') as f:
            f.write(b'half a file')
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(checkpoint, 'save_model', torn_write)
    with pytest.raises(OSError, match='No space left'):
        checkpoint.save_params(model, str(path))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ['best.safetensors']


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


def test_check_writable_names_the_folder(tmp_path):
    checkpoint.check_writable(str(tmp_path / 'new' / 'dir'))
    assert (tmp_path / 'new' / 'dir').is_dir()
    blocker = tmp_path / 'file'
    blocker.write_text('x')
    with pytest.raises(OSError, match=f'cannot write to {blocker}/sub'):
        checkpoint.check_writable(str(blocker / 'sub'))
