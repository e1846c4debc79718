"""Hostile weight folders (issue 26): every reader of GPT-1's released shards, this project's safetensors folders and
transformers' layouts (model.safetensors, a sharded index, pytorch_model.bin) raises only untrusted.BadFile, on one
line naming the file, bounded in memory and time; paths stay inside their folder; no dtype is silently cast; a
converted folder's crafted .npy headers are never written. GPT-2's TensorFlow checkpoints: tests/test_hostile_tf.py.
"""
import base64
import io
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

import convert
import integrity
import weights
from models import complete_checkpoint
from tests.helpers import assert_refused, fixture_arrays
from untrusted import BadFile

MEMORY = 256 << 20  # far less than an n_layer bomb asks for, far more than a tiny folder needs
FORMATS = ('released', 'st', 'hf', 'sharded', 'bin')


@pytest.fixture(scope='module')
def valid(tmp_path_factory):
    """A tiny valid folder of each format (n_embd 32, 2 blocks, 100 tokens, 24 positions, 4 heads), the same weights in
    each, and the Checkpoint each reads as."""
    root = tmp_path_factory.mktemp('valid')
    released = weights.write_released_shards(root / 'released', fixture_arrays())
    ckpt = complete_checkpoint(weights.read_released(str(released), n_head=4))
    st_dir = weights.write_safetensors(ckpt, root / 'st')
    hf = weights.write_transformers(ckpt, root / 'hf')
    tensors, _ = weights.load_safetensors_file(str(hf / weights.WEIGHTS_NAME))
    sharded = root / 'sharded'
    sharded.mkdir()
    shutil.copy(hf / weights.CONFIG_NAME, sharded / weights.CONFIG_NAME)
    names = sorted(tensors)
    weight_map = {}
    for n, part in enumerate((names[::2], names[1::2])):
        file_name = f'model-0000{n + 1}-of-00002.safetensors'
        save_file({k: tensors[k] for k in part}, str(sharded / file_name), metadata={'format': 'pt'})
        weight_map.update({k: file_name for k in part})
    (sharded / weights.HF_INDEX_NAME).write_text(json.dumps({'metadata': {}, 'weight_map': weight_map}))
    binary = root / 'bin'
    binary.mkdir()
    shutil.copy(hf / weights.CONFIG_NAME, binary / weights.CONFIG_NAME)
    torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, binary / weights.HF_BIN_NAME)
    folders = dict(released=released, st=st_dir, hf=hf, sharded=sharded, bin=binary)
    read = {name: read_any(folder) for name, folder in folders.items()}
    return SimpleNamespace(root=root, tensors=tensors, read=read, **folders)


def read_any(folder):
    """Return the Checkpoint of any folder (the released shards state no n_head: 4 given)."""
    return weights.read_checkpoint(str(folder), n_head=4 if weights.detect_format(str(folder)) == 'released' else None)


def same_weights(a, b):
    """Return whether two Checkpoints hold the same arrays."""
    return (a.family == b.family and set(a.blocks) == set(b.blocks)
            and all(np.array_equal(x, y) for x, y in ((a.tokens, b.tokens), (a.special, b.special),
                                                       (a.positions, b.positions)))
            and all(np.array_equal(a.blocks[k], b.blocks[k]) for k in a.blocks))


def same_layout(a, b):
    """Return whether two Checkpoints hold arrays of the same names and shapes."""
    return ((a.tokens.shape, a.special.shape, a.positions.shape) == (b.tokens.shape, b.special.shape, b.positions.shape)
            and {k: v.shape for k, v in a.blocks.items()} == {k: v.shape for k, v in b.blocks.items()})


def copy_of(src, dst):
    """Copy the folder src to dst; return dst."""
    shutil.copytree(src, dst, symlinks=True)
    return Path(dst)


def refused(fn, *args, names=None, match=None, **kwargs):
    """Assert fn(*args, **kwargs) raises a BadFile on one line naming `names`; return the message."""
    with pytest.raises(BadFile) as err:
        fn(*args, **kwargs)
    message = str(err.value)
    assert '\n' not in message, message
    if names is not None:
        assert str(names) in message, message
    if match is not None:
        assert match in message, message
    return message


def edit_json(path, **changes):
    """Change fields of the JSON object in path (a value of ... deletes one)."""
    data = json.loads(Path(path).read_text())
    data.update(changes)
    Path(path).write_text(json.dumps(data))


def test_the_valid_folders_read_as_the_same_weights(valid):
    for name in FORMATS:
        assert same_weights(valid.read[name], valid.read['released']), name
    assert valid.read['st'].released is not None  # the shards' headers came along: written back byte for byte


# --- transformers' index: every file it names stays inside its folder -------------------------------------------

@pytest.mark.parametrize('name', ['../outside.safetensors', '../nowhere.safetensors', '/tmp/x.safetensors',
                                  'sub/../../outside.safetensors', 'link.safetensors'])
def test_an_index_naming_a_file_outside_its_folder_is_refused(valid, tmp_path, name):
    folder = copy_of(valid.sharded, tmp_path / 'm')
    shutil.copy(valid.hf / weights.WEIGHTS_NAME, tmp_path / 'outside.safetensors')  # a real model outside
    os.symlink(tmp_path / 'outside.safetensors', folder / 'link.safetensors')
    index = folder / weights.HF_INDEX_NAME
    edit_json(index, weight_map={k: name for k in valid.tensors})
    message = refused(weights.read_checkpoint, str(folder), names=index, match='outside its folder')
    for fn in (weights.load_hf_state, weights.hf_keys):
        assert refused(fn, str(index), names=index) == message
    if name.startswith('../'):  # the same words whether the outside file exists or not
        other = name.replace('outside', 'nowhere') if 'outside' in name else name.replace('nowhere', 'outside')
        edit_json(index, weight_map={k: other for k in valid.tensors})
        assert refused(weights.read_checkpoint, str(folder)) == message.replace(name, other)


@pytest.mark.parametrize('weight_map', [None, [], {}, {'a': 1}, {'a': None}, {'a': ['x.safetensors']}, 'x', 3])
def test_an_index_without_a_weight_map_of_file_names_is_refused(valid, tmp_path, weight_map):
    folder = copy_of(valid.sharded, tmp_path / 'm')
    edit_json(folder / weights.HF_INDEX_NAME, weight_map=weight_map)
    refused(weights.read_checkpoint, str(folder), names=folder / weights.HF_INDEX_NAME)


@pytest.mark.parametrize('text', ['[' * 100000, '{"weight_map": ' * 50000, '[]', '', 'NaN', '{"weight_map": Infinity}',
                                  '\ufeff{', '{"weight_map": {"a": "\\ud800"}}'])
def test_a_deep_or_broken_index_is_refused(valid, tmp_path, text):
    folder = copy_of(valid.sharded, tmp_path / 'm')
    (folder / weights.HF_INDEX_NAME).write_text(text, encoding='utf-8', errors='surrogatepass')
    refused(weights.read_checkpoint, str(folder), names=folder / weights.HF_INDEX_NAME)


def test_an_index_and_its_files_must_agree(valid, tmp_path):
    folder = copy_of(valid.sharded, tmp_path / 'm')
    index = folder / weights.HF_INDEX_NAME
    weight_map = json.loads(index.read_text())['weight_map']
    moved = dict(weight_map, **{'transformer.h.0.ln_1.weight': 'model-00002-of-00002.safetensors'
                                if weight_map['transformer.h.0.ln_1.weight'].startswith('model-00001') else
                                'model-00001-of-00002.safetensors'})
    edit_json(index, weight_map=moved)
    refused(weights.read_checkpoint, str(folder), match='h.0.ln_1.weight')
    edit_json(index, weight_map={k: v for k, v in weight_map.items() if k != 'transformer.h.1.ln_2.bias'})
    refused(weights.read_checkpoint, str(folder), match='unlisted')


# --- sizes bounded before anything is built ----------------------------------------------------------------------

@pytest.mark.parametrize('fmt, n_layer', [('st', 2147483648), ('st', 1e8), ('st', 100000000), ('st', 1000),
                                          ('hf', 2147483648), ('hf', 1000)])
def test_an_n_layer_bomb_is_refused_in_bounded_memory(valid, tmp_path, fmt, n_layer):
    folder = copy_of(getattr(valid, fmt), tmp_path / 'm')
    edit_json(folder / weights.CONFIG_NAME, n_layer=n_layer)
    assert 'n_layer' in assert_refused(weights.read_checkpoint, str(folder), names=folder / weights.CONFIG_NAME
                                       if n_layer > 1024 or fmt == 'hf' else folder, memory=MEMORY, seconds=60)


@pytest.mark.parametrize('n_layer', [2147483648, 10 ** 8, 1025, -1, 2.0, True, None])
def test_block_shapes_and_check_blocks_are_safe_for_every_caller(n_layer):
    with pytest.raises(ValueError, match='n_layer'):
        weights.block_shapes(32, n_layer)
    with pytest.raises(ValueError, match='n_layer'):
        weights.block_keys(n_layer)
    refused(weights.check_blocks, {}, 32, n_layer, 'somewhere.safetensors', names='somewhere.safetensors')
    # n_layer is compared with the blocks present before a shape is built
    assert 'holds 0 blocks' in refused(weights.check_blocks, {}, 32, 1000, 'x.safetensors')


@pytest.mark.parametrize('key', ['h.999999999.attn.c_attn.weight', 'h.' + '9' * 5000 + '.attn.c_attn.weight',
                                 'h.01.attn.c_attn.weight', 'h.1024.ln_1.weight'])
def test_a_block_index_beyond_any_model_is_refused(valid, tmp_path, key):
    folder = copy_of(valid.hf, tmp_path / 'm')
    tensors = dict(valid.tensors, **{'transformer.' + key: np.zeros(32, np.float32)})
    save_file(tensors, str(folder / weights.WEIGHTS_NAME))
    assert_refused(weights.read_checkpoint, str(folder), names=folder, memory=MEMORY, seconds=60)


@pytest.mark.parametrize('table', ['tokens_embed', 'positions_embed'])
def test_tables_of_another_rank_are_refused(valid, tmp_path, table):
    folder = copy_of(valid.hf, tmp_path / 'm')
    key = f'transformer.{table}.weight'
    save_file(dict(valid.tensors, **{key: valid.tensors[key].reshape(-1)}), str(folder / weights.WEIGHTS_NAME))
    refused(weights.read_checkpoint, str(folder), names=folder / weights.WEIGHTS_NAME, match=table)


def test_the_torch_format_before_zip_files_still_loads(valid, tmp_path):
    shutil.copy(valid.bin / weights.CONFIG_NAME, tmp_path / weights.CONFIG_NAME)
    torch.save({k: torch.from_numpy(v) for k, v in valid.tensors.items()}, tmp_path / weights.HF_BIN_NAME,
               _use_new_zipfile_serialization=False)
    assert same_weights(weights.read_checkpoint(str(tmp_path)), valid.read['bin'])
    data = (tmp_path / weights.HF_BIN_NAME).read_bytes()
    for cut in (0, 10, 100, len(data) // 2, len(data) - 1):
        (tmp_path / weights.HF_BIN_NAME).write_bytes(data[:cut])
        refused(weights.read_checkpoint, str(tmp_path), names=tmp_path / weights.HF_BIN_NAME)


# --- no dtype silently cast --------------------------------------------------------------------------------------

@pytest.mark.parametrize('dtype', [np.int64, np.int8, np.bool_, np.complex64, np.float64, np.uint8])
def test_a_safetensors_tensor_of_another_dtype_is_refused_naming_it(valid, tmp_path, dtype):
    from safetensors.torch import save_file as save_torch
    for fmt in ('st', 'hf'):
        folder = copy_of(getattr(valid, fmt), tmp_path / fmt)
        path = folder / weights.WEIGHTS_NAME
        tensors, metadata = weights.load_safetensors_file(str(path))
        key = next(k for k in tensors if k.endswith('h.1.mlp.c_fc.b') or k.endswith('h.1.mlp.c_fc.bias'))
        tensors = {k: torch.from_numpy(v) for k, v in tensors.items()}
        tensors[key] = torch.from_numpy(np.ones(tensors[key].shape, dtype=dtype))
        save_torch(tensors, str(path), metadata=metadata)
        refused(weights.read_checkpoint, str(folder), names=path, match=key)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision_files_load_exactly_as_float32(valid, tmp_path, dtype):
    """float16 and bfloat16 checkpoints are real: each value converts to float32 exactly."""
    from safetensors.torch import save_file as save_torch
    folder = copy_of(valid.hf, tmp_path / 'm')
    half = {k: torch.from_numpy(v).to(dtype) for k, v in valid.tensors.items()}
    save_torch(half, str(folder / weights.WEIGHTS_NAME))
    ckpt = weights.read_checkpoint(str(folder))
    want = half['transformer.h.0.attn.c_attn.weight'].to(torch.float32).numpy()
    assert ckpt.blocks['h.0.attn.c_attn.w'].dtype == np.float32
    np.testing.assert_array_equal(ckpt.blocks['h.0.attn.c_attn.w'], want)
    torch.save(half, folder / weights.HF_BIN_NAME)
    np.testing.assert_array_equal(weights.read_checkpoint(str(folder / weights.HF_BIN_NAME)).blocks['h.0.attn.c_attn.w'],
                                  want)


def odd_tensors():
    """{name: a value no state dict of weights may hold}."""
    return {'complex': torch.randn(4, dtype=torch.complex64), 'int': torch.arange(4), 'bool': torch.ones(4) > 0,
            'double': torch.randn(4, dtype=torch.float64),
            'sparse': torch.eye(4).to_sparse(), 'meta': torch.empty(4, device='meta'),
            'quantized': torch.quantize_per_tensor(torch.randn(4), 0.1, 0, torch.qint8),
            'zero_strides': torch.zeros(1).expand(1 << 40), 'number': 3, 'list': [torch.zeros(2)], 'none': None}


@pytest.mark.parametrize('kind', ['bool', 'complex', 'double', 'int', 'list', 'meta', 'none', 'number', 'quantized',
                                  'sparse', 'zero_strides'])
def test_a_torch_file_value_that_is_not_a_dense_float_tensor_is_refused(valid, tmp_path, kind):
    state = {k: torch.from_numpy(v) for k, v in valid.tensors.items()}
    state['transformer.h.1.mlp.c_fc.bias'] = odd_tensors()[kind]
    path = tmp_path / weights.HF_BIN_NAME
    torch.save(state, path)
    shutil.copy(valid.bin / weights.CONFIG_NAME, tmp_path / weights.CONFIG_NAME)
    message = refused(weights.read_checkpoint, str(tmp_path), names=path)
    assert 'h.1.mlp.c_fc.bias' in message or 'weights_only' in message, message
    if kind in ('complex', 'int', 'bool', 'double', 'number', 'none', 'zero_strides', 'sparse', 'meta'):
        assert 'h.1.mlp.c_fc.bias' in message, message


@pytest.mark.parametrize('state', [[1, 2], {1: torch.zeros(2)}, torch.zeros(3), {'a': {'b': torch.zeros(2)}}],
                         ids=['list', 'int key', 'tensor', 'nested'])
def test_a_torch_file_that_is_no_state_dict_of_tensors_is_refused(tmp_path, state):
    path = tmp_path / 'weights.bin'
    torch.save(state, path)
    refused(weights.read_checkpoint, str(path), names=path, n_head=4)
    refused(weights.load_hf_state, str(path), names=path)


def test_a_truncated_or_inflated_torch_zip_is_refused(valid, tmp_path):
    data = (valid.bin / weights.HF_BIN_NAME).read_bytes()
    path = tmp_path / weights.HF_BIN_NAME
    shutil.copy(valid.bin / weights.CONFIG_NAME, tmp_path / weights.CONFIG_NAME)
    for cut in (1, 22, 100, len(data) // 2, len(data) - 4):
        path.write_bytes(data[:cut])
        refused(weights.read_checkpoint, str(tmp_path), names=path)
    central = data.rindex(b'PK\x01\x02')  # the last entry of the central directory: an unknown zip version
    path.write_bytes(data[:central + 6] + b'\xff' + data[central + 7:])
    refused(weights.read_checkpoint, str(tmp_path), names=path)
    # a deflated entry that unpacks to more than the file holds: torch would allocate what it unpacks to
    import zipfile
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED) as archive:
        archive.writestr('archive/data/0', b'\0' * (8 << 20))
    assert 'unpack' in refused(weights.read_checkpoint, str(tmp_path), names=path)


def test_every_damaged_byte_of_a_torch_pickle_is_a_bad_file(tmp_path):
    """Each byte of a small torch.save file's pickle XORed with 0x01 (and one 0x04): torch.load(weights_only=True)
    meets it as UnpicklingError, UnicodeDecodeError, RuntimeError, KeyError, IndexError, TypeError, AttributeError,
    AssertionError or ValueError; only a BadFile naming the file comes out, or a state dict of float32 arrays."""
    import zipfile
    state = {'a.weight': torch.arange(16.0).reshape(4, 4), 'b.bias': torch.arange(4.0).half(),
             'c': torch.arange(6.0).reshape(2, 3).t()}
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    info = next(i for i in zipfile.ZipFile(io.BytesIO(data)).infolist() if i.filename.endswith('data.pkl'))
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    path = tmp_path / 'weights.bin'
    outcomes = set()
    cases = [(offset, 0x01) for offset in range(info.file_size)] + [(121, 0x04)]
    for offset, mask in cases:
        damaged = bytearray(data)
        damaged[start + offset % info.file_size] ^= mask
        path.write_bytes(bytes(damaged))
        try:
            loaded = weights.load_hf_state(str(path))
        except BadFile as err:
            assert '\n' not in str(err) and str(path) in str(err), str(err)
            outcomes.add('BadFile')
            continue
        assert all(isinstance(k, str) and v.dtype == np.float32 for k, v in loaded.items())
        outcomes.add('loaded')
    assert outcomes == {'BadFile', 'loaded'}


# --- config.json and params_shapes.json --------------------------------------------------------------------------

JSON_ATTACKS = ['[' * 100000, '{"a": ' * 100000, '[]', '"x"', '', '{', '{"n_layer": Infinity}', '{"n_layer": NaN}',
                '{"n_layer": 1e999}', '\x00', '{"n_layer": 2}' + ' ' * 10]


@pytest.mark.parametrize('fmt', ['st', 'hf', 'bin', 'sharded'])
@pytest.mark.parametrize('text', JSON_ATTACKS, ids=lambda t: repr(t[:20]))
def test_a_broken_config_json_is_refused(valid, tmp_path, fmt, text):
    folder = copy_of(getattr(valid, fmt), tmp_path / 'm')
    path = folder / weights.CONFIG_NAME
    path.write_text(text)
    refused(weights.read_checkpoint, str(folder), names=path)
    refused(weights.detect_format, str(folder), names=path)


# the fields every reader checks where the Checkpoint's config is built; each value must be refused
BAD_FIELDS = [('n_head', '4'), ('n_head', 4.0), ('n_head', True), ('n_head', 5), ('n_head', 0), ('n_head', None),
              ('n_head', [4]), ('n_head', 2 ** 70), ('embd_pdrop', 2), ('attn_pdrop', -1), ('resid_pdrop', 'abc'),
              ('attn_pdrop', None), ('embd_pdrop', 1), ('afn', ['gelu']), ('afn', 'tanh'), ('afn', {'a': 1}),
              ('afn', None)]
ST_ONLY = [('n_embd', '32'), ('n_vocab', 100.0), ('n_ctx', -1), ('n_special', True), ('n_layer', [2]),
           ('family', ['gpt1']), ('family', 'gpt3'), ('clf_pdrop', 1.5), ('checkpoint_activations', 'yes')]
HF_ONLY = [('summary_first_dropout', 'x'), ('vocab_size', '103'), ('n_special', -1), ('model_type', ['openai-gpt']),
           ('model_type', {'a': 1}), ('layer_norm_epsilon', 'x'), ('n_positions', 1.5), ('n_embd', 'wide')]


@pytest.mark.parametrize('name, value', BAD_FIELDS + [f for f in ST_ONLY], ids=repr)
def test_a_bad_field_of_a_safetensors_config_is_refused_naming_the_file(valid, tmp_path, name, value):
    folder = copy_of(valid.st, tmp_path / 'm')
    edit_json(folder / weights.CONFIG_NAME, **{name: value})
    for fn in (weights.read_checkpoint, weights.read_safetensors):
        refused(fn, str(folder), names=folder / weights.CONFIG_NAME)


@pytest.mark.parametrize('name, value', [f for f in BAD_FIELDS if f[0] not in ('embd_pdrop', 'afn') or
                                         f[1] is not None] + HF_ONLY, ids=repr)
@pytest.mark.parametrize('fmt', ['hf', 'bin'])
def test_a_bad_field_of_a_transformers_config_is_refused_naming_the_file(valid, tmp_path, fmt, name, value):
    folder = copy_of(getattr(valid, fmt), tmp_path / 'm')
    name = {'clf_pdrop': 'summary_first_dropout'}.get(name, name)
    edit_json(folder / weights.CONFIG_NAME, **{name: value})
    refused(weights.read_checkpoint, str(folder), names=folder / weights.CONFIG_NAME)


def test_the_command_line_n_head_and_afn_are_argument_errors_never_blamed_on_a_file(valid):
    """A bad n_head or afn given by the caller is a plain ValueError naming the flag, not a BadFile naming the folder
    (the weights in it are sound); a transformers folder whose config.json states n_head does not take the blame for an
    explicit one either."""
    for kwargs, match in ((dict(n_head=5), '--n_head 5: n_head=5 does not divide n_embd=32 of the weights in'),
                          (dict(n_head=7), '--n_head 7'), (dict(n_head='4'), "--n_head '4': n_head must be an integer"),
                          (dict(n_head=4, afn='tanh'), "unknown afn 'tanh' (--afn)"),
                          (dict(n_head=4, afn=['gelu']), '--afn')):
        for fn in (weights.read_released, weights.read_checkpoint):
            with pytest.raises(ValueError) as err:
                fn(str(valid.released), **kwargs)
            assert not isinstance(err.value, BadFile) and match in str(err.value), err.value
    for fmt in ('hf', 'bin'):
        for kwargs, match in ((dict(n_head=7), '--n_head 7: n_head=7 does not divide n_embd=32'),
                              (dict(n_head=True), '--n_head True'), (dict(afn='tanh'), "--afn 'tanh'"),
                              (dict(n_vocab=10 ** 6), '--n_vocab 1000000')):
            with pytest.raises(ValueError) as err:
                weights.read_transformers(str(getattr(valid, fmt)), **kwargs)
            message = str(err.value)
            assert not isinstance(err.value, BadFile) and match in message, message
            assert weights.CONFIG_NAME not in message, message


def test_a_bad_n_ctx_or_n_special_argument_is_not_blamed_on_the_file(valid):
    from model_pytorch import checkpoint_config
    ckpt = valid.read['st']
    assert ckpt.source is not None
    for kwargs in (dict(n_ctx=0), dict(n_ctx=2 ** 40), dict(n_special=-1), dict(n_special=True)):
        with pytest.raises(ValueError) as err:
            checkpoint_config(ckpt, **kwargs)
        name = next(iter(kwargs))
        assert not isinstance(err.value, BadFile) and f'the argument {name}=' in str(err.value), err.value
        assert ckpt.source not in str(err.value)


def test_verify_with_a_checkpoint_already_read_is_refused(valid):
    from model_pytorch import GPTConfig, TransformerModel, load_openai_pretrained_model
    model = TransformerModel(GPTConfig(n_embd=32, n_head=4, n_layer=2, n_vocab=100, n_ctx=24))
    with pytest.raises(ValueError, match='verify=True with a checkpoint already read'):
        load_openai_pretrained_model(model, n_transfer=2, n_embd=32, path=str(valid.released), verify=True,
                                     ckpt=valid.read['released'])
    load_openai_pretrained_model(model, n_transfer=2, n_embd=32, path=str(valid.released), ckpt=valid.read['released'])


# --- transformers' buffers: attention masks and position ids of ints or bools are ignored, never read -------------

def gpt2_transformers_folder(path):
    """Write a tiny GPT-2 as a transformers folder; return (its folder, its tensors)."""
    from model_gpt2 import GPT2Config, GPT2Model
    torch.manual_seed(0)
    model = GPT2Model(GPT2Config(n_vocab=50, n_ctx=16, n_embd=32, n_head=4, n_layer=2))
    folder = weights.write_transformers(weights.checkpoint_from_model(model), path)
    return folder, weights.load_safetensors_file(str(folder / weights.WEIGHTS_NAME))[0]


def buffers_of(family, n_layer=2, n_ctx=16):
    """Return the buffers transformers saves beside the weights of a family: GPT-2's (before transformers 4.31) causal
    masks as U8 or BOOL and masked_bias, openai-gpt's position_ids as I64."""
    if family == 'gpt1':
        return {'position_ids': np.arange(n_ctx, dtype=np.int64)[None]}
    out = {}
    for i in range(n_layer):
        mask = np.tril(np.ones((n_ctx, n_ctx)))[None, None]
        out[f'transformer.h.{i}.attn.bias'] = mask.astype(np.uint8 if i == 0 else np.bool_)
        out[f'transformer.h.{i}.attn.masked_bias'] = np.array(-1e4, np.float32)
    return out


@pytest.mark.parametrize('family', ['gpt1', 'gpt2'])
@pytest.mark.parametrize('kind', ['safetensors', 'bin'])
def test_transformers_buffers_of_ints_or_bools_are_ignored_not_refused(valid, tmp_path, family, kind):
    if family == 'gpt1':
        folder, tensors = copy_of(valid.hf, tmp_path / 'm'), dict(valid.tensors)
    else:
        folder, tensors = gpt2_transformers_folder(tmp_path / 'm')
    want = weights.read_transformers(str(folder))
    buffers = buffers_of(family)
    tensors.update(buffers)
    (folder / weights.WEIGHTS_NAME).unlink()
    if kind == 'safetensors':
        save_file(tensors, str(folder / weights.WEIGHTS_NAME), metadata={'format': 'pt'})
    else:
        torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in tensors.items()}, folder / weights.HF_BIN_NAME)
    got = weights.read_transformers(str(folder))
    assert same_weights(got, want)
    assert sorted(got.ignored) == sorted(set(want.ignored) | set(buffers))
    # an int or bool tensor under any other name is still refused, never cast
    tensors = {k: v for k, v in tensors.items() if k not in buffers}
    tensors['transformer.h.0.attn.bias_extra' if family == 'gpt2' else 'h.0.attn.c_attn.bias'] = np.zeros(3, np.int64)
    for name in (weights.WEIGHTS_NAME, weights.HF_BIN_NAME):
        if (folder / name).exists():
            (folder / name).unlink()
    save_file(tensors, str(folder / weights.WEIGHTS_NAME), metadata={'format': 'pt'})
    refused(weights.read_transformers, str(folder), names=folder / weights.WEIGHTS_NAME, match='I64')


def test_the_data_of_a_buffer_is_never_read(valid, tmp_path, monkeypatch):
    folder = copy_of(valid.hf, tmp_path / 'm')
    save_file(dict(valid.tensors, **buffers_of('gpt1')), str(folder / weights.WEIGHTS_NAME), metadata={'format': 'pt'})
    read = []
    from safetensors import safe_open
    real = safe_open

    class Spy:
        def __init__(self, *args, **kwargs):
            self.reader = real(*args, **kwargs)

        def __enter__(self):
            self.inner = self.reader.__enter__()
            return self

        def __exit__(self, *exc):
            return self.reader.__exit__(*exc)

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def get_tensor(self, name):
            read.append(name)
            return self.inner.get_tensor(name)

    import checkpoint
    monkeypatch.setattr(checkpoint, 'safe_open', Spy)
    ckpt = weights.read_transformers(str(folder))
    assert 'position_ids' in ckpt.ignored and read and 'position_ids' not in read


# --- copy_vocab writes each file atomically: never through a link it finds in the folder written ---------------

def test_copy_vocab_replaces_a_link_in_the_output_folder_instead_of_writing_through_it(tmp_path):
    src, out = tmp_path / 'src', tmp_path / 'out'
    src.mkdir()
    out.mkdir()
    for name in weights.VOCAB_FILES:
        (src / name).write_text(f'new {name}')
    victim = tmp_path / 'victim.txt'
    victim.write_text('precious')
    os.symlink(victim, out / weights.VOCAB_FILES[0])
    assert weights.copy_vocab(str(src), str(out), weights.VOCAB_FILES)
    assert victim.read_text() == 'precious'
    assert not os.path.islink(out / weights.VOCAB_FILES[0])
    assert [(out / n).read_text() for n in weights.VOCAB_FILES] == [f'new {n}' for n in weights.VOCAB_FILES]


SHAPES_ATTACKS = {'deep': '[' * 100000, 'infinity': '[[Infinity, 32]]', 'not a list': '{"a": 1}',
                  'tokens 1-D': None, 'too many dims': None, 'negative': None, 'float dim': None, 'bool dim': None,
                  'huge dim': None, 'string dim': None, 'widths differ': None, 'conv not [1, nx, nf]': None,
                  'too many blocks': None, 'huge total': None}


def attack_shapes(kind, shapes):
    """Return the text of params_shapes.json attacked as kind says."""
    shapes = [list(s) for s in shapes]
    if SHAPES_ATTACKS[kind] is not None:
        return SHAPES_ATTACKS[kind]
    if kind == 'tokens 1-D':
        shapes[1] = [shapes[1][0] * shapes[1][1]]
    elif kind == 'too many dims':
        shapes[2] = [1] * 65 + shapes[2]
    elif kind == 'negative':
        shapes[3] = [-1, -shapes[3][0]]
    elif kind == 'float dim':
        shapes[3] = [float(shapes[3][0])]
    elif kind == 'bool dim':
        shapes[4] = [True] + shapes[4]
    elif kind == 'huge dim':
        shapes[2] = [2 ** 70, 2 ** 70, 2 ** 70]
    elif kind == 'string dim':
        shapes[2] = ['1', 32, 96]
    elif kind == 'widths differ':
        shapes[0] = [shapes[0][0] * 2, shapes[0][1] // 2]
    elif kind == 'conv not [1, nx, nf]':
        shapes[2] = [2, shapes[2][1] // 2, shapes[2][2]]  # the same number of floats
    elif kind == 'too many blocks':
        shapes = shapes[:2] + [[0]] * (12 * 1025)
    elif kind == 'huge total':
        shapes[1] = [2 ** 40, 2 ** 20]
    return json.dumps(shapes)


@pytest.mark.parametrize('kind', sorted(SHAPES_ATTACKS))
def test_a_bad_params_shapes_json_is_refused_naming_it(valid, tmp_path, kind):
    folder = copy_of(valid.released, tmp_path / 'm')
    path = folder / 'params_shapes.json'
    path.write_text(attack_shapes(kind, json.loads(path.read_text())))
    names = folder if kind in ('huge total', 'huge dim') else path  # the floats they describe are not on disk
    readers = [(weights.read_released, dict(n_head=4)), (weights.read_checkpoint, dict(n_head=4))]
    if kind != 'conv not [1, nx, nf]':  # the arrays alone, reshaped as listed: no conv weight among them
        readers.append((weights.load_released_arrays, {}))
    for fn, args in readers:
        refused(fn, str(folder), names=names, **args)


# --- convert.py never writes a crafted .npy header -----------------------------------------------------------------

def npy_header(descr, shape, fortran=False):
    """Return a .npy v1.0 header (bytes) for those values, as numpy writes it."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {'descr': descr, 'fortran_order': fortran, 'shape': shape})
    return buf.getvalue()


def b64(raw):
    return base64.b64encode(raw).decode('ascii')


def crafted_released(released, kind):
    """Return a copy of a `released` record attacked as kind says."""
    record = json.loads(json.dumps(released))
    headers, sizes = record['headers'], record['sizes']
    if kind == 'object dtype':
        headers[3] = b64(npy_header('|O', (sizes[3],)))
    elif kind == 'float64':
        headers[3] = b64(npy_header('<f8', (sizes[3],)))
    elif kind == 'big-endian':
        headers[3] = b64(npy_header('>f4', (sizes[3],)))
    elif kind == 'fortran 2-D':
        headers[3] = b64(npy_header('<f4', (1, sizes[3]), fortran=True))
    elif kind == '2-D':
        headers[3] = b64(npy_header('<f4', (sizes[3], 1)))
    elif kind == 'wrong size':
        headers[3] = b64(npy_header('<f4', (sizes[3] + 1,)))
    elif kind == 'trailing bytes':
        headers[3] = b64(base64.b64decode(headers[3]) + b'PAYLOAD')
    elif kind == 'not base64':
        headers[3] = '!!!'
    elif kind == 'not text':
        headers[3] = 12
    elif kind == 'one header':
        record['headers'] = headers[:1]
    elif kind == 'eleven':
        record['headers'], record['sizes'] = headers + headers[:1], sizes + sizes[:1]
    elif kind == 'short total':
        sizes[9] -= 1
        headers[9] = b64(npy_header('<f4', (sizes[9],)))
    elif kind == 'negative size':
        sizes[3] = -1
    elif kind == 'shapes not json':
        record['params_shapes.json'] = '[' * 1000
    elif kind == 'missing sizes':
        del record['sizes']
    return record


CRAFTED = ['object dtype', 'float64', 'big-endian', 'fortran 2-D', '2-D', 'wrong size', 'trailing bytes', 'not base64',
           'not text', 'one header', 'eleven', 'short total', 'negative size', 'shapes not json',
           'missing sizes']


@pytest.mark.parametrize('kind', CRAFTED)
def test_safetensors_to_shards_refuses_crafted_headers(valid, tmp_path, capsys, kind):
    folder = copy_of(valid.st, tmp_path / 'st')
    path = folder / weights.WEIGHTS_NAME
    tensors, metadata = weights.load_safetensors_file(str(path))
    metadata['released'] = json.dumps(crafted_released(json.loads(metadata['released']), kind))
    save_file(tensors, str(path), metadata=metadata)
    capsys.readouterr()
    assert convert.main(['safetensors-to-shards', '--model_dir', str(folder), '--out', str(tmp_path / 'out')]) == 1
    err = capsys.readouterr().err
    assert err.startswith('convert.py: error: ') and str(path) in err and err.count('\n') == 1, err
    assert not (tmp_path / 'out').exists()
    # and a Checkpoint carrying such a record from elsewhere is never written as shards either
    ckpt = valid.read['st']
    ckpt = weights.Checkpoint(ckpt.tokens, ckpt.special, ckpt.positions, ckpt.blocks, ckpt.config,
                              crafted_released(ckpt.released, kind), source='elsewhere')
    if kind == 'short total':  # sound shards of other arrays: fresh ones are written, as for any changed model
        weights.write_released(ckpt, tmp_path / 'out2')
        fresh = weights.write_released_shards(tmp_path / 'fresh', weights.released_arrays(ckpt))
        assert all((tmp_path / 'out2' / n).read_bytes() == (fresh / n).read_bytes() for n in weights.released_names())
        return
    with pytest.raises(BadFile, match='elsewhere'):
        weights.write_released(ckpt, tmp_path / 'out2')
    assert not (tmp_path / 'out2').exists()


def test_safetensors_to_shards_still_writes_the_released_bytes(valid, tmp_path):
    assert convert.main(['safetensors-to-shards', '--model_dir', str(valid.st), '--out', str(tmp_path / 'out')]) == 0
    for name in weights.released_names():
        assert (tmp_path / 'out' / name).read_bytes() == (valid.released / name).read_bytes(), name


# --- paths: regular files only, links only inside the folder, no NUL ------------------------------------------

def test_a_nul_byte_in_a_path_is_a_bad_file(valid):
    for fn in (weights.read_checkpoint, weights.read_released, weights.read_safetensors, weights.read_transformers,
               weights.detect_format, weights.detect_family, weights.load_hf_state, integrity.verify_model_dir):
        refused(fn, str(valid.st) + '\0x')


@pytest.mark.parametrize('fmt, name', [('st', weights.WEIGHTS_NAME), ('st', weights.CONFIG_NAME),
                                       ('released', 'params_shapes.json'), ('released', 'params_4.npy'),
                                       ('bin', weights.HF_BIN_NAME), ('sharded', 'model-00002-of-00002.safetensors')])
def test_dev_zero_and_a_fifo_are_refused_without_hanging(valid, tmp_path, fmt, name):
    for kind in ('zero', 'fifo'):
        folder = copy_of(getattr(valid, fmt), tmp_path / kind)
        (folder / name).unlink()
        if kind == 'zero':
            os.symlink('/dev/zero', folder / name)
        else:
            os.mkfifo(folder / name)
        # the index refuses a link out of its folder before the file is opened: it names the file as it gives it
        names = name if fmt == 'sharded' and kind == 'zero' else folder / name
        assert_refused(read_any, folder, names=names, memory=MEMORY, seconds=20)


def test_links_are_followed_only_inside_the_folder(valid, tmp_path):
    folder = copy_of(valid.st, tmp_path / 'm')
    os.rename(folder / weights.WEIGHTS_NAME, folder / 'real.safetensors')
    os.symlink('real.safetensors', folder / weights.WEIGHTS_NAME)
    assert same_weights(weights.read_checkpoint(str(folder)), valid.read['st'])  # inside: read
    shutil.copy(folder / 'real.safetensors', tmp_path / 'outside.safetensors')
    (folder / weights.WEIGHTS_NAME).unlink()
    os.symlink(tmp_path / 'outside.safetensors', folder / weights.WEIGHTS_NAME)
    refused(weights.read_checkpoint, str(folder), names=folder / weights.WEIGHTS_NAME, match='outside')
    # the vocabulary convert.py copies along: never a file from outside the folder
    shards = copy_of(valid.released, tmp_path / 'shards')
    (tmp_path / 'secret.json').write_text('{"secret": 1}')
    os.symlink(tmp_path / 'secret.json', shards / 'encoder_bpe_40000.json')
    (shards / 'vocab_40000.bpe').write_text('#version: 0.2\n')
    assert convert.main(['shards-to-safetensors', '--model_dir', str(shards), '--out', str(tmp_path / 'o'),
                         '--n_head', '4']) == 1
    assert not (tmp_path / 'o' / 'encoder_bpe_40000.json').exists()


def test_verify_model_dir_reads_regular_files_only(valid, tmp_path):
    folder = copy_of(valid.released, tmp_path / 'm')
    os.mkfifo(folder / 'params_shapes.json.fifo')
    (folder / 'params_shapes.json').unlink()
    os.symlink('/dev/zero', folder / 'params_shapes.json')
    problems = integrity.verify_model_dir(str(folder), names=['params_shapes.json'])
    assert len(problems) == 1 and 'not a regular file' in problems[0]
    with pytest.raises(BadFile, match="unknown file 'no-such-file'"):
        integrity.verify_model_dir(str(folder), names=['no-such-file'])


# --- any damage: only a BadFile escapes, or the load is the original's ---------------------------------------

DAMAGEABLE = [('st', weights.CONFIG_NAME), ('st', weights.WEIGHTS_NAME), ('released', 'params_shapes.json'),
              ('hf', weights.CONFIG_NAME), ('bin', weights.HF_BIN_NAME), ('sharded', weights.HF_INDEX_NAME),
              ('hf', weights.WEIGHTS_NAME)]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=st.sampled_from(DAMAGEABLE), cut=st.booleans(),
       offset=st.integers(0, 4096) | st.integers(0, 1 << 20), flip=st.integers(1, 255))
@example(target=('st', weights.WEIGHTS_NAME), cut=False, offset=7, flip=0x80)  # a header length of 2**63
@example(target=('bin', weights.HF_BIN_NAME), cut=True, offset=200, flip=1)
@example(target=('st', weights.CONFIG_NAME), cut=False, offset=30, flip=0x20)
def test_any_truncation_or_flipped_byte_is_a_bad_file_or_loads_the_same(valid, tmp_path_factory, target, cut, offset,
                                                                        flip):
    fmt, name = target
    folder = copy_of(getattr(valid, fmt), tmp_path_factory.mktemp('damage') / 'm')
    path = folder / name
    data = bytearray(path.read_bytes())
    if cut:
        data = data[:offset % len(data)]
    else:
        data[offset % len(data)] ^= flip
    path.write_bytes(bytes(data))
    try:
        ckpt = read_any(folder)
    except BadFile as err:
        assert '\n' not in str(err) and str(folder) in str(err), str(err)
        return
    original = valid.read[fmt]
    assert same_layout(ckpt, original)
    if name not in (weights.WEIGHTS_NAME, weights.HF_BIN_NAME):  # the arrays come from another, intact file
        assert same_weights(ckpt, original)
    shutil.rmtree(folder)
