"""Tests for sharding.py under 2 and 3 processes (gloo on the CPU): a sharded run's losses and weights are the
one-process run's, each rank holds its share of the parameters, gradients and optimizer state, and a sharded state
written on 2 processes resumes on 3 where the run left off."""
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

import convert
import generate
import pretrain
import train

from model_gpt2 import GPT2Config, GPT2LMHeadModel
from model_pytorch import DoubleHeadModel, LMModel
from opt import OpenAIAdam
from distributed import DistInfo
from sharding import RankMemory, rank_memory
from trainer import RunSettings, resolved_settings
from tests.helpers import (ROOT, children, free_port, roc_cli_args, roc_workdir, torchrun, torchrun_env, wait_for,
                           wait_for_line, wait_until_unlocked, write_structured_corpus)

CFG = GPT2Config(n_vocab=50, n_ctx=16, n_embd=32, n_head=4, n_layer=2)
GLOBAL_BATCH, N_STEPS = 12, 5
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
    """Return the mean next-token loss of ids [B, T] through the transformer's forward, as a training step calls it
    (the tied decoder from the table it returns)."""
    positions = model.transformer.pos_offset + torch.arange(ids.size(1) - 1)
    x = torch.stack([ids[:, :-1], positions.expand(ids.size(0), -1)], dim=-1)  # [B, T] -> [B, T - 1, 2]
    h, we = model.transformer(x, return_we=True)
    logits = F.linear(h, we)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1))


def train_steps(model, opt, steps, rank=0, world=1, on_step=None):
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


def worker(rank, world, port, out_dir):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist
    from sharding import local_numel, replica, skeleton
    dist.init_process_group('gloo', rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        frame = skeleton(GPT2LMHeadModel(CFG))
        model, opt = new_model_and_opt(shard=True)
        out = {}

        def count(step):
            if step == 0:
                params = list(model.parameters())
                out['numel'] = (local_numel(params), local_numel([p.grad for p in params]))

        out['losses'] = train_steps(model, opt, range(N_STEPS), rank, world, count)
        moments = [s[k] for s in opt.state.values() for k in ('m', 'v')]
        out['numel'] += (local_numel(moments),)
        host = replica(model, frame, host=True, keep=rank == 0)
        out['host'] = {} if host is None else host.state_dict()
        out['on_device'] = replica(model, frame).state_dict()  # every rank's whole copy
        out['ties'] = gpt1_ties_after_sharding()
        torch.save(out, os.path.join(out_dir, f'{rank}.pt'))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def gpt1_ties_after_sharding():
    """Return (the LM decoder is the sharded table, the task head sharded too) of a tiny GPT-1 DoubleHeadModel."""
    from torch.distributed.tensor import DTensor

    from model_pytorch import GPTConfig
    from sharding import shard_model
    model = shard_model(DoubleHeadModel(GPTConfig(n_embd=16, n_head=2, n_layer=2), 40478, 'multiple_choice',
                                        vocab=40480, n_ctx=8))
    return (model.lm_head.decoder.weight is model.transformer.embed.weight
            and isinstance(model.transformer.embed.weight, DTensor),
            all(isinstance(p, DTensor) for p in model.task_head.parameters()))


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """Return [results of each rank] of 2 ranks training the sharded model 5 steps."""
    out = tmp_path_factory.mktemp('sharded')
    mp.start_processes(worker, args=(2, free_port(), str(out)), nprocs=2, join=True, start_method='spawn')
    return [torch.load(out / f'{rank}.pt', weights_only=True) for rank in range(2)]


@pytest.fixture(scope='module')
def one_process():
    """Return (losses, weights) of the same 5 steps in one process, unsharded."""
    model, opt = new_model_and_opt()
    return train_steps(model, opt, range(N_STEPS)), model.state_dict()


def test_two_sharded_ranks_train_as_one_process(runs, one_process):
    losses, weights = one_process
    assert runs[0]['losses'] == pytest.approx(losses, abs=TOLERANCE)
    for gathered in (runs[0]['host'], runs[0]['on_device'], runs[1]['on_device']):
        assert sorted(gathered) == sorted(weights)
        for name, value in weights.items():
            torch.testing.assert_close(gathered[name], value, atol=TOLERANCE, rtol=0)
    assert runs[1]['host'] == {}  # a host copy on the main rank only


def test_the_tied_decoder_stays_tied_and_a_task_head_is_sharded(runs):
    assert runs[0]['ties'] == runs[1]['ties'] == (True, True)


def test_each_rank_holds_half_of_the_parameters_gradients_and_moments(runs):
    n_params = sum(p.numel() for p in GPT2LMHeadModel(CFG).parameters())
    params, grads, moments = zip(*(run['numel'] for run in runs))
    assert sum(params) == sum(grads) == n_params and sum(moments) == 2 * n_params
    assert all(abs(share - n_params / 2) <= n_params * 0.02 for share in params + grads)


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


# pretrain.py and train.py with --shard, under torchrun (2 and 3 gloo processes, one thread each)

NO_DROPOUT = ('--embd_pdrop', '0', '--attn_pdrop', '0', '--resid_pdrop', '0')
SCRIPT_TOLERANCE = 2e-5  # as DDP's: the ranks sum the gradients in another order than one process


def pretrain_args(corpus, out, *extra):
    """Return pretrain.py's arguments of a tiny GPT-1 run without dropout: 30 updates of 12 windows, evaluated every
    10, a sample at the end, the training state saved every 2 updates."""
    return ['--corpus', str(corpus), '--out', str(out), '--n_embd', '32', '--n_head', '4', '--n_layer', '2',
            '--n_ctx', '24', '--n_batch', '12', '--lr', '3e-3', '--warmup_updates', '5', '--n_updates', '30',
            '--eval_every', '10', '--eval_windows', '8', '--save_every', '2', '--sample_every', '30', '--device',
            'cpu', '--quiet', *NO_DROPOUT, *extra]


def run_torchrun(script, argv, nproc=2, cwd=ROOT):
    """Run script under torchrun in nproc processes; return its CompletedProcess, asserting success."""
    done = subprocess.run(torchrun(script, argv, nproc), cwd=cwd, env=torchrun_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-8000:]
    return done


def log_records(path):
    """Return a log's records after its header, without their times and speeds."""
    with open(path) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in ('time', 'tokens_per_s')} for line in f][1:]


def assert_close_records(records, reference, tolerance=1e-5):
    """Assert that two logs hold the same records, their numbers within tolerance (relative, for the perplexity)."""
    assert [sorted(r) for r in records] == [sorted(r) for r in reference]
    for record, expected in zip(records, reference):
        for key, value in expected.items():
            assert record[key] == (value if not isinstance(value, float) else pytest.approx(value, rel=tolerance, abs=tolerance))


def assert_close_weights(path, reference, tolerance=SCRIPT_TOLERANCE):
    """Assert that two safetensors files hold the same tensors within tolerance (0: equal)."""
    weights, expected = load_file(str(path)), load_file(str(reference))
    assert sorted(weights) == sorted(expected)
    for name, value in expected.items():
        if name == 'task_head.clf.b' and tolerance:
            continue  # its gradient is 0 in exact arithmetic (one bias shared by the choices): Adam's step is noise
        if tolerance:
            torch.testing.assert_close(weights[name], value, atol=tolerance, rtol=0, msg=name)
        else:
            assert torch.equal(weights[name], value), name


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    return write_structured_corpus(tmp_path_factory.mktemp('corpus'))


@pytest.fixture(scope='module')
def pretrained(corpus, tmp_path_factory):
    """Return {'one': folder, 'two': (folder, stdout)}: the run in one process, and sharded on 2 under torchrun."""
    base = tmp_path_factory.mktemp('pretrain')
    assert pretrain.main(pretrain_args(corpus, base / 'one')) == 0
    done = run_torchrun('pretrain.py', pretrain_args(corpus, base / 'two', '--shard'))
    return {'one': base / 'one', 'two': (base / 'two', done.stdout)}


def test_pretraining_sharded_on_two_processes_equals_one_process(pretrained):
    one, (two, stdout) = pretrained['one'], pretrained['two']
    assert_close_weights(two / 'model.safetensors', one / 'model.safetensors')
    assert_close_records(log_records(two / 'log.jsonl'), log_records(one / 'log.jsonl'))
    assert json.loads((two / 'config.json').read_text()) == json.loads((one / 'config.json').read_text())
    # the memory each rank holds, printed before training: half of the model's parameters, gradients and moments
    n_bytes = sum(t.nbytes for t in load_file(str(one / 'model.safetensors')).values())
    half = f'{n_bytes / 2 / 2 ** 20:.1f} MiB'
    assert (f'--shard: 2 processes; memory per rank: parameters {half}, gradients {half}, optimizer state '
            f'{n_bytes / 2 ** 20:.1f} MiB, activations about ') in stdout


def test_the_sharded_runs_weights_generate_and_convert_as_any_runs(pretrained, tmp_path, capsys):
    one, (two, _) = pretrained['one'], pretrained['two']
    texts = []
    for folder in (one, two):
        assert generate.main(['--model_dir', str(folder), '--prompt', 'the cat', '--greedy', '--gen_len', '8']) == 0
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] and texts[0].startswith('the cat')
    assert convert.main(['to-transformers', '--model_dir', str(two), '--out', str(tmp_path / 'hf')]) == 0
    from transformers import OpenAIGPTLMHeadModel
    hf = OpenAIGPTLMHeadModel.from_pretrained(str(tmp_path / 'hf'))
    ours = load_file(str(two / 'model.safetensors'))['embed.weight']
    assert torch.equal(hf.transformer.tokens_embed.weight, ours[:hf.config.vocab_size])


def test_a_sharded_run_killed_resumes_exactly_on_two_processes_and_on_three_or_one_unsharded(corpus, pretrained, tmp_path, capsys):
    two, _ = pretrained['two']
    out = tmp_path / 'killed'
    argv = pretrain_args(corpus, out, '--shard')
    proc = subprocess.Popen(torchrun('pretrain.py', argv), cwd=ROOT, env=torchrun_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    state = out / 'train_state.safetensors'
    wait_for(state.exists, proc, 'training state')
    for pid in [proc.pid] + children(proc.pid):  # the whole job: torchrun and both workers
        os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=60)
    wait_until_unlocked(out / 'run.lock')
    with safe_open(str(state), framework='pt') as f:
        meta = json.loads(f.metadata()['state'])
    assert meta['progress']['n_updates'] < 30 and len(meta['ranks']) == 2
    three, one = tmp_path / 'three', tmp_path / 'one'
    shutil.copytree(out, three)
    shutil.copytree(out, one)
    run_torchrun('pretrain.py', argv + ['--resume'])
    assert log_records(out / 'log.jsonl') == log_records(two / 'log.jsonl')
    assert_close_weights(out / 'model.safetensors', two / 'model.safetensors', tolerance=0)
    # on 3 processes (the windows shared out anew), with activation checkpointing: the same run within tolerance
    done = run_torchrun('pretrain.py', pretrain_args(corpus, three, '--shard', '--checkpoint_activations',
                                                     '--resume'), nproc=3)
    assert 'resuming with 3 process(es) a state saved by 2' in done.stdout
    assert_close_weights(three / 'model.safetensors', two / 'model.safetensors')
    assert_close_records(log_records(three / 'log.jsonl'), log_records(two / 'log.jsonl'))
    # in one process, unsharded: the same file serves
    assert pretrain.main(pretrain_args(corpus, one, '--resume')) == 0
    assert 'resuming with 1 process(es) a state saved by 2' in capsys.readouterr().out
    assert_close_weights(one / 'model.safetensors', two / 'model.safetensors')


def test_sigterm_stops_a_sharded_run_with_its_state_saved_and_it_resumes_exactly(corpus, pretrained, tmp_path):
    two, _ = pretrained['two']
    out = tmp_path / 'stopped'
    argv = pretrain_args(corpus, out, '--shard', '--save_every', '0')
    proc = subprocess.Popen(torchrun('pretrain.py', argv), cwd=ROOT, env=torchrun_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for_line(proc, 'update 10:')
    proc.send_signal(signal.SIGTERM)  # torchrun passes it on to its workers
    _, stderr = proc.communicate(timeout=300)
    with safe_open(str(out / 'train_state.safetensors'), framework='pt') as f:
        stopped = json.loads(f.metadata()['state'])['progress']['n_updates']
    assert 10 <= stopped < 30 and f'pretrain.py: stopped by SIGTERM after update {stopped}; ' in stderr
    run_torchrun('pretrain.py', argv + ['--resume', 'auto'])
    assert log_records(out / 'log.jsonl') == log_records(two / 'log.jsonl')
    assert_close_weights(out / 'model.safetensors', two / 'model.safetensors', tolerance=0)


def test_pretraining_sharded_in_bf16_keeps_fp32_shards_and_follows_the_fp32_run(corpus, pretrained, tmp_path):
    one = pretrained['one']
    out = tmp_path / 'bf16'
    run_torchrun('pretrain.py', pretrain_args(corpus, out, '--shard', '--precision', 'bf16', '--n_updates', '10',
                                              '--sample_every', '0'))
    weights = load_file(str(out / 'model.safetensors'))
    assert all(t.dtype == torch.float32 for t in weights.values())
    fp32 = log_records(one / 'log.jsonl')
    assert log_records(out / 'log.jsonl')[0]['val_loss'] == pytest.approx(fp32[0]['val_loss'], abs=0.02)


def test_pretraining_sharded_and_compiled_equals_one_process(corpus, tmp_path):
    short = ('--n_updates', '6', '--eval_every', '3', '--sample_every', '0')
    assert pretrain.main(pretrain_args(corpus, tmp_path / 'one', *short)) == 0
    run_torchrun('pretrain.py', pretrain_args(corpus, tmp_path / 'compiled', *short, '--shard', '--compile'))
    assert_close_weights(tmp_path / 'compiled' / 'model.safetensors', tmp_path / 'one' / 'model.safetensors')
    assert_close_records(log_records(tmp_path / 'compiled' / 'log.jsonl'), log_records(tmp_path / 'one' / 'log.jsonl'))


def test_fine_tuning_sharded_on_two_processes_equals_one_process(tmp_path):
    d = roc_workdir(tmp_path)
    no_dropout = ('--embd_pdrop', '0', '--attn_pdrop', '0', '--resid_pdrop', '0', '--clf_pdrop', '0')

    def args(name, *extra):
        return roc_cli_args(d, '--submit', '--log_dir', str(d / name / 'log'), '--save_dir', str(d / name / 'save'),
                            '--submission_dir', str(d / name / 'sub'), *no_dropout, *extra)
    assert train.main(args('one')) == 0
    run_torchrun('train.py', args('two', '--shard'), cwd=d)
    assert_close_records(log_records(d / 'two' / 'log' / 'tiny.jsonl'), log_records(d / 'one' / 'log' / 'tiny.jsonl'))
    assert (d / 'two' / 'sub' / 'ROCStories.tsv').read_text() == (d / 'one' / 'sub' / 'ROCStories.tsv').read_text()
    assert_close_weights(d / 'two' / 'save' / 'tiny' / 'best_params.safetensors',
                         d / 'one' / 'save' / 'tiny' / 'best_params.safetensors')


def test_shard_in_one_process_is_refused_in_one_line(corpus, tmp_path, capsys):
    assert pretrain.main(pretrain_args(corpus, tmp_path / 'out', '--shard')) == 2
    assert capsys.readouterr().err.strip() == (
        'pretrain.py: error: --shard shards the model over several processes: run it under torchrun '
        '--nproc_per_node=N with N of 2 or more, or leave --shard out')
    assert not (tmp_path / 'out').exists()


def test_shard_in_fp16_is_refused_in_one_line(tmp_path):
    settings = RunSettings(device='cpu', precision='fp16', shard=True)
    with pytest.raises(ValueError, match=r"^--shard --precision fp16: fp16's loss scaler does not serve sharded "
                                         r"gradients; use --precision bf16"):
        resolved_settings(settings, str(tmp_path / 'state'), DistInfo(rank=0, world_size=2))
