"""Tests for sharding.py under 2 and 3 processes (gloo on the CPU): a sharded run's losses and weights are the
one-process run's, each rank holds its share of the parameters, gradients and optimizer state, and a sharded state
written on 2 processes resumes on 3 where the run left off."""
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from model_gpt2 import GPT2Config, GPT2LMHeadModel
from model_pytorch import LMModel
from opt import OpenAIAdam
from sharding import RankMemory, rank_memory
from tests.helpers import free_port

CFG = GPT2Config(n_vocab=50, n_ctx=16, n_embd=32, n_head=4, n_layer=2)
GLOBAL_BATCH, N_STEPS, SAVE_AT = 12, 5, 3
TOLERANCE = 1e-5  # fp32: the ranks sum the gradients in another order than one process


def new_model_and_opt(shard=False):
    """Return the tiny GPT-2 LM of seed 0 (sharded over the process group with shard) and its OpenAIAdam, whose
    clipping acts at every step (gradient norms 0.5-1.3 against 0.5)."""
    from sharding import shard_model
    torch.manual_seed(0)
    model = GPT2LMHeadModel(CFG)
    if shard:
        shard_model(model)
    opt = OpenAIAdam(model.parameters(), lr=1e-2, schedule='warmup_linear', warmup=0.2, t_total=10, l2=0.01,
                     max_grad_norm=0.5)
    return model, opt


def batch(step):
    """Return the global batch of step: ids [GLOBAL_BATCH, n_ctx]."""
    return torch.randint(0, CFG.n_vocab, (GLOBAL_BATCH, CFG.n_ctx), generator=torch.Generator().manual_seed(step))


def lm_loss(model, ids):
    """Return the mean next-token loss of ids [B, T]."""
    logits, _ = model(ids[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1))


def train(model, opt, steps, rank=0, world=1, on_step=None):
    """Return the global batch's mean loss of each step of steps, each rank training on its share of the batch."""
    import torch.distributed as dist
    losses = []
    for step in steps:
        loss = lm_loss(model, batch(step).chunk(world)[rank])
        loss.backward()
        if on_step is not None:
            on_step(step)
        opt.step()
        opt.zero_grad()
        loss = loss.detach()
        if world > 1:
            dist.all_reduce(loss)
        losses.append(float(loss) / world)
    return losses


def worker(rank, world, port, out_dir, phase):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist
    from sharding import gathered_weights, load_sharded_state, local_numel, save_sharded_state
    dist.init_process_group('gloo', rank=rank, world_size=world)
    try:
        model, opt = new_model_and_opt(shard=True)
        out = {}
        if phase == 'train':
            save_sharded_state(os.path.join(out_dir, 'state0'), model, opt, {'step': 0})

            def count(step):
                if step == 0:
                    params = list(model.parameters())
                    out['numel'] = (local_numel(params), local_numel([p.grad for p in params]))

            out['losses'] = train(model, opt, range(SAVE_AT), rank, world, count)
            moments = [s[k] for s in opt.state.values() for k in ('m', 'v')]
            out['numel'] += (local_numel(moments),)
            save_sharded_state(os.path.join(out_dir, 'state'), model, opt, {'step': SAVE_AT})
            out['losses'] += train(model, opt, range(SAVE_AT, N_STEPS), rank, world)
        else:
            first = load_sharded_state(os.path.join(out_dir, 'state0'), model, opt, {'step': -1})
            out['state0_steps'] = (first['step'], sorted({s['step'] for s in opt.state.values()}))
            extra = load_sharded_state(os.path.join(out_dir, 'state'), model, opt, {'step': -1})
            out['losses'] = train(model, opt, range(extra['step'], N_STEPS), rank, world)
        out['weights'] = gathered_weights(model)
        torch.save(out, os.path.join(out_dir, f'{phase}_{rank}.pt'))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """Return {(phase, rank): results}: 2 ranks train 5 steps writing a sharded state at step 0 and 3; 3 ranks then
    load both and resume the second."""
    out = tmp_path_factory.mktemp('sharded')
    for phase, world in (('train', 2), ('resume', 3)):
        mp.start_processes(worker, args=(world, free_port(), str(out), phase), nprocs=world, join=True,
                           start_method='spawn')
    results = {}
    for phase, world in (('train', 2), ('resume', 3)):
        for rank in range(world):
            results[phase, rank] = torch.load(out / f'{phase}_{rank}.pt', weights_only=True)
    return results


@pytest.fixture(scope='module')
def one_process():
    """Return (losses, weights) of the same 5 steps in one process, unsharded."""
    model, opt = new_model_and_opt()
    return train(model, opt, range(N_STEPS)), model.state_dict()


def test_two_sharded_ranks_train_as_one_process(runs, one_process):
    losses, weights = one_process
    assert runs['train', 0]['losses'] == pytest.approx(losses, abs=TOLERANCE)
    gathered = runs['train', 0]['weights']
    assert sorted(gathered) == sorted(weights) and runs['train', 1]['weights'] == {}  # whole on the main rank only
    for name, value in weights.items():
        torch.testing.assert_close(gathered[name], value, atol=TOLERANCE, rtol=0)


def test_each_rank_holds_half_of_the_parameters_gradients_and_moments(runs):
    n_params = sum(p.numel() for p in GPT2LMHeadModel(CFG).parameters())
    params, grads, moments = zip(*(runs['train', rank]['numel'] for rank in range(2)))
    assert sum(params) == sum(grads) == n_params and sum(moments) == 2 * n_params
    assert all(abs(share - n_params / 2) <= n_params * 0.02 for share in params + grads)


def test_a_state_written_by_two_ranks_resumes_on_three(runs, one_process):
    losses, weights = one_process
    assert runs['resume', 0]['losses'] == pytest.approx(losses[SAVE_AT:], abs=TOLERANCE)
    for name, value in weights.items():
        torch.testing.assert_close(runs['resume', 0]['weights'][name], value, atol=TOLERANCE, rtol=0)
    assert runs['resume', 0]['state0_steps'] == (0, [0])  # written before any update: no update counted


def test_rank_memory_shards_everything_but_the_activations():
    gpt2_124m = GPT2Config.preset('124M')
    ddp = rank_memory(124_439_808, 4, sharded=False, cfg=gpt2_124m, tokens_per_rank=8 * 1024)
    fsdp = rank_memory(124_439_808, 4, sharded=True, cfg=gpt2_124m, tokens_per_rank=8 * 1024)
    assert ddp.params == ddp.grads == 4 * 124_439_808 and ddp.optimizer == 2 * ddp.params
    assert fsdp.params * 4 == ddp.params and fsdp.optimizer * 4 == ddp.optimizer
    assert fsdp.activations == ddp.activations > 0
    assert ddp.total == ddp.params + ddp.grads + ddp.optimizer + ddp.activations
    assert rank_memory(10, 3, sharded=True) == RankMemory(16, 16, 32, 0)  # 4 of the 10 on the first ranks


def test_the_memory_table_in_the_docs_is_rank_memorys():
    text = (Path(__file__).resolve().parents[1] / 'docs' / 'distributed.md').read_text()
    with torch.device('meta'):
        models = [('GPT-1', LMModel())] + [(f'GPT-2 {size}', GPT2LMHeadModel(GPT2Config.preset(size)))
                                           for size in ('124M', '355M', '774M', '1558M')]
    for name, model in models:
        n = sum(p.numel() for p in model.parameters())
        cells = [rank_memory(n, 1, sharded=False).total] + [rank_memory(n, w, sharded=True).total for w in (2, 4, 8)]
        row = f"| {name} | {n:,} | " + ' | '.join(f'{c / 2 ** 30:.2f}' for c in cells) + ' |'
        assert row in text, row
    per_token = rank_memory(1, 1, True, GPT2Config.preset('1558M'), 1024, activation_bytes=2).activations
    assert f'{per_token / 2 ** 30:.1f} GiB a sequence of 1,024 tokens' in text
