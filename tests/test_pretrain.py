"""Tests for pretrain.py: learning a corpus from scratch, continuing from saved weights, exact resume, data
parallelism, and the hand-over to train.py and generate.py."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import corpus as corpus_module
import models
import pretrain
from tests.helpers import free_port, wait_for_line, write_structured_corpus

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    return write_structured_corpus(tmp_path_factory.mktemp('corpus'))


def tiny_args(corpus, out, *extra):
    """pretrain.py's arguments for a tiny model on corpus: 2 layers of 32, windows of 24 tokens, 8 an update."""
    return ['--corpus', str(corpus), '--out', str(out), '--n_embd', '32', '--n_head', '4', '--n_layer', '2',
            '--n_ctx', '24', '--n_batch', '8', '--lr', '3e-3', '--warmup_updates', '10', '--eval_every', '50',
            '--eval_windows', '16', '--save_every', '0', '--device', 'cpu', '--quiet', *extra]


def read_log(out):
    """Return the evaluation records of a run's log.jsonl, checking that its first line is the run's arguments."""
    with open(Path(out) / 'log.jsonl') as f:
        header, *records = [json.loads(line) for line in f]
    assert header['corpus'] and header['out'] == str(out) and 'val_loss' not in header  # as train.py's log
    return records


def unigram_entropy(stream):
    """Return the entropy in nats of the token distribution of a stream."""
    counts = np.bincount(np.asarray(stream, dtype=np.int64))
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


@pytest.fixture(scope='module')
def scratch_run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp('scratch')
    assert pretrain.main(tiny_args(corpus, out, '--n_updates', '200', '--save_shards', '--sample_every', '200')) == 0
    return out


def test_from_scratch_learns_the_corpus_well_below_its_unigram_entropy(corpus, scratch_run):
    train_stream, val_stream, meta = corpus_module.load_corpus(corpus)
    entropy = unigram_entropy(train_stream)
    log = read_log(scratch_run)
    assert [r['n_updates'] for r in log] == [0, 50, 100, 150, 200]
    assert log[0]['val_loss'] == pytest.approx(np.log(meta['separator_id'] + 1), abs=0.3)  # a fresh model: uniform
    assert log[-1]['val_loss'] < 0.6 * entropy, (log[-1]['val_loss'], entropy)
    assert all(set(r) >= {'n_updates', 'train_loss', 'val_loss', 'val_ppl', 'tokens_per_s', 'lr'} for r in log)
    assert all(r['tokens_per_s'] > 0 and r['train_loss'] > 0 for r in log[1:])
    assert log[-1]['val_ppl'] == pytest.approx(np.exp(log[-1]['val_loss']))
    assert log[-1]['lr'] == pytest.approx(0.0, abs=1e-12)  # the cosine ends at 0
    config = json.loads((scratch_run / 'config.json').read_text())
    assert (config['n_vocab'], config['n_special'], config['n_ctx'], config['n_embd']) == (40478, 1, 24, 32)
    assert (scratch_run / 'model.safetensors').is_file() and (scratch_run / 'shards' / 'params_9.npy').is_file()


def val_loss_of(folder, corpus, **load_kw):
    """The loss of a saved model on the fixed validation windows, computed here from the loaded weights."""
    _, val_stream, meta = corpus_module.load_corpus(corpus)
    model = models.load_model(str(folder), lm=True, n_ctx=24, **load_kw)
    n_rows = meta['separator_id'] + 1
    starts = pretrain.val_starts(len(val_stream), 24, 16)
    x, targets = pretrain.lm_inputs(val_stream, starts, 24, model.transformer.embed.weight.shape[0] - 24)
    with torch.no_grad():
        logits = model(torch.from_numpy(x))[..., :n_rows]  # [B, T, rows]: the tokens and the separator
        return torch.nn.functional.cross_entropy(logits.reshape(-1, n_rows), torch.from_numpy(targets).reshape(-1)).item()


def test_saved_model_holds_the_trained_weights(corpus, scratch_run):
    assert val_loss_of(scratch_run, corpus) == pytest.approx(read_log(scratch_run)[-1]['val_loss'], abs=1e-4)


@pytest.mark.parametrize('source', ['safetensors', 'shards'])
def test_continuing_starts_from_the_weights_loss(corpus, scratch_run, tmp_path, source):
    """Continued pre-training starts where the weights are, not from a random model: exactly their loss from the
    convert.py folder (separator row kept), close to it from released shards (a fresh separator row)."""
    folder = scratch_run if source == 'safetensors' else scratch_run / 'shards'
    assert pretrain.main(tiny_args(corpus, tmp_path, '--model_dir', str(folder), '--n_updates', '1')) == 0
    first = read_log(tmp_path)[0]
    trained = read_log(scratch_run)[-1]['val_loss']
    assert first['n_updates'] == 0
    if source == 'safetensors':
        assert first['val_loss'] == pytest.approx(trained, abs=1e-4)
    else:
        np.random.seed(42)  # the fresh separator row, drawn as pretrain.py draws it after set_seed(42)
        expected = val_loss_of(folder, corpus, rows=models.TableRows(n_special=1), n_head=4)
        assert first['val_loss'] == pytest.approx(expected, abs=1e-4)
    assert first['val_loss'] < 0.5 * read_log(scratch_run)[0]['val_loss']


def test_architecture_flags_must_match_the_weights(corpus, scratch_run, tmp_path, capsys):
    assert pretrain.main(tiny_args(corpus, tmp_path, '--model_dir', str(scratch_run), '--n_updates', '1',
                                   '--n_layer', '3')) == 2
    err = capsys.readouterr().err
    assert '--n_layer 3 contradicts n_layer=2' in err and err.count('\n') == 1


def test_errors_are_one_line_before_any_work(corpus, tmp_path, capsys):
    assert pretrain.main(tiny_args(corpus, tmp_path / 'a', '--n_ctx', '100000')) == 2
    assert 'fewer than one window' in capsys.readouterr().err
    assert pretrain.main(tiny_args(tmp_path / 'nowhere', tmp_path / 'b')) == 2
    err = capsys.readouterr().err
    assert 'nowhere' in err and err.count('\n') == 1 and 'Traceback' not in err
    assert pretrain.main(tiny_args(corpus, tmp_path / 'c', '--resume')) == 2
    assert 'nothing to resume' in capsys.readouterr().err
    assert pretrain.main(tiny_args(corpus, tmp_path / 'd', '--sample_every', '5', '--sample_prompt', ' ')) == 2
    err = capsys.readouterr().err
    assert "--sample_prompt ' ' encodes to 0 tokens" in err and err.count('\n') == 1
    assert not (tmp_path / 'd' / 'log.jsonl').exists()  # refused before the first evaluation


def final_weights(out):
    from safetensors.torch import load_file
    return load_file(str(Path(out) / 'model.safetensors'))


def run_and_load(corpus, out, *extra):
    """Run pretrain.py on the tiny setup (6 updates) and return its final weights and log."""
    assert pretrain.main(tiny_args(corpus, out, '--n_updates', '6', '--eval_every', '3', *extra)) == 0
    return final_weights(out), read_log(out)


NO_DROPOUT = ('--embd_pdrop', '0', '--attn_pdrop', '0', '--resid_pdrop', '0')


@pytest.fixture(scope='module')
def plain_run(corpus, tmp_path_factory):
    """run_and_load's (weights, log) without dropout: the run that several tests compare others with (read only)."""
    return run_and_load(corpus, tmp_path_factory.mktemp('plain'), *NO_DROPOUT)


@pytest.fixture(scope='module')
def dropout_run(corpus, tmp_path_factory):
    """run_and_load's (weights, log) with the default dropout, in fp32 (read only)."""
    return run_and_load(corpus, tmp_path_factory.mktemp('dropout'))


def test_killed_and_resumed_run_equals_the_uninterrupted_run(corpus, tmp_path):
    """SIGKILL after some saved states, then --resume: the same weights and log as an uninterrupted run."""
    assert_killed_and_resumed_run_equals_the_uninterrupted_run(tiny_args(corpus, tmp_path / 'full', '--n_updates', '40'),
                                                               tiny_args(corpus, tmp_path / 'killed', '--n_updates', '40'))


def assert_killed_and_resumed_run_equals_the_uninterrupted_run(full_args, killed_args):
    """Run pretrain.py with full_args; run it with killed_args in a process killed after the evaluation at update
    20 (states saved every 3 updates), then resume it: assert the same log records and final weights."""
    every = ['--eval_every', '10', '--save_every', '3']
    full, out = (Path(args[args.index('--out') + 1]) for args in (full_args, killed_args))
    assert pretrain.main([*full_args, *every]) == 0
    cmd = [sys.executable, str(ROOT / 'pretrain.py'), *killed_args, *every]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    wait_for_line(proc, 'update 20:')  # kill after the evaluation at update 20: a few states are on disk
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdout.close()
    state = out / 'train_state.safetensors'
    assert state.exists() and not (out / 'model.safetensors').exists()
    assert pretrain.main([*cmd[2:], '--resume']) == 0
    strip = [{k: v for k, v in r.items() if k not in ('time', 'tokens_per_s')} for r in read_log(out)]
    assert strip == [{k: v for k, v in r.items() if k not in ('time', 'tokens_per_s')} for r in read_log(full)]
    resumed, uninterrupted = final_weights(out), final_weights(full)
    assert resumed.keys() == uninterrupted.keys() and all(torch.equal(resumed[k], uninterrupted[k])
                                                          for k in uninterrupted)


def ddp_worker(rank, world, port, argv):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR='127.0.0.1',
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    assert pretrain.main(argv) == 0


def test_two_processes_train_like_one_with_the_same_global_batch(corpus, plain_run, tmp_path):
    """Under torchrun each rank takes its share of the same windows: without dropout, 2 gloo processes (each
    in micro-batches of 2) end where 1 process does (plain_run)."""
    one, one_log = plain_run
    argv = tiny_args(corpus, tmp_path / 'two', *NO_DROPOUT, '--n_updates', '6', '--eval_every', '3', '--micro_batch', '2')
    mp.start_processes(ddp_worker, args=(2, free_port(), argv), nprocs=2, join=True, start_method='spawn')
    two = final_weights(tmp_path / 'two')
    for k in one:
        torch.testing.assert_close(two[k], one[k], atol=2e-5, rtol=0, msg=k)
    assert [r['val_loss'] for r in read_log(tmp_path / 'two')] == pytest.approx(
        [r['val_loss'] for r in one_log], abs=1e-5)
    # the training loss logged is the global batch's, not rank 0's share (none before the first update)
    assert [r['train_loss'] for r in read_log(tmp_path / 'two')][1:] == pytest.approx(
        [r['train_loss'] for r in one_log][1:], abs=1e-5)


def test_the_pretrained_model_fine_tunes_and_generates(scratch_run, tmp_path, capsys):
    """pretrain.py's folder goes to train.py --model_dir and generate.py --model_dir as the released weights do."""
    import generate
    import train
    from tests.helpers import roc_cli_args, roc_workdir
    d = roc_workdir(tmp_path)
    argv = roc_cli_args(d, '--model_dir', str(scratch_run), '--n_ctx', '24', '--n_iter', '1', '--submit')
    assert train.main(argv) == 0
    out = capsys.readouterr().out
    assert 'done: best valid acc' in out and (d / 'submission' / 'ROCStories.tsv').is_file()
    assert generate.main(['--model_dir', str(scratch_run), '--prompt', 'the cat', '--greedy', '--gen_len', '5']) == 0
    text = capsys.readouterr().out
    assert text.startswith('the cat') and len(text.split()) > 2


def test_micro_batches_and_activation_checkpointing_make_the_same_updates(corpus, plain_run, dropout_run, tmp_path):
    """--micro_batch accumulates to the same update (no dropout); --checkpoint_activations replays the dropout
    masks, so with dropout too the weights are those of the plain run."""
    plain, _ = plain_run
    micro, _ = run_and_load(corpus, tmp_path / 'micro', *NO_DROPOUT, '--micro_batch', '3')
    for k in plain:
        torch.testing.assert_close(micro[k], plain[k], atol=2e-5, rtol=0, msg=k)
    dropped, _ = dropout_run
    checkpointed, _ = run_and_load(corpus, tmp_path / 'ckpt', '--checkpoint_activations')
    for k in dropped:
        torch.testing.assert_close(checkpointed[k], dropped[k], atol=1e-6, rtol=0, msg=k)
    assert any(not torch.allclose(dropped[k], plain[k]) for k in plain)  # dropout was on


@pytest.mark.parametrize('precision', ['bf16', 'fp16'])
def test_low_precision_runs_follow_fp32(corpus, dropout_run, tmp_path, precision):
    _, log32 = dropout_run
    _, log = run_and_load(corpus, tmp_path / precision, '--precision', precision)
    assert [r['val_loss'] for r in log] == pytest.approx([r['val_loss'] for r in log32], rel=0.02)


def test_epochs_set_the_number_of_updates_and_samples_are_logged(corpus, tmp_path, capsys):
    train_stream, _, _ = corpus_module.load_corpus(corpus)
    assert pretrain.main(tiny_args(corpus, tmp_path, '--n_epochs', '0.25', '--eval_every', '0',
                                   '--sample_every', '4', '--sample_prompt', 'the cat')) == 0
    expected = int(np.ceil(0.25 * len(train_stream) / (8 * 24)))
    assert [r['n_updates'] for r in read_log(tmp_path)] == [0, expected]  # update 0, then the end
    out = capsys.readouterr().out
    samples = [line for line in out.splitlines() if line.startswith('sample at update')]
    assert len(samples) == len(range(4, expected + 1, 4)) + (expected % 4 != 0)
    assert all(': the cat' in line for line in samples)
    assert json.loads((tmp_path / 'args.json').read_text())['n_updates_total'] == expected


def test_compile_trains_like_eager(corpus, plain_run, tmp_path):
    eager, log = plain_run
    compiled, clog = run_and_load(corpus, tmp_path / 'compiled', *NO_DROPOUT, '--compile')
    assert [r['n_updates'] for r in clog] == [r['n_updates'] for r in log]
    assert max((compiled[k] - eager[k]).abs().max().item() for k in eager) < 1e-4


def test_zero_shot_scores_are_logged_at_each_evaluation_and_drawn(corpus, tmp_path, capsys, monkeypatch):
    """--zero_shot TASK=DATA_DIR (the paper's Figure 2, right): each evaluation's record holds the heuristic's score
    of the model at that update; the last equals zero_shot.py's on the saved model; analysis.py draws the curves."""
    import analysis
    import heuristics
    import models
    from tests.helpers import roc_workdir
    (tmp_path / 'roc').mkdir()
    d = roc_workdir(tmp_path / 'roc')
    out = tmp_path / 'run'
    argv = tiny_args(corpus, out, '--n_updates', '20', '--eval_every', '10', '--zero_shot',
                     f'rocstories={d / "data"}')
    reads = []
    real_read = heuristics.read_split
    monkeypatch.setattr(heuristics, 'read_split', lambda *a: reads.append(a) or real_read(*a))
    assert pretrain.main(argv) == 0
    monkeypatch.undo()
    records = read_log(out)
    assert [r['n_updates'] for r in records] == [0, 10, 20]
    assert reads == [('rocstories', str(d / 'data'), 'test')]  # read once for the three evaluations
    assert all(0 <= r['zs_rocstories'] <= 100 for r in records)
    assert 'zero-shot rocstories acc' in capsys.readouterr().out
    model = models.load_model(str(out), lm=True)
    lm = heuristics.scoring_lm(model, models.load_tokenizer(str(out)))
    assert records[-1]['zs_rocstories'] == pytest.approx(heuristics.zero_shot(lm, 'rocstories', str(d / 'data')).value)
    assert analysis.main(['--pretrain_log', str(out / 'log.jsonl'), '--plot', str(tmp_path / 'curves.png')]) is None
    printed = capsys.readouterr().out
    assert f"zero-shot rocstories: {records[-1]['zs_rocstories']:.2f} at update 20" in printed
    assert (tmp_path / 'curves.png').read_bytes()[:4] == b'\x89PNG'


def test_zero_shot_flags_are_checked_before_training(corpus, tmp_path, capsys):
    assert pretrain.main(tiny_args(corpus, tmp_path / 'a', '--zero_shot', 'squad=data/')) == 2
    assert "--zero_shot 'squad=data/': give TASK=DATA_DIR with TASK one of sst2, cola" in capsys.readouterr().err
    assert pretrain.main(tiny_args(corpus, tmp_path / 'b', '--zero_shot', f'dprd={tmp_path}')) == 2
    assert f'no test.c.txt in {str(tmp_path)!r}' in capsys.readouterr().err
    assert not (tmp_path / 'b' / 'train_state.safetensors').exists()


def test_defaults_fit_the_run_evaluations_a_warmup_warning_and_the_next_steps(corpus, tmp_path, capsys):
    """Without --eval_every a run evaluates about EVALS_PER_RUN times whatever its length; a warm-up as long as the run
    is one warning line; the run starts with what it trains and ends with where the model is and what to run next."""
    args = tiny_args(corpus, tmp_path, '--n_updates', '40', '--warmup_updates', '40')
    i = args.index('--eval_every')
    del args[i:i + 2]
    assert pretrain.main(args) == 0
    assert [r['n_updates'] for r in read_log(tmp_path)] == list(range(0, 41, 2))  # 40 / 20: every 2 updates
    assert json.loads((tmp_path / 'args.json').read_text())['eval_every'] == 2  # the value the run used
    out, err = capsys.readouterr()
    assert err.strip().splitlines() == [
        'pretrain.py: warning: --warmup_updates 40 covers the whole run of 40 updates: the learning rate only rises and '
        'never reaches --lr\'s cosine decay; give fewer (e.g. --warmup_updates 4)']
    lines = out.strip().splitlines()
    assert lines[0].startswith('pre-training GPT-1 (2 layers, 32 states, 4 heads, n_ctx 24; ') and lines[0].endswith(
        'for 40 updates of 8 windows (192 tokens), a validation every 2 updates')
    assert lines[-4] == f'the model is in {tmp_path}/ (model.safetensors, config.json, its vocabulary); log ' \
                        f'{tmp_path}/log.jsonl; next:'
    assert lines[-3].split() == ['sample', 'it:', 'python', 'generate.py', '--model_dir', f'{tmp_path}/', '--prompt',
                                 'the', '--gen_len', '100', '--top_k', '40']
    assert lines[-2].split()[2:] == ['python', 'pretrain.py', '--corpus', str(corpus), '--out', f'{tmp_path}-more/',
                                     '--model_dir', f'{tmp_path}/', '--n_ctx', '24', '--n_updates', '40',
                                     '--warmup_updates', '4', '--lr', '0.003']  # the run's context, not the default
    assert all(line.startswith('  ') for line in lines[-3:])
    assert pretrain.main(args + ['--out', str(tmp_path / 'short'), '--n_updates', '5', '--warmup_updates', '4']) == 0
    assert capsys.readouterr().err == ''  # a warm-up shorter than the run: no warning
    assert [r['n_updates'] for r in read_log(tmp_path / 'short')] == [0, 1, 2, 3, 4, 5]  # 5 / 20 rounds up to 1
