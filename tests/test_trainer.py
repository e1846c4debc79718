"""Tests for trainer.py's Run: an update reads the device once, at the step, never per micro-batch (a GPU is not held
back by the CPU), in pretrain.py's and train.py's updates too; a non-finite loss stops the update before any weight
moves; a run keeps the host memory it frees for its next allocations."""
import subprocess
import sys

import numpy as np
import pytest
import torch

import opt
import pretrain
import train
from tests.helpers import ROOT, step_run
from model_gpt2 import GPT2Config, GPT2LMHeadModel
from model_pytorch import DoubleHeadModel, GPTConfig
from opt import OpenAIAdam
from trainer import Launch, NonFiniteLoss, Run, RunSettings, StateSpec


def tiny_run():
    """Return a Run training a linear layer with SGD, fp32 on the CPU."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    return Run(Launch(RunSettings(seed=0)), model, torch.optim.SGD(model.parameters(), lr=0.1), StateSpec({}, {}))


def update(run, parts):
    """Make the forward and backward of parts [(weight, x)], as the scripts' steps do; return the update's summed
    weighted losses and the last micro-batch's loss (0-dim tensors on the device)."""
    loss_sum = torch.zeros(())
    with run.autocast():
        for k, (weight, x) in enumerate(parts):
            with run.sync_gradients(last=k == len(parts) - 1):
                loss = run.net(x).square().mean()
                run.backward(loss * weight)
            loss_sum = loss_sum + (loss * weight).detach()
    return loss_sum, loss


def host_reads(monkeypatch):
    """Count the tensor-to-host reads (item, tolist, bool, float, int, numpy, cpu) from now on, the optimizer run as on a
    GPU (on the CPU it also reads its clipping factor, which costs nothing there); return the counter."""
    monkeypatch.setattr(opt, '_reads_are_free', lambda device: False)
    count = []
    for name in ('item', 'tolist', '__bool__', '__float__', '__int__', 'numpy', 'cpu'):
        real = getattr(torch.Tensor, name)

        def counting(self, *args, _real=real, **kwargs):
            count.append(1)
            return _real(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counting)
    return count


def test_micro_batches_never_read_the_loss_on_the_host_and_the_step_reads_it_once(monkeypatch):
    run = tiny_run()
    parts = [(1 / 3, torch.randn(2, 4)) for _ in range(3)]
    count = host_reads(monkeypatch)
    loss_sum, _ = update(run, parts)
    assert count == []  # three micro-batches, no host read
    run.step(loss_sum, report=loss_sum)
    assert len(count) == 1  # the one check of the update, on the device's sum of its losses


def test_step_returns_the_reported_sum_read_with_the_check():
    run = tiny_run()
    loss_sum, _ = update(run, [(1.0, torch.ones(2, 4))])
    assert run.step(loss_sum, report=torch.tensor(2.5, dtype=torch.float64)) == 2.5
    loss_sum, loss = update(run, [(1.0, torch.ones(2, 4))])
    assert run.step(loss_sum, report=loss_sum) == pytest.approx(loss.item())  # the update's loss


def opt_for(model):
    """Return the OpenAIAdam of the paper's recipe over model's parameters."""
    return OpenAIAdam(model.parameters(), lr=6.25e-5, schedule='warmup_linear', warmup=0.002, t_total=10, l2=0.01,
                      max_grad_norm=1.0)


def test_a_pretraining_update_of_three_micro_batches_reads_the_device_once(monkeypatch):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_vocab=60, n_ctx=8, n_embd=16, n_head=2, n_layer=1))
    run = Run(Launch(RunSettings(seed=0)), model, opt_for(model), StateSpec({}, {}), trained=model.transformer)
    stream = np.random.default_rng(0).integers(0, 60, 500).astype(np.uint16)
    count = host_reads(monkeypatch)
    windows, batch = pretrain.Windows(n_ctx=8, n_rows=60, first_position=60), pretrain.UpdateBatch(0, 6, micro=2)
    loss_sum, n_tokens = pretrain.pretrain_step(run, stream, 1, windows, batch)
    assert len(count) == 1 and n_tokens == 48
    assert 0 < loss_sum / n_tokens < 2 * np.log(60)


def test_a_fine_tuning_update_of_three_micro_batches_reads_the_device_once(monkeypatch):
    torch.manual_seed(0)
    cfg = GPTConfig(n_embd=16, n_head=2, n_layer=1, n_vocab=40, n_special=3, n_ctx=8)
    model = DoubleHeadModel(cfg, clf_token=42, task_head_type='multiple_choice', vocab=51)
    settings = train.parse_args(['--n_batch', '6', '--micro_batch', '2', '--seed', '0'])
    run = step_run(model, opt_for(model), settings)
    rng = np.random.default_rng(0)
    xmb = np.stack([rng.integers(0, 40, (6, 2, 8)), np.broadcast_to(np.arange(43, 51), (6, 2, 8))], -1)
    xmb[:, :, 7, 0] = 42
    mmb = np.ones((6, 2, 8), np.float32)
    count = host_reads(monkeypatch)
    clf_loss = train.train_step(run, xmb, mmb, rng.integers(0, 2, 6), settings.step_settings())
    assert len(count) == 1
    assert 0 < clf_loss < 2


def test_a_non_finite_loss_stops_the_update_before_any_weight_moves():
    run = tiny_run()
    before = [p.detach().clone() for p in run.model.parameters()]
    loss_sum, _ = update(run, [(0.5, torch.randn(2, 4)), (0.5, torch.full((2, 4), float('nan')))])
    with pytest.raises(NonFiniteLoss, match='non-finite loss nan'):
        run.step(loss_sum, report=loss_sum)
    assert all(torch.equal(a, b) for a, b in zip(before, run.model.parameters()))
    assert all(p.grad is None for p in run.model.parameters())


def test_run_settings_of_a_scripts_settings_take_its_run_flags():
    assert RunSettings.of(train.parse_args(['--seed', '7', '--resume', 'auto', '--precision', 'bf16'])) == \
        RunSettings(seed=7, device=None, precision='bf16', compile=False, resume='auto', restart=False)
    assert RunSettings.of(pretrain.parse_args(['--corpus', 'c', '--out', 'o', '--compile', '--restart',
                                                       '--device', 'cpu'])) == \
        RunSettings(seed=42, device='cpu', precision='fp32', compile=True, resume=False, restart=True)


FREED_BLOCK_PROBE = '''
import ctypes, sys, torch
import trainer
class MallInfo(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ('arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks', 'fsmblks',
                                               'uordblks', 'fordblks', 'keepcost')]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo
retained = trainer.retain_freed_memory() if sys.argv[1] == 'retain' else None
x = torch.empty(100_000_000 // 4)
x.fill_(1.0)
del x
print(retained, libc.mallinfo2().fordblks)
'''


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason="reads glibc's malloc statistics")
def test_a_run_keeps_the_host_memory_it_frees_for_its_next_allocations():
    """An update frees and allocates the same activations: after retain_freed_memory (Launch.begin) a freed 100 MB
    block stays in malloc's heap, free for the next one; by default it goes back to the OS, to be faulted in again."""
    def probe(mode):
        proc = subprocess.run([sys.executable, '-c', FREED_BLOCK_PROBE, mode], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
        retained, free_bytes = proc.stdout.split()
        return retained, int(free_bytes)
    assert probe('retain')[0] == 'True' and probe('retain')[1] >= 100_000_000
    assert probe('default')[1] < 100_000_000
