"""Tests for extract_features.py: saved states equal the model's forward, padding is inert, long lines error."""
import numpy as np
import pytest
import torch

import convert
import extract_features
from extract_features import features_from_ids, hidden_states_batch, parse_layers
from model_pytorch import TransformerModel
from tests.helpers import small_cfg
from tests.test_generate import write_tiny_real_vocab_model

TEXTS = ['The quick brown fox jumps over the lazy dog.', 'Hi!', '', 'A third, somewhat longer line of text here.']


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
    return write_tiny_real_vocab_model(tmp_path_factory.mktemp('feats') / 'model', seed=1)


@pytest.fixture(scope='module')
def tiny():
    """A random eval-mode TransformerModel: 100 tokens, 16 positions, n_embd 16, 2 layers."""
    torch.manual_seed(0)
    return TransformerModel(small_cfg(n_embd=16, n_head=2), vocab=116, n_ctx=16).eval()


def forward_states(model, ids):
    """Return all_hidden_states of one unpadded sequence: a list of [T, n_embd] arrays."""
    pos_offset = model.embed.weight.shape[0] - model.n_ctx
    x = torch.tensor([[[t, pos_offset + i] for i, t in enumerate(ids)]])  # [1, T, 2]
    with torch.no_grad():
        return [h[0].numpy() for h in model.all_hidden_states(x)]


def test_cli_saves_the_models_states_for_every_line(model_dir, tmp_path, capsys):
    from text_utils import TextEncoder
    (tmp_path / 'in.txt').write_text('\n'.join(TEXTS) + '\n', encoding='utf-8')
    out = tmp_path / 'feats.npz'
    assert extract_features.main(['--input', str(tmp_path / 'in.txt'), '--output', str(out), '--model_dir',
                                  str(model_dir), '--n_head', '2', '--layers', '-1,0,1', '--batch_size', '3',
                                  '--device', 'cpu']) == 0
    assert 'wrote the features of 4 examples' in capsys.readouterr().out
    text_encoder = TextEncoder(*convert.vocab_paths(str(model_dir)))
    ids = text_encoder.encode(TEXTS, verbose=False)
    model, _ = convert.load_model(str(model_dir), n_head=2)
    with np.load(out, allow_pickle=False) as feats:
        assert sorted(feats.files) == ['ids', 'layer_-1', 'layer_0', 'layer_1', 'layers', 'lengths', 'texts',
                                       'truncated']
        max_len = max(len(seq) for seq in ids)
        assert feats['layer_-1'].shape == (4, max_len, 8) and feats['layer_-1'].dtype == np.float32
        assert feats['lengths'].tolist() == [len(seq) for seq in ids] and feats['lengths'][2] == 0
        assert feats['texts'].tolist() == TEXTS and feats['layers'].tolist() == [-1, 0, 1]
        assert not feats['truncated'].any()
        for i, seq in enumerate(ids):
            n = len(seq)
            assert feats['ids'][i, :n].tolist() == seq and (feats['ids'][i, n:] == -1).all()
            assert (feats['layer_-1'][i, n:] == 0).all()
            if n == 0:
                continue
            states = forward_states(model, seq)
            np.testing.assert_allclose(feats['layer_-1'][i, :n], states[-1], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(feats['layer_1'][i, :n], states[1], rtol=1e-5, atol=1e-5)  # 1 layer: = -1
            np.testing.assert_allclose(feats['layer_0'][i, :n], states[0], rtol=1e-5, atol=1e-5)


def test_padding_does_not_change_the_states_of_shorter_texts(tiny):
    short, long = [4, 8, 15], [16, 23, 42, 7, 9, 11, 2, 99]
    alone = hidden_states_batch(tiny, [short], [-1, 0])
    padded = hidden_states_batch(tiny, [long, short], [-1, 0])
    assert padded[-1].shape == (2, 8, 16)
    for layer in (-1, 0):
        np.testing.assert_allclose(padded[layer][1, :3], alone[layer][0], rtol=1e-5, atol=1e-6)
        assert (padded[layer][1, 3:] == 0).all()
    np.testing.assert_allclose(padded[-1][0], forward_states(tiny, long)[-1], rtol=1e-5, atol=1e-6)
    # batched and sorted by length, results still come back in input order
    ids = [short, long, [1], long[:5]]
    feats = features_from_ids(tiny, ids, layers=(-1,), batch_size=2)
    for i, seq in enumerate(ids):
        np.testing.assert_allclose(feats['layer_-1'][i, :len(seq)], forward_states(tiny, seq)[-1],
                                   rtol=1e-5, atol=1e-6)


def test_long_line_is_an_error_naming_it_unless_truncate(model_dir, tmp_path, capsys):
    (tmp_path / 'in.txt').write_text('short line\n' + 'word ' * 12 + '\nok\n', encoding='utf-8')
    argv = ['--input', str(tmp_path / 'in.txt'), '--output', str(tmp_path / 'f.npz'), '--model_dir', str(model_dir),
            '--n_head', '2', '--n_ctx', '8', '--device', 'cpu']
    assert extract_features.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith('extract_features.py: error: line 2 of ') and 'in.txt is 12 tokens' in err
    assert 'n_ctx=8' in err and '--truncate' in err and err.count('\n') == 1
    assert not (tmp_path / 'f.npz').exists()
    assert extract_features.main(argv + ['--truncate']) == 0
    assert '(1 truncated to n_ctx tokens)' in capsys.readouterr().out
    with np.load(tmp_path / 'f.npz') as feats:
        assert feats['lengths'].tolist() == [2, 8, 1] and feats['truncated'].tolist() == [False, True, False]
        assert feats['layer_-1'].shape == (3, 8, 8)


def test_layer_and_argument_errors(model_dir, tmp_path, capsys):
    assert parse_layers('-1,0, 2', 2) == [-1, 0, 2]
    with pytest.raises(ValueError, match='layer 3 does not exist'):
        parse_layers('3', 2)
    with pytest.raises(ValueError, match='comma-separated integers'):
        parse_layers('last', 2)
    (tmp_path / 'in.txt').write_text('hello\n', encoding='utf-8')
    base = ['--output', str(tmp_path / 'f.npz'), '--model_dir', str(model_dir), '--n_head', '2', '--device', 'cpu']
    assert extract_features.main(['--input', str(tmp_path / 'in.txt'), '--layers', '-3'] + base) == 1
    assert 'layer -3 does not exist' in capsys.readouterr().err
    assert extract_features.main(['--input', str(tmp_path / 'missing.txt')] + base) == 1
    err = capsys.readouterr().err
    assert 'missing.txt does not exist' in err and err.count('\n') == 1
