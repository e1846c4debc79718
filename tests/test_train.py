"""Tests for train.py: end to end with --submit --analysis, accumulation equivalence, learning on the TF fixture."""
import copy
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import checkpoint
import datasets
import train
import trainer
from loss import clf_losses, lm_losses, lm_losses_from_hidden, train_loss
from opt import OpenAIAdam
from tests.helpers import load_tf_reference, roc_cli_args, roc_workdir, step_run, tf_model
from text_utils import TextEncoder

ROOT = Path(__file__).resolve().parents[1]
@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    return roc_workdir(tmp_path_factory.mktemp('run'))


def test_end_to_end_submit_and_analysis(workdir):
    d = workdir
    proc = subprocess.run([sys.executable, str(ROOT / 'train.py'), *roc_cli_args(d, '--submit', '--analysis')],
                          cwd=d, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    arguments = json.loads(out[0])  # the run's arguments, printed once, as it starts
    assert arguments['desc'] == 'tiny' and arguments['submit'] and [line[:1] for line in out].count('{') == 1

    # 56 - 16 = 40 training stories, batches of n_batch * n_gpu = 8: 5 updates per epoch, 2 epochs
    with open(d / 'log' / 'tiny.jsonl') as f:
        log = [json.loads(line) for line in f]
    assert log[0]['n_batch'] == 2 and log[0]['n_gpu'] == 4 and log[0]['desc'] == 'tiny'
    assert [(r['n_epochs'], r['n_updates']) for r in log[1:]] == [(1, 5), (2, 10)]
    for r in log[1:]:
        assert set(r) >= {'tr_cost', 'va_cost', 'tr_acc', 'va_acc', 'time'}
        assert 0 <= r['va_acc'] <= 100 and r['tr_cost'] > 0

    eval_lines = [line for line in out if line.split()[:2] in (['1', '5'], ['2', '10'])]
    assert len(eval_lines) == 2
    first = eval_lines[0].split()
    assert len(first) == 6 and float(first[5]) == pytest.approx(log[1]['va_acc'], abs=0.006)

    best = d / 'save' / 'tiny' / 'best_params.safetensors'
    assert best.is_file()
    sub = (d / 'submission' / 'ROCStories.tsv').read_text().splitlines()
    assert sub[0] == 'index\tprediction' and len(sub) == 14
    preds = [int(line.split('\t')[1]) for line in sub[1:]]
    assert [int(line.split('\t')[0]) for line in sub[1:]] == list(range(13)) and set(preds) <= {0, 1}

    labels = datasets.rocstories_test_labels(str(d / 'data'))
    test_acc = float(np.mean(np.array(preds) == labels) * 100)
    best_va = max(r['va_acc'] for r in log[1:])
    assert f'ROCStories Valid Accuracy: {best_va:.2f}' in out
    assert f'ROCStories Test Accuracy:  {test_acc:.2f}' in out
    summary = [line for line in out if line.startswith('done:')]
    assert summary and f'test acc {test_acc:.2f}' in summary[0] and '10 updates' in summary[0]
    # the same summary as a record, where the wall time went included, for scripts that drive train.py
    record = json.loads((d / 'log' / 'tiny_summary.json').read_text())
    assert record['n_updates'] == 10 and record['te_acc'] == pytest.approx(test_acc) and record['best_va'] == best_va
    phases = record['phases']
    assert set(phases) == {'load_s', 'encode_s', 'train_s', 'eval_s', 'write_s', 'peak_memory_mib'}
    assert all(v >= 0 for v in phases.values()) and sum(phases[k] for k in phases if k.endswith('_s')) <= record['wall_s']
    assert [line for line in out if line.startswith('phases:')] == [trainer.format_phases(phases)]


def test_best_checkpoint_reproduces_the_submission(workdir):
    d = workdir
    args = train.parse_args(roc_cli_args(d, '--submit'))
    args = dataclasses.replace(args, device='cpu')
    trainer.set_seed(args.seed)
    text_encoder = TextEncoder(args.encoder_path, args.bpe_path)
    data, sizes = train.load_data(args, text_encoder)
    model = train.pretrained_model(args, sizes, torch.device('cpu'), 'gpt1')
    checkpoint.load_params(model, str(d / 'save' / 'tiny' / 'best_params.safetensors')).eval()
    test, = data.tests
    logits = train.iter_predict(model, test.inputs, test.mask, train.Evaluation(8, torch.device('cpu')))
    sub = (d / 'submission' / 'ROCStories.tsv').read_text().splitlines()[1:]
    assert [int(line.split('\t')[1]) for line in sub] == list(np.argmax(logits, 1))


def test_missing_data_and_weights_are_named_before_any_work(workdir, tmp_path):
    d = workdir
    proc = subprocess.run([sys.executable, str(ROOT / 'train.py'),
                           *roc_cli_args(d, '--data_dir', str(tmp_path), '--log_dir', str(tmp_path / 'log'))],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert 'cloze_test_val__spring2016 - cloze_test_ALL_val.csv is missing' in proc.stderr
    assert 'rocstories' in proc.stderr and 'Traceback' not in proc.stderr
    assert not (tmp_path / 'log').exists()
    proc = subprocess.run([sys.executable, str(ROOT / 'train.py'), *roc_cli_args(d, '--model_dir', str(tmp_path))],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and f'{tmp_path} is empty' in proc.stderr
    assert 'python download_model.py --model_dir' in proc.stderr


def test_train_runs_from_any_working_folder(workdir, tmp_path, monkeypatch, capsys):
    """The default --encoder_path/--bpe_path (the original's model/... names) are the vocabulary shipped next to the
    code, not files of the working folder: a run from a folder without model/ trains."""
    monkeypatch.chdir(tmp_path)
    assert not (tmp_path / 'model').exists()
    args = roc_cli_args(workdir, '--n_iter', '1', '--desc', 'elsewhere', '--save_dir', str(tmp_path / 'save'),
                        '--log_dir', str(tmp_path / 'log'), vocab=False)
    assert train.main(args) == 0, capsys.readouterr().err
    assert (tmp_path / 'log' / 'elsewhere.jsonl').is_file()
    assert train.tokenizer_paths(train.parse_args(args), 'gpt1') == (str(ROOT / 'model' / 'encoder_bpe_40000.json'),
                                                                     str(ROOT / 'model' / 'vocab_40000.bpe'))


def test_unknown_dataset_lists_known_ones(workdir):
    assert train.main(roc_cli_args(workdir, '--dataset', 'sst9')) == 2


def test_transform_roc_layout():
    encoder = {'a': 0, 'b': 1, '_start_': 10, '_delimiter_': 11, '_classify_': 12}
    layout = train.RocLayout(encoder, n_ctx=9, max_len=2, n_vocab=10, n_special=3)
    xmb, mmb = train.transform_roc([[0, 1, 1]], [[1]], [[0, 0]], layout)
    assert xmb[0, 0, :, 0].tolist() == [10, 0, 1, 11, 1, 12, 0, 0, 0]
    assert xmb[0, 1, :, 0].tolist() == [10, 0, 1, 11, 0, 0, 12, 0, 0]
    assert xmb[0, 0, :, 1].tolist() == list(range(13, 22))
    assert mmb[0].tolist() == [[1, 1, 1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1, 0, 0]]
    assert train.roc_n_ctx([([[0, 1, 1]], [[1]], [[0, 0]])], max_len=2, n_ctx=512) == 2 + 2 + 3


def fixture_batches(arrays, n, seed):
    """n examples drawn from the fixture's 3, as [n, 2, T, 2] batches."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, 3, n)
    return arrays['X'][idx].astype(np.int64), arrays['M'][idx], arrays['Y'][idx].astype(np.int64)


def make_opt(model, t_total):
    return OpenAIAdam(model.parameters(), lr=1e-2, schedule='warmup_linear', warmup=0.1, t_total=t_total,
                      l2=0.01, max_grad_norm=1)


def test_accumulation_equivalence():
    arrays, config = load_tf_reference()
    base = tf_model(arrays, config)
    results = []
    for n_gpu, n_batch in [(4, 2), (1, 8)]:
        model = copy.deepcopy(base).train()
        args = train.parse_args(['--n_gpu', str(n_gpu), '--n_batch', str(n_batch), '--quiet'])
        run = step_run(model, make_opt(model, 3), args)
        for k in range(3):
            xmb, mmb, ymb = fixture_batches(arrays, 8, k)
            train.train_step(run, xmb, mmb, ymb, args.step_settings())
        results.append([p.detach().clone() for p in model.parameters()])
    assert not torch.equal(results[0][0], base.transformer.embed.weight)
    names = [n for n, _ in base.named_parameters()]
    for name, a, b in zip(names, *results):
        if name == 'task_head.clf.b':
            # softmax over the choices is invariant to this shared bias: its gradient is 0 in exact
            # arithmetic, so Adam's normalised step on it is rounding noise in both runs
            continue
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=name)


def test_trimmed_fast_path_equals_full_original_computation():
    arrays, config = load_tf_reference()
    model = tf_model(arrays, config)
    # the fixture's first example: lengths 9 and 15 of n_ctx 16, so trimming cuts a position
    X, M, Y = (torch.from_numpy(arrays[k][:1]).long() if k != 'M' else torch.from_numpy(arrays[k][:1]) for k in 'XMY')
    lm_logits, clf_logits = model(X)
    full = train_loss(clf_losses(clf_logits, Y), lm_losses(lm_logits, X, M), 0.5)
    g_full = torch.autograd.grad(full, list(model.parameters()))
    x, m = train.trim_batch(X, M)
    assert x.shape[2] < X.shape[2]
    _, clf, lm = model(x, m, Y, lm_coef=0.5)  # the training forward: the model's losses
    fast = train_loss(clf, lm, 0.5)
    g_fast = torch.autograd.grad(fast, list(model.parameters()))
    torch.testing.assert_close(fast, full, atol=1e-6, rtol=1e-6)
    for a, b in zip(g_fast, g_full):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_training_on_the_tf_fixture_lowers_the_loss():
    arrays, config = load_tf_reference()
    model = tf_model(arrays, config, pdrop=0.1).train()
    args = train.parse_args(['--n_gpu', '1', '--n_batch', '3', '--quiet'])
    opt = OpenAIAdam(model.parameters(), lr=3e-3, schedule='warmup_constant', warmup=0.1, t_total=20, l2=0.01,
                     max_grad_norm=1)
    X, M, Y = arrays['X'].astype(np.int64), arrays['M'], arrays['Y'].astype(np.int64)

    def eval_loss():
        model.eval()
        with torch.no_grad():
            h, we, clf_logits = model.hidden_and_task(torch.from_numpy(X))
            value = train_loss(clf_losses(clf_logits, torch.from_numpy(Y)),
                               lm_losses_from_hidden(h, we, torch.from_numpy(X), torch.from_numpy(M)), 0.5)
        model.train()
        return value.item()

    start = eval_loss()
    assert start == pytest.approx(float(arrays['train_loss']), abs=1e-4)
    for _ in range(20):
        train.train_step(step_run(model, opt, args), X, M, Y, args.step_settings())
    assert eval_loss() < 0.7 * start


def read_state(path):
    from safetensors import safe_open
    with safe_open(str(path), framework='pt') as f:
        meta = json.loads(f.metadata()['state'])
        model = {k: f.get_tensor(k) for k in f.keys() if k.startswith('model/')}
    return meta['progress'], model


def eval_records(log_path):
    with open(log_path) as f:
        records = [json.loads(line) for line in f][1:]
    return [{k: v for k, v in r.items() if k != 'time'} for r in records]


def test_killed_and_resumed_run_equals_the_uninterrupted_run(workdir, tmp_path):
    """SIGKILL mid-epoch, then --resume: same parameters, log and submission as test_end_to_end's run."""
    import signal
    import time
    d = workdir
    assert (d / 'submission' / 'ROCStories.tsv').is_file(), 'needs test_end_to_end_submit_and_analysis first'
    out = ['--log_dir', str(tmp_path / 'log'), '--save_dir', str(tmp_path / 'save'),
           '--submission_dir', str(tmp_path / 'submission'), '--save_every', '1']
    cmd = [sys.executable, str(ROOT / 'train.py'), *roc_cli_args(d, '--submit', *out)]
    state = tmp_path / 'save' / 'tiny' / 'train_state.safetensors'
    proc = subprocess.Popen(cmd, cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    progress, _ = read_state(state)
    assert progress['n_updates'] < 10  # killed before the end

    resumed = subprocess.run(cmd + ['--resume'], cwd=d, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming at epoch {progress['epoch']}, update {progress['n_updates']}" in resumed.stdout

    assert eval_records(tmp_path / 'log' / 'tiny.jsonl') == eval_records(d / 'log' / 'tiny.jsonl')
    assert ((tmp_path / 'submission' / 'ROCStories.tsv').read_text()
            == (d / 'submission' / 'ROCStories.tsv').read_text())
    final, weights = read_state(state)
    ref_final, ref_weights = read_state(d / 'save' / 'tiny' / 'train_state.safetensors')
    assert final['n_updates'] == ref_final['n_updates'] == 10
    assert weights.keys() == ref_weights.keys()
    for k in weights:
        assert torch.equal(weights[k], ref_weights[k]), k
    from safetensors.torch import load_file
    best, ref_best = (load_file(str(p / 'save' / 'tiny' / 'best_params.safetensors')) for p in (tmp_path, d))
    assert all(torch.equal(best[k], ref_best[k]) for k in ref_best)


def test_non_finite_loss_stops_with_the_update_and_changes_nothing():
    arrays, config = load_tf_reference()
    model = tf_model(arrays, config)
    with torch.no_grad():
        model.task_head.clf.w.fill_(float('inf'))
    before = [p.detach().clone() for p in model.parameters()]
    args = train.parse_args(['--n_gpu', '1', '--n_batch', '3', '--quiet'])
    opt = make_opt(model, 5)
    X, M, Y = arrays['X'].astype(np.int64), arrays['M'], arrays['Y'].astype(np.int64)
    with pytest.raises(trainer.NonFiniteLoss, match='non-finite loss'):
        train.train_step(step_run(model, opt, args), X, M, Y, args.step_settings())
    for a, b in zip(before, model.parameters()):
        assert torch.equal(a, b)
    assert all(p.grad is None for p in model.parameters())


def test_unwritable_output_folder_fails_before_training(workdir, tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('x')
    proc = subprocess.run([sys.executable, str(ROOT / 'train.py'),
                           *roc_cli_args(workdir, '--submit', '--save_dir', str(blocker / 'save'))],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # one line, no traceback
    assert f'cannot write to {blocker}/save/tiny' in proc.stderr


def test_shuffling_indices_gives_the_originals_array_order():
    from sklearn.utils import shuffle
    a = np.arange(50) * 3
    np.random.seed(7)
    by_arrays = shuffle(a, a * 2, random_state=np.random.mtrand._rand)
    np.random.seed(7)
    order = shuffle(np.arange(50), random_state=np.random.mtrand._rand)
    assert np.array_equal(by_arrays[0], a[order]) and np.array_equal(by_arrays[1], (a * 2)[order])


def test_bf16_training_step_follows_fp32():
    """--precision bf16 runs the same update under autocast: parameters move like fp32's, to bf16 accuracy."""
    arrays, config = load_tf_reference()
    X, M, Y = arrays['X'].astype(np.int64), arrays['M'], arrays['Y'].astype(np.int64)
    moved = {}
    for precision in ('fp32', 'bf16'):
        model = tf_model(arrays, config).train()
        before = model.transformer.h[0].mlp.c_fc.w.detach().clone()
        args = train.parse_args(['--n_gpu', '1', '--n_batch', '3', '--precision', precision, '--quiet'])
        opt = OpenAIAdam(model.parameters(), lr=1e-3, schedule='warmup_constant', warmup=0.0, t_total=10)
        cost = train.train_step(step_run(model, opt, args), X, M, Y, args.step_settings())
        moved[precision] = (model.transformer.h[0].mlp.c_fc.w.detach() - before, cost)
        assert model.transformer.h[0].mlp.c_fc.w.dtype == torch.float32  # fp32 master weights
    assert moved['bf16'][1] == pytest.approx(moved['fp32'][1], rel=0.05)
    # Adam's first step is lr * sign(g) wherever g is not tiny: the signs agree almost everywhere
    agree = (torch.sign(moved['bf16'][0]) == torch.sign(moved['fp32'][0])).float().mean().item()
    assert agree > 0.95


def test_gpt2_weights_fine_tune_with_gpt1s_recipe(workdir, tmp_path, capsys):
    """A transformers GPT-2 folder fine-tunes on ROCStories: GPT-2's tokenizer, _start_, _delimiter_ and _classify_ as
    new rows 50257..50259 of wte drawn as GPT-1's loader draws special rows, the same recipe, log and submission."""
    import convert
    from model_gpt2 import GPT2DoubleHeadModel
    from tests.helpers import write_tiny_gpt2
    write_tiny_gpt2(tmp_path / 'released', n_ctx=128)
    assert convert.main(['to-transformers', '--model_dir', str(tmp_path / 'released'), '--out', str(tmp_path / 'hf')]) == 0
    built = []
    real = train.pretrained_model

    def spy(args, sizes, device, family):
        built.append((real(args, sizes, device, family), sizes))
        return built[-1][0]

    argv = roc_cli_args(workdir, '--model_dir', str(tmp_path / 'hf'), '--desc', 'gpt2', '--submit',
                        '--log_dir', str(tmp_path / 'log'), '--save_dir', str(tmp_path / 'save'),
                        '--submission_dir', str(tmp_path / 'sub'), vocab=False)  # the weights' own vocabulary
    train.pretrained_model = spy
    try:
        assert train.main(argv) == 0, capsys.readouterr().err
    finally:
        train.pretrained_model = real
    (model, sizes), = built
    assert isinstance(model, GPT2DoubleHeadModel) and sizes.n_vocab == 50257 and sizes.clf_token == 50259
    assert model.transformer.wte.weight.shape == (50260, 32) and model.cfg.embd_pdrop == 0.1
    records = [json.loads(line) for line in (tmp_path / 'log' / 'gpt2.jsonl').read_text().splitlines()]
    assert [(r['n_epochs'], r['n_updates']) for r in records[1:]] == [(1, 5), (2, 10)]
    sub = (tmp_path / 'sub' / 'ROCStories.tsv').read_text().splitlines()
    assert sub[0] == 'index\tprediction' and len(sub) == 14
    # the architecture is the checkpoint's: a flag that contradicts it is refused
    assert train.main(argv + ['--n_layer', '3']) == 2
    assert '--n_layer 3 contradicts n_layer=2 in ' in capsys.readouterr().err


def test_a_transfer_sweep_runs_each_value_and_collects_the_metric(workdir, tmp_path, capsys):
    """--n_transfer 0,1,2: one run per value (the paper's Figure 2, left), the table printed and saved, and
    analysis.py draws it."""
    import analysis
    out = ['--log_dir', str(tmp_path / 'log'), '--save_dir', str(tmp_path / 'save'), '--n_iter', '1']
    assert train.main(roc_cli_args(workdir, '--n_transfer', '0,1,2', *out)) == 0
    record = json.loads((tmp_path / 'log' / 'tiny_transfer.json').read_text())
    assert record['metric'] == 'acc' and [p['n_transfer'] for p in record['points']] == [0, 1, 2]
    for point in record['points']:
        run, = point['runs']
        summary = json.loads((tmp_path / 'log' / f"{run['desc']}_summary.json").read_text())
        assert run['desc'] == f"tiny_transfer{point['n_transfer']}_seed42"
        assert point['median'] == run['best_va'] == summary['best_va']
        header = json.loads((tmp_path / 'log' / f"{run['desc']}.jsonl").read_text().splitlines()[0])
        assert header['n_transfer'] == point['n_transfer']
    printed = capsys.readouterr().out
    assert 'layers transferred  valid acc' in printed and f'transfer sweep written to {tmp_path / "log"}' in printed
    assert analysis.main(['--transfer', str(tmp_path / 'log' / 'tiny_transfer.json'), '--plot',
                          str(tmp_path / 'fig.png')]) is None
    assert (tmp_path / 'fig.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_from_scratch_transfers_nothing(workdir):
    args = train.parse_args(roc_cli_args(workdir, '--from_scratch'))
    assert args.n_transfer == -1 and args.transfer_sweep is None
    sizes = train.ModelSizes(n_vocab=40478, n_special=3, n_ctx=20, clf_token=40480, head_type='multiple_choice')
    pretrained = train.pretrained_model(train.parse_args(roc_cli_args(workdir)), sizes, torch.device('cpu'), 'gpt1')
    torch.manual_seed(0)
    scratch = train.pretrained_model(args, sizes, torch.device('cpu'), 'gpt1')
    for (name, a), b in zip(pretrained.transformer.named_parameters(), scratch.transformer.parameters()):
        assert a.dim() == 1 or not torch.equal(a, b), name  # no matrix of the checkpoint (its norms are 1 and 0)
    weights = scratch.transformer.h[0].attn.c_attn.w
    assert abs(weights.std().item() - 0.02) < 0.002  # the paper's N(0, 0.02)
    with pytest.raises(SystemExit):
        train.parse_args(roc_cli_args(workdir, '--from_scratch', '--n_transfer', '3'))
    with pytest.raises(SystemExit):
        train.parse_args(roc_cli_args(workdir, '--n_transfer', '0,0'))
