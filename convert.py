"""Convert GPT-1 weights between the released shards, one safetensors file and transformers' layout.

Three formats hold the same numbers:
- released: `params_shapes.json` + `params_0.npy` ... `params_9.npy` (openai/finetune-transformer-lm's model/
  folder): positions [n_pos, n_embd], tokens [n_vocab, n_embd], then 12 arrays per block in TF_BLOCK order with
  conv weights [1, nx, nf]; the whole flat concatenation split in ten.
- ours: `model.safetensors` holding this port's `TransformerModel` state_dict (`embed.weight` is the original's
  `we` = [tokens; special; positions], `h.3.attn.c_attn.w` [nx, nf], ...) + `config.json` (n_vocab, n_special,
  n_ctx and the GPTConfig fields). Converted shards keep their .npy headers and params_shapes.json text in the
  safetensors metadata, so safetensors -> shards writes byte-identical files.
- transformers: `OpenAIGPTModel` / `OpenAIGPTLMHeadModel` (`tokens_embed.weight` [vocab_size, n_embd] =
  [tokens; special], `positions_embed.weight` [n_positions, n_embd], `h.3.attn.c_attn.weight` [nx, nf], ...)
  in `model.safetensors` or a `pytorch_model.bin` state dict, with its `config.json`.

Every format is read into a `Checkpoint` (numpy arrays named as this port names them), written from one, or
turned into a model by `build_model`. Only safetensors and `torch.load(weights_only=True)` are used: no pickle.

    python convert.py shards-to-safetensors --model_dir model/ --out gpt1/
    python convert.py safetensors-to-shards --model_dir gpt1/ --out model_again/
    python convert.py to-transformers --model_dir model/ --out gpt1-hf/
    python convert.py from-transformers --model_dir gpt1-hf/ --out gpt1/
"""
import argparse
import base64
import json
import os
import pickle
import re
import shutil
import sys
from dataclasses import dataclass, field

import numpy as np
import torch

from download_model import read_npy_header
from model_pytorch import (ACT_FNS, DEFAULT_CONFIG, N_SHARDS, TF_BLOCK, GPTConfig, LMModel, TransformerModel,
                           check_shape, clone_config, load_openai_pretrained_model, load_released_arrays,
                           read_shapes, tf_param_names, torch_name, verify_weights, write_released_shards)

FORMAT = 'finetune-transformer-lm-pytorch'  # config.json "format" of this port's safetensors folders
FORMAT_VERSION = 1
WEIGHTS_NAME = 'model.safetensors'
CONFIG_NAME = 'config.json'
HF_BIN_NAME = 'pytorch_model.bin'
HF_INDEX_NAME = 'model.safetensors.index.json'
VOCAB_FILES = ('encoder_bpe_40000.json', 'vocab_40000.bpe')
HF_VOCAB_FILES = ('vocab.json', 'merges.txt')  # the same two files under transformers' names
CONFIG_FIELDS = ('n_embd', 'n_head', 'n_layer', 'embd_pdrop', 'attn_pdrop', 'resid_pdrop', 'clf_pdrop', 'afn')
LAYER_NORM_EPSILON = 1e-5  # model_pytorch.LayerNorm's e

# transformers' openai-gpt "gelu" is gelu_new, the tanh approximation: the original's gelu and ours.
HF_TO_OUR_AFN = {'gelu': 'gelu', 'gelu_new': 'gelu', 'relu': 'relu', 'silu': 'swish', 'swish': 'swish'}
OUR_TO_HF_AFN = {'gelu': 'gelu', 'relu': 'relu', 'swish': 'silu'}
HF_PREFIX = 'transformer.'
HF_BUFFER = re.compile(r'^h\.\d+\.attn\.(bias|masked_bias)$|^position_ids$')  # masks, not parameters


@dataclass
class Checkpoint:
    """GPT-1 weights in this port's names: the three parts of the table, the blocks and the config."""
    tokens: np.ndarray     # [n_vocab, n_embd]
    special: np.ndarray    # [n_special, n_embd]
    positions: np.ndarray  # [n_pos, n_embd]
    blocks: dict           # state_dict key ('h.0.attn.c_attn.w') -> array, conv weights [nx, nf]
    cfg: GPTConfig
    released: dict = None  # params_shapes.json text and .npy headers of the shards it was read from
    ignored: list = field(default_factory=list)  # keys of the source that hold no transformer weights

    @property
    def n_vocab(self):
        """Return the number of BPE token rows."""
        return self.tokens.shape[0]

    @property
    def n_special(self):
        """Return the number of special-token rows."""
        return self.special.shape[0]

    @property
    def n_pos(self):
        """Return the number of stored positions."""
        return self.positions.shape[0]

    def table(self, n_ctx=None):
        """Return the original's `we` = [tokens; special; positions[:n_ctx]]: [n_vocab+n_special+n_ctx, n_embd]."""
        return np.concatenate([self.tokens, self.special, self.positions[:n_ctx]], 0)


def block_keys(n_layer):
    """Return the state_dict keys of the block parameters in shard order ('h.0.attn.c_attn.w', ...)."""
    return [torch_name(name) for name in tf_param_names(n_layer)[2:]]


def hf_key(key):
    """Return transformers' name of a block parameter: 'h.0.attn.c_attn.w' -> 'h.0.attn.c_attn.weight'."""
    stem, leaf = key.rsplit('.', 1)
    return f"{stem}.{'bias' if leaf == 'b' else 'weight'}"


def block_shapes(cfg):
    """Return {key: shape} for every block parameter of cfg (conv weights [nx, nf])."""
    nx = cfg.n_embd
    one = {'attn.c_attn.w': (nx, 3 * nx), 'attn.c_attn.b': (3 * nx,), 'attn.c_proj.w': (nx, nx),
           'attn.c_proj.b': (nx,), 'ln_1.g': (nx,), 'ln_1.b': (nx,), 'mlp.c_fc.w': (nx, 4 * nx),
           'mlp.c_fc.b': (4 * nx,), 'mlp.c_proj.w': (4 * nx, nx), 'mlp.c_proj.b': (nx,), 'ln_2.g': (nx,),
           'ln_2.b': (nx,)}
    return {f'h.{i}.{name}': one[name] for i in range(cfg.n_layer) for name in one}


def check_blocks(blocks, cfg, source):
    """Raise a ValueError naming source when blocks lack, add or misshape a parameter of cfg."""
    shapes = block_shapes(cfg)
    missing = [k for k in shapes if k not in blocks]
    extra = [k for k in blocks if k not in shapes]
    if missing or extra:
        raise ValueError(f'{source} does not hold a GPT-1 with n_layer={cfg.n_layer}: missing {missing[:3]}, '
                         f'unexpected {extra[:3]}')
    for key, shape in shapes.items():
        if tuple(blocks[key].shape) != shape:
            raise ValueError(f'{source}: {key} has shape {tuple(blocks[key].shape)}, expected {shape} '
                             f'for n_embd={cfg.n_embd}')


def make_config(**fields):
    """Return a GPTConfig from DEFAULT_CONFIG with the given fields (unknown names, a bad n_head or afn raise)."""
    cfg = clone_config(DEFAULT_CONFIG, **fields)
    if cfg.n_head < 1 or cfg.n_embd % cfg.n_head:
        raise ValueError(f'n_head={cfg.n_head} does not divide n_embd={cfg.n_embd}: pass the --n_head the weights '
                         f'were trained with (the released GPT-1 has 12)')
    if cfg.afn not in ACT_FNS:
        raise ValueError(f'unknown afn {cfg.afn!r}: pass --afn as one of {sorted(ACT_FNS)}')
    return cfg


def afn_name(fn):
    """Return the ACT_FNS name of an activation function."""
    for name, candidate in ACT_FNS.items():
        if candidate is fn:
            return name
    raise ValueError(f'activation {fn!r} is not one of {sorted(ACT_FNS)}')


def config_of(model):
    """Return the GPTConfig a TransformerModel (or a model with `.transformer`) was built with."""
    transformer = getattr(model, 'transformer', model)
    block = transformer.h[0]
    task_head = getattr(model, 'task_head', None)
    return make_config(n_embd=transformer.n_embd, n_head=block.attn.n_head, n_layer=len(transformer.h),
                       embd_pdrop=transformer.embd_pdrop, attn_pdrop=block.attn.attn_pdrop,
                       resid_pdrop=block.attn.resid_pdrop,
                       clf_pdrop=getattr(task_head, 'clf_pdrop', DEFAULT_CONFIG.clf_pdrop),
                       afn=afn_name(block.mlp.act))


# --- the released shards ----------------------------------------------------------------------------------

def npy_header(path):
    """Return (header bytes, n floats) of a flat little-endian float32 .npy, or None when it is anything else."""
    with open(path, 'rb') as f:
        parsed = read_npy_header(f)
        if parsed is None:
            return None
        shape, fortran, dtype, _ = parsed  # a non-canonical header is copied as it is
        offset = f.tell()
        f.seek(0)
        header = f.read(offset)
    if dtype != np.dtype('<f4') or fortran or len(shape) != 1:
        return None
    if os.path.getsize(path) != offset + 4 * shape[0]:  # trailing bytes would not survive a round trip
        return None
    return header, shape[0]


def read_released(model_dir, n_head=12, afn='gelu', verify=False):
    """Return the Checkpoint in a released model/ folder (n_head and afn are not stored there)."""
    if verify:
        verify_weights(model_dir)
    arrays = load_released_arrays(model_dir)  # checks every file and the total size
    positions, tokens = arrays[0], arrays[1]
    n_layer = (len(arrays) - 2) // len(TF_BLOCK)
    blocks = {}
    for key, array in zip(block_keys(n_layer), arrays[2:]):
        blocks[key] = array.reshape(array.shape[1:]) if array.ndim == 3 else array  # [1, nx, nf] -> [nx, nf]
    cfg = make_config(n_embd=tokens.shape[1], n_head=n_head, n_layer=n_layer, afn=afn)
    check_blocks(blocks, cfg, model_dir)
    with open(os.path.join(model_dir, 'params_shapes.json'), encoding='utf-8') as f:
        shapes_text = f.read()
    headers = [npy_header(os.path.join(model_dir, f'params_{n}.npy')) for n in range(N_SHARDS)]
    released = None
    if all(h is not None for h in headers):
        released = {'params_shapes.json': shapes_text,
                    'headers': [base64.b64encode(h).decode('ascii') for h, _ in headers],
                    'sizes': [n for _, n in headers]}
    special = np.zeros((0, tokens.shape[1]), np.float32)
    return Checkpoint(tokens, special, positions, blocks, cfg, released)


def released_arrays(ckpt):
    """Return the arrays of ckpt in the released order and shapes: positions, tokens, blocks ([1, nx, nf])."""
    arrays = [ckpt.positions, ckpt.tokens]
    for key in block_keys(ckpt.cfg.n_layer):
        array = ckpt.blocks[key]
        arrays.append(array.reshape((1,) + array.shape) if array.ndim == 2 else array)  # [nx, nf] -> [1, nx, nf]
    return [np.ascontiguousarray(a, dtype=np.float32) for a in arrays]


def write_released(ckpt, out_dir, drop_special=False):
    """Write ckpt as a released model/ folder (params_shapes.json + 10 shards); return out_dir."""
    if ckpt.n_special and not drop_special:
        raise ValueError(f'the checkpoint has {ckpt.n_special} special-token rows, which the released format cannot '
                         f'hold: pass --drop_special (drop_special=True) to write it without them')
    arrays = released_arrays(ckpt)
    shapes = [list(a.shape) for a in arrays]
    released = ckpt.released
    flat_size = sum(a.size for a in arrays)
    if (released is None or sum(released['sizes']) != flat_size
            or json.loads(released['params_shapes.json']) != shapes):
        return write_released_shards(out_dir, arrays)
    # The folder it was read from: write its own params_shapes.json text, .npy headers and split points.
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, 'params_shapes.json'), 'w', encoding='utf-8') as f:
        f.write(released['params_shapes.json'])
    flat = np.concatenate([a.reshape(-1) for a in arrays]).astype('<f4')
    start = 0
    for n, (header, size) in enumerate(zip(released['headers'], released['sizes'])):
        with open(os.path.join(out_dir, f'params_{n}.npy'), 'wb') as f:
            f.write(base64.b64decode(header))
            f.write(flat[start:start + size].tobytes())
        start += size
    return out_dir


# --- this port's safetensors folder -----------------------------------------------------------------------

def read_config_json(path):
    """Return the dict in a config.json, or raise naming the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path} is missing: a converted folder holds {WEIGHTS_NAME} and {CONFIG_NAME} '
                                f'(write one with `python convert.py shards-to-safetensors`)')
    try:
        with open(path, encoding='utf-8') as f:
            config = json.load(f)
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f'{path} is not valid JSON ({err})') from None
    if not isinstance(config, dict):
        raise ValueError(f'{path} must hold a JSON object')
    return config


def load_safetensors_file(path):
    """Return ({name: float32 numpy array}, metadata dict) of a .safetensors file, without pickle."""
    from safetensors import SafetensorError, safe_open
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path} is missing')
    try:
        with safe_open(path, framework='pt') as f:
            metadata = f.metadata() or {}
            # float32 through torch so that bf16/fp16 files (numpy has no bf16) load too
            tensors = {k: f.get_tensor(k).to(torch.float32).numpy() for k in f.keys()}
    except SafetensorError as err:
        raise ValueError(f'{path} is not a readable safetensors file ({err})') from None
    return tensors, metadata


def read_safetensors(model_dir):
    """Return the Checkpoint in this port's folder (model.safetensors + config.json)."""
    config_path = os.path.join(model_dir, CONFIG_NAME)
    config = read_config_json(config_path)
    if config.get('format') != FORMAT:
        raise ValueError(f'{config_path} is not a {FORMAT} config (its "format" is {config.get("format")!r}); '
                         f'for a transformers folder use from-transformers / load_transformers_model')
    try:
        n_vocab, n_special, n_ctx = int(config['n_vocab']), int(config['n_special']), int(config['n_ctx'])
        cfg = make_config(**{name: config[name] for name in CONFIG_FIELDS})
    except (KeyError, ValueError, TypeError) as err:
        raise ValueError(f'{config_path} lacks or has a bad field ({err}): write it with convert.py') from None
    path = os.path.join(model_dir, WEIGHTS_NAME)
    tensors, metadata = load_safetensors_file(path)
    if 'embed.weight' not in tensors:
        raise ValueError(f'{path} has no embed.weight: it is not a {FORMAT} file')
    table = tensors.pop('embed.weight')
    expected = (n_vocab + n_special + n_ctx, cfg.n_embd)
    if table.shape != expected:
        raise ValueError(f'{path}: embed.weight has shape {table.shape}, but {config_path} gives {expected} '
                         f'(n_vocab + n_special + n_ctx, n_embd)')
    check_blocks(tensors, cfg, path)
    released = json.loads(metadata['released']) if 'released' in metadata else None
    tokens, special, positions = np.split(table, [n_vocab, n_vocab + n_special])
    return Checkpoint(tokens, special, positions, tensors, cfg, released)


def write_safetensors(ckpt, out_dir):
    """Write ckpt as this port's folder (model.safetensors + config.json); return out_dir."""
    from safetensors.numpy import save_file
    os.makedirs(out_dir, exist_ok=True)
    tensors = {'embed.weight': ckpt.table()}
    tensors.update(ckpt.blocks)
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    metadata = {'format': 'pt'}
    if ckpt.released is not None:
        metadata['released'] = json.dumps(ckpt.released)
    save_file(tensors, os.path.join(out_dir, WEIGHTS_NAME), metadata=metadata)
    config = {'format': FORMAT, 'format_version': FORMAT_VERSION, 'n_vocab': ckpt.n_vocab,
              'n_special': ckpt.n_special, 'n_ctx': ckpt.n_pos}
    config.update({name: getattr(ckpt.cfg, name) for name in CONFIG_FIELDS})
    with open(os.path.join(out_dir, CONFIG_NAME), 'w', encoding='utf-8') as f:
        json.dump(config, f, indent=2)
        f.write('\n')
    return out_dir


# --- transformers' OpenAI GPT -----------------------------------------------------------------------------

def hf_weights_file(path):
    """Return the weights file of a transformers folder (or path itself when it is a file)."""
    if os.path.isfile(path):
        return path
    for name in (WEIGHTS_NAME, HF_INDEX_NAME, HF_BIN_NAME):
        if os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    raise FileNotFoundError(f'{path} holds none of {WEIGHTS_NAME}, {HF_INDEX_NAME}, {HF_BIN_NAME}: '
                            f'save the transformers model with save_pretrained() into it')


def load_hf_state(weights_path):
    """Return {key: float32 array} of a transformers weights file (safetensors, index or torch state dict)."""
    if weights_path.endswith('.index.json'):
        index = read_config_json(weights_path)
        state = {}
        for name in sorted(set(index.get('weight_map', {}).values())):
            state.update(load_safetensors_file(os.path.join(os.path.dirname(weights_path), name))[0])
        return state
    if weights_path.endswith('.safetensors'):
        return load_safetensors_file(weights_path)[0]
    try:
        state = torch.load(weights_path, map_location='cpu', weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise ValueError(f'{weights_path} does not load with torch.load(weights_only=True) ({type(err).__name__}): '
                         f'it is not a state dict of tensors; save one, or model.safetensors') from None
    if not isinstance(state, dict):
        raise ValueError(f'{weights_path} holds a {type(state).__name__}, not a state dict')
    return {k: v.detach().to(torch.float32).numpy() for k, v in state.items() if isinstance(v, torch.Tensor)}


def split_hf_state(state, source):
    """Return (transformer arrays without the prefix, ignored keys); check a stored lm_head is the tied copy."""
    prefixed = any(k.startswith(HF_PREFIX) for k in state)
    body, ignored = {}, []
    for key, value in state.items():
        name = key[len(HF_PREFIX):] if prefixed and key.startswith(HF_PREFIX) else key
        if (prefixed and not key.startswith(HF_PREFIX)) or HF_BUFFER.match(name):
            ignored.append(key)  # heads (lm_head, multiple_choice_head, score) and attention-mask buffers
        else:
            body[name] = value
    if 'lm_head.weight' in state and 'tokens_embed.weight' in body:
        if not np.array_equal(state['lm_head.weight'], body['tokens_embed.weight']):
            raise ValueError(f'{source}: lm_head.weight differs from tokens_embed.weight; GPT-1 ties its decoder '
                             f'to the embeddings, so this untied head cannot be converted')
    return body, ignored


def hf_config(path, weights_path):
    """Return the config.json dict beside a transformers checkpoint, or {} when there is none."""
    folder = path if os.path.isdir(path) else os.path.dirname(weights_path)
    config_path = os.path.join(folder, CONFIG_NAME)
    return read_config_json(config_path) if os.path.isfile(config_path) else {}


def default_n_vocab(config, n_rows, path):
    """Return how many of tokens_embed's n_rows rows are BPE tokens according to a transformers config dict."""
    n_special = int(config.get('n_special') or 0)  # written by write_transformers and pytorch-pretrained-bert
    vocab_size = config.get('vocab_size', n_rows)
    if vocab_size == n_rows:  # transformers: vocab_size counts every row, added special tokens included
        return n_rows - n_special
    if vocab_size + n_special == n_rows:  # pytorch-pretrained-bert: vocab_size + n_special rows
        return vocab_size
    raise ValueError(f'{path}: config.json gives vocab_size={vocab_size} (n_special={n_special}) but tokens_embed '
                     f'has {n_rows} rows')


def read_transformers(path, n_vocab=None, n_head=None, afn=None):
    """Return the Checkpoint in a transformers OpenAI GPT folder or weights file.

    tokens_embed's rows are [tokens; special]: n_vocab (default: from config.json's n_special, else every row)
    says how many are BPE tokens; the rest become special rows. n_head and afn come from config.json; pass
    them for a bare weights file.
    """
    weights_path = hf_weights_file(path)
    config = hf_config(path, weights_path)
    body, ignored = split_hf_state(load_hf_state(weights_path), weights_path)
    for name in ('tokens_embed.weight', 'positions_embed.weight'):
        if name not in body:
            raise ValueError(f'{weights_path} has no {name}: it is not an OpenAI GPT checkpoint '
                             f'(keys start {sorted(body)[:3]})')
    tokens_embed = body.pop('tokens_embed.weight')
    positions = body.pop('positions_embed.weight')
    n_rows, n_embd = tokens_embed.shape
    n_layer = 1 + max((int(m.group(1)) for m in (re.match(r'^h\.(\d+)\.', k) for k in body) if m), default=-1)
    if config.get('model_type', 'openai-gpt') != 'openai-gpt':
        raise ValueError(f'{path}: config.json has model_type {config["model_type"]!r}, expected "openai-gpt"')
    eps = config.get('layer_norm_epsilon', LAYER_NORM_EPSILON)
    if eps != LAYER_NORM_EPSILON:
        raise ValueError(f'{path}: layer_norm_epsilon is {eps}; this port implements {LAYER_NORM_EPSILON} only')
    if n_head is None:
        n_head = config.get('n_head')
        if n_head is None:
            raise ValueError(f'{path}: no config.json gives n_head; put the config.json beside it or pass --n_head')
    hf_afn = afn or config.get('afn', 'gelu')
    if hf_afn not in HF_TO_OUR_AFN:
        raise ValueError(f'{path}: afn {hf_afn!r} has no counterpart here; use one of {sorted(HF_TO_OUR_AFN)}')
    pdrops = {name: config[name] for name in ('embd_pdrop', 'attn_pdrop', 'resid_pdrop') if name in config}
    if 'summary_first_dropout' in config:
        pdrops['clf_pdrop'] = config['summary_first_dropout']
    cfg = make_config(n_embd=n_embd, n_head=int(n_head), n_layer=n_layer, afn=HF_TO_OUR_AFN[hf_afn], **pdrops)
    if 'n_layer' in config and config['n_layer'] != n_layer:
        raise ValueError(f'{path}: config.json says n_layer={config["n_layer"]} but the weights hold {n_layer} blocks')
    if n_vocab is None:
        n_vocab = default_n_vocab(config, n_rows, path)
    if not 0 < n_vocab <= n_rows:
        raise ValueError(f'n_vocab={n_vocab} but tokens_embed in {weights_path} has {n_rows} rows')
    blocks = {}
    for key in block_keys(n_layer):
        if hf_key(key) in body:
            blocks[key] = body.pop(hf_key(key))
    if body:
        raise ValueError(f'{weights_path} holds unexpected keys {sorted(body)[:3]}: not an OpenAI GPT checkpoint')
    check_blocks(blocks, cfg, weights_path)
    return Checkpoint(tokens_embed[:n_vocab], tokens_embed[n_vocab:], positions, blocks, cfg, ignored=ignored)


def transformers_config(ckpt):
    """Return the config.json dict that transformers' OpenAIGPTConfig reads for ckpt."""
    cfg = ckpt.cfg
    if cfg.afn not in OUR_TO_HF_AFN:
        raise ValueError(f'afn {cfg.afn!r} has no transformers counterpart')
    return {'architectures': ['OpenAIGPTLMHeadModel'], 'model_type': 'openai-gpt',
            'vocab_size': ckpt.n_vocab + ckpt.n_special, 'n_special': ckpt.n_special, 'n_positions': ckpt.n_pos,
            'n_embd': cfg.n_embd, 'n_layer': cfg.n_layer, 'n_head': cfg.n_head, 'afn': OUR_TO_HF_AFN[cfg.afn],
            'resid_pdrop': cfg.resid_pdrop, 'embd_pdrop': cfg.embd_pdrop, 'attn_pdrop': cfg.attn_pdrop,
            'summary_first_dropout': cfg.clf_pdrop, 'layer_norm_epsilon': LAYER_NORM_EPSILON,
            'initializer_range': 0.02, 'tie_word_embeddings': True}


def write_transformers(ckpt, out_dir):
    """Write ckpt as a transformers OpenAIGPTLMHeadModel folder (model.safetensors + config.json); return out_dir.

    Special-token rows go after the tokens in tokens_embed (vocab_size = n_vocab + n_special, as transformers'
    resize_token_embeddings lays them out); config.json's extra "n_special" lets read_transformers split them.
    """
    from safetensors.numpy import save_file
    os.makedirs(out_dir, exist_ok=True)
    tensors = {HF_PREFIX + 'tokens_embed.weight': np.concatenate([ckpt.tokens, ckpt.special], 0),
               HF_PREFIX + 'positions_embed.weight': ckpt.positions}
    tensors.update({HF_PREFIX + hf_key(k): v for k, v in ckpt.blocks.items()})
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    save_file(tensors, os.path.join(out_dir, WEIGHTS_NAME), metadata={'format': 'pt'})
    with open(os.path.join(out_dir, CONFIG_NAME), 'w', encoding='utf-8') as f:
        json.dump(transformers_config(ckpt), f, indent=2)
        f.write('\n')
    return out_dir


# --- models -----------------------------------------------------------------------------------------------

def checkpoint_from_model(model, n_vocab, n_special=None):
    """Return the Checkpoint of a TransformerModel (or a model with `.transformer`) with n_vocab token rows."""
    transformer = getattr(model, 'transformer', model)
    table = transformer.embed.weight.detach().to(torch.float32).cpu().numpy()
    n_ctx = transformer.n_ctx
    if n_special is None:
        n_special = table.shape[0] - n_ctx - n_vocab
    if n_special < 0 or n_vocab + n_special + n_ctx != table.shape[0]:
        raise ValueError(f'the table has {table.shape[0]} rows, not n_vocab={n_vocab} + n_special={n_special} + '
                         f'n_ctx={n_ctx}: pass the model\'s n_vocab')
    blocks = {k: v.detach().to(torch.float32).cpu().numpy() for k, v in transformer.state_dict().items()
              if k != 'embed.weight'}
    tokens, special, positions = np.split(table, [n_vocab, n_vocab + n_special])
    return Checkpoint(tokens, special, positions, blocks, config_of(model))


def build_model(ckpt, n_ctx=None, n_special=None, lm=False, model=None):
    """Return a TransformerModel (an LMModel with lm) holding ckpt, or load ckpt into the given model.

    As the original train.py: positions cropped to n_ctx (default: all stored), special rows beyond the stored
    ones drawn as np.random.randn(k, n_embd) * 0.02 from numpy's global generator. A model built here is in
    eval mode; a given model keeps its mode, and its n_ctx and n_special (from its table) are used.
    """
    if model is not None:
        transformer = getattr(model, 'transformer', model)
        n_ctx = transformer.n_ctx
        n_special = transformer.embed.weight.shape[0] - n_ctx - ckpt.n_vocab
    n_ctx = ckpt.n_pos if n_ctx is None else n_ctx
    n_special = ckpt.n_special if n_special is None else n_special
    if not 0 < n_ctx <= ckpt.n_pos:
        raise ValueError(f'n_ctx={n_ctx} but the checkpoint stores {ckpt.n_pos} positions: use 1..{ckpt.n_pos}')
    if n_special < ckpt.n_special:
        raise ValueError(f'n_special={n_special} but the checkpoint stores {ckpt.n_special} special rows: '
                         f'the model needs at least as many')
    extra = (np.random.randn(n_special - ckpt.n_special, ckpt.cfg.n_embd) * 0.02).astype(np.float32)
    table = np.concatenate([ckpt.tokens, ckpt.special, extra, ckpt.positions[:n_ctx]], 0)
    if model is None:
        vocab = table.shape[0]
        model = (LMModel(ckpt.cfg, vocab=vocab, n_ctx=n_ctx) if lm
                 else TransformerModel(ckpt.cfg, vocab=vocab, n_ctx=n_ctx)).eval()
        transformer = getattr(model, 'transformer', model)
    state = transformer.state_dict()
    arrays = dict(ckpt.blocks, **{'embed.weight': table})
    if set(arrays) != set(state):
        raise ValueError(f'the checkpoint has {ckpt.cfg.n_layer} blocks, the model {len(transformer.h)}')
    with torch.no_grad():
        for key, array in arrays.items():
            check_shape(key, state[key], array)
            state[key].copy_(torch.from_numpy(np.ascontiguousarray(array)))
    return model


def save_safetensors_model(model, out_dir, n_vocab, n_special=None):
    """Write the transformer of model as this port's folder (model.safetensors + config.json); return out_dir."""
    return write_safetensors(checkpoint_from_model(model, n_vocab, n_special), out_dir)


def load_safetensors_model(model_dir, model=None, n_ctx=None, n_special=None, lm=False):
    """Return a model built from (or load into `model`) this port's folder (model.safetensors + config.json)."""
    return build_model(read_safetensors(model_dir), n_ctx=n_ctx, n_special=n_special, lm=lm, model=model)


def load_transformers_model(path, model=None, n_vocab=None, n_special=None, n_ctx=None, lm=False):
    """Return a model built from (or load into `model`) a transformers OpenAI GPT folder or weights file."""
    ckpt = read_transformers(path, n_vocab=n_vocab)
    return build_model(ckpt, n_ctx=n_ctx, n_special=n_special, lm=lm, model=model)


def detect_format(path):
    """Return 'released', 'safetensors' or 'transformers' for a model folder or weights file, or raise."""
    if os.path.isfile(path):
        return 'transformers'
    if not os.path.isdir(path):
        raise FileNotFoundError(f'{path} does not exist: give a model folder (released shards, a convert.py '
                                f'folder or a transformers folder)')
    if os.path.isfile(os.path.join(path, 'params_shapes.json')):
        return 'released'
    config_path = os.path.join(path, CONFIG_NAME)
    if os.path.isfile(config_path):
        config = read_config_json(config_path)
        if config.get('format') == FORMAT:
            return 'safetensors'
        if config.get('model_type') == 'openai-gpt':
            return 'transformers'
    raise FileNotFoundError(f'{path} holds neither params_shapes.json (released weights, see download_model.py) '
                            f'nor a {CONFIG_NAME} of convert.py or of a transformers openai-gpt model')


def read_checkpoint(path, n_head=None, afn=None, n_vocab=None):
    """Return the Checkpoint in any supported folder (released, this port's safetensors, transformers)."""
    kind = detect_format(path)
    if kind == 'released':
        return read_released(path, n_head=n_head or 12, afn=afn or 'gelu')
    ckpt = read_safetensors(path) if kind == 'safetensors' else read_transformers(path, n_vocab, n_head, afn)
    if n_head is not None and n_head != ckpt.cfg.n_head:
        raise ValueError(f'--n_head {n_head} contradicts n_head={ckpt.cfg.n_head} in {path}: leave it out')
    if kind == 'safetensors' and afn is not None and afn != ckpt.cfg.afn:
        raise ValueError(f'--afn {afn} contradicts afn={ckpt.cfg.afn} in {path}: leave it out')
    return ckpt


def load_model(path, n_head=None, afn=None, n_ctx=None, n_special=None, lm=False, verify=False):
    """Return (model in eval mode, n_vocab) from any supported folder; an LMModel with lm, else a TransformerModel.

    Released shards go through load_openai_pretrained_model (n_head defaults to the released 12, afn to gelu);
    n_ctx (default: every stored position) crops the positions; n_special sets the special rows (default: as
    stored, none for released shards; new rows are drawn as the original does).
    """
    if detect_format(path) != 'released':
        ckpt = read_checkpoint(path, n_head=n_head, afn=afn)
        return build_model(ckpt, n_ctx=n_ctx, n_special=n_special, lm=lm), ckpt.n_vocab
    shapes = read_shapes(os.path.join(path, 'params_shapes.json'))
    n_pos, (n_vocab, n_embd) = shapes[0][0], shapes[1]
    n_ctx = n_pos if n_ctx is None else n_ctx
    n_special = n_special or 0
    if not 0 < n_ctx <= n_pos:
        raise ValueError(f'n_ctx={n_ctx} but {path} stores {n_pos} positions: use 1..{n_pos}')
    n_layer = (len(shapes) - 2) // len(TF_BLOCK)
    cfg = make_config(n_embd=n_embd, n_head=n_head or 12, n_layer=n_layer, afn=afn or 'gelu')
    vocab = n_vocab + n_special + n_ctx
    model = LMModel(cfg, vocab=vocab, n_ctx=n_ctx) if lm else TransformerModel(cfg, vocab=vocab, n_ctx=n_ctx)
    load_openai_pretrained_model(model, n_ctx=n_ctx, n_special=n_special, n_transfer=n_layer, n_embd=n_embd,
                                 path=path, verify=verify)
    return model.eval(), n_vocab


# --- command line -----------------------------------------------------------------------------------------

def add_model_args(parser):
    """Add the model-loading flags shared by generate.py and extract_features.py to parser."""
    parser.add_argument('--model_dir', default='model/',
                        help='released shards, a convert.py safetensors folder or a transformers openai-gpt folder')
    parser.add_argument('--n_head', type=int, help='attention heads (released shards: default 12; others: read '
                                                   'from config.json)')
    parser.add_argument('--afn', choices=sorted(ACT_FNS), help='activation for released shards (default gelu)')
    parser.add_argument('--n_ctx', type=int, help='positions to keep (default: every stored position)')
    parser.add_argument('--encoder_path', help='BPE vocabulary (default: encoder_bpe_40000.json or vocab.json in '
                                               '--model_dir)')
    parser.add_argument('--bpe_path', help='BPE merges (default: vocab_40000.bpe or merges.txt in --model_dir)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                        help='torch device (default: cuda when available)')
    return parser


def vocab_paths(model_dir, encoder_path=None, bpe_path=None):
    """Return (encoder_path, bpe_path): the given ones, else the vocabulary files found in model_dir."""
    for names in (VOCAB_FILES, HF_VOCAB_FILES):
        found = [os.path.join(model_dir, n) for n in names]
        if all(os.path.isfile(p) for p in found):
            return encoder_path or found[0], bpe_path or found[1]
    if encoder_path and bpe_path:
        return encoder_path, bpe_path
    raise FileNotFoundError(f'{model_dir} holds no {" + ".join(VOCAB_FILES)}: copy them there from the released '
                            f'model/ folder or pass --encoder_path and --bpe_path')


def copy_vocab(src_dir, out_dir, names):
    """Copy the two vocabulary files of src_dir (either naming) into out_dir under `names`; return True if found."""
    if os.path.isfile(src_dir):  # a transformers weights file: look beside it
        src_dir = os.path.dirname(src_dir) or '.'
    for candidates in (VOCAB_FILES, HF_VOCAB_FILES):
        found = [os.path.join(src_dir, n) for n in candidates]
        if all(os.path.isfile(p) for p in found):
            os.makedirs(out_dir, exist_ok=True)
            for src, name in zip(found, names):
                shutil.copyfile(src, os.path.join(out_dir, name))
            return True
    return False


def parse_args(argv=None):
    """Return the parsed command line."""
    parser = argparse.ArgumentParser(description='Convert GPT-1 weights between the released shards, a '
                                                 'safetensors folder and transformers\' OpenAI GPT layout.')
    sub = parser.add_subparsers(dest='command', required=True)
    specs = {'shards-to-safetensors': 'released model/ folder -> model.safetensors + config.json',
             'safetensors-to-shards': 'convert.py folder -> released params_shapes.json + params_0..9.npy',
             'to-transformers': 'any model folder -> transformers OpenAIGPTLMHeadModel folder',
             'from-transformers': 'transformers openai-gpt folder or weights file -> convert.py folder'}
    for name, help_text in specs.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument('--model_dir', required=True, help='the folder (or transformers weights file) to read')
        p.add_argument('--out', required=True, help='the folder to write (created if missing)')
        if name in ('shards-to-safetensors', 'to-transformers', 'from-transformers'):
            p.add_argument('--n_head', type=int, help='attention heads (released shards: default 12)')
            p.add_argument('--afn', help='activation (released shards: default gelu)')
        if name == 'shards-to-safetensors':
            p.add_argument('--verify', action='store_true', help='check the released files\' SHA-1 first')
        if name in ('safetensors-to-shards', 'to-transformers'):
            p.add_argument('--drop_special', action='store_true',
                           help='write without the special-token rows (the released format has none)')
        if name == 'from-transformers':
            p.add_argument('--n_vocab', type=int, help='BPE tokens among tokens_embed\'s rows; the rest are special '
                                                       'tokens (default: config.json\'s n_special, else all rows)')
    return parser.parse_args(argv)


def convert(args):
    """Run one conversion of the parsed command line; return the written folder."""
    if args.command == 'shards-to-safetensors':
        ckpt = read_released(args.model_dir, n_head=args.n_head or 12, afn=args.afn or 'gelu', verify=args.verify)
        out, vocab_names = write_safetensors(ckpt, args.out), VOCAB_FILES
    elif args.command == 'safetensors-to-shards':
        out, vocab_names = write_released(read_safetensors(args.model_dir), args.out, args.drop_special), VOCAB_FILES
    elif args.command == 'to-transformers':
        ckpt = read_checkpoint(args.model_dir, n_head=args.n_head, afn=args.afn)
        if args.drop_special:
            ckpt.special = ckpt.special[:0]
        out, vocab_names = write_transformers(ckpt, args.out), HF_VOCAB_FILES
    else:
        ckpt = read_transformers(args.model_dir, n_vocab=args.n_vocab, n_head=args.n_head, afn=args.afn)
        if ckpt.ignored:
            print(f'convert.py: ignored {len(ckpt.ignored)} non-transformer keys ({", ".join(ckpt.ignored[:4])})',
                  file=sys.stderr)
        out, vocab_names = write_safetensors(ckpt, args.out), VOCAB_FILES
    copy_vocab(args.model_dir, out, vocab_names)
    return out


def main(argv=None):
    """Run the conversion the command line asks for; return 0, or 1 with one line on stderr."""
    args = parse_args(argv)
    try:
        out = convert(args)
    except (OSError, ValueError) as err:  # FileNotFoundError is an OSError
        print(f'convert.py: error: {err}', file=sys.stderr)
        return 1
    print(f'wrote {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
