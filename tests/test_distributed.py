"""Tests for distributed.py and train.py under several processes (gloo on the CPU)."""
import copy
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import train
from distributed import DistInfo, dist_info, shard
from opt import OpenAIAdam
from tasks import ROCSTORIES
from tests.helpers import ROOT, free_port, load_tf_reference, step_run, tf_model, torchrun_env

CONFIGS = {'accumulate': 1, 'whole_share': 4}  # micro-batch sizes: shares of 4 in micro-batches of 1, or whole


def test_shard_partitions_in_rank_order():
    for n in range(0, 20):
        for world in range(1, 6):
            parts = [shard(n, DistInfo(r, world)) for r in range(world)]
            assert [i for p in parts for i in range(n)[p]] == list(range(n))
            sizes = [p.stop - p.start for p in parts]
            assert max(sizes) - min(sizes) <= 1


def test_dist_info_reads_torchrun_environment():
    assert dist_info({}) == DistInfo(0, 1, 0)
    info = dist_info({'RANK': '3', 'WORLD_SIZE': '4', 'LOCAL_RANK': '1'})
    assert info == DistInfo(3, 4, 1) and not info.is_main


def fixture_batches(arrays, n_steps):
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n_steps):
        idx = rng.integers(0, 3, 8)
        out.append((arrays['X'][idx].astype(np.int64), arrays['M'][idx], arrays['Y'][idx].astype(np.int64)))
    return out


def run_updates(model, info, micro_batch, n_steps=3):
    arrays, _ = load_tf_reference()
    args = train.parse_args(['--n_gpu', '4', '--n_batch', '2', '--micro_batch', str(micro_batch), '--quiet'])
    opt = OpenAIAdam(model.parameters(), lr=1e-2, schedule='warmup_linear', warmup=0.1, t_total=n_steps, l2=0.01,
                     max_grad_norm=1)
    run = step_run(model, opt, args, info=info)
    for xmb, mmb, ymb in fixture_batches(arrays, n_steps):
        train.train_step(run, xmb, mmb, ymb, args.step_settings())
    return model


class GradRecorder:
    """Stands in for the optimizer: keeps a copy of the gradients train_step hands it."""

    def __init__(self, model):
        self.model, self.grads = model, None

    def step(self):
        self.grads = {k: p.grad.detach().clone() for k, p in self.model.named_parameters()}

    def zero_grad(self, set_to_none=True):
        self.model.zero_grad(set_to_none=set_to_none)


def first_update_grads(model, info, micro_batch):
    """The gradients of one update, as the optimizer sees them (all-reduced under DDP)."""
    arrays, _ = load_tf_reference()
    args = train.parse_args(['--n_gpu', '4', '--n_batch', '2', '--micro_batch', str(micro_batch), '--quiet'])
    recorder = GradRecorder(model)
    xmb, mmb, ymb = fixture_batches(arrays, 1)[0]
    train.train_step(step_run(model, recorder, args, info=info), xmb, mmb, ymb, args.step_settings())
    return recorder.grads


def eval_data(arrays):
    rng = np.random.default_rng(1)
    idx = rng.integers(0, 3, 11)
    X, M, Y = arrays['X'][idx].astype(np.int64), arrays['M'][idx], arrays['Y'][idx].astype(np.int64)
    Y = rng.integers(0, 2, 11)  # mixed labels, so accuracies are not trivially 0 or 100
    return train.TaskData(ROCSTORIES, train.Split('train', X, M, Y), (train.Split('va', X[:7], M[:7], Y[:7]),), ())


def worker(rank, world, port, out_dir):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR='127.0.0.1',
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from distributed import close_distributed, init_distributed
    info = dist_info()
    init_distributed(info, torch.device('cpu'), timeout_s=120)
    try:
        arrays, config = load_tf_reference()
        results = {}
        for name, micro in CONFIGS.items():
            model = run_updates(tf_model(arrays, config).train(), info, micro)
            results[name] = {k: v.detach().clone() for k, v in model.named_parameters()}
            results[f'grads_{name}'] = first_update_grads(tf_model(arrays, config).train(), info, micro)
        scores = train.evaluate(tf_model(arrays, config), eval_data(arrays), 9,
                                train.Evaluation(4, torch.device('cpu')), info=info)
        if info.is_main:
            torch.save(results, os.path.join(out_dir, 'params.pt'))
            with open(os.path.join(out_dir, 'scores.json'), 'w') as f:
                json.dump(scores, f)
        close_distributed(synchronize=True)
    finally:
        close_distributed()


@pytest.fixture(scope='module')
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp('ddp')
    mp.start_processes(worker, args=(2, free_port(), str(out)), nprocs=2, join=True, start_method='spawn')
    with open(out / 'scores.json') as f:
        scores = json.load(f)
    return torch.load(out / 'params.pt', weights_only=True), scores


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_two_ranks_update_like_one_process_with_the_same_effective_batch(two_ranks, name):
    arrays, config = load_tf_reference()
    single = run_updates(tf_model(arrays, config).train(), DistInfo(), micro_batch=8)
    base = tf_model(arrays, config)
    for key, p in single.named_parameters():
        if key == 'task_head.clf.b':
            continue  # its gradient is 0 in exact arithmetic: Adam's step on it is rounding noise
        assert not torch.equal(p, base.get_parameter(key)) or key.startswith('transformer.embed')
        torch.testing.assert_close(two_ranks[0][name][key], p.detach(), atol=1e-5, rtol=0, msg=key)


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_two_ranks_see_the_gradient_of_the_whole_batch(two_ranks, name):
    arrays, config = load_tf_reference()
    single = first_update_grads(tf_model(arrays, config).train(), DistInfo(), micro_batch=8)
    for key, g in single.items():
        torch.testing.assert_close(two_ranks[0][f'grads_{name}'][key], g, atol=1e-6, rtol=1e-5, msg=key)


def test_sharded_evaluation_equals_one_process(two_ranks):
    arrays, config = load_tf_reference()
    scores = train.evaluate(tf_model(arrays, config), eval_data(arrays), 9, train.Evaluation(4, torch.device('cpu')))
    assert scores.keys() == two_ranks[1].keys()
    for k in scores:
        assert two_ranks[1][k] == pytest.approx(scores[k], abs=1e-5), k
    assert 0 < scores['va_acc'] < 100


def test_more_processes_than_examples_per_update_is_refused():
    args = train.parse_args(['--n_gpu', '1', '--n_batch', '2'])
    args = dataclasses.replace(args, device='cpu')
    with pytest.raises(ValueError, match='3 processes for batches of n_batch \\* n_gpu = 2'):
        train.check_args(args, DistInfo(0, 3, 0))


def test_single_process_results_do_not_depend_on_the_micro_batch():
    arrays, config = load_tf_reference()
    a = run_updates(tf_model(arrays, config).train(), DistInfo(), micro_batch=8)
    b = run_updates(copy.deepcopy(tf_model(arrays, config)).train(), DistInfo(), micro_batch=3)
    for (key, p), q in zip(a.named_parameters(), b.parameters()):
        if key != 'task_head.clf.b':
            torch.testing.assert_close(p, q, atol=1e-5, rtol=0, msg=key)


# A rank as a user's program runs one: torch._dynamo not imported before the group exists (the test module imports
# train.py, which imports it, so the rank is a fresh interpreter), and a DistributedDataParallel wrapper left behind in
# a reference cycle, as train.py's run leaves its own.
CLOSING_RANK = '''
import json, os, sys
import torch
import torch.distributed as dist
from distributed import close_distributed, dist_info, init_distributed, wrap_ddp
assert 'torch._dynamo' not in sys.modules
info = dist_info()
init_distributed(info, torch.device('cpu'), timeout_s=120)
model = wrap_ddp(torch.nn.Linear(3, 2), torch.device('cpu'), info)
model(torch.randn(4, 3)).sum().backward()
dist.all_gather_object([None] * info.world_size, {'rank': info.rank})
cycle = [model]
cycle.append(cycle)
del model, cycle
close_distributed(synchronize=True)
names = []
for task in os.listdir('/proc/self/task'):
    with open(f'/proc/self/task/{task}/comm') as f:
        names.append(f.read().strip())
print(json.dumps({'dynamo': 'torch._dynamo' in sys.modules, 'threads': names}))
'''


@pytest.mark.skipif(not os.path.isdir('/proc/self/task'), reason="a process's threads are listed in /proc on Linux")
def test_closing_the_group_ends_its_threads_before_the_interpreter_shuts_down():
    # A gloo group that outlives close_distributed keeps its threads into the interpreter's shutdown, where one that
    # frees a tensor aborts the rank now and then after a run that succeeded, and torchrun reports the job failed
    port = free_port()
    env = [dict(torchrun_env(), RANK=str(r), WORLD_SIZE='2', LOCAL_RANK=str(r), MASTER_ADDR='127.0.0.1',
                MASTER_PORT=str(port), PYTHONPATH=str(ROOT)) for r in range(2)]
    ranks = [subprocess.Popen([sys.executable, '-c', CLOSING_RANK], cwd=ROOT, env=e, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for e in env]
    outputs = [rank.communicate(timeout=300) for rank in ranks]  # both ended before any verdict: none left running
    for rank, (out, err) in zip(ranks, outputs):
        assert rank.returncode == 0, err[-3000:]
        report = json.loads(out.strip().splitlines()[-1])
        assert report['dynamo']  # DistributedDataParallel imported it after the group existed
        assert not [name for name in report['threads'] if 'gloo' in name], report['threads']
