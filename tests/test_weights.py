"""Tests for weights.py: the released shards read and written byte for byte, and every way a download can be damaged
(missing, truncated, the wrong dtype, a Git-LFS pointer, an HTML page, a pickle, any corrupted byte) is an error naming
the file, never a half-loaded model."""
import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import integrity
import untrusted
import weights
from model_pytorch import TransformerModel, load_openai_pretrained_model
from tests.helpers import FIXTURES, SMALL_MODEL, fixture_arrays, random_released_arrays, released_shapes, small_cfg
from weights import write_released_shards


def test_write_released_shards_reproduces_the_fixture_files(tmp_path):
    write_released_shards(tmp_path, fixture_arrays())
    for n in range(10):
        assert (tmp_path / f'params_{n}.npy').read_bytes() == (SMALL_MODEL / f'params_{n}.npy').read_bytes()


def small_model_for(d):
    return TransformerModel(small_cfg(), vocab=124, n_ctx=24)


def load_from(d):
    load_openai_pretrained_model(small_model_for(d), path=str(d), n_embd=32)


def test_missing_shard(shard_dir):
    (shard_dir / 'params_7.npy').unlink()
    with pytest.raises(FileNotFoundError, match=r'params_7\.npy is missing.*finetune-transformer-lm'):
        load_from(shard_dir)


def test_missing_shapes_file(shard_dir):
    (shard_dir / 'params_shapes.json').unlink()
    with pytest.raises(FileNotFoundError, match=r'params_shapes\.json is missing'):
        load_from(shard_dir)


def test_truncated_shard(shard_dir):
    p = shard_dir / 'params_3.npy'
    p.write_bytes(p.read_bytes()[:-400])
    with pytest.raises(ValueError, match=r'params_3\.npy is truncated or corrupt'):
        load_from(shard_dir)


def test_shard_with_missing_values_but_valid_header(shard_dir):
    p = shard_dir / 'params_4.npy'
    np.save(p, np.load(p)[:-10])
    with pytest.raises(ValueError, match='hold 29366 floats but params_shapes.json describes 29376'):
        load_from(shard_dir)


def test_shard_not_float32(shard_dir):
    p = shard_dir / 'params_2.npy'
    np.save(p, np.load(p).astype(np.float64))
    with pytest.raises(ValueError, match=r'params_2\.npy holds float64 values, expected float32'):
        load_from(shard_dir)


def test_git_lfs_pointer(shard_dir):
    (shard_dir / 'params_0.npy').write_text('version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 1\n')
    with pytest.raises(ValueError, match=r'params_0\.npy is a Git-LFS pointer'):
        load_from(shard_dir)


def test_html_page(shard_dir):
    (shard_dir / 'params_9.npy').write_text('\n<!DOCTYPE html><html><body>Not Found</body></html>')
    with pytest.raises(ValueError, match=r'params_9\.npy is an HTML page'):
        load_from(shard_dir)


def test_pickled_object_array_is_refused(shard_dir):
    np.save(shard_dir / 'params_1.npy', np.array([{'a': 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r'params_1\.npy holds pickled Python objects'):
        load_from(shard_dir)


@pytest.fixture(scope='module')
def pristine_shards(tmp_path_factory):
    d = tmp_path_factory.mktemp('pristine')
    write_released_shards(d, fixture_arrays())
    from untrusted import git_blob_sha1
    hashes = {p.name: git_blob_sha1(str(p)) for p in d.iterdir()}
    return d, hashes


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shard=st.integers(0, 9), cut=st.integers(1, 11_000))
def test_any_truncation_is_reported_never_loaded(pristine_shards, tmp_path_factory, shard, cut):
    src, _ = pristine_shards
    d = tmp_path_factory.mktemp('cut')
    for p in src.iterdir():
        data = p.read_bytes()
        (d / p.name).write_bytes(data[:max(len(data) - cut, 0)] if p.name == f'params_{shard}.npy' else data)
    with pytest.raises((ValueError, FileNotFoundError), match=f'params_{shard}.npy|floats but params_shapes'):
        load_from(d)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shard=st.integers(0, 9), offset=st.integers(0, 11_875), flip=st.integers(1, 255))
@example(shard=0, offset=8, flip=0x40)  # the header length: numpy's parser raised tokenize.TokenError
def test_any_corrupted_byte_is_reported_with_verification(pristine_shards, tmp_path_factory, shard, offset, flip):
    src, hashes = pristine_shards
    d = tmp_path_factory.mktemp('flip')
    for p in src.iterdir():
        data = bytearray(p.read_bytes())
        if p.name == f'params_{shard}.npy':
            data[offset % len(data)] ^= flip
        (d / p.name).write_bytes(bytes(data))
    model = small_model_for(d)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=f'params_{shard}.npy'):
        load_openai_pretrained_model(model, path=str(d), n_embd=32, verify=hashes)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_verification_passes_for_intact_files(pristine_shards):
    d, hashes = pristine_shards
    model = small_model_for(d)
    load_openai_pretrained_model(model, path=str(d), n_embd=32, verify=hashes)
    np.testing.assert_array_equal(model.h[0].attn.c_attn.w.detach().numpy(), fixture_arrays()[2][0])
    with pytest.raises(ValueError, match=r'params_shapes\.json.*expected 29fac299'):
        load_openai_pretrained_model(model, path=str(d), n_embd=32, verify=True)  # not the released files


HEADER_FLIPS = (0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0xFF)


def test_every_header_corruption_is_the_loaders_error_naming_the_file(pristine_shards, tmp_path):
    """Each byte of a shard's .npy header, XORed with each of 9 masks: always a ValueError naming the shard,
    with or without verification, from the loader and from convert.py; the model is never touched."""
    src, hashes = pristine_shards
    d = tmp_path / 'model'
    d.mkdir()
    for p in src.iterdir():
        (d / p.name).write_bytes(p.read_bytes())
    pristine = (src / 'params_4.npy').read_bytes()
    header_len = 10 + int.from_bytes(pristine[8:10], 'little')
    assert header_len == 128 and pristine[header_len - 1:header_len] == b'\n'
    model = small_model_for(d)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n_cases = 0
    for offset in range(header_len):
        for flip in HEADER_FLIPS:
            data = bytearray(pristine)
            data[offset] ^= flip
            (d / 'params_4.npy').write_bytes(bytes(data))
            for verify in (False, hashes):
                with pytest.raises(ValueError, match=r'params_4\.npy'):
                    load_openai_pretrained_model(model, path=str(d), n_embd=32, verify=verify)
            with pytest.raises(ValueError, match=r'params_4\.npy'):
                weights.read_released(str(d), n_head=4)
            n_cases += 1
    assert n_cases == 128 * 9
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    (d / 'params_4.npy').write_bytes(pristine)
    load_openai_pretrained_model(model, path=str(d), n_embd=32, verify=hashes)  # the pristine file still loads


def test_header_that_parses_but_is_not_numpys_is_refused_unless_it_is_the_released_file(shard_dir, monkeypatch):
    """'<f4' flipped to '=f4' (one bit) still means float32 here: refused as corrupt, unless the file's
    SHA-1 is the released one of its name (a guard for shards written by another numpy)."""
    p = shard_dir / 'params_6.npy'
    p.write_bytes(p.read_bytes().replace(b"'<f4'", b"'=f4'", 1))
    with pytest.raises(ValueError, match=r"params_6\.npy is corrupt: its \.npy header is not the one numpy writes"):
        load_from(shard_dir)
    monkeypatch.setitem(integrity.RELEASED_FILES, 'params_6.npy', untrusted.git_blob_sha1(p))
    load_from(shard_dir)


# --- the format of a folder, the shard headers, test weights ------------------------------------------------

def test_detect_format_reads_a_folder_by_its_files(tmp_path, shard_dir):
    assert weights.detect_format(str(shard_dir)) == 'released'
    with pytest.raises(untrusted.MissingFile, match='nowhere does not exist: check the path'):
        weights.detect_format(str(tmp_path / 'nowhere'))  # tests/test_model_folders.py: each kind of non-model folder
    model = TransformerModel(small_cfg(n_vocab=100, n_ctx=24))
    weights.save_model(model, tmp_path / 'ours')
    assert weights.detect_format(str(tmp_path / 'ours')) == 'safetensors'
    weights.write_transformers(weights.read_safetensors(tmp_path / 'ours'), tmp_path / 'hf')
    assert weights.detect_format(str(tmp_path / 'hf')) == 'transformers'
    assert weights.detect_format(str(tmp_path / 'hf' / 'model.safetensors')) == 'transformers'  # a bare weights file
    (tmp_path / 'hf' / 'config.json').write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match=r"hf/config\.json is neither .* \(its model_type is 'bert'\)"):
        weights.detect_format(str(tmp_path / 'hf'))
    (tmp_path / 'hf' / 'config.json').unlink()
    with pytest.raises(FileNotFoundError, match='holds model.safetensors but no config.json'):
        weights.detect_format(str(tmp_path / 'hf'))


def test_reading_released_shards_parses_each_header_once(monkeypatch):
    calls = []
    real = weights.read_npy_header
    monkeypatch.setattr(weights, 'read_npy_header', lambda f: calls.append(1) or real(f))
    ckpt = weights.read_released(str(SMALL_MODEL))
    assert len(calls) == weights.N_SHARDS
    assert len(ckpt.released['headers']) == weights.N_SHARDS  # kept for byte-identical shards


def test_random_released_arrays_have_the_released_layout():
    with open(FIXTURES / 'released_params_shapes.json') as f:
        assert released_shapes(768, 12, 512, 40478) == json.load(f)
    arrays = random_released_arrays(np.random.default_rng(0), 32, 2, 24, 100)
    assert [list(a.shape) for a in arrays] == released_shapes(32, 2, 24, 100)
    for i in range(2):  # the layer-norm gains are 1, everything else N(0, 0.02)
        for name in ('ln_1.g', 'ln_2.g'):
            np.testing.assert_array_equal(arrays[2 + weights.block_keys(2).index(f'h.{i}.{name}')], np.ones(32))
    assert abs(arrays[1].std() - 0.02) < 2e-3 and abs(arrays[1].mean()) < 1e-3
