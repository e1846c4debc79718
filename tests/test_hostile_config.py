"""Hostile model configs and the architecture that comes from the weights (issue 26).

GPTConfig and GPT2Config check every field by type and range where they are built, before a model exists (a plain
ValueError naming the field; a reader wraps it in a BadFile naming the file); every tool builds the model the weights
folder states, a flag that contradicts it is refused in one line naming every mismatch, and no block the checkpoint
does not hold is left randomly initialised.
"""
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import models
import train
import untrusted
import weights
from model_gpt2 import GPT2Config, GPT2LMHeadModel, GPT2Model
from model_pytorch import N_VOCAB, GPTConfig, LMModel, TransformerModel, load_openai_pretrained_model
from tests.helpers import roc_cli_args, roc_workdir, write_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {'gpt1': GPTConfig, 'gpt2': GPT2Config}
SIZES = ('n_embd', 'n_head', 'n_layer', 'n_vocab', 'n_special', 'n_ctx')
DROPOUTS = ('embd_pdrop', 'attn_pdrop', 'resid_pdrop', 'clf_pdrop')
LOWS = {'n_embd': 1, 'n_head': 1, 'n_layer': 0, 'n_vocab': 1, 'n_special': 0, 'n_ctx': 1}

# values no size may hold: wrong types, then out of range (below the field's low, above untrusted.SIZE_LIMITS)
BAD_TYPES = [4.0, 4.5, True, False, '4', None, [4], {'n': 4}, float('nan'), float('inf'), np.float64(4.0)]
BAD_FRACTIONS = [2, -1, 1, 1.0, -0.1, 'abc', '0.1', None, float('nan'), float('inf'), True, [0.1]]
BAD_AFNS = [['gelu'], 'tanh', 'GELU', None, 1, {'gelu': 1}]
BAD_SWITCHES = [1, 0, 'true', None, [True]]


def bad_field_cases():
    cases = []
    for family in CONFIGS:
        for name in SIZES:
            cases += [(family, name, v) for v in BAD_TYPES]
            cases += [(family, name, LOWS[name] - 1), (family, name, untrusted.SIZE_LIMITS[name] + 1),
                      (family, name, -2 ** 70), (family, name, 2 ** 70)]
        cases += [(family, name, v) for name in DROPOUTS for v in BAD_FRACTIONS]
        cases += [(family, 'checkpoint_activations', v) for v in BAD_SWITCHES]
    cases += [('gpt1', 'afn', v) for v in BAD_AFNS]
    return cases


def assert_plain_error_naming(err, name):
    assert type(err) is ValueError, type(err)  # a plain ValueError: the reader of a file names the file
    message = str(err)
    assert '\n' not in message and name in message, message


@pytest.mark.parametrize('family, name, value', bad_field_cases(), ids=repr)
def test_every_bad_field_is_refused_where_the_config_is_built(family, name, value):
    cls = CONFIGS[family]
    with pytest.raises(ValueError) as err:
        cls(**{name: value})
    assert_plain_error_naming(err.value, name)
    # a config changed after it was built is checked again before a model is built from it
    cfg = cls(n_vocab=50, n_ctx=8, n_embd=8, n_head=2, n_layer=1)
    setattr(cfg, name, value)
    with pytest.raises(ValueError) as err:
        (TransformerModel if family == 'gpt1' else GPT2Model)(cfg)
    assert_plain_error_naming(err.value, name)


@pytest.mark.parametrize('cls', [GPTConfig, GPT2Config])
def test_heads_must_divide_the_width(cls):
    with pytest.raises(ValueError) as err:
        cls(n_embd=32, n_head=5)
    assert_plain_error_naming(err.value, 'n_head=5 does not divide n_embd=32')


@pytest.mark.parametrize('cls', [GPTConfig, GPT2Config])
def test_valid_edge_values_and_numpy_scalars_are_kept_as_python_values(cls):
    cfg = cls(n_embd=np.int64(32), n_head=np.int32(4), n_layer=np.uint8(0), n_vocab=np.int16(1), n_special=0,
              n_ctx=1, embd_pdrop=np.float32(0.5), attn_pdrop=0, resid_pdrop=0.999, clf_pdrop=np.float64(0.0),
              checkpoint_activations=np.bool_(True))
    assert [type(getattr(cfg, n)) for n in SIZES] == [int] * 6
    assert [type(getattr(cfg, n)) for n in DROPOUTS] == [float] * 4 and cfg.embd_pdrop == 0.5
    assert cfg.checkpoint_activations is True
    assert (cfg.n_embd, cfg.n_head, cfg.n_layer, cfg.n_vocab) == (32, 4, 0, 1)
    limits = {n: untrusted.SIZE_LIMITS[n] for n in SIZES if n not in ('n_embd', 'n_head')}
    assert cls(n_embd=4096, n_head=4096, **limits).n_layer == 1024  # the bounds themselves: no model is built


# --- a hostile config.json ----------------------------------------------------------------------------------

def tiny(family, **changes):
    fields = dict(n_vocab=50, n_ctx=16, n_embd=32, n_head=4, n_layer=2, **changes)
    return GPTConfig(**fields) if family == 'gpt1' else GPT2Config(**fields)


@pytest.fixture(scope='module')
def st_folders(tmp_path_factory):
    """This project's safetensors folders of a tiny GPT-1 and GPT-2 (50 tokens, 16 positions, n_embd 32, 4 heads, 2
    blocks)."""
    root = tmp_path_factory.mktemp('hostile_config')
    torch.manual_seed(0)
    return {family: weights.save_model((LMModel if family == 'gpt1' else GPT2LMHeadModel)(tiny(family)),
                                       root / family) for family in CONFIGS}


def with_config(src, dst, **changes):
    """Copy the folder src to dst with config.json's fields changed; return (dst, its config.json)."""
    shutil.copytree(src, dst)
    path = Path(dst) / weights.CONFIG_NAME
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))
    return Path(dst), path


HOSTILE = [('gpt1', 'n_head', 4.0), ('gpt1', 'n_head', 4.5), ('gpt1', 'n_head', True), ('gpt1', 'n_head', '4'),
           ('gpt1', 'n_head', 5), ('gpt1', 'n_head', None), ('gpt1', 'n_head', [4]),
           ('gpt1', 'embd_pdrop', 2), ('gpt1', 'attn_pdrop', -1), ('gpt1', 'resid_pdrop', 'abc'),
           ('gpt1', 'clf_pdrop', None), ('gpt1', 'embd_pdrop', float('nan')), ('gpt1', 'afn', ['gelu']),
           ('gpt1', 'afn', 'tanh'), ('gpt1', 'checkpoint_activations', 'yes'), ('gpt1', 'n_heads', 4),
           ('gpt2', 'n_head', 4.0), ('gpt2', 'embd_pdrop', 2), ('gpt2', 'clf_pdrop', float('inf')),
           ('gpt2', 'afn', 'relu'), ('gpt2', 'checkpoint_activations', 1)]


@pytest.mark.parametrize('family, name, value', HOSTILE, ids=repr)
def test_a_bad_field_of_config_json_is_a_bad_file_before_any_model(st_folders, tmp_path, monkeypatch, family, name,
                                                                   value):
    folder, config_path = with_config(st_folders[family], tmp_path / 'st', **{name: value})
    built = []
    monkeypatch.setattr(torch.nn.Module, '__init__', lambda *a, **k: built.append(a) or pytest.fail('a model'))
    with pytest.raises(untrusted.BadFile) as err:
        models.load_model(str(folder), lm=True)
    message = str(err.value)
    assert '\n' not in message and str(config_path) in message, message
    assert name in message or 'NaN' in message or 'not a number' in message or 'Infinity' in message, message
    assert not built


@pytest.mark.parametrize('family, name, value', HOSTILE, ids=repr)
def test_the_config_of_a_checkpoint_is_checked_naming_its_file(st_folders, family, name, value):
    """model_*.checkpoint_config (every loader's way from a Checkpoint to a config) wraps a bad field in a BadFile
    naming the file the config came from, whatever reader produced the Checkpoint; without a file, a plain
    ValueError (released shards, whose n_head and afn come from the caller)."""
    ckpt = weights.read_checkpoint(str(st_folders[family]))
    ckpt.config = dict(ckpt.config, **{name: value})
    module = models.FAMILY_MODULES[family]
    with pytest.raises(untrusted.BadFile) as err:
        module.checkpoint_config(ckpt)
    assert str(err.value).startswith(f'{ckpt.source}: ') and name in str(err.value) and '\n' not in str(err.value)
    ckpt.source = None
    with pytest.raises(ValueError) as err:
        module.checkpoint_config(ckpt)
    assert_plain_error_naming(err.value, name)


SCALARS = st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() | st.text(max_size=8)
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4),
                                                                                                 inner, max_size=3),
                           max_leaves=6)


# values each field may hold (and near misses: 3 heads do not divide 32, a dropout of 1), mixed with any JSON value
NEAR_VALID = {'n_head': st.sampled_from([1, 2, 3, 4, 8, 16, 32, 64]), 'afn': st.sampled_from(['gelu', 'relu', 'swish']),
              'checkpoint_activations': st.booleans(),
              **{name: st.floats(0, 1) | st.sampled_from([0, 1]) for name in DROPOUTS}}


@st.composite
def field_values(draw):
    field = draw(st.sampled_from(sorted(NEAR_VALID)))
    return field, draw(NEAR_VALID[field] | JSON_VALUES)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=field_values())
def test_any_json_value_of_an_architecture_field_loads_exactly_or_is_a_bad_file(st_folders, tmp_path_factory, case):
    field, value = case
    folder, config_path = with_config(st_folders['gpt1'], tmp_path_factory.mktemp('fuzz') / 'st', **{field: value})
    try:
        model = models.load_model(str(folder))
    except untrusted.BadFile as err:
        assert '\n' not in str(err) and str(config_path) in str(err), str(err)
        return
    finally:
        shutil.rmtree(folder)
    got = getattr(model.cfg, field)  # what loaded is what the file says, of the field's type
    assert got == value and type(got) is type(value) or (field in DROPOUTS and type(value) is int and got == value)
    assert not (isinstance(value, float) and not math.isfinite(value))


# --- the architecture comes from the weights ----------------------------------------------------------------

SIZES_OF_DATA = dict(n_vocab=N_VOCAB, n_special=3, n_ctx=16, clf_token=N_VOCAB + 2, head_type='multiple_choice')


@pytest.fixture(scope='module')
def two_layer(tmp_path_factory):
    """A released-shards folder of 2 blocks (n_embd 24: the default 12 heads divide it) and this project's safetensors
    folder of 2 blocks and 4 heads (n_embd 32), both with the real 40478 token rows."""
    root = tmp_path_factory.mktemp('two_layer')
    write_tiny_checkpoint(root / 'released', np.random.default_rng(1), n_embd=24, n_layer=2, n_pos=32)
    write_tiny_checkpoint(root / 'shards32', np.random.default_rng(2), n_embd=32, n_layer=2, n_pos=64)
    weights.write_safetensors(weights.read_released(str(root / 'shards32'), n_head=4, afn='relu'), root / 'st')
    return root


def built_model(folder, *flags):
    args = train.parse_args(['--model_dir', str(folder), *flags])
    np.random.seed(0)
    return train.pretrained_model(args, train.ModelSizes(**SIZES_OF_DATA), torch.device('cpu'), 'gpt1'), args


@pytest.mark.parametrize('name, n_embd, n_head, afn', [('released', 24, 12, 'gelu'), ('st', 32, 4, 'relu')])
def test_train_builds_the_model_the_folder_holds_without_architecture_flags(two_layer, name, n_embd, n_head, afn):
    folder = two_layer / name
    model, args = built_model(folder)
    t = model.transformer
    assert (len(t.h), t.n_embd, t.h[0].attn.n_head, t.cfg.afn) == (2, n_embd, n_head, afn)
    ckpt = weights.read_checkpoint(str(folder), n_head=n_head)
    state = t.state_dict()
    for key, array in ckpt.blocks.items():  # both blocks are the checkpoint's, none drawn
        np.testing.assert_array_equal(state[key].numpy(), array, err_msg=key)
    np.testing.assert_array_equal(state['embed.weight'][:N_VOCAB].numpy(), ckpt.tokens)
    np.testing.assert_array_equal(state['embed.weight'][N_VOCAB + 3:].numpy(), ckpt.positions[:16])
    # the log header and printed arguments say what was built
    assert models.built_architecture(model.cfg) == dict(n_embd=n_embd, n_head=n_head, n_layer=2, afn=afn)


def test_flags_that_agree_with_the_folder_and_released_shards_fill_heads_and_activation(two_layer):
    model, _ = built_model(two_layer / 'st', '--n_embd', '32', '--n_head', '4', '--n_layer', '2', '--afn', 'relu')
    assert len(model.transformer.h) == 2
    model, _ = built_model(two_layer / 'released', '--n_head', '4', '--afn', 'swish')  # released: not stated there
    assert (model.transformer.h[0].attn.n_head, model.cfg.afn, len(model.transformer.h)) == (4, 'swish', 2)
    with pytest.raises(ValueError, match='n_head=5 does not divide n_embd=24'):
        built_model(two_layer / 'released', '--n_head', '5')


@pytest.mark.parametrize('name, flags, expected', [
    ('st', ['--n_layer', '12', '--n_head', '8'], ['--n_head 8 contradicts n_head=4',
                                                  '--n_layer 12 contradicts n_layer=2']),
    ('st', ['--n_embd', '768', '--afn', 'gelu', '--n_layer', '2'], ['--n_embd 768 contradicts n_embd=32',
                                                                    '--afn gelu contradicts afn=relu']),
    ('released', ['--n_layer', '12', '--n_embd', '768', '--n_head', '4'], ['--n_embd 768 contradicts n_embd=24',
                                                                           '--n_layer 12 contradicts n_layer=2']),
])
def test_every_contradicting_flag_is_named_in_one_line(two_layer, monkeypatch, name, flags, expected):
    monkeypatch.setattr(train, 'DoubleHeadModel', lambda *a, **k: pytest.fail('a model was built'))
    with pytest.raises(ValueError) as err:
        built_model(two_layer / name, *flags)
    message = str(err.value)
    assert '\n' not in message and str(two_layer / name) in message
    assert message.endswith("leave them out (the architecture is the weights')"), message
    assert all(e in message for e in expected), message
    assert message.count('contradicts') == len(expected)


def test_the_tools_loader_names_every_contradicting_flag(two_layer):
    """generate.py, extract_features.py and zero_shot.py load through models.load_model."""
    with pytest.raises(ValueError) as err:
        models.load_model(str(two_layer / 'st'), n_head=8, afn='gelu')
    assert str(err.value).startswith('--n_head 8 contradicts n_head=4, --afn gelu contradicts afn=relu in ')
    assert len(models.load_model(str(two_layer / 'released'), n_head=4).h) == 2


def test_load_model_reads_the_table_rows_as_told(two_layer):
    """models.TableRows: n_special adds special rows drawn as the original draws them (after the stored tokens, before
    the positions); n_vocab splits a stored table into tokens and special rows."""
    plain = models.load_model(str(two_layer / 'released'), n_head=4)
    np.random.seed(0)
    two = models.load_model(str(two_layer / 'released'), n_head=4, rows=models.TableRows(n_special=2))
    assert (two.cfg.n_vocab, two.cfg.n_special) == (N_VOCAB, 2)
    table, stored = two.embed.weight.detach(), plain.embed.weight.detach()
    np.random.seed(0)
    drawn = (np.random.randn(2, 24) * 0.02).astype(np.float32)
    torch.testing.assert_close(table[N_VOCAB:N_VOCAB + 2], torch.from_numpy(drawn))
    torch.testing.assert_close(table[:N_VOCAB], stored[:N_VOCAB])
    torch.testing.assert_close(table[N_VOCAB + 2:], stored[N_VOCAB:])
    ckpt = models.complete_checkpoint(weights.read_released(str(two_layer / 'released'), n_head=4))
    weights.write_transformers(ckpt, two_layer / 'hf24')
    split = models.load_model(str(two_layer / 'hf24'), rows=models.TableRows(n_vocab=N_VOCAB - 5))
    assert (split.cfg.n_vocab, split.cfg.n_special) == (N_VOCAB - 5, 5)


def test_a_model_with_more_blocks_than_the_checkpoint_is_refused_unless_n_transfer_asks(two_layer):
    folder = str(two_layer / 'released')
    cfg = GPTConfig(n_embd=24, n_head=12, n_layer=4, n_vocab=N_VOCAB, n_ctx=16)
    for n_transfer in (12, 3):
        model = TransformerModel(cfg)
        with pytest.raises(ValueError, match='holds 2 blocks but the model has 4: blocks 2 to 3 would stay randomly'):
            load_openai_pretrained_model(model, n_transfer=n_transfer, path=folder)
    ckpt = weights.read_released(folder)
    for n_transfer in (2, 1, -1):  # asked for on purpose: the other blocks stay as initialised
        model = TransformerModel(cfg)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        load_openai_pretrained_model(model, n_transfer=n_transfer, path=folder)
        for i in range(4):
            copied = i < n_transfer
            w = model.h[i].attn.c_attn.w.detach()
            assert torch.equal(w, torch.from_numpy(ckpt.blocks[f'h.{i}.attn.c_attn.w'])) if copied else \
                torch.equal(w, before[f'h.{i}.attn.c_attn.w'])


def test_train_py_on_a_two_block_safetensors_folder_without_architecture_flags(two_layer, tmp_path):
    """A real process: train.py --model_dir <2-block safetensors folder>, no --n_embd/--n_head/--n_layer: it fine-tunes
    a model of the folder's 2 blocks (no block added at random) and logs that architecture."""
    d = roc_workdir(tmp_path)
    argv = roc_cli_args(d, '--model_dir', str(two_layer / 'st'), '--n_iter', '1')
    for flag in ('--n_embd', '--n_head', '--n_layer'):
        k = argv.index(flag)
        del argv[k:k + 2]
    proc = subprocess.run([sys.executable, str(ROOT / 'train.py'), *argv], cwd=d, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    header = json.loads((d / 'log' / 'tiny.jsonl').read_text().splitlines()[0])
    assert (header['n_embd'], header['n_head'], header['n_layer'], header['afn']) == (32, 4, 2, 'relu')
    from safetensors import safe_open
    with safe_open(str(d / 'save' / 'tiny' / 'train_state.safetensors'), framework='pt') as f:
        keys = list(f.keys())
        blocks = {int(k.split('.')[2]) for k in keys if k.startswith('model/transformer.h.')}
        assert blocks == {0, 1}, sorted(keys)[:8]  # the folder's 2 blocks, no third drawn at random
        trained = f.get_tensor('model/transformer.h.1.attn.c_attn.w')
    start = torch.from_numpy(weights.read_checkpoint(str(two_layer / 'st')).blocks['h.1.attn.c_attn.w'])
    assert trained.shape == start.shape and 0 < (trained - start).abs().max() < 0.1  # fine-tuned from the weights
