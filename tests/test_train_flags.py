"""Every flag of train.py, run on a tiny ROCStories job, with its documented effect checked.

The original's flags keep their meaning (README: "Every original flag keeps its name and default"), the
added ones do what the README says. Flags checked elsewhere: --dataset and --n_runs (test_train_tasks.py),
--submit, --analysis and --resume (test_train.py), the update itself (test_train_loop.py).
"""
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch

import train
import trainer
from weights import load_released_arrays
from tests.helpers import roc_cli_args, roc_workdir, write_tiny_checkpoint


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    d = roc_workdir(tmp_path_factory.mktemp('flags'))
    write_tiny_checkpoint(d / 'model16', np.random.default_rng(5), n_embd=16, n_layer=3, n_pos=64)
    return d


@dataclass
class Built:
    """What a run built from its settings did: the FineTuning (settings, data, Run), the model's weights as loaded,
    each training forward's (batch size, lm_coef, autocast on, autocast dtype), the updates at which the training
    state was saved."""
    job: Any = None
    loaded: dict = None
    forwards: list = field(default_factory=list)
    saves: list = field(default_factory=list)


def built_run(argv):
    """Build the run of train.py's argv from its settings (train.build_fine_tuning in a Launch), record what it
    built, train it as train.py does (train.fine_tune) and return the record; observed through a forward hook on the
    model and the state writer's submissions, nothing of train.py replaced."""
    settings = train.parse_args(argv)
    train.check_args(settings)
    built = Built()

    def record_forward(module, args, kwargs):
        if 'lm_coef' in kwargs:  # a training forward (with targets); evaluation calls the model otherwise
            built.forwards.append((args[0].shape[0], kwargs['lm_coef'], torch.is_autocast_enabled('cpu'),
                                   torch.get_autocast_dtype('cpu')))

    with trainer.Launch.begin(trainer.RunSettings.of(settings), train.run_files(settings)) as launch:
        job = train.build_fine_tuning(launch, train.resolved(settings, launch))
        built.job, built.loaded = job, {k: v.clone() for k, v in job.run.model.state_dict().items()}
        job.run.model.register_forward_pre_hook(record_forward, with_kwargs=True)
        submit = job.run.writer.submit

        def recording_submit(write, *arguments):
            if arguments == (job.run.paths['state'],):  # the training state, not the best weights
                built.saves.append(job.run.progress['n_updates'])
            return submit(write, *arguments)
        job.run.writer.submit = recording_submit
        train.fine_tune(job)
    return built


def log_records(path):
    """Return the evaluation records of a run's log, without their times."""
    with open(path) as f:
        return [{k: v for k, v in json.loads(line).items() if k != 'time'} for line in f][1:]


def test_optimizer_model_and_data_flags(workdir, capsys):
    d = workdir
    argv = roc_cli_args(d, '--desc', 'a', '--model_dir', str(d / 'model16'), '--n_embd', '16', '--n_head', '2',
                        '--n_layer', '3', '--n_transfer', '1', '--lr', '2e-3', '--lr_warmup', '0.1',
                        '--lr_schedule', 'warmup_cosine', '--l2', '0.02', '--vector_l2', '--max_grad_norm', '0.5',
                        '--b1', '0.8', '--b2', '0.99', '--e', '1e-6', '--embd_pdrop', '0.05', '--attn_pdrop', '0.15',
                        '--resid_pdrop', '0.2', '--clf_pdrop', '0.25', '--afn', 'relu', '--n_ctx', '20',
                        '--n_valid', '8', '--n_batch', '3', '--n_gpu', '2', '--n_iter', '1', '--micro_batch', '2',
                        '--lm_coef', '0.7', '--checkpoint_activations', '--device', 'cpu', '--opt', 'adam')
    spy = built_run(argv)
    assert capsys.readouterr().err == ''  # --quiet: no progress bars

    # 56 - 8 (--n_valid) = 48 training stories, batches of n_batch * n_gpu = 6: 8 updates in 1 epoch (--n_iter)
    data, sizes = spy.job.data, spy.job.sizes
    assert len(data.train.labels) == 48 and len(data.evals[0].labels) == 8
    assert [(r['n_epochs'], r['n_updates']) for r in log_records(d / 'log' / 'a.jsonl')] == [(1, 8)]  # --desc
    adam = dict(spy.job.run.opt.defaults)
    assert adam.pop('foreach') is True  # this port's grouped update, not a flag
    assert adam == dict(lr=2e-3, schedule='warmup_cosine', warmup=0.1, t_total=8, b1=0.8, b2=0.99, e=1e-6, l2=0.02,
                        vector_l2=True, max_grad_norm=0.5)

    # --micro_batch 2: each update of 6 examples in 3 forward passes; --lm_coef reaches the loss
    assert [n for n, *_ in spy.forwards] == [2, 2, 2] * 8
    assert {c for _, c, *_ in spy.forwards} == {0.7}

    # --n_ctx 20: stories and endings cut to 20 // 2 - 2 tokens, the table and inputs at most 20 positions
    assert sizes.n_ctx <= 20 and data.train.inputs.shape[2] == sizes.n_ctx
    assert data.train.mask.sum(-1).max() <= 8 + 8 + 3

    model, loaded = spy.job.run.model, spy.loaded
    t = model.transformer
    assert (t.n_embd, len(t.h), t.h[0].attn.n_head) == (16, 3, 2)  # --n_embd --n_layer --n_head
    assert t.embed.weight.shape == (sizes.n_vocab + 3 + sizes.n_ctx, 16)
    assert t.cfg.embd_pdrop == 0.05 and model.task_head.clf_pdrop == 0.25
    assert all(b.attn.attn_pdrop == 0.15 and b.attn.resid_pdrop == 0.2 and b.mlp.resid_pdrop == 0.2 for b in t.h)
    assert all(b.mlp.act is torch.nn.functional.relu for b in t.h)  # --afn
    assert t.cfg.checkpoint_activations and next(model.parameters()).device.type == 'cpu'
    # --model_dir and --n_transfer 1: the table's token rows and block 0 from model16/, blocks 1 and 2 not
    arrays = load_released_arrays(str(d / 'model16'))
    np.testing.assert_array_equal(loaded['transformer.embed.weight'][:sizes.n_vocab].numpy(), arrays[1])
    np.testing.assert_array_equal(loaded['transformer.h.0.attn.c_attn.w'].numpy(), arrays[2][0])
    assert not np.array_equal(loaded['transformer.h.1.attn.c_attn.w'].numpy(), arrays[2 + 12][0])
    assert train.tokenizer_paths(spy.job.settings, 'gpt1') == (str(d / 'model' / 'encoder_bpe_40000.json'),
                                                              str(d / 'model' / 'vocab_40000.bpe'))


def test_output_folders_progress_bars_and_save_every(workdir, tmp_path, capsys):
    d = workdir
    argv = [a for a in roc_cli_args(d, '--desc', 'b', '--log_dir', str(tmp_path / 'L'), '--save_dir',
                                    str(tmp_path / 'S'), '--submission_dir', str(tmp_path / 'U'), '--submit',
                                    '--save_every', '2') if a != '--quiet']
    spy = built_run(argv)
    err = capsys.readouterr().err
    assert 'it/s' in err or 's/it' in err  # without --quiet: progress bars on stderr
    assert (tmp_path / 'L' / 'b.jsonl').is_file()
    assert (tmp_path / 'S' / 'b' / 'best_params.safetensors').is_file()
    assert (tmp_path / 'S' / 'b' / 'train_state.safetensors').is_file()
    assert (tmp_path / 'U' / 'ROCStories.tsv').is_file()
    # 5 updates an epoch, 2 epochs: every 2 updates within an epoch, and at each epoch end
    assert spy.saves == [2, 4, 5, 6, 8, 10]


def test_seed_reproduces_a_run_and_another_seed_changes_it(workdir, tmp_path):
    d = workdir
    records = {}
    for name, seed in (('s1', '3'), ('s1again', '3'), ('s2', '4')):
        argv = roc_cli_args(d, '--desc', name, '--seed', seed, '--n_iter', '1', '--log_dir', str(tmp_path))
        assert train.main(argv) == 0
        records[name] = log_records(tmp_path / f'{name}.jsonl')
    assert records['s1'] == records['s1again']
    assert records['s1'] != records['s2']


@pytest.fixture(scope='module')
def fp32_run(workdir, tmp_path_factory):
    """One epoch in fp32: (what the run built and did, evaluation records)."""
    log_dir = tmp_path_factory.mktemp('fp32')
    spy = built_run(roc_cli_args(workdir, '--desc', 'fp32', '--n_iter', '1', '--log_dir', str(log_dir)))
    return spy, log_records(log_dir / 'fp32.jsonl')


@pytest.mark.parametrize('precision', ['fp32-strict', 'bf16', 'fp16'])
def test_precision_flag(workdir, tmp_path, fp32_run, precision):
    """fp32-strict is fp32 on the CPU (no TF32 there); bf16 and fp16 train under autocast (fp16 with a
    GradScaler) and evaluate close to fp32."""
    spy = built_run(roc_cli_args(workdir, '--desc', precision, '--precision', precision, '--n_iter', '1',
                                 '--log_dir', str(tmp_path)))
    records = log_records(tmp_path / f'{precision}.jsonl')
    fp32_spy, fp32_records = fp32_run
    assert not any(enabled for _, _, enabled, _ in fp32_spy.forwards) and fp32_spy.job.run.scaler is None
    if precision == 'fp32-strict':
        assert records == fp32_records and not any(enabled for _, _, enabled, _ in spy.forwards)
        return
    dtype = torch.bfloat16 if precision == 'bf16' else torch.float16
    assert spy.forwards and all(enabled and autocast == dtype for _, _, enabled, autocast in spy.forwards)
    assert (spy.job.run.scaler is not None) == (precision == 'fp16')
    for key in ('tr_cost', 'va_cost'):
        assert records[0][key] == pytest.approx(fp32_records[0][key], abs=0.02)


def test_vocabulary_paths_are_read(workdir, tmp_path, capsys):
    argv = roc_cli_args(workdir, '--encoder_path', str(tmp_path / 'nowhere.json'))
    assert train.main(argv) == 2
    assert f'{tmp_path / "nowhere.json"} is missing' in capsys.readouterr().err


def test_verify_weights_checks_the_released_hashes(workdir, capsys):
    """The tiny checkpoint is not the released one: --verify_weights refuses it before training."""
    assert train.main(roc_cli_args(workdir, '--desc', 'v', '--verify_weights')) == 2
    err = capsys.readouterr().err
    assert 'params_shapes.json' in err and 'expected 29fac299' in err
    assert not (workdir / 'log' / 'v.jsonl').exists() or log_records(workdir / 'log' / 'v.jsonl') == []


@pytest.mark.parametrize('device', ['cuda:99', 'nonsense'])
def test_device_that_is_not_here_is_one_line_before_any_work(workdir, tmp_path, capsys, device):
    assert train.main(roc_cli_args(workdir, '--device', device, '--log_dir', str(tmp_path / 'log'))) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and '--device' in err and 'Traceback' not in err
    assert not (tmp_path / 'log').exists()


@pytest.mark.parametrize('extra, said', [(['--data_dir', 'NOWHERE/'], 'nowhere/cloze_test_val__spring2016'),
                                         (['--model_dir', 'NOWHERE/'], 'nowhere/ does not exist'),
                                         (['--n_batch', '0'], '--n_batch must be at least 1'),
                                         (['--device', 'nonsense'], '--device')])
def test_a_run_that_cannot_start_prints_its_error_line_and_no_arguments(workdir, tmp_path, capsys, extra, said):
    """train.py prints its arguments (one JSON line) only once a run starts: a run refused prints one line, the
    error."""
    extra = [a.replace('NOWHERE', str(tmp_path / 'nowhere')) for a in extra]
    assert train.main(roc_cli_args(workdir, '--log_dir', str(tmp_path / 'log'), *extra)) == 2
    out, err = capsys.readouterr()
    assert out == ''
    assert err.startswith('train.py: error: ') and err.count('\n') == 1 and said in err


def test_opt_accepts_only_the_originals_adam(workdir):
    with pytest.raises(SystemExit):
        train.parse_args(['--opt', 'sgd'])


def test_compile_trains_like_eager(workdir, tmp_path):
    """--compile (torch.compile with inductor, on the CPU) makes the same updates as the eager run; without
    dropout both follow the same arithmetic up to kernel rounding."""
    d = workdir
    finals = {}
    for name, extra in (('eager', ()), ('compiled', ('--compile',))):
        argv = roc_cli_args(d, '--desc', name, '--n_iter', '1', '--save_dir', str(tmp_path / 'save'),
                            '--log_dir', str(tmp_path / 'log'), '--embd_pdrop', '0', '--attn_pdrop', '0',
                            '--resid_pdrop', '0', '--clf_pdrop', '0', *extra)
        assert train.main(argv) == 0
        from tests.test_train import read_state
        finals[name] = read_state(tmp_path / 'save' / name / 'train_state.safetensors')
    (progress, weights), (ref_progress, ref_weights) = finals['compiled'], finals['eager']
    assert progress['n_updates'] == ref_progress['n_updates'] == 5
    assert weights.keys() == ref_weights.keys()
    # Adam normalises each gradient element: where one is ~0, kernel rounding can flip its sign and move that
    # element by up to lr per update. All but a handful of the 1.3M elements agree to 1e-5; a wrong graph moves many.
    diffs = torch.cat([(ref_weights[k] - weights[k]).abs().reshape(-1) for k in weights])
    assert (diffs > 1e-5).sum() <= 10 and diffs.max() < 5e-3, (diffs > 1e-5).sum()
    records = [log_records(tmp_path / 'log' / f'{n}.jsonl')[0] for n in ('compiled', 'eager')]
    assert records[0]['tr_cost'] == pytest.approx(records[1]['tr_cost'], abs=1e-5)


def test_model_dir_takes_all_three_weight_formats(workdir, tmp_path, capsys):
    """Released shards, a convert.py folder and a transformers folder of the same weights fine-tune identically."""
    import convert
    d = workdir
    assert convert.main(['shards-to-safetensors', '--model_dir', str(d / 'model'), '--out', str(tmp_path / 'st'),
                         '--n_head', '4']) == 0
    assert convert.main(['to-transformers', '--model_dir', str(d / 'model'), '--out', str(tmp_path / 'hf'),
                         '--n_head', '4']) == 0
    records = {}
    for name, folder in (('released', d / 'model'), ('safetensors', tmp_path / 'st'), ('hf', tmp_path / 'hf')):
        argv = roc_cli_args(d, '--desc', name, '--model_dir', str(folder), '--n_iter', '1',
                            '--log_dir', str(tmp_path / 'log'))
        assert train.main(argv) == 0, capsys.readouterr().err
        records[name] = log_records(tmp_path / 'log' / f'{name}.jsonl')
    assert records['safetensors'] == records['released'] == records['hf']
    capsys.readouterr()
    assert train.main(roc_cli_args(d, '--model_dir', str(tmp_path / 'st'), '--n_head', '2')) == 2
    assert 'n_head=4' in capsys.readouterr().err


def test_settings_hold_every_flag_in_the_parsers_order():
    """FineTuneSettings and PretrainSettings are the command line, typed: the same names as the flags, in the order the
    parser declares them (the order of a run's log header and args.json), then what parse_args derives."""
    import dataclasses

    import pretrain
    flags = list(vars(train.command_line().parse_args([])))
    assert flags[0] == 'config'  # --config is read by flags.parse_with_config, not a setting of the run
    assert [f.name for f in dataclasses.fields(train.FineTuneSettings)] == flags[1:] + ['transfer_sweep']
    flags = list(vars(pretrain.command_line().parse_args(['--corpus', 'c', '--out', 'o'])))
    assert [f.name for f in dataclasses.fields(pretrain.PretrainSettings)] == flags[1:]
    settings = train.parse_args(['--n_transfer', '0,6', '--seed', '7'])
    assert (settings.n_transfer, settings.transfer_sweep, settings.seed) == (0, [0, 6], 7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.seed = 8
