"""Tests for weights.py's GPT-2 formats: the released TensorFlow checkpoint read without TensorFlow (and written back
byte for byte), damaged checkpoints, transformers' gpt2 folders both ways, this project's safetensors folder, and
the family and format of any folder."""
import json
import shutil

import numpy as np
import pytest
import torch

import models
import weights
from model_gpt2 import GPT2Config
from models import complete_checkpoint
from tests.helpers import FIXTURES, hf_gpt2_and_ours, random_hf_gpt2

GPT2 = FIXTURES / 'gpt2'
CKPT = GPT2 / 'ckpt_small'


@pytest.fixture(scope='module')
def ref():
    with np.load(GPT2 / 'tf_gpt2_small.npz', allow_pickle=False) as d:
        return {k: d[k] for k in d.files}


def copy_ckpt(dest):
    """Copy the fixture checkpoint folder to dest; return dest."""
    shutil.copytree(CKPT, dest)
    return dest


def logits_of(model, ids):
    with torch.no_grad():
        return model(torch.as_tensor(ids, dtype=torch.long))[0]


# --- the released checkpoint ----------------------------------------------------------------------------------

def test_the_tensorflow_checkpoint_is_read_without_tensorflow(ref):
    ckpt = weights.read_tf_gpt2(str(CKPT))
    assert ckpt.family == 'gpt2' and ckpt.config == {'n_head': 4}
    assert (ckpt.n_vocab, ckpt.n_special, ckpt.n_pos, ckpt.n_embd, ckpt.n_layer) == (96, 0, 32, 32, 2)
    np.testing.assert_array_equal(ckpt.tokens, ref['model/wte'])
    np.testing.assert_array_equal(ckpt.positions, ref['model/wpe'])
    for name in ref['param_names']:
        if name not in ('model/wte', 'model/wpe'):
            array = ref[name]
            np.testing.assert_array_equal(ckpt.blocks[weights.torch_name(name)], array.reshape(array.shape[-2:])
                                          if array.ndim == 3 else array, err_msg=name)
    assert weights.detect_format(str(CKPT)) == 'tf-checkpoint' and weights.detect_family(str(CKPT)) == 'gpt2'


def test_writing_the_checkpoint_back_gives_tensorflows_files_byte_for_byte(tmp_path):
    weights.write_tf_gpt2(weights.read_tf_gpt2(str(CKPT)), tmp_path / 'out')
    for name in ('checkpoint', 'hparams.json', 'model.ckpt.index', 'model.ckpt.data-00000-of-00001'):
        assert (tmp_path / 'out' / name).read_bytes() == (CKPT / name).read_bytes(), name


def test_a_folder_without_vocabulary_files_loads_and_uses_the_shipped_vocabulary(tmp_path):
    folder = copy_ckpt(tmp_path / 'ckpt')
    assert not (folder / 'encoder.json').exists()
    model = models.load_model(str(folder), lm=True)
    assert model.cfg == GPT2Config(n_vocab=96, n_ctx=32, n_embd=32, n_head=4, n_layer=2)
    assert models.load_tokenizer(str(folder)).encode(['Hello world'], verbose=False) == [[15496, 995]]
    for name in ('model.ckpt.meta', 'checkpoint'):  # neither is needed to read the weights
        (folder / name).unlink()
    torch.testing.assert_close(logits_of(models.load_model(str(folder), lm=True), [[1, 2, 3]]),
                               logits_of(model, [[1, 2, 3]]), rtol=0, atol=0)


def damage(folder, case):
    """Damage a copy of the checkpoint as case says; return the file the error must name."""
    index, data = folder / 'model.ckpt.index', folder / 'model.ckpt.data-00000-of-00001'
    if case == 'index truncated':
        index.write_bytes(index.read_bytes()[:-30])
        return index
    if case == 'data truncated':
        data.write_bytes(data.read_bytes()[:-100])
        return data
    if case == 'one data byte flipped':
        raw = bytearray(data.read_bytes())
        raw[50_000] ^= 0x01
        data.write_bytes(bytes(raw))
        return data
    (folder / 'hparams.json').unlink()
    return folder / 'hparams.json'


@pytest.mark.parametrize('case', ['index truncated', 'data truncated', 'one data byte flipped', 'hparams missing'])
def test_a_damaged_checkpoint_is_one_line_naming_the_file(tmp_path, case, capsys):
    folder = copy_ckpt(tmp_path / 'ckpt')
    named = damage(folder, case)
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        models.load_model(str(folder), lm=True)
    assert str(named) in str(err.value) and '\n' not in str(err.value)
    import generate  # and through a script: the one-line error, no traceback
    assert generate.main(['--model_dir', str(folder), '--prompt', 'hi', '--gen_len', '2']) == 1
    stderr = capsys.readouterr().err
    assert stderr.count('\n') == 1 and str(named) in stderr and 'Traceback' not in stderr


def test_hparams_that_do_not_fit_the_tensors_are_refused(tmp_path):
    folder = copy_ckpt(tmp_path / 'ckpt')
    hparams = json.loads((folder / 'hparams.json').read_text())
    (folder / 'hparams.json').write_text(json.dumps(dict(hparams, n_ctx=64)))
    with pytest.raises(ValueError, match=r'model/wpe has shape \(32, 32\), but .*hparams\.json gives \(64, 32\)'):
        weights.read_tf_gpt2(str(folder))
    (folder / 'hparams.json').write_text(json.dumps(dict(hparams, n_layer=3)))
    with pytest.raises(ValueError, match='does not hold a GPT-2 with n_layer=3'):
        weights.read_tf_gpt2(str(folder))
    (folder / 'hparams.json').write_text(json.dumps({'n_vocab': 96}))
    with pytest.raises(ValueError, match="hparams.json lacks or has a bad 'n_ctx'"):
        weights.read_tf_gpt2(str(folder))


# --- this project's folder and transformers' ------------------------------------------------------------------

def test_safetensors_folder_round_trip_keeps_the_family_and_every_weight(tmp_path):
    model = models.load_model(str(CKPT), lm=True)
    weights.save_model(model, tmp_path / 'st')
    config = json.loads((tmp_path / 'st' / 'config.json').read_text())
    assert config['family'] == 'gpt2' and config['n_head'] == 4 and config['n_ctx'] == 32
    assert weights.detect_format(str(tmp_path / 'st')) == 'safetensors'
    back = models.load_model(str(tmp_path / 'st'), lm=True)
    assert back.cfg == model.cfg
    for key, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def test_export_to_transformers_and_back_is_exact_and_transformers_computes_the_same_logits(tmp_path, ref):
    from transformers import GPT2LMHeadModel as HFGPT2LMHeadModel
    ckpt = complete_checkpoint(weights.read_tf_gpt2(str(CKPT)))
    weights.write_transformers(ckpt, tmp_path / 'hf')
    assert weights.detect_family(str(tmp_path / 'hf')) == 'gpt2'
    hf, info = HFGPT2LMHeadModel.from_pretrained(tmp_path / 'hf', output_loading_info=True)
    assert not info['missing_keys'] and not info['unexpected_keys'] and not info['mismatched_keys']
    with torch.no_grad():
        hf_logits = hf.eval()(torch.as_tensor(ref['X'], dtype=torch.long)).logits
    np.testing.assert_allclose(hf_logits.numpy(), ref['logits'], rtol=1e-4, atol=1e-4 * np.abs(ref['logits']).max())
    back = weights.read_transformers(str(tmp_path / 'hf'))
    for name in ('tokens', 'positions'):
        np.testing.assert_array_equal(getattr(back, name), getattr(ckpt, name))
    assert back.blocks.keys() == ckpt.blocks.keys()
    assert all(np.array_equal(back.blocks[k], ckpt.blocks[k]) for k in ckpt.blocks)


def test_our_loader_reads_a_transformers_gpt2_folder_with_the_same_logits(tmp_path):
    hf, ours = hf_gpt2_and_ours(tmp_path)
    ids = torch.randint(0, 96, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids)[0], hf(ids).logits, rtol=1e-5, atol=1e-5)
        # the same bare state dict, without its config: n_head given
    torch.save(dict(hf.state_dict()), tmp_path / 'weights.bin')
    bare = weights.read_transformers(str(tmp_path / 'weights.bin'), n_head=4)
    assert bare.family == 'gpt2' and bare.n_layer == 2
    assert weights.detect_family(str(tmp_path / 'weights.bin')) == 'gpt2'


def test_the_family_of_a_bare_safetensors_file_comes_from_its_header_alone(tmp_path, monkeypatch):
    random_hf_gpt2().save_pretrained(tmp_path / 'hf')
    (tmp_path / 'bare').mkdir()
    shutil.copyfile(tmp_path / 'hf' / 'model.safetensors', tmp_path / 'bare' / 'w.safetensors')
    index = tmp_path / 'bare' / 'w.safetensors.index.json'
    index.write_text(json.dumps({'weight_map': {'h.0.ln_1.weight': 'w.safetensors', 'wte.weight': 'w.safetensors'}}))

    def no_tensors(path):
        raise AssertionError(f'{path}: tensors read to tell a family')
    monkeypatch.setattr(weights, 'load_safetensors_file', no_tensors)
    assert weights.detect_family(str(tmp_path / 'bare' / 'w.safetensors')) == 'gpt2'
    assert weights.detect_family(str(index)) == 'gpt2'


def test_greedy_decoding_equals_transformers_generate(tmp_path):
    from sample import SamplingSettings, sample_ids
    hf, ours = hf_gpt2_and_ours(tmp_path, seed=2)
    prompt = [5, 17, 42, 9]
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, pad_token_id=0,
                          attention_mask=torch.ones(1, 4, dtype=torch.long))
    new, _ = sample_ids(ours, prompt, 96, SamplingSettings(gen_len=12, greedy=True))
    assert new == out[0, 4:].tolist()


def test_transformers_configs_this_port_does_not_compute_are_refused(tmp_path):
    random_hf_gpt2().save_pretrained(tmp_path / 'hf')
    config = json.loads((tmp_path / 'hf' / 'config.json').read_text())
    for key, value, message in (('activation_function', 'relu', 'tanh GELU'),
                                ('scale_attn_by_inverse_layer_idx', True, 'as released has False'),
                                ('layer_norm_epsilon', 1e-6, 'layer_norm_epsilon is 1e-06')):
        (tmp_path / 'hf' / 'config.json').write_text(json.dumps(dict(config, **{key: value})))
        with pytest.raises(ValueError, match=message):
            weights.read_transformers(str(tmp_path / 'hf'))
    (tmp_path / 'hf' / 'config.json').write_text(json.dumps(dict(config, model_type='bert')))
    with pytest.raises(ValueError, match="its model_type is 'bert'"):
        weights.detect_format(str(tmp_path / 'hf'))


def test_verification_is_refused_for_a_folder_that_is_not_gpt1s_released_shards():
    with pytest.raises(ValueError, match=r'is not a released GPT-1 model/ folder: verification checks the released'):
        models.load_model(str(CKPT), verify=True)
