"""GPT-2 end to end on tiny models: prepare_corpus.py --arch gpt2, then pretrain.py learns the corpus from scratch,
its output generates, converts and fine-tunes with train.py, continuing starts from the weights, and a killed run
resumes to the same weights and log."""
import json

import numpy as np
import pytest
import torch

import corpus as corpus_module
import generate
import models
import pretrain
import train
from model_gpt2 import GPT2LMHeadModel
from tests.helpers import roc_cli_args, roc_workdir, write_structured_corpus
from tests.test_pretrain import assert_killed_and_resumed_run_equals_the_uninterrupted_run, read_log, unigram_entropy
from tests.test_pretrain import tiny_args as gpt1_tiny_args


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    return write_structured_corpus(tmp_path_factory.mktemp('corpus_gpt2'), extra=('--arch', 'gpt2'))


def tiny_args(corpus, out, *extra):
    """pretrain.py's arguments for a tiny GPT-2 on corpus: test_pretrain's tiny model with --arch gpt2."""
    return gpt1_tiny_args(corpus, out, '--arch', 'gpt2', *extra)


@pytest.fixture(scope='module')
def scratch_run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp('scratch_gpt2')
    assert pretrain.main(tiny_args(corpus, out, '--n_updates', '200', '--save_shards')) == 0
    return out


def test_from_scratch_learns_the_corpus_well_below_its_unigram_entropy(corpus, scratch_run):
    train_stream, _, meta = corpus_module.load_corpus(corpus)
    log = read_log(scratch_run)
    assert [r['n_updates'] for r in log] == [0, 50, 100, 150, 200]
    assert log[0]['val_loss'] == pytest.approx(np.log(50257), abs=0.3)  # a fresh model: about uniform over the tokens
    assert log[-1]['val_loss'] < 0.6 * unigram_entropy(train_stream), log[-1]['val_loss']
    config = json.loads((scratch_run / 'config.json').read_text())
    assert (config['family'], config['n_vocab'], config['n_special'], config['n_ctx']) == ('gpt2', 50257, 0, 24)
    assert (scratch_run / 'encoder.json').is_file() and (scratch_run / 'vocab.bpe').is_file()
    assert (scratch_run / 'shards' / 'hparams.json').is_file()  # the released layout: a TensorFlow checkpoint
    released = models.load_model(str(scratch_run / 'shards'), lm=True)
    saved = models.load_model(str(scratch_run), lm=True)
    ids = torch.from_numpy(np.asarray(train_stream[:24], dtype=np.int64))[None]
    with torch.no_grad():
        torch.testing.assert_close(released(ids)[0], saved(ids)[0], rtol=0, atol=0)


def test_the_separator_is_endoftext_and_windows_cross_it(corpus):
    train_stream, _, meta = corpus_module.load_corpus(corpus)
    assert meta['separator_id'] == 50256 and int(train_stream[-1]) == 50256
    assert (np.asarray(train_stream) == 50256).sum() > 300  # one after every training document


def test_the_output_generates_and_continuing_starts_from_its_loss(corpus, scratch_run, tmp_path, capsys):
    assert generate.main(['--model_dir', str(scratch_run), '--prompt', 'the cat', '--gen_len', '6', '--greedy']) == 0
    assert capsys.readouterr().out.startswith('the cat sat on the')  # what the corpus teaches
    assert pretrain.main(tiny_args(corpus, tmp_path, '--model_dir', str(scratch_run), '--n_updates', '1')) == 0
    assert read_log(tmp_path)[0]['val_loss'] == pytest.approx(read_log(scratch_run)[-1]['val_loss'], abs=1e-4)


def test_the_corpus_family_decides_and_contradictions_are_refused(corpus, tmp_path, capsys):
    assert pretrain.main(tiny_args(corpus, tmp_path / 'a', '--arch', 'gpt1')) == 2
    assert "--arch gpt1 but" in capsys.readouterr().err
    assert pretrain.main(tiny_args(corpus, tmp_path / 'b', '--afn', 'relu')) == 2
    assert 'GPT-2 computes gelu only' in capsys.readouterr().err
    (tmp_path / 'w').mkdir()
    gpt1 = roc_workdir(tmp_path / 'w')  # a GPT-1 checkpoint cannot continue on a GPT-2 corpus
    assert pretrain.main(tiny_args(corpus, tmp_path / 'c', '--model_dir', str(gpt1 / 'model'), '--n_head', '4')) == 2
    assert 'holds a GPT-1 but' in capsys.readouterr().err


def test_preset_sizes_a_model_from_scratch(corpus, tmp_path):
    built = []
    real = pretrain.build_lm

    def spy(args, n_vocab, n_special):
        built.append(real(args, n_vocab, n_special))
        raise ValueError('built')  # the size is all this test needs

    pretrain.build_lm = spy
    try:
        argv = ['--corpus', str(corpus), '--out', str(tmp_path), '--preset', '355M', '--n_ctx', '24', '--quiet']
        assert pretrain.main(argv) == 2
    finally:
        pretrain.build_lm = real
    model, = built
    assert isinstance(model, GPT2LMHeadModel)
    assert (model.cfg.n_embd, model.cfg.n_head, model.cfg.n_layer, model.cfg.n_ctx) == (1024, 16, 24, 24)


def test_pretrained_gpt2_fine_tunes_with_train_py(corpus, tmp_path):
    out = tmp_path / 'pre'
    assert pretrain.main(tiny_args(corpus, out, '--n_ctx', '128', '--n_updates', '2', '--eval_windows', '2')) == 0
    (tmp_path / 'roc').mkdir()
    d = roc_workdir(tmp_path / 'roc')
    argv = roc_cli_args(d, '--model_dir', str(out), '--desc', 'ft', '--submit', vocab=False)  # the weights' own
    assert train.main(argv) == 0
    assert len((d / 'submission' / 'ROCStories.tsv').read_text().splitlines()) == 14


def test_killed_and_resumed_gpt2_run_equals_the_uninterrupted_run(corpus, tmp_path):
    """SIGKILL after some saved states, then --resume: the same weights and log as an uninterrupted run."""
    assert_killed_and_resumed_run_equals_the_uninterrupted_run(tiny_args(corpus, tmp_path / 'full', '--n_updates', '30'),
                                                               tiny_args(corpus, tmp_path / 'killed', '--n_updates', '30'))
