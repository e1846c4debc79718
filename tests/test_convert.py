"""Tests for convert.py: byte-identical shard round trips, our safetensors folder, transformers' layout."""
import dataclasses
import json
import struct

import numpy as np
import pytest
import torch

import convert
import integrity
import untrusted
import weights
from model_pytorch import (ACT_FNS, DoubleHeadModel, LMModel, TransformerModel, gelu, load_openai_pretrained_model,
                           model_from_checkpoint)
from models import load_model
from weights import (checkpoint_from_model, load_released_arrays, read_released, read_safetensors, read_transformers,
                     save_model, write_released_shards)
from tests.helpers import SMALL_MODEL, load_tf_reference, small_cfg

ROOT = __import__('pathlib').Path(__file__).resolve().parents[1]

N_VOCAB = 100  # tokens of the synthetic fixture checkpoint (n_embd 32, n_head 4, n_layer 2, 24 positions)


def shard_bytes(folder):
    """Return {file name: bytes} of a released folder."""
    names = ['params_shapes.json'] + [f'params_{n}.npy' for n in range(10)]
    return {name: (folder / name).read_bytes() for name in names}


def randomize(model, seed=0):
    """Give every parameter of model random values (layer norms and biases too), in place; return it."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if p.dim() == 1 and p.shape[0] < 64 else 0.0))
    return model


def make_x(n_tokens, pos_offset, batch, T, seed=0):
    """Return x [batch, T, 2] of random token ids and positions pos_offset + i."""
    g = torch.Generator().manual_seed(seed)
    x = torch.empty(batch, T, 2, dtype=torch.long)
    x[..., 0] = torch.randint(0, n_tokens, (batch, T), generator=g)
    x[..., 1] = pos_offset + torch.arange(T)
    return x


def tiny_model(n_vocab=N_VOCAB, n_special=2, n_ctx=16, afn='gelu', lm=False):
    """Return a random eval-mode model: n_embd 32, 4 heads, 2 layers."""
    torch.manual_seed(0)
    cls = LMModel if lm else TransformerModel
    return randomize(cls(small_cfg(afn=afn), vocab=n_vocab + n_special + n_ctx, n_ctx=n_ctx)).eval()


# --- released shards <-> safetensors -------------------------------------------------------------------------

def test_shards_to_safetensors_to_shards_is_byte_identical(tmp_path, capsys):
    assert convert.main(['shards-to-safetensors', '--model_dir', str(SMALL_MODEL), '--out', str(tmp_path / 'st'),
                         '--n_head', '4']) == 0
    config = json.loads((tmp_path / 'st' / 'config.json').read_text())
    assert {k: config[k] for k in ('n_vocab', 'n_special', 'n_ctx', 'n_embd', 'n_head', 'n_layer', 'afn')} == \
        dict(n_vocab=100, n_special=0, n_ctx=24, n_embd=32, n_head=4, n_layer=2, afn='gelu')
    assert convert.main(['safetensors-to-shards', '--model_dir', str(tmp_path / 'st'),
                         '--out', str(tmp_path / 'back')]) == 0
    assert shard_bytes(tmp_path / 'back') == shard_bytes(SMALL_MODEL)


def write_odd_shards(folder, arrays):
    """Write arrays as shards with 16-byte-aligned v1.0 headers (as old numpy did), uneven split points and a
    compact params_shapes.json: none of which np.save / write_released_shards would reproduce."""
    folder.mkdir()
    flat = np.concatenate([a.reshape(-1) for a in arrays]).astype('<f4')
    (folder / 'params_shapes.json').write_text(json.dumps([list(a.shape) for a in arrays], separators=(',', ':')))
    cuts = np.linspace(0, flat.size, 11).astype(int) + np.array([0, 7, -3, 11, 0, 5, -9, 2, 1, -4, 0])
    for n in range(10):
        part = flat[cuts[n]:cuts[n + 1]]
        header = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d,), }" % part.size
        header += ' ' * (-(10 + len(header) + 1) % 16) + '\n'
        with open(folder / f'params_{n}.npy', 'wb') as f:
            f.write(b'\x93NUMPY\x01\x00' + struct.pack('<H', len(header)) + header.encode('latin1'))
            f.write(part.tobytes())
    return folder


def test_round_trip_keeps_old_numpy_headers_and_uneven_splits(tmp_path):
    odd = write_odd_shards(tmp_path / 'odd', load_released_arrays(str(SMALL_MODEL)))
    assert (odd / 'params_0.npy').read_bytes()[:128] != (SMALL_MODEL / 'params_0.npy').read_bytes()[:128]
    np.testing.assert_array_equal(np.concatenate(load_released_arrays(str(odd))[1:2]),
                                  load_released_arrays(str(SMALL_MODEL))[1])
    weights.write_safetensors(read_released(str(odd), n_head=4), tmp_path / 'st')
    weights.write_released(weights.read_safetensors(tmp_path / 'st'), tmp_path / 'back')
    assert shard_bytes(tmp_path / 'back') == shard_bytes(odd)


def test_safetensors_load_matches_the_original_loader_and_tf_table():
    ref, config = load_tf_reference()
    ckpt = read_released(str(SMALL_MODEL), n_head=4)
    np.random.seed(config['seed'])  # the original draws the special rows right after seeding
    ours = model_from_checkpoint(ckpt, n_ctx=config['n_ctx'], n_special=config['n_special'])
    np.testing.assert_array_equal(ours.embed.weight.detach().numpy(), ref['we'])
    theirs = TransformerModel(small_cfg(), vocab=ours.embed.weight.shape[0], n_ctx=config['n_ctx'])
    np.random.seed(config['seed'])
    load_openai_pretrained_model(theirs, n_ctx=config['n_ctx'], n_special=config['n_special'], n_embd=32,
                                 path=str(SMALL_MODEL))
    for key, value in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, rtol=0, atol=0)


def test_load_model_gives_the_same_model_from_shards_and_from_safetensors(tmp_path):
    weights.write_safetensors(read_released(str(SMALL_MODEL), n_head=4), tmp_path / 'st')
    from_shards = load_model(str(SMALL_MODEL), n_head=4, n_ctx=16, lm=True)
    from_st = load_model(str(tmp_path / 'st'), n_ctx=16, lm=True)
    assert from_shards.cfg.n_vocab == from_st.cfg.n_vocab == N_VOCAB and isinstance(from_st, LMModel) and not from_st.training
    x = make_x(N_VOCAB, N_VOCAB, 2, 16)
    torch.testing.assert_close(from_st(x), from_shards(x), rtol=0, atol=0)


def test_model_saved_and_loaded_with_special_rows(tmp_path):
    model = tiny_model(n_special=3)
    save_model(model, tmp_path / 'st', n_vocab=N_VOCAB)
    config = json.loads((tmp_path / 'st' / 'config.json').read_text())
    assert (config['n_vocab'], config['n_special'], config['n_ctx']) == (100, 3, 16)
    loaded = model_from_checkpoint(read_safetensors(tmp_path / 'st'))
    x = make_x(N_VOCAB, N_VOCAB + 3, 2, 16)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    # into a given model: a DoubleHeadModel with the same table keeps its head and gets the transformer
    dh = DoubleHeadModel(small_cfg(), clf_token=102, task_head_type='multiple_choice', vocab=119, n_ctx=16)
    clf_w = dh.task_head.clf.w.detach().clone()
    model_from_checkpoint(read_safetensors(tmp_path / 'st'), model=dh)
    torch.testing.assert_close(dh.transformer.embed.weight, model.embed.weight, rtol=0, atol=0)
    torch.testing.assert_close(dh.task_head.clf.w, clf_w, rtol=0, atol=0)
    # the released format has no special rows: dropping them must be asked for
    with pytest.raises(ValueError, match='--drop_special'):
        weights.write_released(weights.read_safetensors(tmp_path / 'st'), tmp_path / 'shards')
    weights.write_released(weights.read_safetensors(tmp_path / 'st'), tmp_path / 'shards', drop_special=True)
    arrays = load_released_arrays(str(tmp_path / 'shards'))
    table = model.embed.weight.detach().numpy()
    np.testing.assert_array_equal(arrays[1], table[:100])
    np.testing.assert_array_equal(arrays[0], table[103:])
    np.testing.assert_array_equal(arrays[2][0], model.h[0].attn.c_attn.w.detach().numpy())


def test_saved_config_is_the_models_and_loading_restores_it(tmp_path):
    cfg = small_cfg(n_vocab=N_VOCAB, n_special=3, n_ctx=16, afn='relu', embd_pdrop=0.2)
    model = TransformerModel(cfg)
    save_model(model, tmp_path / 'st')
    config = json.loads((tmp_path / 'st' / 'config.json').read_text())
    assert config['family'] == 'gpt1'
    assert {k: v for k, v in config.items() if k not in ('format', 'format_version', 'family')} == \
        dataclasses.asdict(model.cfg)
    assert load_model(str(tmp_path / 'st')).cfg == model.cfg
    # weights loaded the original's way set the split of the table the weights give
    legacy = TransformerModel(small_cfg(), vocab=N_VOCAB + 3 + 24, n_ctx=24)
    assert (legacy.cfg.n_vocab, legacy.cfg.n_special) == (N_VOCAB + 3, 0)
    load_openai_pretrained_model(legacy, n_special=3, n_embd=32, path=str(SMALL_MODEL))
    assert (legacy.cfg.n_vocab, legacy.cfg.n_special) == (N_VOCAB, 3)


def test_model_without_released_metadata_writes_shards_like_write_released_shards(tmp_path):
    model = tiny_model(n_special=0)
    save_model(model, tmp_path / 'st', n_vocab=N_VOCAB)
    weights.write_released(weights.read_safetensors(tmp_path / 'st'), tmp_path / 'a')
    write_released_shards(tmp_path / 'b', weights.released_arrays(checkpoint_from_model(model, N_VOCAB)))
    assert shard_bytes(tmp_path / 'a') == shard_bytes(tmp_path / 'b')
    reloaded = TransformerModel(small_cfg(), vocab=116, n_ctx=16)
    load_openai_pretrained_model(reloaded, n_special=0, n_embd=32, path=str(tmp_path / 'a'))
    for key, value in model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[key], value, rtol=0, atol=0)


def test_n_ctx_crops_and_extra_special_rows_are_drawn(tmp_path):
    weights.write_safetensors(read_released(str(SMALL_MODEL), n_head=4), tmp_path / 'st')
    np.random.seed(5)
    model = model_from_checkpoint(read_safetensors(tmp_path / 'st'), n_ctx=10, n_special=2)
    table = model.embed.weight.detach().numpy()
    arrays = load_released_arrays(str(SMALL_MODEL))
    np.random.seed(5)
    np.testing.assert_array_equal(table[100:102], (np.random.randn(2, 32) * 0.02).astype(np.float32))
    np.testing.assert_array_equal(table[102:], arrays[0][:10])
    with pytest.raises(ValueError, match='n_ctx=30'):
        model_from_checkpoint(read_safetensors(tmp_path / 'st'), n_ctx=30)


# --- transformers ----------------------------------------------------------------------------------------

def test_transformers_openai_gelu_is_the_tanh_gelu_used_here():
    from transformers.models.openai.modeling_openai import ACT_FNS
    x = torch.linspace(-6, 6, 1001)
    torch.testing.assert_close(ACT_FNS['gelu'](x), gelu(x), rtol=0, atol=1e-6)
    assert (ACT_FNS['gelu'](x) - torch.nn.functional.gelu(x)).abs().max() > 1e-4  # not the erf GELU


@pytest.mark.parametrize('afn', ['gelu', 'relu'])
def test_our_model_exported_to_transformers_gives_the_same_states_and_logits(tmp_path, afn):
    from transformers import OpenAIGPTLMHeadModel, OpenAIGPTModel
    n_special = 2
    ours = tiny_model(n_special=n_special, afn=afn, lm=True)
    assert convert.main(['to-transformers', '--model_dir', str(save_model(ours, tmp_path / 'st', 100)),
                         '--out', str(tmp_path / 'hf')]) == 0
    base, info = OpenAIGPTModel.from_pretrained(tmp_path / 'hf', output_loading_info=True)
    lm, lm_info = OpenAIGPTLMHeadModel.from_pretrained(tmp_path / 'hf', output_loading_info=True)
    for loading in (info, lm_info):
        assert not loading['missing_keys'] and not loading['unexpected_keys'] and not loading['mismatched_keys']
    assert lm.config.vocab_size == N_VOCAB + n_special and lm.config.n_positions == 16
    base.eval()
    lm.eval()
    x = make_x(N_VOCAB + n_special, N_VOCAB + n_special, 3, 16)  # special tokens in the input too
    with torch.no_grad():
        h = ours.transformer(x)
        logits = ours(x)
        h_hf = base(input_ids=x[..., 0]).last_hidden_state
        logits_hf = lm(input_ids=x[..., 0]).logits
        states_hf = base(input_ids=x[..., 0], output_hidden_states=True).hidden_states
    torch.testing.assert_close(h_hf, h, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits_hf, logits[..., :N_VOCAB + n_special], rtol=1e-5, atol=1e-5)
    for theirs, mine in zip(states_hf, ours.transformer.all_hidden_states(x)):
        torch.testing.assert_close(theirs, mine.detach(), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope='module')
def hf_lm():
    """A randomly initialised transformers OpenAIGPTLMHeadModel with 3 added special tokens (103 rows)."""
    from transformers import OpenAIGPTConfig, OpenAIGPTLMHeadModel
    torch.manual_seed(1)
    config = OpenAIGPTConfig(vocab_size=103, n_positions=16, n_embd=32, n_layer=2, n_head=4)
    return randomize(OpenAIGPTLMHeadModel(config), seed=1).eval()


def check_imported(ours, hf_lm, n_rows=103):
    """Assert our imported model gives transformers' hidden states and logits (positions after every row)."""
    x = make_x(n_rows, n_rows, 2, 16, seed=3)
    with torch.no_grad():
        out = hf_lm(input_ids=x[..., 0], output_hidden_states=True)
        h = ours.transformer(x) if isinstance(ours, LMModel) else ours(x)
        torch.testing.assert_close(h, out.hidden_states[-1], rtol=1e-5, atol=1e-5)
        if isinstance(ours, LMModel):
            torch.testing.assert_close(ours(x)[..., :n_rows], out.logits, rtol=1e-5, atol=1e-5)


def test_random_transformers_model_imported_from_save_pretrained(tmp_path, hf_lm, capsys):
    hf_lm.save_pretrained(tmp_path / 'hf')
    assert convert.main(['from-transformers', '--model_dir', str(tmp_path / 'hf'), '--out', str(tmp_path / 'st'),
                         '--n_vocab', '100']) == 0
    config = json.loads((tmp_path / 'st' / 'config.json').read_text())
    assert (config['n_vocab'], config['n_special'], config['n_ctx'], config['n_head']) == (100, 3, 16, 4)
    ours = load_model(str(tmp_path / 'st'), lm=True)
    assert ours.cfg.n_vocab == 100
    check_imported(ours, hf_lm)
    check_imported(load_model(str(tmp_path / 'hf'), lm=True), hf_lm)


@pytest.mark.parametrize('layout', ['lm_state_dict', 'base_state_dict'])
def test_transformers_torch_state_dicts_import(tmp_path, hf_lm, layout):
    state = hf_lm.state_dict() if layout == 'lm_state_dict' else hf_lm.transformer.state_dict()
    state = dict(state)
    assert ('lm_head.weight' in state) == (layout == 'lm_state_dict')  # the tied copy is stored and ignored
    prefix = 'transformer.' if layout == 'lm_state_dict' else ''
    state[f'{prefix}h.0.attn.bias'] = torch.tril(torch.ones(1, 1, 16, 16))  # the mask buffer of old checkpoints
    torch.save(state, tmp_path / 'pytorch_model.bin')
    ckpt = read_transformers(str(tmp_path / 'pytorch_model.bin'), n_vocab=100, n_head=4)
    assert (ckpt.n_vocab, ckpt.n_special, ckpt.n_pos) == (100, 3, 16)
    assert f'{prefix}h.0.attn.bias' in ckpt.ignored
    check_imported(model_from_checkpoint(ckpt, lm=True), hf_lm)
    # into a model with one more special row than stored: it is drawn, the rest is copied
    model = TransformerModel(small_cfg(), vocab=100 + 4 + 12, n_ctx=12)
    model_from_checkpoint(ckpt, model=model)
    table = model.embed.weight.detach()
    torch.testing.assert_close(table[:103], hf_lm.transformer.tokens_embed.weight.detach(), rtol=0, atol=0)
    torch.testing.assert_close(table[104:], hf_lm.transformer.positions_embed.weight.detach()[:12], rtol=0, atol=0)


def test_transformers_round_trip_keeps_the_special_split(tmp_path):
    ours = tiny_model(n_special=2)
    save_model(ours, tmp_path / 'st', n_vocab=N_VOCAB)
    weights.write_transformers(weights.read_safetensors(tmp_path / 'st'), tmp_path / 'hf')
    ckpt = read_transformers(str(tmp_path / 'hf'))  # n_vocab from config.json's n_special
    assert (ckpt.n_vocab, ckpt.n_special) == (100, 2)
    x = make_x(N_VOCAB, N_VOCAB + 2, 2, 16)
    torch.testing.assert_close(model_from_checkpoint(ckpt)(x), ours(x), rtol=0, atol=0)


def test_transformers_errors_are_one_line_and_name_the_problem(tmp_path, hf_lm, capsys):
    state = dict(hf_lm.state_dict())
    state['lm_head.weight'] = state['lm_head.weight'] + 1  # an untied head
    torch.save(state, tmp_path / 'untied.bin')
    with pytest.raises(ValueError, match='untied'):
        read_transformers(str(tmp_path / 'untied.bin'), n_head=4)
    state = dict(hf_lm.transformer.state_dict())
    del state['h.1.mlp.c_fc.bias']
    torch.save(state, tmp_path / 'missing.bin')
    with pytest.raises(ValueError, match='h.1.mlp.c_fc.b'):
        read_transformers(str(tmp_path / 'missing.bin'), n_head=4)
    with pytest.raises(ValueError, match='n_head'):
        read_transformers(str(tmp_path / 'missing.bin'))
    hf_lm.save_pretrained(tmp_path / 'eps')
    config = json.loads((tmp_path / 'eps' / 'config.json').read_text())
    config['layer_norm_epsilon'] = 1e-6
    (tmp_path / 'eps' / 'config.json').write_text(json.dumps(config))
    with pytest.raises(ValueError, match='layer_norm_epsilon'):
        read_transformers(str(tmp_path / 'eps'))
    (tmp_path / 'html.bin').write_text('<html>not found</html>')
    capsys.readouterr()
    assert convert.main(['from-transformers', '--model_dir', str(tmp_path / 'html.bin'), '--out',
                         str(tmp_path / 'o'), '--n_head', '4']) == 1
    err = capsys.readouterr().err
    assert err.startswith('convert.py: error: ') and 'weights_only=True' in err and 'html.bin' in err and err.count('\n') == 1


def test_cli_errors_for_missing_and_unknown_folders(tmp_path, capsys):
    assert convert.main(['shards-to-safetensors', '--model_dir', str(tmp_path / 'nope'), '--out',
                         str(tmp_path / 'o')]) == 1
    err = capsys.readouterr().err
    assert f'{tmp_path / "nope"} does not exist' in err and err.count('\n') == 1
    (tmp_path / 'empty').mkdir()
    assert convert.main(['to-transformers', '--model_dir', str(tmp_path / 'empty'), '--out', str(tmp_path / 'o')]) == 1
    err = capsys.readouterr().err
    assert f'{tmp_path / "empty"} is empty' in err and err.count('\n') == 1  # said as it is, with the download
    assert convert.main(['safetensors-to-shards', '--model_dir', str(SMALL_MODEL), '--out', str(tmp_path / 'o')]) == 1
    assert 'config.json is missing' in capsys.readouterr().err


def test_vocabulary_files_follow_the_conversions(tmp_path):
    shards = tmp_path / 'model'
    write_released_shards(shards, load_released_arrays(str(SMALL_MODEL)))
    (shards / 'encoder_bpe_40000.json').write_text('{"a</w>": 0}')
    (shards / 'vocab_40000.bpe').write_text('#version: 0.2\na b\n')
    assert convert.main(['to-transformers', '--model_dir', str(shards), '--out', str(tmp_path / 'hf'),
                         '--n_head', '4']) == 0
    assert (tmp_path / 'hf' / 'vocab.json').read_text() == '{"a</w>": 0}'
    assert (tmp_path / 'hf' / 'merges.txt').read_text() == '#version: 0.2\na b\n'
    assert convert.main(['from-transformers', '--model_dir', str(tmp_path / 'hf'), '--out', str(tmp_path / 'st')]) == 0
    assert (tmp_path / 'st' / 'encoder_bpe_40000.json').read_text() == '{"a</w>": 0}'
    assert weights.vocab_paths(str(tmp_path / 'hf')) == (str(tmp_path / 'hf' / 'vocab.json'),
                                                          str(tmp_path / 'hf' / 'merges.txt'))


# --- every flag of the command line, each checked by its effect -------------------------------------------

def test_shards_to_safetensors_n_head_and_afn_make_that_model(tmp_path, capsys):
    assert convert.main(['shards-to-safetensors', '--model_dir', str(SMALL_MODEL), '--out', str(tmp_path / 'st'),
                         '--n_head', '2', '--afn', 'relu']) == 0
    config = json.loads((tmp_path / 'st' / 'config.json').read_text())
    assert (config['n_head'], config['afn']) == (2, 'relu')
    ours = load_model(str(tmp_path / 'st'))
    want = load_model(str(SMALL_MODEL), n_head=2, afn='relu')
    default = load_model(str(SMALL_MODEL), n_head=4)
    x = make_x(N_VOCAB, N_VOCAB, 2, 16)
    torch.testing.assert_close(ours(x), want(x), rtol=0, atol=0)
    assert not torch.allclose(ours(x), default(x))
    # a value the model cannot take is refused before anything is written
    capsys.readouterr()
    for flags, message in ((['--n_head', '5'], 'n_head=5 does not divide n_embd=32'),
                           (['--n_head', '4', '--afn', 'tanh'], "unknown afn 'tanh'")):
        assert convert.main(['shards-to-safetensors', '--model_dir', str(SMALL_MODEL), '--out', str(tmp_path / 'bad'),
                             *flags]) == 1
        err = capsys.readouterr().err
        assert err.startswith('convert.py: error: ') and message in err and err.count('\n') == 1
        assert not (tmp_path / 'bad').exists()


def test_shards_to_safetensors_verify_refuses_a_corrupt_shard(tmp_path, monkeypatch, capsys):
    shards = tmp_path / 'model'
    shards.mkdir()
    for name in shard_bytes(SMALL_MODEL):
        (shards / name).write_bytes((SMALL_MODEL / name).read_bytes())
    # the fixture's hashes stand in for the released ones, which only the real 445 MB files have
    monkeypatch.setitem(integrity.RELEASED_FILES, 'params_shapes.json',
                        untrusted.git_blob_sha1(shards / 'params_shapes.json'))
    for n in range(10):
        monkeypatch.setitem(integrity.RELEASED_FILES, f'params_{n}.npy',
                            untrusted.git_blob_sha1(shards / f'params_{n}.npy'))
    argv = ['shards-to-safetensors', '--model_dir', str(shards), '--n_head', '4']
    assert convert.main(argv + ['--out', str(tmp_path / 'ok'), '--verify']) == 0
    data = bytearray((shards / 'params_3.npy').read_bytes())
    data[-5] ^= 0x40  # one flipped bit: same size, a loadable shard, other weights
    (shards / 'params_3.npy').write_bytes(bytes(data))
    capsys.readouterr()
    assert convert.main(argv + ['--out', str(tmp_path / 'bad'), '--verify']) == 1
    err = capsys.readouterr().err
    assert err.startswith('convert.py: error: ') and 'params_3.npy: corrupt' in err and err.count('\n') == 1
    assert not (tmp_path / 'bad').exists()
    assert convert.main(argv + ['--out', str(tmp_path / 'unchecked')]) == 0  # without --verify it converts


def write_special_folder(folder):
    """Write this port's folder of tiny_model with 3 special rows; return (folder, the model's table)."""
    model = tiny_model(n_special=3)
    save_model(model, folder, n_vocab=N_VOCAB)
    return folder, model.embed.weight.detach().numpy()


def test_safetensors_to_shards_drop_special(tmp_path, capsys):
    st, table = write_special_folder(tmp_path / 'st')
    assert convert.main(['safetensors-to-shards', '--model_dir', str(st), '--out', str(tmp_path / 'a')]) == 1
    err = capsys.readouterr().err
    assert '3 special-token rows' in err and '--drop_special' in err and err.count('\n') == 1
    assert not (tmp_path / 'a').exists()
    assert convert.main(['safetensors-to-shards', '--model_dir', str(st), '--out', str(tmp_path / 'a'),
                         '--drop_special']) == 0
    arrays = load_released_arrays(str(tmp_path / 'a'))
    np.testing.assert_array_equal(arrays[1], table[:N_VOCAB])  # the tokens
    np.testing.assert_array_equal(arrays[0], table[N_VOCAB + 3:])  # the positions; the 3 special rows are gone


def test_to_transformers_drop_special_n_head_and_afn(tmp_path):
    st, table = write_special_folder(tmp_path / 'st')
    for flags, n_rows in (([], N_VOCAB + 3), (['--drop_special'], N_VOCAB)):
        out = tmp_path / f'hf{len(flags)}'
        assert convert.main(['to-transformers', '--model_dir', str(st), '--out', str(out), *flags]) == 0
        config = json.loads((out / 'config.json').read_text())
        assert (config['vocab_size'], config['n_special']) == (n_rows, n_rows - N_VOCAB)
        tensors, _ = weights.load_safetensors_file(str(out / 'model.safetensors'))
        np.testing.assert_array_equal(tensors['transformer.tokens_embed.weight'], table[:n_rows])
        np.testing.assert_array_equal(tensors['transformer.positions_embed.weight'], table[N_VOCAB + 3:])
    # from released shards, which store neither: the heads and the activation given
    assert convert.main(['to-transformers', '--model_dir', str(SMALL_MODEL), '--out', str(tmp_path / 'hf'),
                         '--n_head', '2', '--afn', 'swish']) == 0
    config = json.loads((tmp_path / 'hf' / 'config.json').read_text())
    assert (config['n_head'], config['afn']) == (2, 'silu')  # transformers' name of swish
    want = load_model(str(SMALL_MODEL), n_head=2, afn='swish')
    x = make_x(N_VOCAB, N_VOCAB, 2, 16)
    torch.testing.assert_close(load_model(str(tmp_path / 'hf'))(x), want(x), rtol=1e-6, atol=1e-6)


def test_from_transformers_n_head_and_afn_for_a_bare_weights_file(tmp_path, hf_lm, capsys):
    torch.save(dict(hf_lm.transformer.state_dict()), tmp_path / 'weights.bin')  # no config.json beside it
    argv = ['from-transformers', '--model_dir', str(tmp_path / 'weights.bin'), '--n_vocab', '100']
    assert convert.main(argv + ['--out', str(tmp_path / 'st')]) == 1  # n_head is stored nowhere
    assert 'pass --n_head' in capsys.readouterr().err
    assert convert.main(argv + ['--out', str(tmp_path / 'st'), '--n_head', '4']) == 0
    gelu = load_model(str(tmp_path / 'st'), lm=True)
    check_imported(gelu, hf_lm)  # transformers' default activation, gelu
    assert convert.main(argv + ['--out', str(tmp_path / 'relu'), '--n_head', '4', '--afn', 'relu']) == 0
    config = json.loads((tmp_path / 'relu' / 'config.json').read_text())
    assert (config['n_vocab'], config['n_special'], config['n_head'], config['afn']) == (100, 3, 4, 'relu')
    relu = load_model(str(tmp_path / 'relu'), lm=True)
    assert relu.transformer.h[0].mlp.act is ACT_FNS['relu'] and gelu.transformer.h[0].mlp.act is ACT_FNS['gelu']
    x = make_x(103, 103, 2, 16)
    torch.testing.assert_close(relu.transformer.embed.weight, gelu.transformer.embed.weight, rtol=0, atol=0)
    assert not torch.allclose(relu(x), gelu(x))


# --- GPT-2 ----------------------------------------------------------------------------------------------------

def test_gpt2_folders_convert_both_ways_and_back_byte_for_byte(tmp_path, capsys):
    from tests.helpers import write_tiny_gpt2
    released = write_tiny_gpt2(tmp_path / 'gpt2-tiny', n_ctx=24)
    steps = [('to-safetensors', released, 'st'), ('to-transformers', 'st', 'hf'), ('from-transformers', 'hf', 'st2'),
             ('to-tf-checkpoint', 'st2', 'back')]
    for command, src, out in steps:
        assert convert.main([command, '--model_dir', str(tmp_path / src), '--out', str(tmp_path / out)]) == 0, \
            capsys.readouterr().err
    for name in ('hparams.json', 'model.ckpt.index', 'model.ckpt.data-00000-of-00001', 'checkpoint'):
        assert (tmp_path / 'back' / name).read_bytes() == (released / name).read_bytes(), name
    assert json.loads((tmp_path / 'st' / 'config.json').read_text())['family'] == 'gpt2'
    for folder, names in (('st', ('encoder.json', 'vocab.bpe')), ('hf', ('vocab.json', 'merges.txt'))):
        for name, shipped in zip(names, ('encoder.json', 'vocab.bpe')):  # the shared GPT-2 vocabulary goes along
            assert (tmp_path / folder / name).read_bytes() == (ROOT / 'model' / 'gpt2' / shipped).read_bytes()
    ids = torch.randint(0, 50257, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = load_model(str(released), lm=True)(ids)[0]
        for folder in ('st', 'hf', 'st2', 'back'):
            torch.testing.assert_close(load_model(str(tmp_path / folder), lm=True)(ids)[0], want, rtol=0, atol=0)


def test_a_command_for_the_other_family_is_refused_in_one_line(tmp_path, capsys):
    assert convert.main(['to-tf-checkpoint', '--model_dir', str(SMALL_MODEL), '--out', str(tmp_path / 'x')]) == 1
    err = capsys.readouterr().err
    assert 'holds a GPT-1: to-tf-checkpoint writes GPT-2 weights only' in err and err.count('\n') == 1
    assert not (tmp_path / 'x').exists()
