"""Every weight format of the project in one place: which format a folder holds, reading and writing each one.
Whether a file is the one OpenAI released (its published hash, a download's damage) is integrity.py's; the readers
take from it the sniffing of a Git-LFS pointer or an HTML page, the .npy header parser, and the released hashes that
verify=True checks.

TF counterpart: the weight-loading lines of the original train.py's `__main__` (`params_shapes.json`, the ten
`params_{n}.npy` shards, `np.split` by the shapes). Formats of GPT-1's weights:
- released: `params_shapes.json` + `params_0.npy` ... `params_9.npy` (openai/finetune-transformer-lm's model/
  folder): positions [n_pos, n_embd], tokens [n_vocab, n_embd], then 12 arrays per block in TF_BLOCK order with
  conv weights [1, nx, nf]; the whole flat concatenation split in ten.
- safetensors (this project's): `model.safetensors` holding the TransformerModel state_dict (`embed.weight` is
  the original's `we` = [tokens; special; positions], `h.3.attn.c_attn.w` [nx, nf], ...) + `config.json` (its
  format tag and the model's config). Converted shards keep their .npy headers and params_shapes.json text in
  the safetensors metadata, so writing them back as shards gives byte-identical files.
- transformers: `OpenAIGPTModel` / `OpenAIGPTLMHeadModel` (`tokens_embed.weight` [vocab_size, n_embd] =
  [tokens; special], `positions_embed.weight` [n_positions, n_embd], `h.3.attn.c_attn.weight` [nx, nf], ...)
  in `model.safetensors` or a `pytorch_model.bin` state dict, with its `config.json`.

Formats of GPT-2's weights (openai/gpt-2):
- tf-checkpoint (released): `hparams.json` + a TensorFlow checkpoint (`checkpoint`, `model.ckpt.index`,
  `model.ckpt.data-00000-of-00001`, `model.ckpt.meta`) holding `model/wte`, `model/wpe`, `model/h{i}/...` (conv
  weights [1, nx, nf]) and `model/ln_f/{g,b}`, read without TensorFlow (tf_bundle.py, every CRC32C checked);
- safetensors (this project's): `model.safetensors` holding the GPT2Model state_dict (`wte.weight`, `wpe.weight`,
  `h.3.attn.c_attn.w` [nx, nf], `ln_f.g`, ...) + `config.json` (its format tag, family "gpt2" and GPT2Config);
- transformers: `GPT2Model` / `GPT2LMHeadModel` folders (`transformer.wte.weight`, `h.3.attn.c_attn.weight`
  [nx, nf], `ln_f.weight`, ...) with their `config.json` (model_type "gpt2").

Every reader returns a `Checkpoint` (numpy arrays named as the models name their parameters, the family, and the
architecture the files state); every writer takes one. This module imports no model code: the model modules
build models from a Checkpoint (model_pytorch.model_from_checkpoint) and read through it. Only safetensors and
`torch.load(weights_only=True)` are read: nothing is unpickled.

Every file is treated as untrusted (untrusted.py): the entry points (read_checkpoint, read_released, read_safetensors,
read_transformers, detect_format, detect_family, load_hf_state, hf_keys, load_released_arrays) raise only
untrusted.BadFile, one line naming the file; only regular files are read (a symlink only when it stays inside the
folder), and every file an index names must lie inside its folder; JSON is bounded in size and depth and every
config field checked for type and range where the Checkpoint's config is built; sizes are bounded
(untrusted.SIZE_LIMITS) and a config's n_layer compared with the blocks present before any shape is built; tensors
must be float32 (safetensors and transformers files: also float16 and bfloat16, converted exactly), never cast from
ints, bools or complex numbers; a converted folder's .npy headers are checked before they are ever written.
"""
import base64
import io
import json
import math
import os
import re
import shlex
import zipfile
from dataclasses import asdict, dataclass, field
from functools import wraps

import numpy as np
import torch

import tf_bundle
import untrusted
from checkpoint import atomic_write, open_safetensors, read_state_metadata, safetensors_dtypes, write_json
from integrity import SNIFF_BYTES, is_released_file, read_npy_header, sniff, verify_model_dir
from untrusted import SIZE_LIMITS, BadArgument, BadFile, MissingFile, bad, is_int, show

N_SHARDS = 10  # params_0.npy ... params_9.npy

# TF variable names inside one block, in the order the released shards store them.
TF_BLOCK = ['attn/c_attn/w', 'attn/c_attn/b', 'attn/c_proj/w', 'attn/c_proj/b', 'ln_1/g', 'ln_1/b',
            'mlp/c_fc/w', 'mlp/c_fc/b', 'mlp/c_proj/w', 'mlp/c_proj/b', 'ln_2/g', 'ln_2/b']

FORMAT = 'finetune-transformer-lm-pytorch'  # config.json "format" of this project's safetensors folders
FORMAT_VERSION = 1
WEIGHTS_NAME = 'model.safetensors'
CONFIG_NAME = 'config.json'
HF_BIN_NAME = 'pytorch_model.bin'
HF_INDEX_NAME = 'model.safetensors.index.json'
VOCAB_FILES = ('encoder_bpe_40000.json', 'vocab_40000.bpe')
HF_VOCAB_FILES = ('vocab.json', 'merges.txt')  # the same two files under transformers' names
LAYER_NORM_EPSILON = 1e-5  # model_pytorch.LayerNorm's e
WEIGHTS_SOURCE = 'the model/ folder of github.com/openai/finetune-transformer-lm (run download_model.py)'

# transformers' openai-gpt "gelu" is gelu_new, the tanh approximation: the original's gelu and ours.
HF_TO_OUR_AFN = {'gelu': 'gelu', 'gelu_new': 'gelu', 'relu': 'relu', 'silu': 'swish', 'swish': 'swish'}
OUR_TO_HF_AFN = {'gelu': 'gelu', 'relu': 'relu', 'swish': 'silu'}
HF_PREFIX = 'transformer.'
HF_TABLES = {'gpt1': ('tokens_embed.weight', 'positions_embed.weight'), 'gpt2': ('wte.weight', 'wpe.weight')}
HF_MODEL_TYPES = {'openai-gpt': 'gpt1', 'gpt2': 'gpt2'}
GPT2_EOT = 50256  # <|endoftext|>
HF_BUFFER = re.compile(r'^h\.\d+\.attn\.(bias|masked_bias)$|^position_ids$')  # masks, not parameters
CONFIG_KEYS = ('format', 'format_version', 'family')  # config.json keys of a safetensors folder, not the model's
FAMILIES = ('gpt1', 'gpt2')
GPT2_VOCAB_FILES = ('encoder.json', 'vocab.bpe')  # openai/gpt-2's names; transformers' are HF_VOCAB_FILES
HPARAMS_NAME = 'hparams.json'
TF_PREFIX = 'model.ckpt'  # the released checkpoint's prefix
TF_FILES = ('checkpoint', 'model.ckpt.index', 'model.ckpt.data-00000-of-00001', 'model.ckpt.meta')
GPT2_SOURCE = 'a GPT-2 model folder of openaipublic.blob.core.windows.net/gpt-2/models/ (run download_model.py --model gpt2-124M)'
GPT2_HPARAMS = ('n_vocab', 'n_ctx', 'n_embd', 'n_head', 'n_layer')
SIZE_KEYS = ('n_vocab', 'n_special', 'n_ctx', 'n_embd', 'n_layer')  # config fields the arrays' shapes give
AFNS = ('gelu', 'relu', 'swish')  # the activations a GPT-1 config may name (model_pytorch.ACT_FNS holds these)
# The rules of every config field a file (or a model's config) may state, in one place: check_config_fields applies
# them for every reader here and for model_pytorch's and model_gpt2's configs. A size is an int (not a bool) in
# [low, its untrusted.SIZE_LIMITS bound]: a model of no blocks is a valid (embeddings-only) model, no special rows the
# usual case, a table needs tokens and positions. transformers' names of sizes count the same rows (vocab_size: the
# tokens and the special rows).
SIZE_LOWS = {'n_embd': 1, 'n_head': 1, 'n_layer': 0, 'n_vocab': 1, 'n_special': 0, 'n_ctx': 1}
HF_SIZE_NAMES = {'vocab_size': ('n_vocab', SIZE_LIMITS['n_vocab'] + SIZE_LIMITS['n_special']),
                 'n_positions': ('n_ctx', SIZE_LIMITS['n_ctx'])}  # transformers' name -> (our field, its bound)
PDROPS = ('embd_pdrop', 'attn_pdrop', 'resid_pdrop', 'clf_pdrop', 'summary_first_dropout')  # transformers': the last
BOOL_FIELDS = ('checkpoint_activations', 'scale_attn_weights', 'scale_attn_by_inverse_layer_idx')
# The bounds of the files read here, far above any real one: params_shapes.json lists 12 short shapes per block
# (1024 blocks take 250 kB), a config.json or a transformers index is a few kB.
SHAPES_MAX_BYTES = 1 << 20
CONFIG_MAX_BYTES = 4 << 20
INDEX_MAX_BYTES = 16 << 20
MAX_DIMS = 8  # no array of any format here has more than 3 dimensions (tf_bundle.MAX_TF_DIMS: a TF index's bound)
# The dtypes a safetensors or transformers file may hold: float32, and the half-precision float16 and bfloat16 that
# real checkpoints are saved in (each converts to float32 exactly). Anything else (ints, bools, complex, float64) is
# refused, never cast: the released formats hold float32 only.
SAFETENSORS_DTYPES = ('F32', 'F16', 'BF16')
TORCH_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def guarded(reader):
    """Return reader, an entry point whose first argument is the path it reads, run so that only a BadFile escapes
    it: the path is checked to be a file name, and any other error a damaged file causes (untrusted.reading) becomes
    one line naming it. A BadArgument (a bad argument, not the file's fault) passes through as it is."""
    @wraps(reader)
    def entry_point(path, *args, **kwargs):
        path = untrusted.check_path_text(path)
        with untrusted.reading(path):
            return reader(path, *args, **kwargs)
    return entry_point


def check_arguments(**arguments):
    """Return {name: value} of the arguments given (not None) for config fields a file does not state (n_head, afn),
    each checked by check_config_fields' rules; a bad one is a BadArgument naming it as its flag (--n_head)."""
    given = {name: value for name, value in arguments.items() if value is not None}
    for name, value in given.items():
        try:
            given.update(check_config_fields({name: value}))
        except ValueError as err:
            lead = f'unknown afn {show(value)} (--afn)' if name == 'afn' else f'--{name} {show(value)}'
            raise BadArgument(f'{lead}: {err}') from None
    return given


def check_argument_heads(arguments, n_embd, path):
    """Raise a BadArgument unless the n_head among the arguments (check_arguments') divides n_embd of the weights in
    path."""
    if 'n_head' in arguments and n_embd % arguments['n_head']:
        n_head = arguments['n_head']
        raise BadArgument(f'--n_head {n_head}: n_head={n_head} does not divide n_embd={n_embd} of the weights in '
                          f'{path} (n_embd must be divisible by n_head)')


# --- names --------------------------------------------------------------------------------------------------

def tf_param_names(n_layer):
    """Return the TF names of the released arrays in shard order: positions, tokens, then each block (n_layer within
    untrusted.SIZE_LIMITS, else a ValueError)."""
    untrusted.int_field('n_layer', n_layer)
    return ['model/we:positions', 'model/we:tokens'] + [f'model/h{i}/{n}' for i in range(n_layer)
                                                        for n in TF_BLOCK]


def torch_name(tf_name):
    """Return the state_dict key of a TF block variable: 'model/h3/attn/c_attn/w' -> 'h.3.attn.c_attn.w'."""
    name = tf_name[len('model/'):] if tf_name.startswith('model/') else tf_name
    return re.sub(r'^h(\d+)/', r'h.\1.', name).replace('/', '.')


def tf_name(key):
    """Return the TF variable name of a state_dict key of a block: 'h.3.attn.c_attn.w' -> 'model/h3/attn/c_attn/w'."""
    return 'model/' + re.sub(r'^h\.(\d+)\.', r'h\1/', key).replace('.', '/')


def from_tf_conv(array, name=None, source=None):
    """Return a TF array as the state_dict holds it: a conv weight [1, nx, nf] -> [nx, nf], anything else as is; a
    3-D array that is no conv weight is an error naming the array and source (a BadFile when source is given)."""
    if array.ndim != 3:
        return array
    if array.shape[0] != 1:
        what = f'{name or "an array"} has shape {tuple(array.shape)}, not that of a conv weight [1, nx, nf]'
        raise ValueError(what) if source is None else bad(source, what)
    return array.reshape(array.shape[1:])


def to_tf_conv(array):
    """Return a state_dict array as TF holds it: a conv weight [nx, nf] -> [1, nx, nf], anything else as is."""
    return array.reshape((1,) + array.shape) if array.ndim == 2 else array


def block_keys(n_layer):
    """Return the state_dict keys of the block parameters in shard order ('h.0.attn.c_attn.w', ...)."""
    return [torch_name(name) for name in tf_param_names(n_layer)[2:]]


def family_name(family):
    """Return the name to show for a family: 'GPT-1' or 'GPT-2'."""
    return {'gpt1': 'GPT-1', 'gpt2': 'GPT-2'}[family]


BLOCK_KEY = re.compile(r'^h\.(0|[1-9]\d{0,8})\.')  # 'h.{i}.': i without leading zeros, at most 9 digits


def n_layer_of(keys):
    """Return the number of blocks among state_dict keys: one more than the highest i of 'h.{i}.' (a key with a
    larger i than 9 digits hold, or leading zeros, is no block's: a checker reports it as unexpected)."""
    return 1 + max((int(m.group(1)) for m in (BLOCK_KEY.match(k) for k in keys if isinstance(k, str)) if m),
                   default=-1)


def hf_key(key):
    """Return transformers' name of a block parameter: 'h.0.attn.c_attn.w' -> 'h.0.attn.c_attn.weight'."""
    stem, leaf = key.rsplit('.', 1)
    return f"{stem}.{'bias' if leaf == 'b' else 'weight'}"


def block_shapes(n_embd, n_layer):
    """Return {key: shape} for every block parameter of a GPT-1 of that width and depth (conv weights [nx, nf]); sizes
    beyond untrusted.SIZE_LIMITS are a ValueError (a config's n_layer of 10**9 is refused, not built)."""
    untrusted.int_field('n_embd', n_embd)
    untrusted.int_field('n_layer', n_layer)
    nx = n_embd
    one = {'attn.c_attn.w': (nx, 3 * nx), 'attn.c_attn.b': (3 * nx,), 'attn.c_proj.w': (nx, nx),
           'attn.c_proj.b': (nx,), 'ln_1.g': (nx,), 'ln_1.b': (nx,), 'mlp.c_fc.w': (nx, 4 * nx),
           'mlp.c_fc.b': (4 * nx,), 'mlp.c_proj.w': (4 * nx, nx), 'mlp.c_proj.b': (nx,), 'ln_2.g': (nx,),
           'ln_2.b': (nx,)}
    return {f'h.{i}.{name}': one[name] for i in range(n_layer) for name in one}


def check_blocks(blocks, n_embd, n_layer, source, family='gpt1'):
    """Raise a ValueError naming source when blocks lack, add or misshape a parameter of a model of that family and
    size (GPT-2's blocks come with the final ln_f); a BadFile. The sizes are checked, and n_layer compared with the
    blocks present, before any shape is built: a config's n_layer can be anything."""
    try:
        untrusted.int_field('n_embd', n_embd, 1)
        untrusted.int_field('n_layer', n_layer)
    except ValueError as err:
        raise bad(source, err) from None
    held = n_layer_of(blocks)
    if held != n_layer:
        raise BadFile(f'{source} does not hold a {family_name(family)} with n_layer={n_layer}: it holds {held} blocks',
                      source)
    shapes = block_shapes(n_embd, n_layer)
    if family == 'gpt2':
        shapes.update({'ln_f.g': (n_embd,), 'ln_f.b': (n_embd,)})
    missing = [k for k in shapes if k not in blocks]
    extra = [k for k in blocks if k not in shapes]
    if missing or extra:
        raise BadFile(f'{source} does not hold a {family_name(family)} with n_layer={n_layer}: missing '
                      f'{missing[:3]}, unexpected {[show(k, 60) for k in extra[:3]]}', source)
    for key, shape in shapes.items():
        if tuple(blocks[key].shape) != shape:
            raise bad(source, f'{key} has shape {tuple(blocks[key].shape)}, expected {shape} for n_embd={n_embd}')


# --- the released shards ----------------------------------------------------------------------------------

def released_names():
    """Return the names of the weights files of a released folder: params_shapes.json and the shards."""
    return ['params_shapes.json'] + [f'params_{n}.npy' for n in range(N_SHARDS)]


@dataclass
class Checkpoint:
    """A model's weights as the model names them: its tokens, special and position rows, the rest (the blocks, and
    GPT-2's ln_f), its family and the architecture the files state (a dict of config fields; fields they do not state
    are left out and take the config's defaults). GPT-1 keeps the three in one table, GPT-2 in wte and wpe."""
    tokens: np.ndarray     # [n_vocab, n_embd]
    special: np.ndarray    # [n_special, n_embd]
    positions: np.ndarray  # [n_pos, n_embd]
    blocks: dict           # state_dict key ('h.0.attn.c_attn.w', GPT-2's 'ln_f.g') -> array, conv weights [nx, nf]
    config: dict           # e.g. {'n_head': 12, 'afn': 'gelu', 'embd_pdrop': 0.1}; sizes come from the arrays
    released: dict = None  # params_shapes.json text and .npy headers of the shards it was read from
    ignored: list = field(default_factory=list)  # keys of the source that hold no transformer weights
    source: str = None     # the file the config was read from, for error messages
    family: str = 'gpt1'   # 'gpt1' (model_pytorch) or 'gpt2' (model_gpt2)

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

    @property
    def n_embd(self):
        """Return the width of the model."""
        return self.tokens.shape[1]

    @property
    def n_layer(self):
        """Return the number of blocks."""
        return n_layer_of(self.blocks)

    def table(self, n_ctx=None):
        """Return the original's `we` = [tokens; special; positions[:n_ctx]]: [n_vocab+n_special+n_ctx, n_embd]."""
        return np.concatenate([self.tokens, self.special, self.positions[:n_ctx]], 0)


def sniff_npy_head(head):
    """Return a description of what a file starting with the bytes head holds when it is plainly not an .npy array,
    else None."""
    kind = sniff(head)
    if kind == 'lfs':
        return 'a Git-LFS pointer, not the weights (run `git lfs pull` in the clone, or download_model.py)'
    if kind == 'html':
        return 'an HTML page, not the weights (the download fetched a web page; run download_model.py)'
    if not head.startswith(b'\x93NUMPY'):
        return 'not a .npy file (download it again with download_model.py)'
    return None


@dataclass(frozen=True)
class Shard:
    """Where the values of one params_N.npy shard lie: the file, its number of float32 values, the byte offset of
    the first one, and its .npy header bytes (kept so that converted weights write back byte-identical shards)."""
    path: str
    size: int
    offset: int
    header: bytes


def shard_layout(path, folder=None):
    """Return the Shard of a params_N.npy file, or raise naming what is wrong with it; the values are not read."""
    with untrusted.open_regular(path, folder, missing=f'the weights are {WEIGHTS_SOURCE}') as f:
        problem = sniff_npy_head(f.read(512))
        if problem:
            raise BadFile(f'{path} is {problem}', path)
        f.seek(0)
        parsed = read_npy_header(f)
        if parsed is None:
            raise ValueError(f'{path} is corrupt: its .npy header cannot be read; download it again')
        shape, _, dtype, canonical = parsed
        offset, size = f.tell(), os.fstat(f.fileno()).st_size
        f.seek(0)
        header = f.read(offset)
    if dtype.hasobject:
        raise ValueError(f'{path} holds pickled Python objects, which are never loaded: it is not a released shard')
    if dtype != np.dtype('<f4'):
        raise ValueError(f'{path} holds {dtype} values, expected float32: it is not a released shard')
    if len(shape) != 1:
        raise ValueError(f'{path} holds an array of shape {shape}, expected a flat 1-D shard')
    if offset + 4 * shape[0] != size:
        raise ValueError(f'{path} is truncated or corrupt: its .npy header needs {offset + 4 * shape[0]} bytes, '
                         f'the file has {size}; download it again')
    if not canonical and not is_released_file(path):
        raise ValueError(f'{path} is corrupt: its .npy header is not the one numpy writes for {shape[0]} '
                         f'float32 values; download it again')
    return Shard(path, shape[0], offset, header)


def read_shard_into(shard, out, folder=None):
    """Fill out (a float32 array of shard.size values) with the values of the shard."""
    with untrusted.open_regular(shard.path, folder) as f:
        if os.fstat(f.fileno()).st_size != shard.offset + out.nbytes:
            raise bad(shard.path, 'changed size while being read: read it again')
        f.seek(shard.offset)
        n_read = f.readinto(memoryview(out).cast('B'))
    if n_read != out.nbytes:
        raise ValueError(f'{shard.path} changed while being read ({n_read} of {out.nbytes} bytes): read it again')


def read_shapes(path, folder=None):
    """Return (the list of array shapes in params_shapes.json, the file's text), or raise naming the file."""
    text = untrusted.read_text(path, folder, limit=SHAPES_MAX_BYTES, what='params_shapes.json',
                               missing=f'the weights are {WEIGHTS_SOURCE}')
    return parse_shapes(text, path), text


def parse_shapes(text, source):
    """Return the list of array shapes in the text of a params_shapes.json read from source, checked: a list of 2
    embeddings [n_pos, n_embd], [n_vocab, n_embd] plus 12 arrays per block (at most SIZE_LIMITS' n_layer blocks), every
    shape a list of at most MAX_DIMS integers >= 0; a BadFile naming source otherwise."""
    shapes = untrusted.parse_json(text, source)
    if not isinstance(shapes, list):
        raise bad(source, f'must be a JSON list of shapes (lists of ints), not {type(shapes).__name__}')
    if len(shapes) < 2 or (len(shapes) - 2) % len(TF_BLOCK) != 0:
        raise bad(source, f'lists {len(shapes)} arrays; expected 2 embeddings plus {len(TF_BLOCK)} per block')
    if (len(shapes) - 2) // len(TF_BLOCK) > SIZE_LIMITS['n_layer']:
        raise bad(source, f'lists {(len(shapes) - 2) // len(TF_BLOCK)} blocks, more than any model '
                          f'({SIZE_LIMITS["n_layer"]} at most)')
    for i, shape in enumerate(shapes):
        if not (isinstance(shape, list) and len(shape) <= MAX_DIMS and all(is_int(d) and d >= 0 for d in shape)):
            raise bad(source, f'array {i} has the shape {show(shape)}: a shape is a list of at most {MAX_DIMS} '
                              f'integers >= 0')
    for i, name in enumerate(('positions', 'tokens')):
        if len(shapes[i]) != 2:
            raise bad(source, f'gives the {name} the shape {shapes[i]}; expected [rows, n_embd]')
    if shapes[0][1] != shapes[1][1]:
        raise bad(source, f'gives the positions {shapes[0][1]} columns and the tokens {shapes[1][1]}: both are n_embd')
    return shapes


def read_shards(path):
    """Return (the released arrays, each reshaped, in TF order: [positions, tokens, block arrays...], the Shards,
    the text of params_shapes.json)."""
    shapes, shapes_text = read_shapes(os.path.join(path, 'params_shapes.json'), path)
    shards = [shard_layout(os.path.join(path, name), path) for name in released_names()[1:]]  # all checked first
    sizes = [math.prod(shape) for shape in shapes]
    total = sum(s.size for s in shards)
    if total != sum(sizes):
        raise BadFile(f'the shards in {path} hold {total} floats but params_shapes.json describes '
                      f'{sum(sizes)}: a shard is truncated or from another checkpoint', path)
    # each shard is read straight into its place of one buffer: no concatenation copy
    flat = np.empty(total, dtype='<f4')
    bounds = np.cumsum([0] + [s.size for s in shards])
    for shard, start, stop in zip(shards, bounds[:-1], bounds[1:]):
        read_shard_into(shard, flat[start:stop], path)
    offsets = np.cumsum(sizes)[:-1]
    return [a.reshape(shape) for a, shape in zip(np.split(flat, offsets), shapes)], shards, shapes_text


@guarded
def load_released_arrays(path):
    """Return the released arrays of the folder at path, each reshaped, in TF order: [positions, tokens, blocks...]."""
    return read_shards(path)[0]


@guarded
def read_released(model_dir, n_head=None, afn=None, verify=False):
    """Return the Checkpoint in a released model/ folder; n_head and afn are not stored there (left out: the
    config's defaults, the released 12 heads and gelu). With verify, every file's SHA-1 is checked first
    (a dict {file name: SHA-1} checks against those instead of the released values)."""
    config = check_arguments(n_head=n_head, afn=afn)  # the caller's, not the files': checked before any is read
    check_model_folder(model_dir)  # a path that is no model folder says what it is, not which shard it lacks
    if verify:
        problems = verify_model_dir(model_dir, released_names(), verify if isinstance(verify, dict) else None)
        if problems:
            raise BadFile(problems[0], model_dir)
    arrays, shards, shapes_text = read_shards(model_dir)  # checks every file and the total size
    positions, tokens = arrays[0], arrays[1]
    n_layer = (len(arrays) - 2) // len(TF_BLOCK)
    shapes_path = os.path.join(model_dir, 'params_shapes.json')
    blocks = {}
    for key, array in zip(block_keys(n_layer), arrays[2:]):
        blocks[key] = from_tf_conv(array, key, shapes_path)
    check_blocks(blocks, tokens.shape[1], n_layer, model_dir)
    released = {'params_shapes.json': shapes_text,
                'headers': [base64.b64encode(s.header).decode('ascii') for s in shards],
                'sizes': [s.size for s in shards]}
    check_argument_heads(config, tokens.shape[1], model_dir)
    special = np.zeros((0, tokens.shape[1]), np.float32)
    return Checkpoint(tokens, special, positions, blocks, config, released)


def check_config_fields(fields, source=None, n_embd=None, lows=None, hint=None):
    """Return a copy of fields (a dict of config fields, from a file or a model's config) with every field it holds
    that a config may state checked by its rule, in its order, numpy scalars turned into Python's: the sizes
    (SIZE_LOWS, and transformers' HF_SIZE_NAMES; lows overrides a least value) ints (not bools) within
    untrusted.SIZE_LIMITS, each dropout (PDROPS) a finite number in [0, 1), afn one of AFNS, the switches (BOOL_FIELDS)
    bools; then n_head must divide n_embd (the fields' n_embd, else the n_embd of the weights given; hint: what to
    give instead). Other fields are left to the caller. A bad field is a plain ValueError naming it, a BadFile naming
    source when source is given (the fields were read from that file)."""
    lows = dict(SIZE_LOWS, **(lows or {}))
    checked = dict(fields)
    try:
        for name, value in fields.items():
            if isinstance(value, np.generic) and isinstance(value, (np.integer, np.floating, np.bool_)):
                value = value.item()
            if name in lows:
                value = untrusted.int_field(name, value, lows[name])
            elif name in HF_SIZE_NAMES:
                ours, high = HF_SIZE_NAMES[name]
                value = untrusted.int_field(name, value, lows[ours], high)
            elif name in PDROPS:
                value = untrusted.fraction_field(name, value)
            elif name == 'afn':
                value = untrusted.choice_field(name, value, AFNS)
            elif name in BOOL_FIELDS and not isinstance(value, bool):
                raise ValueError(f'{name} must be true or false, not {show(value)}')
            checked[name] = value
        width, of = (checked['n_embd'], '') if 'n_embd' in checked else (n_embd, ' of its weights')
        if 'n_head' in checked and width is not None:
            check_heads(checked['n_head'], width, of, hint)
    except ValueError as err:
        if source is None:
            raise
        raise bad(source, err) from None
    return checked


def check_heads(n_head, n_embd, of='', hint=None):
    """Raise a ValueError when n_head does not divide n_embd (of: whose n_embd it is; hint: what to give instead)."""
    if n_embd % n_head:
        raise ValueError(f'n_head={n_head} does not divide n_embd={n_embd}{of} (n_embd must be divisible by n_head)'
                         + (f': {hint}' if hint else ''))


def check_no_special(ckpt, drop_special):
    """Raise unless ckpt has no special-token rows or drop_special allows writing it without them."""
    if ckpt.n_special and not drop_special:
        raise ValueError(f'the checkpoint has {ckpt.n_special} special-token rows, which the released format cannot '
                         f'hold: pass --drop_special (drop_special=True) to write it without them')


def released_arrays(ckpt):
    """Return the arrays of ckpt in the released order and shapes: positions, tokens, blocks ([1, nx, nf])."""
    arrays = [ckpt.positions, ckpt.tokens]
    for key in block_keys(ckpt.n_layer):
        array = ckpt.blocks[key]
        arrays.append(to_tf_conv(array))
    return [np.ascontiguousarray(a, dtype=np.float32) for a in arrays]


def write_released(ckpt, out_dir, drop_special=False):
    """Write ckpt as a released model/ folder (params_shapes.json + 10 shards); return out_dir."""
    check_no_special(ckpt, drop_special)
    arrays = released_arrays(ckpt)
    shapes = [list(a.shape) for a in arrays]
    released = ckpt.released
    if released is not None:  # only sound float32 shards are written, whatever a file's metadata carried
        check_released(released, ckpt.source or 'the checkpoint')
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


def check_released(released, source, total=None):
    """Return the `released` record of a checkpoint read from source (params_shapes.json's text, the shards' .npy
    headers as base64 and their sizes, which write_released writes back) after checking that it makes N_SHARDS sound
    shards: params_shapes.json a list of shapes, exactly N_SHARDS headers, each a whole .npy header of a 1-D C-order
    '<f4' array of its size, the sizes summing to total (the floats of the released arrays) when given; a BadFile
    naming source otherwise, so that no crafted header is ever written."""
    what = 'its "released" metadata'
    if not (isinstance(released, dict) and set(released) == {'params_shapes.json', 'headers', 'sizes'}):
        raise bad(source, f'{what} is not a record of params_shapes.json, headers and sizes')
    headers, sizes = released['headers'], released['sizes']
    if not isinstance(released['params_shapes.json'], str):
        raise bad(source, f'{what} holds no params_shapes.json text')
    parse_shapes(released['params_shapes.json'], f'{source} ({what}: params_shapes.json)')
    if not (isinstance(headers, list) and isinstance(sizes, list) and len(headers) == len(sizes) == N_SHARDS):
        raise bad(source, f'{what} must list {N_SHARDS} .npy headers and {N_SHARDS} sizes, one per shard')
    for n, (header, size) in enumerate(zip(headers, sizes)):
        if not (is_int(size) and size >= 0):
            raise bad(source, f'{what} gives shard {n} the size {show(size)}, not a count of floats')
        try:
            raw = base64.b64decode(header.encode('ascii'), validate=True)
        except (AttributeError, ValueError):  # not a str, not ASCII, not base64
            raise bad(source, f'{what} gives shard {n} a header that is not base64 text') from None
        buf = io.BytesIO(raw)
        parsed = read_npy_header(buf) if len(raw) <= 1 << 16 else None
        if (parsed is None or buf.tell() != len(raw) or parsed[2].str != '<f4' or parsed[1]
                or parsed[0] != (size,)):
            raise bad(source, f'{what} gives shard {n} a .npy header that is not the one of {size} float32 values '
                              f'(1-D, little-endian, C order), which a released shard holds')
    if total is not None and sum(sizes) != total:
        raise bad(source, f'{what} gives shards of {sum(sizes)} floats in all, but the weights hold {total}')
    return released


def write_released_shards(path, arrays, n_shards=N_SHARDS):
    """Write arrays in the released format (params_shapes.json + n_shards flat float32 .npy); return path."""
    os.makedirs(path, exist_ok=True)
    flat = np.concatenate([np.asarray(a, dtype=np.float32).reshape(-1) for a in arrays])
    with open(os.path.join(path, 'params_shapes.json'), 'w') as f:
        json.dump([list(np.shape(a)) for a in arrays], f)
    for n, shard in enumerate(np.array_split(flat, n_shards)):
        np.save(os.path.join(path, f'params_{n}.npy'), shard)
    return path


# --- GPT-2's released TensorFlow checkpoints ------------------------------------------------------------------

HPARAMS_MAX_BYTES = 1 << 16  # the released hparams.json is 95 bytes
# The variables the GPT-2 reader uses: model/wte, model/wpe, every model/h{i}/... and model/ln_f/..., except Adam's
# slots (model/h0/attn/c_attn/w/Adam and .../Adam_1, as a fine-tuning run saves them); the others (those slots,
# global_step, anything outside model/) are listed in Checkpoint.ignored and their data is not read. A used name that
# is no GPT-2 variable (model/h0/attn/foo) is refused as unexpected.
GPT2_TF_NAME = re.compile(r'model/(?:wte|wpe|h\d+/.+|ln_f/.+)(?<!/Adam)(?<!/Adam_1)', re.DOTALL)
GPT2_TF_BLOCK = re.compile(r'model/h(\d+)/')


def read_hparams(path):
    """Return the hparams.json dict of a released GPT-2 folder (n_vocab, n_ctx, n_embd, n_head, n_layer: integers, each
    in [1, untrusted.SIZE_LIMITS], n_head dividing n_embd), or raise a BadFile naming the file."""
    path = os.fspath(path)
    with untrusted.reading(path):
        hparams = untrusted.read_json(path, limit=HPARAMS_MAX_BYTES, what='hparams.json',
                                      missing=f'a released GPT-2 folder holds it beside the checkpoint; it comes from '
                                              f'{GPT2_SOURCE}')
        for key in GPT2_HPARAMS:  # every GPT-2 has a block: n_layer >= 1 too
            try:
                check_config_fields({key: hparams.get(key)}, lows={'n_layer': 1})
            except ValueError as err:
                raise untrusted.BadFile(f'{path} lacks or has a bad {key!r} ({err}): it needs the positive integers '
                                        f'{", ".join(GPT2_HPARAMS)}; download it again', path) from None
        check_config_fields({k: hparams[k] for k in GPT2_HPARAMS}, path,
                            hint='no GPT-2 has these hparams; download it again')  # n_head dividing n_embd
    return hparams


def tf_prefix(folder):
    """Return the checkpoint prefix of a folder: the one its `checkpoint` file names (a path inside the folder, else a
    BadFile), else model.ckpt beside it."""
    if os.path.lexists(os.path.join(folder, 'checkpoint')):
        return tf_bundle.latest_checkpoint(folder)
    return os.path.join(folder, TF_PREFIX)


def check_gpt2_entries(entries, names, hparams, index_path, hparams_path):
    """Raise a BadFile naming index_path unless the index entries of the variables the GPT-2 reader uses (names) are
    float32 and exactly those hparams give, with their shapes; checked before any tensor data is read."""
    for name in ('model/wte', 'model/wpe'):
        if name not in entries:
            raise untrusted.bad(index_path, f'has no {name}: it is not a GPT-2 checkpoint')
    for name in names:
        if entries[name].dtype != 'float32':
            raise untrusted.bad(index_path, f'variable {name} has dtype {entries[name].dtype}, not float32 as GPT-2 '
                                            'stores it (nothing is cast): a different or damaged file')
    n_layer = hparams['n_layer']
    layers = {int(m.group(1)) for m in map(GPT2_TF_BLOCK.match, names) if m}
    if len(layers) != n_layer or (layers and max(layers) != n_layer - 1):  # before building n_layer's shapes
        raise untrusted.bad(index_path, f'does not hold a GPT-2 with n_layer={n_layer} ({hparams_path}): it has '
                                        f'{len(layers)} blocks, numbered {sorted(layers)[:3]}...')
    want = gpt2_tensor_shapes(hparams)
    missing = [name for name in want if name not in entries]
    extra = [name for name in names if name not in want]
    if missing or extra:
        raise untrusted.bad(index_path, f'does not hold a GPT-2 with n_layer={n_layer}: missing {missing[:3]}, '
                                        f'unexpected {extra[:3]}')
    for name, shape in want.items():
        if list(entries[name].shape) != shape:
            raise untrusted.bad(index_path, f'{name} has shape {tuple(entries[name].shape)}, but {hparams_path} '
                                            f'gives {tuple(shape)}')


def read_tf_gpt2(folder):
    """Return the Checkpoint of a released GPT-2 folder (hparams.json + a TensorFlow checkpoint), read without
    TensorFlow: every name, dtype (float32) and shape checked against hparams.json before any tensor is read, then
    every tensor's CRC32C; raise a one-line BadFile naming the file. Variables the model does not use are listed in
    Checkpoint.ignored, their data not read."""
    folder = untrusted.check_path_text(folder, 'model folder')
    with untrusted.reading(folder):
        hparams_path = os.path.join(folder, HPARAMS_NAME)
        hparams = read_hparams(hparams_path)
        bundle = tf_bundle.TFCheckpoint(tf_prefix(folder))  # a damaged index is an error naming it
        used = [name for name in bundle.entries if GPT2_TF_NAME.fullmatch(name)]
        ignored = sorted(name for name in bundle.entries if not GPT2_TF_NAME.fullmatch(name))
        check_gpt2_entries(bundle.entries, used, hparams, bundle.index_path, hparams_path)
        arrays = bundle.read(used, dtype='float32')  # each byte range read once, every CRC32C checked
        wte, wpe = arrays.pop('model/wte'), arrays.pop('model/wpe')
        blocks = {torch_name(name): from_tf_conv(array) for name, array in arrays.items()}  # shapes checked above
        special = np.zeros((0, hparams['n_embd']), np.float32)
        return Checkpoint(wte, special, wpe, blocks, {'n_head': hparams['n_head']}, ignored=ignored,
                          source=hparams_path, family='gpt2')


def gpt2_tensor_shapes(hparams):
    """Return {TF name: shape} of every variable of a GPT-2 checkpoint with these hparams (each size checked to be an
    integer within untrusted.SIZE_LIMITS first: a ValueError naming the field)."""
    for key in ('n_vocab', 'n_ctx', 'n_embd', 'n_layer'):
        untrusted.int_field(key, hparams.get(key), low=1)
    nx = hparams['n_embd']
    shapes = {'model/wte': [hparams['n_vocab'], nx], 'model/wpe': [hparams['n_ctx'], nx], 'model/ln_f/g': [nx],
              'model/ln_f/b': [nx]}
    for key, shape in block_shapes(nx, hparams['n_layer']).items():  # 'h.3.attn.c_attn.w' -> 'model/h3/attn/c_attn/w'
        name = tf_name(key)
        shapes[name] = [1, *shape] if name.endswith('/w') else list(shape)
    return shapes


def write_tf_gpt2(ckpt, out_dir, drop_special=False):
    """Write a GPT-2 ckpt as a released folder: hparams.json and the TensorFlow checkpoint (checkpoint, model.ckpt.index,
    model.ckpt.data-00000-of-00001; not model.ckpt.meta, a TensorFlow graph that no reader of the weights needs), as
    tf.train.Saver lays them out; return out_dir."""
    check_no_special(ckpt, drop_special)
    os.makedirs(out_dir, exist_ok=True)
    arrays = {'model/wte': ckpt.tokens, 'model/wpe': ckpt.positions}
    for key, array in ckpt.blocks.items():
        arrays[tf_name(key)] = to_tf_conv(array)
    tf_bundle.write_tf_checkpoint(os.path.join(out_dir, TF_PREFIX),
                                  {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()})
    hparams = dict(n_vocab=ckpt.n_vocab, n_ctx=ckpt.n_pos, n_embd=ckpt.n_embd, n_head=ckpt.config['n_head'],
                   n_layer=ckpt.n_layer)
    with open(os.path.join(out_dir, HPARAMS_NAME), 'w', encoding='utf-8') as f:
        json.dump(hparams, f, indent=2)  # as the released hparams.json, byte for byte
    return out_dir


# --- this project's safetensors folder ----------------------------------------------------------------------

def read_config_json(path, folder=None, missing=None):
    """Return the dict in a config.json (a regular file, a symlink only inside folder, default its own; bounded in
    size and depth; NaN and Infinity refused), or raise a BadFile naming the file (a MissingFile when there is none)."""
    return untrusted.read_json(path, folder, limit=CONFIG_MAX_BYTES, what='config file',
                               missing=missing or f'a converted folder holds {WEIGHTS_NAME} and {CONFIG_NAME} (write '
                                                  f'one with `python convert.py shards-to-safetensors`)')


def read_safetensors_with(path, read, folder=None):
    """Return read(f) of safetensors' reader f open on the file at path (no pickle); a missing or unreadable file
    raises a BadFile naming it: a Git-LFS pointer or HTML page says so, the rest as checkpoint.open_safetensors
    checks it (a regular file, a symlink only inside folder, the header within the file)."""
    with untrusted.open_regular(path, folder) as f:
        kind = sniff(f.read(SNIFF_BYTES))
    if kind is not None:
        raise bad(path, 'is a Git-LFS pointer, not the weights (fetch the real file)' if kind == 'lfs' else
                  'is an HTML page, not the weights (the download fetched a web page)')
    with open_safetensors(path, folder, what='a readable safetensors file') as reader:
        return read(reader)


def load_safetensors_file(path, folder=None):
    """Return ({name: float32 numpy array}, metadata dict) of a .safetensors file, without pickle; a tensor of another
    dtype than float32, float16 or bfloat16 is refused, never cast. transformers' buffers (is_hf_buffer) are listed
    with the value None, their dtype unchecked and their data not read."""
    def read(f):
        buffers = [k for k in f.keys() if is_hf_buffer(k)]
        safetensors_dtypes(Without(f, buffers), path, SAFETENSORS_DTYPES)  # checked before any tensor is read
        # float16 and bfloat16 convert to float32 exactly; through torch, as numpy has no bfloat16. The buffers
        # (attention masks, position ids: ints or bools) are not read: they hold no weights
        return ({k: None if k in buffers else f.get_tensor(k).to(torch.float32).numpy() for k in f.keys()},
                f.metadata() or {})
    return read_safetensors_with(path, read, folder)


class Without:
    """An open safetensors reader seen without some of its tensors (for checkpoint.safetensors_dtypes)."""

    def __init__(self, reader, left_out):
        self.reader, self.left_out = reader, set(left_out)

    def keys(self):
        """Return the names of the tensors not left out."""
        return [k for k in self.reader.keys() if k not in self.left_out]

    def get_slice(self, name):
        """Return the reader's slice of a tensor."""
        return self.reader.get_slice(name)


def is_hf_buffer(key):
    """Return whether key (of a transformers state dict, 'transformer.' prefix or not) names a buffer transformers
    saves beside the weights (HF_BUFFER: GPT-2's attention masks, openai-gpt's position_ids), which may hold ints or
    bools and is never read."""
    return isinstance(key, str) and bool(HF_BUFFER.match(key[len(HF_PREFIX):] if key.startswith(HF_PREFIX) else key))


@guarded
def read_safetensors(model_dir):
    """Return the Checkpoint in this project's folder (model.safetensors + config.json), of either family."""
    config_path = os.path.join(model_dir, CONFIG_NAME)
    config = read_config_json(config_path, model_dir)
    if config.get('format') != FORMAT:
        raise bad(config_path, f'is not a {FORMAT} config (its "format" is {show(config.get("format"))}); for a '
                               f'transformers folder use convert.py from-transformers or models.load_model')
    family = config.get('family', 'gpt1')  # folders written before GPT-2 arrived state none
    if not (isinstance(family, str) and family in FAMILIES):
        raise bad(config_path, f'unknown family {show(family)}, expected one of {", ".join(FAMILIES)}')
    for name in SIZE_KEYS + ('n_head',):
        if name not in config:
            raise bad(config_path, f'lacks the field {name!r}: write it with convert.py')
    fields = check_config_fields({k: v for k, v in config.items() if k not in CONFIG_KEYS}, config_path)
    n_vocab, n_special, n_ctx, n_embd, n_layer = (fields[k] for k in SIZE_KEYS)
    architecture = {k: v for k, v in fields.items() if k not in SIZE_KEYS}
    path = os.path.join(model_dir, WEIGHTS_NAME)
    tensors, metadata = load_safetensors_file(path, model_dir)
    tables = {'gpt1': [('embed.weight', (n_vocab + n_special + n_ctx, n_embd))],
              'gpt2': [('wte.weight', (n_vocab + n_special, n_embd)), ('wpe.weight', (n_ctx, n_embd))]}[family]
    for name, shape in tables:
        if name not in tensors:
            raise ValueError(f'{path} has no {name}: it is not a {family_name(family)} {FORMAT} file')
        if tensors[name].shape != shape:
            raise ValueError(f'{path}: {name} has shape {tensors[name].shape}, but {config_path} gives {shape} '
                             f'(from n_vocab, n_special, n_ctx and n_embd)')
    table = np.concatenate([tensors.pop(name) for name, _ in tables], 0)  # [tokens; special; positions]
    check_blocks(tensors, n_embd, n_layer, path, family)
    released = None
    if 'released' in metadata:  # the shards it was converted from: checked before write_released may write them
        total = (n_vocab + n_ctx) * n_embd + sum(a.size for a in tensors.values())
        released = check_released(untrusted.parse_json(metadata['released'], f'{path} (its "released" metadata)'),
                                  path, total)
    tokens, special, positions = np.split(table, [n_vocab, n_vocab + n_special])
    return Checkpoint(tokens, special, positions, tensors, architecture, released, source=config_path, family=family)


def write_safetensors(ckpt, out_dir):
    """Write ckpt as this project's folder (model.safetensors + config.json, the format tag, the family, the sizes and
    ckpt.config); return out_dir."""
    from safetensors.numpy import save_file
    if 'n_head' not in ckpt.config:
        raise ValueError('the checkpoint states no n_head: give it (convert.py --n_head) before writing it')
    os.makedirs(out_dir, exist_ok=True)
    if ckpt.family == 'gpt2':
        tensors = {'wte.weight': np.concatenate([ckpt.tokens, ckpt.special], 0), 'wpe.weight': ckpt.positions}
    else:
        tensors = {'embed.weight': ckpt.table()}
    tensors.update(ckpt.blocks)
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    metadata = {'format': 'pt'}
    if ckpt.released is not None:
        metadata['released'] = json.dumps(ckpt.released)
    atomic_write(os.path.join(out_dir, WEIGHTS_NAME), lambda tmp: save_file(tensors, tmp, metadata=metadata))
    config = {'format': FORMAT, 'format_version': FORMAT_VERSION, 'family': ckpt.family, 'n_vocab': ckpt.n_vocab,
              'n_special': ckpt.n_special, 'n_ctx': ckpt.n_pos, 'n_embd': ckpt.n_embd, 'n_layer': ckpt.n_layer}
    config.update({k: v for k, v in ckpt.config.items() if k not in SIZE_KEYS})
    write_config_json(os.path.join(out_dir, CONFIG_NAME), config)
    return out_dir


def write_config_json(path, config):
    """Write config as an indented JSON file ending in a newline, atomically; return path."""
    return write_json(path, config, indent=2, end='\n')


# --- transformers' OpenAI GPT -----------------------------------------------------------------------------

def hf_weights_file(path):
    """Return the weights file of a transformers folder (or path itself when it is no folder: its reader refuses
    anything but a regular file)."""
    if not os.path.isdir(path):
        return path
    for name in (WEIGHTS_NAME, HF_INDEX_NAME, HF_BIN_NAME):
        if os.path.lexists(os.path.join(path, name)):
            return os.path.join(path, name)
    raise MissingFile(f'{path} holds none of {WEIGHTS_NAME}, {HF_INDEX_NAME}, {HF_BIN_NAME}: '
                      f'save the transformers model with save_pretrained() into it', path)


@guarded
def load_hf_state(weights_path):
    """Return {key: float32 array} of a transformers weights file (safetensors, index or torch state dict); its
    buffers (is_hf_buffer: attention masks, position ids) map to None, their data not read."""
    if weights_path.endswith('.index.json'):
        return load_hf_index(weights_path)
    if weights_path.endswith('.safetensors'):
        return load_safetensors_file(weights_path)[0]
    return load_torch_state(weights_path)


def hf_index(index_path):
    """Return (the weight_map {tensor name: file name} of a transformers model.safetensors.index.json, {file name: its
    path}), every file name checked to stay inside the index's folder (refused without saying whether the outside
    path exists)."""
    folder = os.path.dirname(index_path) or '.'
    index = untrusted.read_json(index_path, folder, limit=INDEX_MAX_BYTES, what='index')
    weight_map = index.get('weight_map')
    if not isinstance(weight_map, dict) or not weight_map:
        raise bad(index_path, 'has no "weight_map" object naming the file of each tensor')
    for name, file_name in weight_map.items():
        if not isinstance(file_name, str):
            raise bad(index_path, f'maps {show(name, 80)} to {show(file_name)}, not a file name')
    files = {name: untrusted.contained(folder, name, index_path) for name in sorted(set(weight_map.values()))}
    return weight_map, files


def load_hf_index(index_path):
    """Return {key: float32 array} of the safetensors files a transformers index names, each holding exactly the
    tensors the index maps to it."""
    weight_map, files = hf_index(index_path)
    folder = os.path.dirname(index_path) or '.'
    state = {}
    for name, path in files.items():
        tensors = load_safetensors_file(path, folder)[0]
        listed = {key for key, file_name in weight_map.items() if file_name == name}
        missing, extra = sorted(listed - set(tensors)), sorted(set(tensors) - listed)
        if missing or extra:
            raise bad(path, f'does not hold the tensors {index_path} maps to it: missing '
                            f'{[show(k, 60) for k in missing[:3]]}, unlisted {[show(k, 60) for k in extra[:3]]}')
        state.update(tensors)
    return state


def check_torch_zip(f, size, path):
    """Raise a BadFile unless the open file f (size bytes) is a whole zip archive whose entries unpack to no more
    bytes than it holds, as torch.save writes them (stored, not compressed): torch allocates what they unpack to."""
    try:
        with zipfile.ZipFile(f) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    except (NotImplementedError, *untrusted.READ_ERRORS) as err:  # zipfile's BadZipFile, an unknown zip version
        raise bad(path, f'is a damaged zip archive ({untrusted.describe(err)}): not a whole torch.save file') from None
    if unpacked > size:
        raise bad(path, f'is a zip archive whose entries unpack to {unpacked} bytes, more than its {size}: '
                        f'torch.save stores them uncompressed')


def load_torch_state(path):
    """Return {key: float32 array} of a torch.save state dict, read with torch.load(weights_only=True) (no pickle
    runs), only from a regular file: a dict of names to dense CPU tensors of float32, float16 or bfloat16, each within
    its storage (which the file's size bounds); anything else is refused naming the file and the tensor."""
    with untrusted.open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if f.read(4) == b'PK\x03\x04':  # torch.save's zip format (torch >= 1.6); the older one is a bare pickle
            f.seek(0)
            check_torch_zip(f, size, path)
        f.seek(0)
        try:
            state = torch.load(f, map_location='cpu', weights_only=True)
        except MemoryError:
            raise
        except Exception as err:  # noqa: BLE001 - a damaged file meets torch.load's every internal error type
            raise bad(path, f'does not load with torch.load(weights_only=True) ({type(err).__name__}): it is not a '
                            f'state dict of tensors; save one, or model.safetensors') from None
    if not isinstance(state, dict):
        raise bad(path, f'holds a {type(state).__name__}, not a state dict')
    for key, value in state.items():
        if not isinstance(key, str):
            raise bad(path, f'has the key {show(key, 60)}, not a tensor name')
        if not isinstance(value, torch.Tensor):
            raise bad(path, f'holds a {type(value).__name__} under {show(key, 80)}, not a tensor: a state dict '
                            f'holds tensors only')
        if value.layout != torch.strided or value.device.type != 'cpu' or value.is_quantized:
            kind = ('quantized' if value.is_quantized else str(value.layout).replace('torch.', '')
                    if value.layout != torch.strided else value.device.type)
            raise bad(path, f'tensor {show(key, 80)} is a {kind} tensor; only dense tensors are read')
        if value.dtype not in TORCH_DTYPES and not is_hf_buffer(key):  # a buffer is listed, never read
            raise bad(path, f'tensor {show(key, 80)} holds {value.dtype} values; a weights file holds floats only '
                            f'(float32, or the half-precision float16 and bfloat16)')
        if value.numel() * value.element_size() > value.untyped_storage().nbytes():
            raise bad(path, f'tensor {show(key, 80)} of shape {tuple(value.shape)} is larger than the storage it views')
    # float16 and bfloat16 convert to float32 exactly; transformers' buffers (masks, position ids) are not read
    return {k: None if is_hf_buffer(k) else v.detach().to(torch.float32).numpy() for k, v in state.items()}


@guarded
def hf_keys(weights_path):
    """Return the tensor names of a transformers weights file, from the headers of safetensors (a torch file is
    loaded)."""
    if weights_path.endswith('.index.json'):
        return list(hf_index(weights_path)[0])
    if weights_path.endswith('.safetensors'):
        return read_safetensors_with(weights_path, lambda f: list(f.keys()))
    return list(load_torch_state(weights_path))


def hf_family(config, keys, path):
    """Return the family of a transformers checkpoint: its config.json's model_type, else what its keys (tensor
    names) hold."""
    model_type = config.get('model_type')
    if model_type is not None:
        if not (isinstance(model_type, str) and model_type in HF_MODEL_TYPES):
            raise bad(path, f'config.json has model_type {show(model_type)}, expected one of '
                            f'{", ".join(map(repr, HF_MODEL_TYPES))}')
        return HF_MODEL_TYPES[model_type]
    for family, (token_key, _) in HF_TABLES.items():
        if token_key in keys or HF_PREFIX + token_key in keys:
            return family
    raise BadFile(f'{path} holds neither an OpenAI GPT nor a GPT-2 checkpoint (keys start '
                  f'{[show(k, 60) for k in sorted(keys)[:3]]})', path)


def split_hf_state(state, source, family='gpt1'):
    """Return (transformer arrays without the prefix, ignored keys); check a stored lm_head is the tied copy."""
    token_key = HF_TABLES[family][0]
    prefixed = any(k.startswith(HF_PREFIX) for k in state)
    body, ignored = {}, []
    for key, value in state.items():
        name = key[len(HF_PREFIX):] if prefixed and key.startswith(HF_PREFIX) else key
        if (prefixed and not key.startswith(HF_PREFIX)) or HF_BUFFER.match(name):
            ignored.append(key)  # heads (lm_head, multiple_choice_head, score) and attention-mask buffers
        else:
            body[name] = value
    if 'lm_head.weight' in state and token_key in body:
        if not np.array_equal(state['lm_head.weight'], body[token_key]):
            raise ValueError(f'{source}: lm_head.weight differs from {token_key}; {family_name(family)} ties its '
                             f'decoder to the embeddings, so this untied head cannot be converted')
    return body, ignored


def hf_config(path, weights_path):
    """Return the config.json dict beside a transformers checkpoint, its fields checked (check_hf_config), or {} when
    there is none."""
    config_path = hf_config_path(path, weights_path)
    if not os.path.lexists(config_path):
        return {}
    return check_hf_config(read_config_json(config_path, os.path.dirname(config_path)), config_path)


def hf_config_path(path, weights_path):
    """Return the path of the config.json beside a transformers checkpoint (path: its folder or weights file)."""
    return os.path.join(path if os.path.isdir(path) else os.path.dirname(weights_path) or '.', CONFIG_NAME)


def check_hf_config(config, config_path):
    """Return a transformers config.json dict after checking the type and range of every field read here: the sizes,
    dropouts, switches and n_head dividing n_embd by check_config_fields' rules (n_special may be null, as
    pytorch-pretrained-bert writes it), names strings, the epsilon a number; a bad one is a BadFile naming
    config_path."""
    fields = {k: v for k, v in config.items() if k != 'afn' and not (k == 'n_special' and v is None)}
    check_config_fields(fields, config_path)  # its afn is transformers' name, checked by hf_architecture
    try:
        for name in ('model_type', 'afn', 'activation_function'):
            if name in config and not isinstance(config[name], str):
                raise ValueError(f'{name} must be a string, not {show(config[name])}')
        eps = config.get('layer_norm_epsilon', LAYER_NORM_EPSILON)
        if not (is_int(eps) or isinstance(eps, float)):
            raise ValueError(f'layer_norm_epsilon must be a number, not {show(eps)}')
    except ValueError as err:
        raise bad(config_path, err) from None
    return config


def default_n_vocab(config, n_rows, path):
    """Return how many of tokens_embed's n_rows rows are BPE tokens according to a transformers config dict."""
    n_special = int(config.get('n_special') or 0)  # written by write_transformers and pytorch-pretrained-bert
    vocab_size = config.get('vocab_size', n_rows)
    if vocab_size == n_rows:  # transformers: vocab_size counts every row, added special tokens included
        return n_rows - n_special
    if vocab_size + n_special == n_rows:  # pytorch-pretrained-bert: vocab_size + n_special rows
        return vocab_size
    raise bad(path, f'gives vocab_size={vocab_size} (n_special={n_special}) but tokens_embed has {n_rows} '
                    f'rows')


@guarded
def read_transformers(path, n_vocab=None, n_head=None, afn=None):
    """Return the Checkpoint in a transformers OpenAI GPT or GPT-2 folder or weights file.

    The token table's rows are [tokens; special]: n_vocab (default: from config.json's n_special, else every row)
    says how many are BPE tokens; the rest become special rows. n_head (and GPT-1's afn) come from config.json;
    pass them for a bare weights file.
    """
    arguments = check_arguments(n_head=n_head)  # the caller's: a bad one is its error, not a file's
    if afn is not None and not (isinstance(afn, str) and afn in HF_TO_OUR_AFN):
        raise BadArgument(f'--afn {show(afn)} has no counterpart here; use one of {sorted(HF_TO_OUR_AFN)}')
    weights_path = hf_weights_file(path)
    config = hf_config(path, weights_path)
    config_path = hf_config_path(path, weights_path)  # named by the errors of its fields
    state = load_hf_state(weights_path)
    family = hf_family(config, state, path)
    body, ignored = split_hf_state(state, weights_path, family)
    token_key, position_key = HF_TABLES[family]
    for name in (token_key, position_key):
        if name not in body:
            raise BadFile(f'{weights_path} has no {name}: it is not a {family_name(family)} checkpoint '
                          f'(keys start {[show(k, 60) for k in sorted(body)[:3]]})', weights_path)
    tokens_embed = body.pop(token_key)
    positions = body.pop(position_key)
    if tokens_embed.ndim != 2 or positions.ndim != 2 or positions.shape[1] != tokens_embed.shape[1]:
        raise bad(weights_path, f'{token_key} has shape {tokens_embed.shape} and {position_key} {positions.shape}: '
                                f'expected [rows, n_embd] for both')
    n_rows, n_embd = tokens_embed.shape
    n_layer = n_layer_of(body)
    if n_layer > SIZE_LIMITS['n_layer']:
        raise bad(weights_path, f'holds a block h.{n_layer - 1}: more than any model ({SIZE_LIMITS["n_layer"]} blocks '
                                f'at most)')
    eps = config.get('layer_norm_epsilon', LAYER_NORM_EPSILON)
    if eps != LAYER_NORM_EPSILON:
        raise bad(config_path, f'layer_norm_epsilon is {eps}; this port implements {LAYER_NORM_EPSILON} only')
    stated = hf_architecture(config, family, afn, config_path)
    if 'n_head' in arguments:
        check_argument_heads(arguments, n_embd, weights_path)
    elif 'n_head' in config:
        stated['n_head'] = config['n_head']
    else:
        raise bad(path, 'no config.json gives n_head; put the config.json beside it or pass --n_head')
    architecture = dict(check_config_fields(stated, config_path, n_embd), **arguments)
    if 'n_layer' in config and config['n_layer'] != n_layer:
        raise bad(config_path, f'it says n_layer={config["n_layer"]} but the weights hold {n_layer} blocks')
    if n_vocab is None:
        n_vocab = default_n_vocab(config, n_rows, config_path)
    elif not (is_int(n_vocab) and 0 < n_vocab <= n_rows):
        raise BadArgument(f'--n_vocab {show(n_vocab)} but {token_key} in {weights_path} has {n_rows} rows')
    if not 0 < n_vocab <= n_rows:
        raise BadFile(f'n_vocab={show(n_vocab)} but {token_key} in {weights_path} has {n_rows} rows', weights_path)
    keys = block_keys(n_layer) + (['ln_f.g', 'ln_f.b'] if family == 'gpt2' else [])
    blocks = {key: body.pop(hf_key(key)) for key in keys if hf_key(key) in body}
    if body:
        raise ValueError(f'{weights_path} holds unexpected keys {sorted(body)[:3]}: not a {family_name(family)} '
                         f'checkpoint')
    check_blocks(blocks, n_embd, n_layer, weights_path, family)
    return Checkpoint(tokens_embed[:n_vocab], tokens_embed[n_vocab:], positions, blocks, architecture, ignored=ignored,
                      source=weights_path, family=family)


def hf_architecture(config, family, afn, path):
    """Return the config fields a transformers config.json gives beside n_head (dropouts; GPT-1's activation), after
    checking that it describes the model this port computes."""
    pdrops = {name: config[name] for name in ('embd_pdrop', 'attn_pdrop', 'resid_pdrop') if name in config}
    if 'summary_first_dropout' in config:
        pdrops['clf_pdrop'] = config['summary_first_dropout']
    if family == 'gpt2':
        activation = config.get('activation_function', 'gelu_new')
        if activation not in ('gelu_new', 'gelu_pytorch_tanh'):  # the original's tanh GELU, by either name
            raise bad(path, f'activation_function is {show(activation)}; GPT-2 computes the tanh GELU (gelu_new)')
        for name, want in (('scale_attn_weights', True), ('scale_attn_by_inverse_layer_idx', False)):
            if config.get(name, want) != want:
                raise bad(path, f'{name} is {show(config[name])}; GPT-2 as released has {want}')
        return pdrops
    hf_afn = afn or config.get('afn', 'gelu')  # an afn given was checked by read_transformers
    if not (isinstance(hf_afn, str) and hf_afn in HF_TO_OUR_AFN):
        raise bad(path, f'afn {show(hf_afn)} has no counterpart here; use one of {sorted(HF_TO_OUR_AFN)}')
    return dict(afn=HF_TO_OUR_AFN[hf_afn], **pdrops)


def transformers_config(ckpt):
    """Return the config.json dict that transformers' OpenAIGPTConfig or GPT2Config reads for ckpt (whose config must
    state n_head, the dropouts and GPT-1's afn: the model modules' complete_checkpoint fills them in)."""
    cfg = ckpt.config
    needed = ('n_head', 'embd_pdrop', 'attn_pdrop', 'resid_pdrop', 'clf_pdrop') + (('afn',) if ckpt.family == 'gpt1'
                                                                                     else ())
    missing = [k for k in needed if k not in cfg]
    if missing:
        raise ValueError(f'the checkpoint states no {missing[0]}: complete its config before writing it')
    common = {'vocab_size': ckpt.n_vocab + ckpt.n_special, 'n_special': ckpt.n_special, 'n_positions': ckpt.n_pos,
              'n_embd': ckpt.n_embd, 'n_layer': ckpt.n_layer, 'n_head': cfg['n_head'],
              'resid_pdrop': cfg['resid_pdrop'], 'embd_pdrop': cfg['embd_pdrop'], 'attn_pdrop': cfg['attn_pdrop'],
              'summary_first_dropout': cfg['clf_pdrop'], 'layer_norm_epsilon': LAYER_NORM_EPSILON,
              'initializer_range': 0.02, 'tie_word_embeddings': True}
    if ckpt.family == 'gpt2':
        return {'architectures': ['GPT2LMHeadModel'], 'model_type': 'gpt2', **common, 'n_ctx': ckpt.n_pos,
                'activation_function': 'gelu_new', 'scale_attn_weights': True, 'bos_token_id': GPT2_EOT,
                'eos_token_id': GPT2_EOT}
    if cfg['afn'] not in OUR_TO_HF_AFN:
        raise ValueError(f"afn {cfg['afn']!r} has no transformers counterpart")
    return {'architectures': ['OpenAIGPTLMHeadModel'], 'model_type': 'openai-gpt', **common,
            'afn': OUR_TO_HF_AFN[cfg['afn']]}


def write_transformers(ckpt, out_dir):
    """Write ckpt as a transformers OpenAIGPTLMHeadModel or GPT2LMHeadModel folder (model.safetensors + config.json);
    return out_dir.

    Special-token rows go after the tokens in the token table (vocab_size = n_vocab + n_special, as transformers'
    resize_token_embeddings lays them out); config.json's extra "n_special" lets read_transformers split them.
    """
    from safetensors.numpy import save_file
    os.makedirs(out_dir, exist_ok=True)
    token_key, position_key = HF_TABLES[ckpt.family]
    tensors = {HF_PREFIX + token_key: np.concatenate([ckpt.tokens, ckpt.special], 0),
               HF_PREFIX + position_key: ckpt.positions}
    tensors.update({HF_PREFIX + hf_key(k): v for k, v in ckpt.blocks.items()})
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    atomic_write(os.path.join(out_dir, WEIGHTS_NAME), lambda tmp: save_file(tensors, tmp, metadata={'format': 'pt'}))
    write_config_json(os.path.join(out_dir, CONFIG_NAME), transformers_config(ckpt))
    return out_dir


# --- a folder that holds no model: what it is instead ------------------------------------------------------------

# The released GPT-2 sizes by (n_embd, n_layer), as download_model.py's --model gpt2-<size> names them. They are
# model_gpt2.GPT2_SIZES' (with n_head); this module imports no model code, and tests/test_model_folders.py checks
# that the two agree.
GPT2_RELEASED_SIZES = {'124M': (768, 12), '355M': (1024, 24), '774M': (1280, 36), '1558M': (1600, 48)}
# openai/gpt-2 first named 124M and 355M by a miscount; folders downloaded then still carry the old names.
GPT2_OLD_SIZE_NAMES = {'117M': '124M', '345M': '355M'}
# Files that only a GPT-2 folder holds besides its checkpoint's index and data (a download cut before those).
GPT2_SIDE_FILES = (HPARAMS_NAME, 'checkpoint', 'model.ckpt.meta', *GPT2_VOCAB_FILES)
CORPUS_FILES = ('meta.json', 'train.bin', 'val.bin')  # what prepare_corpus.py writes (corpus.py reads)
STATE_NAME = 'train_state.safetensors'  # the training state pretrain.py and train.py save in their run folders
BEST_NAME = 'best_params.safetensors'   # train.py's best weights, beside its training state
PRETRAIN_RUN_FILES = ('args.json', 'log.jsonl')  # pretrain.py writes these into its --out; train.py keeps its log apart
PART_SUFFIX = '.part'  # download_model.py's file of a transfer not yet verified
SHARD_NAME = re.compile(r'params_\d+\.npy')


def without_part(name):
    """Return a file name without download_model.py's .part suffix."""
    return name[:-len(PART_SUFFIX)] if name.endswith(PART_SUFFIX) else name


def holds_weights(names):
    """Return whether a folder with these file names holds weights a reader names the problems of: a config.json or
    weights file, GPT-1's shards (even half-downloaded), a TensorFlow checkpoint's index or data."""
    for name in names:
        if name in (CONFIG_NAME, WEIGHTS_NAME, HF_BIN_NAME, HF_INDEX_NAME, 'params_shapes.json'):
            return True
        if SHARD_NAME.fullmatch(without_part(name)):  # the released reader names each missing shard
            return True
        if not name.endswith(PART_SUFFIX) and (name.endswith('.index') or '.data-' in name):
            return True  # any checkpoint prefix: a fine-tuned GPT-2's `checkpoint` names model-1000.*, not model.ckpt.*
    return False


def is_gpt2_file(name):
    """Return whether a file name (without .part) is one of a released GPT-2 folder's."""
    return name in (*GPT2_SIDE_FILES, 'model.ckpt.index') or name.startswith('model.ckpt.data-')


def gpt2_size_of_path(folder):
    """Return the released GPT-2 size a folder's name says (models/355M, gpt2-355M, models/117M -> 124M), or None."""
    name = os.path.basename(os.path.normpath(folder))
    name = name[len('gpt2-'):] if name.startswith('gpt2-') else name
    name = GPT2_OLD_SIZE_NAMES.get(name, name)
    return name if name in GPT2_RELEASED_SIZES else None


def gpt2_size_of_hparams(path):
    """Return the released GPT-2 size whose n_embd and n_layer the hparams.json at path states, or None (no such
    size, or no readable hparams.json)."""
    try:
        hparams = read_hparams(path)
    except BadFile:
        return None
    sizes = {shape: size for size, shape in GPT2_RELEASED_SIZES.items()}
    return sizes.get((hparams['n_embd'], hparams['n_layer']))


def download_command(folder, size=None):
    """Return the download_model.py command that fetches GPT-1's released weights (size None) or the released GPT-2
    of that size into folder, with --model_dir where folder is not the script's default (model/, models/<size>)."""
    command = 'python download_model.py' + ('' if size is None else f' --model gpt2-{size}')
    default = 'model' if size is None else os.path.join('models', size)
    if os.path.abspath(folder) != os.path.abspath(default):
        command += f' --model_dir {shlex.quote(folder)}'
    return command


def released_weights(size=None):
    """Return what download_command fetches, in words."""
    return "GPT-1's released weights" if size is None else f'GPT-2 {size}'


def missing_folder_problem(folder):
    """Return the MissingFile of a path where nothing is: a GPT-2 size's command when its name is a size."""
    if folder.endswith(('.safetensors', '.bin')):  # a weights file named: no folder to download into
        return MissingFile(f'{folder} does not exist: check the path', folder)
    size = gpt2_size_of_path(folder)
    return MissingFile(f'{folder} does not exist: check the path, or download {released_weights(size)} there with '
                       f'{download_command(folder, size)}', folder)


def gpt2_partial_problem(folder, names):
    """Return the MissingFile of a GPT-2 folder whose checkpoint index and data are not there (names: its files)."""
    held = [name for name in GPT2_SIDE_FILES if name in names]
    cut = sorted(name for name in names if name.endswith(PART_SUFFIX) and is_gpt2_file(without_part(name)))
    size = gpt2_size_of_hparams(os.path.join(folder, HPARAMS_NAME)) if HPARAMS_NAME in names else None
    size = size or gpt2_size_of_path(folder)
    fix = (f'fetch them with {download_command(folder, size)}' if size else
           f'fetch a released size with {download_command(folder, "124M")} (or gpt2-355M, gpt2-774M, gpt2-1558M), or '
           f'put its own checkpoint files beside {HPARAMS_NAME}')
    return MissingFile(f'{folder} is a GPT-2{" " + size if size else ""} folder without its checkpoint: it holds '
                       f'{", ".join(held) or "only partial downloads"} but no model.ckpt.index or '
                       f'model.ckpt.data-00000-of-00001{" (a cut download left " + cut[0] + ")" if cut else ""}; '
                       f'{fix}', folder)


def run_script(folder, names):
    """Return (the script that wrote a run folder: 'pretrain.py', 'train.py' or None when it cannot be told, its
    training state's identity dict): by the files beside the state, else by the flags its identity records."""
    try:
        identity = read_state_metadata(os.path.join(folder, STATE_NAME)).get('identity')
    except BadFile:  # not a state this version reads: the files alone tell
        identity = None
    identity = identity if isinstance(identity, dict) else {}
    if any(name in names for name in PRETRAIN_RUN_FILES) or '--arch' in identity:
        return 'pretrain.py', identity
    if BEST_NAME in names or '--dataset' in identity:
        return 'train.py', identity
    return None, identity


def flag_value(value, placeholder):
    """Return a value from a run's files quoted for a command line, or placeholder when it is no short string."""
    ok = isinstance(value, str) and 0 < len(value) <= untrusted.MESSAGE_CHARS and value.isprintable()
    return shlex.quote(value) if ok else placeholder


def pretrain_corpus(folder):
    """Return the --corpus an unfinished pretrain.py run's args.json records, quoted, or a placeholder."""
    try:
        with untrusted.reading(folder):
            args = untrusted.read_json(os.path.join(folder, 'args.json'), folder, limit=CONFIG_MAX_BYTES,
                                       what='args.json')
    except BadFile:
        args = {}
    return flag_value(args.get('corpus'), 'CORPUS')


def run_folder_problem(folder, names):
    """Return the BadFile of a pretrain.py or train.py run folder that holds a training state and no model."""
    script, identity = run_script(folder, names)
    state = os.path.join(folder, STATE_NAME)
    if script == 'pretrain.py':
        return BadFile(f'{folder} is the folder of an unfinished pretrain.py run: its weights are only in its training '
                       f'state {state} (convert.py reads no training state; model.safetensors and config.json are '
                       f'written at the end); resume the run to its end with python pretrain.py --corpus '
                       f'{pretrain_corpus(folder)} --out {shlex.quote(folder)} --resume and the flags it ran with '
                       f'(args.json lists them), which writes the model there', folder)
    parent, desc = os.path.split(os.path.normpath(folder))
    train_command = (f'python train.py --dataset {flag_value(identity.get("--dataset"), "DATASET")} --save_dir '
                     f'{shlex.quote(parent or ".")} --desc {shlex.quote(desc)} --resume')
    if script == 'train.py':
        best = f' and its best ones in {BEST_NAME}' if BEST_NAME in names else ''
        return BadFile(f'{folder} is the folder of a train.py run, not a model folder: its weights are in its training '
                       f'state {state}{best}, which no reader of model folders (nor convert.py) takes; resume an '
                       f'unfinished run with {train_command} and the flags it ran with', folder)
    return BadFile(f'{folder} is the folder of an unfinished pretrain.py or train.py run: its weights are only in its '
                   f'training state {state}, which convert.py does not read; resume the run with the script that '
                   f'wrote it and --resume (python pretrain.py --out {shlex.quote(folder)} --resume, or '
                   f'{train_command}) and the flags it ran with', folder)


def folder_problem(path):
    """Return the one-line BadFile (MissingFile) saying what the path is instead of a model folder (nothing there, an
    empty folder, a GPT-2 folder without its checkpoint, a corpus, a training run's folder) and what to do, or None
    where the formats' readers name the problem (a weights file, a folder holding weights of any format, a folder
    of other files, which the released GPT-1 reader names the missing files of)."""
    if not os.path.lexists(path):
        return missing_folder_problem(path)
    try:
        names = set(os.listdir(path)) if os.path.isdir(path) else None
    except OSError:  # unreadable: the reader says so, naming the file it fails to open
        names = None
    if names is None or holds_weights(names):
        return None
    if not [name for name in names if not name.startswith('.')]:  # hidden files (.DS_Store) hold no model
        size = gpt2_size_of_path(path)
        return MissingFile(f'{path} is empty: download {released_weights(size)} into it with '
                           f'{download_command(path, size)}', path)
    if STATE_NAME in names:
        return run_folder_problem(path, names)
    if CORPUS_FILES[0] in names and any(name in names for name in CORPUS_FILES[1:]):
        return BadFile(f'{path} is a corpus prepared by prepare_corpus.py ({", ".join(CORPUS_FILES)}), not model '
                       f'weights: pretrain.py takes it as --corpus; give a weights folder instead', path)
    if any(is_gpt2_file(without_part(name)) for name in names):
        return gpt2_partial_problem(path, names)
    return None


def check_model_folder(path):
    """Raise folder_problem's BadFile when path is no model folder and no weights file; return path otherwise."""
    problem = folder_problem(path)
    if problem is not None:
        raise problem
    return path


# --- any folder ---------------------------------------------------------------------------------------------

@guarded
def detect_format(path):
    """Return 'released', 'tf-checkpoint', 'safetensors' or 'transformers' for a model folder or weights file, or raise.

    A weights file is transformers'; a path that is no model folder (nothing there, an empty folder, a GPT-2 folder
    without its checkpoint, a corpus, a run's folder) is a one-line error saying what it is (check_model_folder); a
    folder with a config.json is this project's or transformers' as it says; a folder with GPT-2's hparams.json or a
    TensorFlow checkpoint is GPT-2's released format; anything else (params_shapes.json, shards, other files) is a
    released GPT-1 folder, whose reader names each missing file.
    """
    if os.path.lexists(path) and not os.path.isdir(path):
        return 'transformers'  # a weights file (its reader refuses anything but a regular file)
    check_model_folder(path)
    has = {name for name in (CONFIG_NAME, 'params_shapes.json', HPARAMS_NAME, *TF_FILES, WEIGHTS_NAME, HF_BIN_NAME)
           if os.path.lexists(os.path.join(path, name))}
    if CONFIG_NAME in has and 'params_shapes.json' not in has:
        config_path = os.path.join(path, CONFIG_NAME)
        config = read_config_json(config_path, path)
        if config.get('format') == FORMAT:
            return 'safetensors'
        model_type = config.get('model_type')
        if isinstance(model_type, str) and model_type in HF_MODEL_TYPES:
            return 'transformers'
        raise BadFile(f'{config_path} is neither a {FORMAT} config nor a transformers openai-gpt or gpt2 one '
                      f'(its model_type is {show(model_type)})', config_path)
    if 'params_shapes.json' not in has and has & {HPARAMS_NAME, *TF_FILES}:
        return 'tf-checkpoint'
    for name in (WEIGHTS_NAME, HF_BIN_NAME):
        if name in has and 'params_shapes.json' not in has:
            raise MissingFile(f'{path} holds {name} but no {CONFIG_NAME}: put the config.json that came with the '
                              f'weights beside them', path)
    return 'released'


@guarded
def detect_family(path):
    """Return the family of the model a folder or transformers weights file holds: 'gpt1' or 'gpt2'."""
    kind = detect_format(path)
    if kind in ('released', 'tf-checkpoint'):
        return 'gpt1' if kind == 'released' else 'gpt2'
    if os.path.isdir(path):
        config_path = os.path.join(path, CONFIG_NAME)
        config = read_config_json(config_path, path)
        if kind == 'transformers':
            return HF_MODEL_TYPES[config['model_type']]  # detect_format checked it
        family = config.get('family', 'gpt1')
        if not (isinstance(family, str) and family in FAMILIES):
            raise bad(config_path, f'unknown family {show(family)}, expected one of {", ".join(FAMILIES)}')
        return family
    return hf_family(hf_config(path, path), hf_keys(path), path)  # a bare weights file: by its keys


@guarded
def read_checkpoint(path, n_head=None, afn=None, n_vocab=None, verify=False):
    """Return the Checkpoint in any supported folder (GPT-1's released shards, GPT-2's released checkpoint, this
    project's safetensors, transformers); n_head and afn are given to formats that do not store them; verify (GPT-1's
    released shards only) as read_released's."""
    kind = detect_format(path)
    if kind == 'released':
        return read_released(path, n_head=n_head, afn=afn, verify=verify)
    if verify:
        raise BadArgument(f'{path} is not a released GPT-1 model/ folder: verification checks the released shards only '
                         f'(a GPT-2 checkpoint checks its CRC32Cs whenever it is read)')
    if kind == 'tf-checkpoint':
        ckpt = read_tf_gpt2(path)
    elif kind == 'safetensors':
        ckpt = read_safetensors(path)
    else:
        ckpt = read_transformers(path, n_vocab, n_head, afn)
    stored = ckpt.config.get('n_head')
    if n_head is not None and n_head != stored:
        raise BadArgument(f'--n_head {n_head} contradicts n_head={stored} in {path}: leave it out')
    if afn is not None and ckpt.family == 'gpt2' and afn != 'gelu':
        raise BadArgument(f'--afn {afn}: GPT-2 ({path}) computes gelu only: leave it out')
    stored = ckpt.config.get('afn', 'gelu')
    if kind == 'safetensors' and afn is not None and afn != stored:
        raise BadArgument(f'--afn {afn} contradicts afn={stored} in {path}: leave it out')
    return ckpt


def checkpoint_from_model(model, n_vocab=None, n_special=None):
    """Return the Checkpoint of a GPT-1 or GPT-2 transformer (or a model with `.transformer`) and its config;
    n_vocab and n_special default to the model's config."""
    transformer = getattr(model, 'transformer', model)
    cfg = asdict(transformer.cfg)
    state = {k: v.detach().to(torch.float32).cpu().numpy() for k, v in transformer.state_dict().items()}
    family = 'gpt2' if 'wte.weight' in state else 'gpt1'
    n_vocab = cfg['n_vocab'] if n_vocab is None else n_vocab
    if family == 'gpt2':  # [tokens; special] in wte, positions in wpe
        table, positions = state.pop('wte.weight'), state.pop('wpe.weight')
        n_special = table.shape[0] - n_vocab if n_special is None else n_special
    else:  # [tokens; special; positions] in one table
        table = state.pop('embed.weight')
        n_special = table.shape[0] - transformer.n_ctx - n_vocab if n_special is None else n_special
        table, positions = table[:n_vocab + n_special], table[n_vocab + n_special:]
        if len(positions) != transformer.n_ctx:
            n_special = -1  # the rows do not add up: refused below
    if n_special < 0 or n_vocab + n_special != table.shape[0]:
        raise ValueError(f'the table has {table.shape[0]} token and special rows, not n_vocab={n_vocab} + '
                         f'n_special={n_special}: pass the model\'s n_vocab')
    config = {k: v for k, v in cfg.items() if k not in SIZE_KEYS}
    return Checkpoint(table[:n_vocab], table[n_vocab:], positions, state, config, family=family)


def save_model(model, out_dir, n_vocab=None, n_special=None):
    """Write a model as this project's folder (model.safetensors + config.json = its config); return out_dir.
    n_vocab and n_special default to the model's config."""
    return write_safetensors(checkpoint_from_model(model, n_vocab, n_special), out_dir)


# --- vocabulary files beside the weights ----------------------------------------------------------------------

def vocab_names(family):
    """Return the names the vocabulary files of a family's folders go by: the released ones, then transformers'."""
    return (VOCAB_FILES if family == 'gpt1' else GPT2_VOCAB_FILES), HF_VOCAB_FILES


def find_vocab(folder, family):
    """Return the paths of the two vocabulary files in folder (the released names first, then transformers'), or
    None."""
    for names in vocab_names(family):
        found = [os.path.join(folder, n) for n in names]
        if all(os.path.isfile(p) for p in found):
            return found
    return None


def vocab_paths(model_dir, encoder_path=None, bpe_path=None, family='gpt1'):
    """Return (encoder_path, bpe_path): the given ones, else the vocabulary files found in model_dir; (None, None)
    for a GPT-2 folder without them (every GPT-2 shares the vocabulary the repository ships)."""
    found = find_vocab(model_dir, family)
    if found:
        return encoder_path or found[0], bpe_path or found[1]
    if (encoder_path and bpe_path) or family == 'gpt2':
        return encoder_path, bpe_path
    raise MissingFile(f'{model_dir} holds no {" + ".join(VOCAB_FILES)}: copy them there from the released model/ '
                      f'folder or pass --encoder_path and --bpe_path', model_dir)


def copy_vocab(src_dir, out_dir, names, family='gpt1'):
    """Copy the two vocabulary files of src_dir (either naming) into out_dir under `names`; return True if found."""
    if os.path.isfile(src_dir):  # a transformers weights file: look beside it
        src_dir = os.path.dirname(src_dir) or '.'
    found = find_vocab(src_dir, family)
    if found:
        # regular files only, a symlink only inside src_dir: no outside file is copied into the folder written
        contents = [untrusted.read_bytes(src, src_dir, what='vocabulary file', limit=untrusted.JSON_MAX_BYTES)
                    for src in found]
        os.makedirs(out_dir, exist_ok=True)
        for data, name in zip(contents, names):
            atomic_write(os.path.join(out_dir, name), lambda tmp, data=data: write_bytes(tmp, data))
    return found is not None


def write_bytes(path, data):
    """Write data to the file at path."""
    with open(path, 'wb') as f:
        f.write(data)
