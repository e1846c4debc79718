"""Tests for extract_features.py: saved states equal the model's forward, padding is inert, long lines error."""
import json

import numpy as np
import pytest
import torch

import extract_features
from extract_features import features_from_ids, hidden_states_batch, parse_layers
from model_pytorch import N_VOCAB, TransformerModel
from tests.helpers import small_cfg
from tests.test_generate import write_tiny_real_vocab_model
import weights
import models

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
    text_encoder = TextEncoder(*weights.vocab_paths(str(model_dir)))
    ids = text_encoder.encode(TEXTS, verbose=False)
    model = models.load_model(str(model_dir), n_head=2)
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


def test_an_id_outside_the_token_rows_is_refused_naming_its_sequence(tiny):
    for bad, match in ((tiny.pos_offset, f"sequence 1 holds token id {tiny.pos_offset}, beyond the model's "
                                         f"{tiny.pos_offset} token rows"), (-1, 'sequence 1 holds token id -1, below 0')):
        with pytest.raises(ValueError, match=match):
            features_from_ids(tiny, [[1, 2], [3, bad]])


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


@pytest.mark.parametrize('text, held, n', [('', 'no lines', 0), ('\n  \n', '2 lines and no text', 2)])
def test_an_input_without_text_is_written_with_one_warning_naming_it(model_dir, tmp_path, capsys, text, held, n):
    (tmp_path / 'in.txt').write_text(text, encoding='utf-8')
    out = tmp_path / 'f.npz'
    assert extract_features.main(['--input', str(tmp_path / 'in.txt'), '--output', str(out), '--model_dir',
                                  str(model_dir), '--n_head', '2', '--device', 'cpu']) == 0
    captured = capsys.readouterr()
    assert captured.err == (f'extract_features.py: warning: --input {tmp_path / "in.txt"} holds {held}: wrote {n} '
                            f'empty examples to {out}; give a text file with one example per line\n')
    assert f'wrote the features of {n} examples' in captured.out
    with np.load(out) as feats:
        assert feats['lengths'].tolist() == [0] * n and feats['layer_-1'].shape == (n, 0, 8)
    (tmp_path / 'in.txt').write_text('\nhello\n', encoding='utf-8')  # one line with text: no warning
    assert extract_features.main(['--input', str(tmp_path / 'in.txt'), '--output', str(out), '--model_dir',
                                  str(model_dir), '--n_head', '2', '--device', 'cpu']) == 0
    assert capsys.readouterr().err == ''


# --- every flag of the command line, each checked by its effect -------------------------------------------

@pytest.fixture(scope='module')
def two_layer_dir(tmp_path_factory):
    return write_tiny_real_vocab_model(tmp_path_factory.mktemp('feats2') / 'model', seed=2, n_layer=2)


def write_input(folder, lines=TEXTS):
    """Write lines as an --input file in folder; return its path."""
    path = folder / 'in.txt'
    path.write_text('\n'.join(lines) + '\n', encoding='utf-8')
    return path


def load_npz(path):
    """Return the arrays of an .npz as a dict."""
    with np.load(path, allow_pickle=False) as feats:
        return {k: feats[k] for k in feats.files}


def test_script_command_line_layers_pick_exactly_those_layers(two_layer_dir, tmp_path, monkeypatch, capsys):
    # through sys.argv, as `python extract_features.py ... --layers -1,-3,1` runs it (argparse alone would take
    # '-1,-3,1' for an option)
    monkeypatch.setattr('sys.argv', ['extract_features.py', '--input', str(write_input(tmp_path)), '--output',
                                     str(tmp_path / 'f.npz'), '--model_dir', str(two_layer_dir), '--n_head', '2',
                                     '--device', 'cpu', '--layers', '-1,-3,1'])
    assert extract_features.main() == 0
    feats = load_npz(tmp_path / 'f.npz')
    assert sorted(k for k in feats if k.startswith('layer_')) == ['layer_-1', 'layer_-3', 'layer_1']
    assert feats['layers'].tolist() == [-1, -3, 1]
    model = models.load_model(str(two_layer_dir), n_head=2)
    for i, n in enumerate(feats['lengths']):
        if n == 0:
            continue
        states = forward_states(model, feats['ids'][i, :n].tolist())  # [embeddings, block 1, block 2]
        for layer, index in (('-1', 2), ('-3', 0), ('1', 1)):
            np.testing.assert_allclose(feats[f'layer_{layer}'][i, :n], states[index], rtol=1e-5, atol=1e-5)
    assert not np.allclose(feats['layer_-1'], feats['layer_1'])  # three different layers
    assert extract_features.parse_args(['--input', 'a', '--output', 'b']).layers == '-1'  # the default: last block


def test_batch_size_sets_the_forward_passes_not_the_features(model_dir, tmp_path, monkeypatch, capsys):
    batches = []
    real = extract_features.hidden_states_batch

    def spy(model, ids, layers):
        batches.append(len(ids))
        return real(model, ids, layers)

    monkeypatch.setattr(extract_features, 'hidden_states_batch', spy)
    argv = ['--input', str(write_input(tmp_path)), '--model_dir', str(model_dir), '--n_head', '2', '--device', 'cpu',
            '--layers', '0,-1']
    feats = {}
    for batch_size, want in (('1', [1, 1, 1, 1]), ('3', [3, 1]), ('8', [4])):
        batches.clear()
        out = tmp_path / f'b{batch_size}.npz'
        assert extract_features.main(argv + ['--output', str(out), '--batch_size', batch_size]) == 0
        assert batches == want
        feats[batch_size] = load_npz(out)
    for batch_size in ('3', '8'):
        assert feats[batch_size].keys() == feats['1'].keys()
        for key, value in feats['1'].items():
            if value.dtype == np.float32:
                np.testing.assert_allclose(feats[batch_size][key], value, rtol=1e-5, atol=1e-6)
            else:
                np.testing.assert_array_equal(feats[batch_size][key], value)
    capsys.readouterr()
    assert extract_features.main(argv + ['--output', str(tmp_path / 'z.npz'), '--batch_size', '0']) == 1
    err = capsys.readouterr().err
    assert err == 'extract_features.py: error: --batch_size 0: give 1 or more\n' and not (tmp_path / 'z.npz').exists()


def test_truncate_keeps_the_first_n_ctx_tokens_and_n_ctx_crops_positions(model_dir, tmp_path, capsys):
    from text_utils import TextEncoder
    lines = ['short line', 'word ' * 5 + 'the end of a long line', 'ok']
    argv = ['--input', str(write_input(tmp_path, lines)), '--model_dir', str(model_dir), '--n_head', '2',
            '--device', 'cpu', '--layers', '-1,0']
    assert extract_features.main(argv + ['--output', str(tmp_path / 'full.npz')]) == 0
    assert extract_features.main(argv + ['--output', str(tmp_path / 'cut.npz'), '--n_ctx', '8', '--truncate']) == 0
    full, cut = load_npz(tmp_path / 'full.npz'), load_npz(tmp_path / 'cut.npz')
    ids = TextEncoder(*weights.vocab_paths(str(model_dir))).encode(lines, verbose=False)
    assert len(ids[1]) == 11 and full['lengths'].tolist() == [2, 11, 1] and cut['lengths'].tolist() == [2, 8, 1]
    assert cut['ids'][1].tolist() == ids[1][:8] and cut['truncated'].tolist() == [False, True, False]
    # the first 8 positions are the stored ones, so the kept tokens have the states they have uncut
    for layer in ('layer_-1', 'layer_0'):
        np.testing.assert_allclose(cut[layer], full[layer][:, :8], rtol=1e-5, atol=1e-6)
    cropped = models.load_model(str(model_dir), n_head=2, n_ctx=8)
    assert cropped.embed.weight.shape[0] == N_VOCAB + 8
    np.testing.assert_allclose(cut['layer_-1'][1], forward_states(cropped, ids[1][:8])[-1], rtol=1e-5, atol=1e-5)


def test_model_flags_afn_and_n_head(model_dir, tmp_path):
    argv = ['--input', str(write_input(tmp_path)), '--output', str(tmp_path / 'f.npz'), '--model_dir', str(model_dir),
            '--device', 'cpu']
    assert extract_features.main(argv + ['--n_head', '4', '--afn', 'relu']) == 0
    feats = load_npz(tmp_path / 'f.npz')
    relu4 = models.load_model(str(model_dir), n_head=4, afn='relu')
    gelu2 = models.load_model(str(model_dir), n_head=2)
    seq = feats['ids'][0, :feats['lengths'][0]].tolist()
    np.testing.assert_allclose(feats['layer_-1'][0, :len(seq)], forward_states(relu4, seq)[-1], rtol=1e-5, atol=1e-5)
    assert not np.allclose(feats['layer_-1'][0, :len(seq)], forward_states(gelu2, seq)[-1], atol=1e-3)


def test_vocabulary_paths_override_the_model_folders(model_dir, tmp_path, capsys):
    encoder = json.loads((model_dir / 'encoder_bpe_40000.json').read_text(encoding='utf-8'))
    swapped = dict(encoder, **{'hello</w>': encoder['world</w>'], 'world</w>': encoder['hello</w>']})
    (tmp_path / 'swapped.json').write_text(json.dumps(swapped), encoding='utf-8')
    (tmp_path / 'one_merge.bpe').write_text('#version: 0.2\nq z\n', encoding='utf-8')  # 'hello' stays letters
    argv = ['--input', str(write_input(tmp_path, ['hello world'])), '--output', str(tmp_path / 'f.npz'),
            '--model_dir', str(model_dir), '--n_head', '2', '--device', 'cpu']
    assert extract_features.main(argv) == 0
    assert load_npz(tmp_path / 'f.npz')['ids'].tolist() == [[encoder['hello</w>'], encoder['world</w>']]]
    assert extract_features.main(argv + ['--encoder_path', str(tmp_path / 'swapped.json')]) == 0
    assert load_npz(tmp_path / 'f.npz')['ids'].tolist() == [[encoder['world</w>'], encoder['hello</w>']]]
    assert extract_features.main(argv + ['--bpe_path', str(tmp_path / 'one_merge.bpe')]) == 0
    letters = ['h', 'e', 'l', 'l', 'o</w>', 'w', 'o', 'r', 'l', 'd</w>']
    assert load_npz(tmp_path / 'f.npz')['ids'].tolist() == [[encoder[piece] for piece in letters]]


def test_device_is_checked_before_any_work(model_dir, tmp_path, capsys):
    assert extract_features.parse_args(['--input', 'a', '--output', 'b']).device == \
        ('cuda' if torch.cuda.is_available() else 'cpu')
    argv = ['--input', str(write_input(tmp_path)), '--output', str(tmp_path / 'f.npz'), '--model_dir', str(model_dir),
            '--n_head', '2', '--device', 'cuda:99']
    assert extract_features.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith('extract_features.py: error: --device cuda:99: this machine has') and err.count('\n') == 1
    assert not (tmp_path / 'f.npz').exists()


def test_gpt2_features_are_its_hidden_states(tmp_path):
    from encoder_gpt2 import get_encoder
    from tests.helpers import write_tiny_gpt2
    folder = write_tiny_gpt2(tmp_path / 'gpt2', seed=4)
    (tmp_path / 'in.txt').write_text('Hello world.\nA longer line of text here.\n')
    assert extract_features.main(['--input', str(tmp_path / 'in.txt'), '--output', str(tmp_path / 'f.npz'),
                                  '--model_dir', str(folder), '--layers=0,-1']) == 0
    with np.load(tmp_path / 'f.npz') as f:
        out = {k: f[k] for k in f.files}
    ids = get_encoder().encode('A longer line of text here.')
    model = models.load_model(str(folder))
    n = len(ids)
    x = torch.stack([torch.tensor(ids), model.pos_offset + torch.arange(n)], dim=-1)[None]
    with torch.no_grad():
        states = model.all_hidden_states(x)
    assert out['lengths'].tolist() == [len(get_encoder().encode('Hello world.')), n]
    np.testing.assert_allclose(out['layer_-1'][1, :n], states[-1][0].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out['layer_0'][1, :n], states[0][0].numpy(), rtol=1e-5, atol=1e-5)


def test_precision_bf16_computes_the_states_under_autocast_and_saves_them_in_fp32(model_dir, tmp_path, capsys):
    """--precision bf16: the features are bf16 computations (not fp32's bits), saved as float32, within bf16's error
    of fp32's."""
    argv = ['--input', str(write_input(tmp_path)), '--model_dir', str(model_dir), '--n_head', '2', '--device', 'cpu']
    feats = {}
    for precision in ('fp32', 'bf16'):
        out = tmp_path / f'{precision}.npz'
        assert extract_features.main(argv + ['--output', str(out), '--precision', precision]) == 0
        feats[precision] = load_npz(out)
    capsys.readouterr()
    low, full = feats['bf16']['layer_-1'], feats['fp32']['layer_-1']
    assert low.dtype == np.float32 and not np.array_equal(low, full)
    np.testing.assert_allclose(low, full, rtol=0.05, atol=0.05 * np.abs(full).max())
    np.testing.assert_array_equal(feats['bf16']['ids'], feats['fp32']['ids'])
