"""Every weight format of the project in one place: which format a folder holds, reading and writing each one,
and checking released files against their published hashes.

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
"""
import base64
import hashlib
import io
import json
import math
import os
import pickle
import re
import shutil
import tokenize
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

import tf_bundle
from checkpoint import atomic_write, write_json

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
# The released GPT-2 sizes, as openai/gpt-2's download_model.py names them: (n_embd, n_head, n_layer); each has
# n_vocab 50257 and n_ctx 1024.
GPT2_SIZES = {'124M': (768, 12, 12), '355M': (1024, 16, 24), '774M': (1280, 20, 36), '1558M': (1600, 25, 48)}
GPT2_BASE_URL = 'https://openaipublic.blob.core.windows.net/gpt-2/models/'
# The files of a released GPT-2 folder, in the order they can be checked (the index before the data it describes).
GPT2_FILES = ('hparams.json', 'checkpoint', 'model.ckpt.index', 'model.ckpt.data-00000-of-00001', 'model.ckpt.meta',
              'encoder.json', 'vocab.bpe')
# SHA-256 of the released vocabulary (the same for every size; the values tiktoken checks).
GPT2_VOCAB_SHA256 = {'encoder.json': '196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783',
                     'vocab.bpe': '1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5'}
SIZE_KEYS = ('n_vocab', 'n_special', 'n_ctx', 'n_embd', 'n_layer')  # config fields the arrays' shapes give


# --- names --------------------------------------------------------------------------------------------------

def tf_param_names(n_layer):
    """Return the TF names of the released arrays in shard order: positions, tokens, then each block."""
    return ['model/we:positions', 'model/we:tokens'] + [f'model/h{i}/{n}' for i in range(n_layer)
                                                        for n in TF_BLOCK]


def torch_name(tf_name):
    """Return the state_dict key of a TF block variable: 'model/h3/attn/c_attn/w' -> 'h.3.attn.c_attn.w'."""
    name = tf_name[len('model/'):] if tf_name.startswith('model/') else tf_name
    return re.sub(r'^h(\d+)/', r'h.\1.', name).replace('/', '.')


def tf_name(key):
    """Return the TF variable name of a state_dict key of a block: 'h.3.attn.c_attn.w' -> 'model/h3/attn/c_attn/w'."""
    return 'model/' + re.sub(r'^h\.(\d+)\.', r'h\1/', key).replace('.', '/')


def from_tf_conv(array):
    """Return a TF array as the state_dict holds it: a conv weight [1, nx, nf] -> [nx, nf], anything else as is."""
    return array.reshape(array.shape[1:]) if array.ndim == 3 else array


def to_tf_conv(array):
    """Return a state_dict array as TF holds it: a conv weight [nx, nf] -> [1, nx, nf], anything else as is."""
    return array.reshape((1,) + array.shape) if array.ndim == 2 else array


def block_keys(n_layer):
    """Return the state_dict keys of the block parameters in shard order ('h.0.attn.c_attn.w', ...)."""
    return [torch_name(name) for name in tf_param_names(n_layer)[2:]]


def family_name(family):
    """Return the name to show for a family: 'GPT-1' or 'GPT-2'."""
    return {'gpt1': 'GPT-1', 'gpt2': 'GPT-2'}[family]


def n_layer_of(keys):
    """Return the number of blocks among state_dict keys: one more than the highest i of 'h.{i}.'."""
    return 1 + max((int(m.group(1)) for m in (re.match(r'^h\.(\d+)\.', k) for k in keys) if m), default=-1)


def hf_key(key):
    """Return transformers' name of a block parameter: 'h.0.attn.c_attn.w' -> 'h.0.attn.c_attn.weight'."""
    stem, leaf = key.rsplit('.', 1)
    return f"{stem}.{'bias' if leaf == 'b' else 'weight'}"


def block_shapes(n_embd, n_layer):
    """Return {key: shape} for every block parameter of a GPT-1 of that width and depth (conv weights [nx, nf])."""
    nx = n_embd
    one = {'attn.c_attn.w': (nx, 3 * nx), 'attn.c_attn.b': (3 * nx,), 'attn.c_proj.w': (nx, nx),
           'attn.c_proj.b': (nx,), 'ln_1.g': (nx,), 'ln_1.b': (nx,), 'mlp.c_fc.w': (nx, 4 * nx),
           'mlp.c_fc.b': (4 * nx,), 'mlp.c_proj.w': (4 * nx, nx), 'mlp.c_proj.b': (nx,), 'ln_2.g': (nx,),
           'ln_2.b': (nx,)}
    return {f'h.{i}.{name}': one[name] for i in range(n_layer) for name in one}


def check_blocks(blocks, n_embd, n_layer, source, family='gpt1'):
    """Raise a ValueError naming source when blocks lack, add or misshape a parameter of a model of that family and
    size (GPT-2's blocks come with the final ln_f)."""
    shapes = block_shapes(n_embd, n_layer)
    if family == 'gpt2':
        shapes.update({'ln_f.g': (n_embd,), 'ln_f.b': (n_embd,)})
    missing = [k for k in shapes if k not in blocks]
    extra = [k for k in blocks if k not in shapes]
    if missing or extra:
        raise ValueError(f'{source} does not hold a {family_name(family)} with n_layer={n_layer}: missing '
                         f'{missing[:3]}, unexpected {extra[:3]}')
    for key, shape in shapes.items():
        if tuple(blocks[key].shape) != shape:
            raise ValueError(f'{source}: {key} has shape {tuple(blocks[key].shape)}, expected {shape} '
                             f'for n_embd={n_embd}')


# --- what a download of the released files looks like ---------------------------------------------------------

# Git blob SHA-1, sha1(b"blob %d\0" % len(data) + data), of each file of the released model/ folder
# (the same value `git hash-object FILE` prints).
RELEASED_FILES = {
    'encoder_bpe_40000.json': '9dc3f0af5a80956e57dc8d9401e16dfadcade7c2',
    'params_0.npy': '84d83ac1f1cc878f56f33b167482c184491875d2',
    'params_1.npy': '0f19f4d4cda3d8f908e3faffd2cb2a8b9a4039da',
    'params_2.npy': '25bc19c72fdff69505a828ec6d73b32063532148',
    'params_3.npy': '5b2e6958d42a930966c9d602a012eb846ca67c83',
    'params_4.npy': '87ad158987e307e6aa64952610f466d750b73bc7',
    'params_5.npy': '74f3853316bba327229605dbedfe921996f11448',
    'params_6.npy': '5ef44e40bc076d0c9686d1273d54cbc16c3f0980',
    'params_7.npy': 'd8d5c8d3bee9b20a677605ac1fe6c7af4df57c94',
    'params_8.npy': 'f980f4b393716f396ae5ae6401708dcf4f270dc9',
    'params_9.npy': 'd389eb2074dd74754444b8062aba78b49f6a9053',
    'params_shapes.json': '29fac299ae848d7e447be84a33345edcf1b5353c',
    'vocab_40000.bpe': '0023a687b3d4d0b795a5e97cc914bdabb5a253df',
}

SNIFF_BYTES = 1024
LFS_PREFIX = b'version https://git-lfs'
HTML_PREFIXES = (b'<!doctype', b'<html')

# What to tell the user for each kind of problem found in a local file.
FIXES = {
    'missing': 'run download_model.py to fetch it',
    'lfs': 'fetch the real file (`git lfs pull` in a clone, or run download_model.py)',
}
DEFAULT_FIX = 'delete it and run download_model.py again'


def git_blob_sha1(path_or_bytes, chunk_size=1 << 20):
    """Return the git blob SHA-1 hex digest of bytes-like data or of a file (str/PathLike), streamed."""
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        data = memoryview(path_or_bytes).cast('B')
        h = hashlib.sha1(b'blob %d\0' % len(data))
        h.update(data)
        return h.hexdigest()
    with open(path_or_bytes, 'rb') as f:
        size = os.fstat(f.fileno()).st_size
        h = hashlib.sha1(b'blob %d\0' % size)
        n_read = 0
        while chunk := f.read(chunk_size):
            h.update(chunk)
            n_read += len(chunk)
    if n_read != size:  # the file changed while we read it: the header would be wrong
        raise OSError(f'{os.fspath(path_or_bytes)}: changed size while being hashed; try again')
    return h.hexdigest()


def sniff(head):
    """Return 'lfs' or 'html' when the first bytes of a file are a Git-LFS pointer or an HTML page, else None."""
    if head.startswith(LFS_PREFIX):
        return 'lfs'
    text = head.lstrip(b'\xef\xbb\xbf').lstrip().lower()  # a UTF-8 BOM and whitespace may precede the tag
    if text.startswith(HTML_PREFIXES):
        return 'html'
    return None


# What numpy's .npy header parser raises on a corrupt header: its fallback for headers written by
# Python 2 goes through `tokenize`, hence TokenError. None of these may reach the user as a traceback.
NPY_HEADER_ERRORS = (ValueError, SyntaxError, TypeError, EOFError, OverflowError, MemoryError, RecursionError,
                     tokenize.TokenError)


def canonical_npy_dict(shape, fortran_order, dtype):
    """Return the header dictionary text numpy writes for these values, without its padding (bytes)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {'descr': np.lib.format.dtype_to_descr(dtype),
                                              'fortran_order': fortran_order, 'shape': shape})
    return buf.getvalue()[10:].rstrip(b' \n')  # after the magic, the version and the 2-byte length


def read_npy_header(f):
    """Return (shape, fortran_order, dtype, canonical) of the .npy header at f's position, or None when numpy
    cannot read one there.

    canonical says whether the header is byte for byte the one numpy writes for those values (up to its
    space padding): a header corrupted into another one that still parses is not. f is left just past the
    header, at the first data byte.
    """
    start = f.tell()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # numpy warns when it falls back to its Python-2 header parser
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                return None
        end = f.tell()
        f.seek(start + (10 if version == (1, 0) else 12))
        text = f.read(end - f.tell())
        canonical = (text.endswith(b'\n') and
                     text[:-1].rstrip(b' ') == canonical_npy_dict(shape, fortran_order, dtype))
    except NPY_HEADER_ERRORS:
        return None
    return shape, fortran_order, dtype, canonical


def npy_sizes(path):
    """Return (size the .npy header promises, actual size), or None when the header cannot be read."""
    with open(path, 'rb') as f:
        header = read_npy_header(f)
        if header is None:
            return None
        shape, _, dtype, _ = header
        if dtype.hasobject:  # pickled payload: its size is not in the header
            return None
        return f.tell() + math.prod(shape) * dtype.itemsize, os.fstat(f.fileno()).st_size


def find_problem(path, expected_sha1=None, is_npy=False):
    """Return (kind, plain-words description) of what is wrong with the file at path, or (None, None)."""
    if not os.path.exists(path):
        return 'missing', 'missing'
    if not os.path.isfile(path):
        return 'not_file', 'not a regular file'
    with open(path, 'rb') as f:
        head = f.read(SNIFF_BYTES)
    if not head:
        return 'empty', 'empty file (0 bytes)'
    kind = sniff(head)
    if kind == 'lfs':
        return 'lfs', 'a Git-LFS pointer, not the file itself'
    if kind == 'html':
        return 'html', 'an HTML page (an error or login page saved in place of the file)'
    if is_npy:
        sizes = npy_sizes(path)
        if sizes is None and expected_sha1 is None:
            return 'bad_npy', 'not a .npy file (unreadable header)'
        if sizes is not None and sizes[0] != sizes[1]:
            what = 'truncated' if sizes[1] < sizes[0] else 'too long'
            return 'size', f'{what}: its .npy header needs {sizes[0]} bytes, the file has {sizes[1]}'
    if expected_sha1 is not None:
        got = git_blob_sha1(path)
        if got != expected_sha1.lower():
            return 'sha1', f'corrupt or truncated: expected {expected_sha1.lower()}, got {got}'
    return None, None


def check_file(path, expected_sha1=None):
    """Return None when the file at path is sound (and matches expected_sha1 if given), else a one-line problem."""
    path = os.fspath(path)
    kind, what = find_problem(path, expected_sha1, is_npy=path.endswith('.npy'))
    return None if kind is None else problem_line(path, kind, what)


def problem_line(path, kind, what):
    """Return the one-line problem of a file: the path, what is wrong, and the fix for that kind of problem."""
    return f'{path}: {what}; {FIXES.get(kind, DEFAULT_FIX)}'


def resolve_names(names, expected):
    """Return the list of file names to handle, checking each against the known ones."""
    if names is None:
        return sorted(expected)
    unknown = [n for n in names if n not in expected]
    if unknown:
        raise ValueError(f'unknown file {unknown[0]!r}; the released model/ files are: {", ".join(sorted(expected))}')
    return list(names)


def verify_model_dir(model_dir, names=None, expected=None):
    """Check released files in model_dir (all 13, or names); return one-line problems, empty when all verify."""
    expected = RELEASED_FILES if expected is None else expected
    return [p for p in (check_file(os.path.join(model_dir, n), expected[n]) for n in resolve_names(names, expected))
            if p is not None]


def released_names():
    """Return the names of the weights files of a released folder: params_shapes.json and the shards."""
    return ['params_shapes.json'] + [f'params_{n}.npy' for n in range(N_SHARDS)]


def released_problems(path, expected=None):
    """Return the one-line problems of the released files in path (its params_shapes.json and shards), checked
    against their git blob SHA-1s (expected: {file name: SHA-1}, default the released values); [] when all verify."""
    return verify_model_dir(path, names=released_names(), expected=expected)


# --- the released shards ----------------------------------------------------------------------------------

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


def sniff_weights_file(path):
    """Return a description of what path holds when it is plainly not an .npy array, else None."""
    with open(path, 'rb') as f:
        head = f.read(512)
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


def shard_layout(path):
    """Return the Shard of a params_N.npy file, or raise naming what is wrong with it; the values are not read."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path} is missing: the weights are {WEIGHTS_SOURCE}')
    problem = sniff_weights_file(path)
    if problem:
        raise ValueError(f'{path} is {problem}')
    with open(path, 'rb') as f:
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


def read_shard_into(shard, out):
    """Fill out (a float32 array of shard.size values) with the values of the shard."""
    with open(shard.path, 'rb') as f:
        f.seek(shard.offset)
        n_read = f.readinto(memoryview(out).cast('B'))
    if n_read != out.nbytes:
        raise ValueError(f'{shard.path} changed while being read ({n_read} of {out.nbytes} bytes): read it again')


def is_released_file(path):
    """Return whether the file at path is byte for byte the released file of its name (git blob SHA-1)."""
    expected = RELEASED_FILES.get(os.path.basename(path))
    return expected is not None and git_blob_sha1(path) == expected


def read_shapes(path):
    """Return (the list of array shapes in params_shapes.json, the file's text), or raise naming the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path} is missing: the weights are {WEIGHTS_SOURCE}')
    try:
        with open(path, encoding='utf-8') as f:
            text = f.read()
        shapes = json.loads(text)
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f'{path} is not valid JSON ({err}): download it again') from None
    if not (isinstance(shapes, list) and all(isinstance(s, list) and all(isinstance(d, int) for d in s)
                                             for s in shapes)):
        raise ValueError(f'{path} must be a JSON list of shapes (lists of ints)')
    if len(shapes) < 2 or (len(shapes) - 2) % len(TF_BLOCK) != 0:
        raise ValueError(f'{path} lists {len(shapes)} arrays; expected 2 embeddings plus '
                         f'{len(TF_BLOCK)} per block')
    return shapes, text


def read_shards(path):
    """Return (the released arrays, each reshaped, in TF order: [positions, tokens, block arrays...], the Shards,
    the text of params_shapes.json)."""
    shapes, shapes_text = read_shapes(os.path.join(path, 'params_shapes.json'))
    shards = [shard_layout(os.path.join(path, name)) for name in released_names()[1:]]  # all checked first
    sizes = [math.prod(shape) for shape in shapes]
    total = sum(s.size for s in shards)
    if total != sum(sizes):
        raise ValueError(f'the shards in {path} hold {total} floats but params_shapes.json describes '
                         f'{sum(sizes)}: a shard is truncated or from another checkpoint')
    # each shard is read straight into its place of one buffer: no concatenation copy
    flat = np.empty(total, dtype='<f4')
    bounds = np.cumsum([0] + [s.size for s in shards])
    for shard, start, stop in zip(shards, bounds[:-1], bounds[1:]):
        read_shard_into(shard, flat[start:stop])
    offsets = np.cumsum(sizes)[:-1]
    return [a.reshape(shape) for a, shape in zip(np.split(flat, offsets), shapes)], shards, shapes_text


def load_released_arrays(path):
    """Return the released arrays of the folder at path, each reshaped, in TF order: [positions, tokens, blocks...]."""
    return read_shards(path)[0]


def read_released(model_dir, n_head=None, afn=None, verify=False):
    """Return the Checkpoint in a released model/ folder; n_head and afn are not stored there (left out: the
    config's defaults, the released 12 heads and gelu). With verify, every file's SHA-1 is checked first
    (a dict {file name: SHA-1} checks against those instead of the released values)."""
    if verify:
        problems = released_problems(model_dir, expected=verify if isinstance(verify, dict) else None)
        if problems:
            raise ValueError(problems[0])
    arrays, shards, shapes_text = read_shards(model_dir)  # checks every file and the total size
    positions, tokens = arrays[0], arrays[1]
    n_layer = (len(arrays) - 2) // len(TF_BLOCK)
    blocks = {}
    for key, array in zip(block_keys(n_layer), arrays[2:]):
        blocks[key] = from_tf_conv(array)
    check_blocks(blocks, tokens.shape[1], n_layer, model_dir)
    released = {'params_shapes.json': shapes_text,
                'headers': [base64.b64encode(s.header).decode('ascii') for s in shards],
                'sizes': [s.size for s in shards]}
    config = {name: value for name, value in (('n_head', n_head), ('afn', afn)) if value is not None}
    special = np.zeros((0, tokens.shape[1]), np.float32)
    return Checkpoint(tokens, special, positions, blocks, config, released)


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


def write_released_shards(path, arrays, n_shards=N_SHARDS):
    """Write arrays in the released format (params_shapes.json + n_shards flat float32 .npy); return path."""
    os.makedirs(path, exist_ok=True)
    flat = np.concatenate([np.asarray(a, dtype=np.float32).reshape(-1) for a in arrays])
    with open(os.path.join(path, 'params_shapes.json'), 'w') as f:
        json.dump([list(np.shape(a)) for a in arrays], f)
    for n, shard in enumerate(np.array_split(flat, n_shards)):
        np.save(os.path.join(path, f'params_{n}.npy'), shard)
    return path


def released_shapes(n_embd, n_layer, n_pos, n_vocab):
    """Return the shapes of the arrays of a released folder for a GPT-1 of that size, in TF order (as
    params_shapes.json lists them): positions, tokens, then each block's TF_BLOCK arrays, conv weights [1, nx, nf]."""
    one = block_shapes(n_embd, 1)  # {'h.0.attn.c_attn.w': (nx, 3 * nx), ...}
    block = [[1, *one[torch_name(f'h0/{name}')]] if name.endswith('/w') else list(one[torch_name(f'h0/{name}')])
             for name in TF_BLOCK]
    return [[n_pos, n_embd], [n_vocab, n_embd]] + block * n_layer


def random_released_arrays(rng, n_embd, n_layer, n_pos, n_vocab):
    """Return the arrays of a released folder for a GPT-1 of that size drawn from rng (a numpy Generator): N(0, 0.02)
    everywhere, layer-norm gains 1; for tests and benchmarks that need weights in the released format."""
    arrays = [(rng.standard_normal(s) * 0.02).astype(np.float32) for s in released_shapes(n_embd, n_layer, n_pos, n_vocab)]
    for i in range(n_layer):
        for name in ('ln_1/g', 'ln_2/g'):
            arrays[2 + len(TF_BLOCK) * i + TF_BLOCK.index(name)][:] = 1
    return arrays


# --- GPT-2's released TensorFlow checkpoints ------------------------------------------------------------------

def read_hparams(path):
    """Return the hparams.json dict of a released GPT-2 folder (n_vocab, n_ctx, n_embd, n_head, n_layer), or raise
    naming the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path} is missing: a released GPT-2 folder holds it beside the checkpoint; it comes '
                                f'from {GPT2_SOURCE}')
    hparams = read_config_json(path)
    bad = [k for k in GPT2_HPARAMS if not (isinstance(hparams.get(k), int) and hparams[k] > 0)]
    if bad:
        raise ValueError(f'{path} lacks or has a bad {bad[0]!r} (it needs the positive integers '
                         f'{", ".join(GPT2_HPARAMS)}): download it again')
    return hparams


def tf_prefix(folder):
    """Return the checkpoint prefix of a folder: the one its `checkpoint` file names, else model.ckpt beside it."""
    if os.path.isfile(os.path.join(folder, 'checkpoint')):
        return tf_bundle.latest_checkpoint(folder)
    return os.path.join(folder, TF_PREFIX)


def read_tf_gpt2(folder):
    """Return the Checkpoint of a released GPT-2 folder (hparams.json + a TensorFlow checkpoint), read without
    TensorFlow: every tensor's CRC32C checked, every name and shape against hparams.json."""
    hparams_path = os.path.join(folder, HPARAMS_NAME)
    hparams = read_hparams(hparams_path)
    prefix = tf_prefix(folder)
    arrays = tf_bundle.read_tf_checkpoint(prefix)  # a damaged index or data file is an error naming it
    index_path = f'{prefix}.index'
    ignored = sorted(k for k in arrays if not k.startswith('model/'))  # e.g. an optimizer's slots
    for name in ('model/wte', 'model/wpe'):
        if name not in arrays:
            raise ValueError(f'{index_path} has no {name}: it is not a GPT-2 checkpoint')
    n_vocab, n_ctx, n_embd, n_layer = (hparams[k] for k in ('n_vocab', 'n_ctx', 'n_embd', 'n_layer'))
    wte, wpe = arrays.pop('model/wte'), arrays.pop('model/wpe')
    for name, array, shape in (('model/wte', wte, (n_vocab, n_embd)), ('model/wpe', wpe, (n_ctx, n_embd))):
        if tuple(array.shape) != shape:
            raise ValueError(f'{index_path}: {name} has shape {tuple(array.shape)}, but {hparams_path} gives {shape}')
    blocks = {}
    for name, array in arrays.items():
        if name.startswith('model/'):
            blocks[torch_name(name)] = from_tf_conv(array)
    check_blocks(blocks, n_embd, n_layer, index_path, family='gpt2')
    blocks = {k: np.asarray(v, dtype=np.float32) for k, v in blocks.items()}
    special = np.zeros((0, n_embd), np.float32)
    return Checkpoint(np.asarray(wte, np.float32), special, np.asarray(wpe, np.float32), blocks,
                      {'n_head': hparams['n_head']}, ignored=ignored, source=hparams_path, family='gpt2')


def gpt2_hparams(size):
    """Return the hparams.json dict of a released GPT-2 size ('124M', ...)."""
    n_embd, n_head, n_layer = GPT2_SIZES[size]
    return dict(n_vocab=50257, n_ctx=1024, n_embd=n_embd, n_head=n_head, n_layer=n_layer)


def gpt2_tensor_shapes(hparams):
    """Return {TF name: shape} of every variable of a GPT-2 checkpoint with these hparams."""
    nx = hparams['n_embd']
    shapes = {'model/wte': [hparams['n_vocab'], nx], 'model/wpe': [hparams['n_ctx'], nx], 'model/ln_f/g': [nx],
              'model/ln_f/b': [nx]}
    for key, shape in block_shapes(nx, hparams['n_layer']).items():  # 'h.3.attn.c_attn.w' -> 'model/h3/attn/c_attn/w'
        name = tf_name(key)
        shapes[name] = [1, *shape] if name.endswith('/w') else list(shape)
    return shapes


def gpt2_file_problem(folder, name, size, path=None):
    """Return (kind, plain-words description) of what is wrong with the released GPT-2 file `name` of the size
    `size` in folder (read from path when given: a download's .part), or (None, None) when it verifies: the
    vocabulary by SHA-256, hparams.json and `checkpoint` by their content, the index by its block CRC32Cs and every
    tensor's name, dtype and shape, the data by every tensor's CRC32C and its size; model.ckpt.meta, a TensorFlow
    graph no reader of the weights needs, only for being a plain non-empty file."""
    path = os.path.join(folder, name) if path is None else path
    kind, what = find_problem(path)  # missing, empty, a Git-LFS pointer, an HTML page
    if kind is not None:
        return kind, what
    try:
        if name in GPT2_VOCAB_SHA256:
            with open(path, 'rb') as f:
                got = hashlib.sha256(f.read()).hexdigest()
            if got != GPT2_VOCAB_SHA256[name]:
                return 'sha256', f'corrupt or truncated: expected SHA-256 {GPT2_VOCAB_SHA256[name]}, got {got}'
        elif name == HPARAMS_NAME:
            if read_config_json(path) != gpt2_hparams(size):
                return 'content', f'not the hparams of GPT-2 {size}: expected {json.dumps(gpt2_hparams(size))}'
        elif name == 'checkpoint':
            with open(path, encoding='utf-8', errors='replace') as f:
                if f'model_checkpoint_path: "{TF_PREFIX}"' not in f.read():
                    return 'content', f'does not name {TF_PREFIX} as the checkpoint'
        elif name == 'model.ckpt.index':
            entries = tf_bundle.tf_checkpoint_entries(os.path.join(folder, TF_PREFIX), index_path=path)
            want = gpt2_tensor_shapes(gpt2_hparams(size))
            got = {e.name: list(e.shape) for e in entries.values() if e.dtype == 'float32'}
            if got != want:
                wrong = sorted(set(got) ^ set(want)) or [n for n in want if got[n] != want[n]]
                return 'content', f'not the index of GPT-2 {size}: {wrong[0]} differs'
        elif name.startswith('model.ckpt.data-'):
            tf_bundle.verify_tf_checkpoint(os.path.join(folder, TF_PREFIX), data_paths={0: path})
    except (ValueError, OSError) as err:
        return 'corrupt', str(err)
    return None, None


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


def read_safetensors_with(path, read):
    """Return read(f) of the open .safetensors file f at path (no pickle); a missing or unreadable file raises
    naming it."""
    from safetensors import SafetensorError, safe_open
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path} is missing')
    try:
        with safe_open(path, framework='pt') as f:
            return read(f)
    except SafetensorError as err:
        raise ValueError(f'{path} is not a readable safetensors file ({err})') from None


def load_safetensors_file(path):
    """Return ({name: float32 numpy array}, metadata dict) of a .safetensors file, without pickle."""
    # float32 through torch so that bf16/fp16 files (numpy has no bf16) load too
    return read_safetensors_with(path, lambda f: ({k: f.get_tensor(k).to(torch.float32).numpy() for k in f.keys()},
                                                  f.metadata() or {}))


def read_safetensors(model_dir):
    """Return the Checkpoint in this project's folder (model.safetensors + config.json), of either family."""
    config_path = os.path.join(model_dir, CONFIG_NAME)
    config = read_config_json(config_path)
    if config.get('format') != FORMAT:
        raise ValueError(f'{config_path} is not a {FORMAT} config (its "format" is {config.get("format")!r}); '
                         f'for a transformers folder use convert.py from-transformers or models.load_model')
    family = config.get('family', 'gpt1')  # folders written before GPT-2 arrived state none
    if family not in FAMILIES:
        raise ValueError(f'{config_path}: unknown family {family!r}, expected one of {", ".join(FAMILIES)}')
    try:
        n_vocab, n_special, n_ctx, n_embd, n_layer = (int(config[k]) for k in SIZE_KEYS)
        int(config['n_head'])
    except (KeyError, ValueError, TypeError) as err:
        raise ValueError(f'{config_path} lacks or has a bad field ({err}): write it with convert.py') from None
    path = os.path.join(model_dir, WEIGHTS_NAME)
    tensors, metadata = load_safetensors_file(path)
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
    released = json.loads(metadata['released']) if 'released' in metadata else None
    tokens, special, positions = np.split(table, [n_vocab, n_vocab + n_special])
    architecture = {k: v for k, v in config.items() if k not in CONFIG_KEYS + SIZE_KEYS}
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


def hf_keys(weights_path):
    """Return the tensor names of a transformers weights file, from the headers of safetensors (a torch file is
    loaded)."""
    if weights_path.endswith('.index.json'):
        return list(read_config_json(weights_path).get('weight_map', {}))
    if weights_path.endswith('.safetensors'):
        return read_safetensors_with(weights_path, lambda f: list(f.keys()))
    return list(load_hf_state(weights_path))


def hf_family(config, keys, path):
    """Return the family of a transformers checkpoint: its config.json's model_type, else what its keys (tensor
    names) hold."""
    model_type = config.get('model_type')
    if model_type is not None:
        if model_type not in HF_MODEL_TYPES:
            raise ValueError(f'{path}: config.json has model_type {model_type!r}, expected one of '
                             f'{", ".join(map(repr, HF_MODEL_TYPES))}')
        return HF_MODEL_TYPES[model_type]
    for family, (token_key, _) in HF_TABLES.items():
        if token_key in keys or HF_PREFIX + token_key in keys:
            return family
    raise ValueError(f'{path} holds neither an OpenAI GPT nor a GPT-2 checkpoint (keys start {sorted(keys)[:3]})')


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
    """Return the Checkpoint in a transformers OpenAI GPT or GPT-2 folder or weights file.

    The token table's rows are [tokens; special]: n_vocab (default: from config.json's n_special, else every row)
    says how many are BPE tokens; the rest become special rows. n_head (and GPT-1's afn) come from config.json;
    pass them for a bare weights file.
    """
    weights_path = hf_weights_file(path)
    config = hf_config(path, weights_path)
    state = load_hf_state(weights_path)
    family = hf_family(config, state, path)
    body, ignored = split_hf_state(state, weights_path, family)
    token_key, position_key = HF_TABLES[family]
    for name in (token_key, position_key):
        if name not in body:
            raise ValueError(f'{weights_path} has no {name}: it is not a {family_name(family)} checkpoint '
                             f'(keys start {sorted(body)[:3]})')
    tokens_embed = body.pop(token_key)
    positions = body.pop(position_key)
    n_rows, n_embd = tokens_embed.shape
    n_layer = n_layer_of(body)
    eps = config.get('layer_norm_epsilon', LAYER_NORM_EPSILON)
    if eps != LAYER_NORM_EPSILON:
        raise ValueError(f'{path}: layer_norm_epsilon is {eps}; this port implements {LAYER_NORM_EPSILON} only')
    if n_head is None:
        n_head = config.get('n_head')
        if n_head is None:
            raise ValueError(f'{path}: no config.json gives n_head; put the config.json beside it or pass --n_head')
    architecture = dict(n_head=int(n_head), **hf_architecture(config, family, afn, path))
    if 'n_layer' in config and config['n_layer'] != n_layer:
        raise ValueError(f'{path}: config.json says n_layer={config["n_layer"]} but the weights hold {n_layer} blocks')
    if n_vocab is None:
        n_vocab = default_n_vocab(config, n_rows, path)
    if not 0 < n_vocab <= n_rows:
        raise ValueError(f'n_vocab={n_vocab} but {token_key} in {weights_path} has {n_rows} rows')
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
            raise ValueError(f'{path}: activation_function is {activation!r}; GPT-2 computes the tanh GELU (gelu_new)')
        for name, want in (('scale_attn_weights', True), ('scale_attn_by_inverse_layer_idx', False)):
            if config.get(name, want) != want:
                raise ValueError(f'{path}: {name} is {config[name]}; GPT-2 as released has {want}')
        return pdrops
    hf_afn = afn or config.get('afn', 'gelu')
    if hf_afn not in HF_TO_OUR_AFN:
        raise ValueError(f'{path}: afn {hf_afn!r} has no counterpart here; use one of {sorted(HF_TO_OUR_AFN)}')
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


# --- any folder ---------------------------------------------------------------------------------------------

def detect_format(path):
    """Return 'released', 'tf-checkpoint', 'safetensors' or 'transformers' for a model folder or weights file, or raise.

    A weights file is transformers'; a folder with a config.json is this project's or transformers' as it says; a
    folder with GPT-2's hparams.json or a TensorFlow checkpoint is GPT-2's released format; anything else
    (params_shapes.json, or missing files) is a released GPT-1 folder, whose reader names each missing file.
    """
    if os.path.isfile(path):
        return 'transformers'
    has = {name for name in (CONFIG_NAME, 'params_shapes.json', HPARAMS_NAME, *TF_FILES, WEIGHTS_NAME, HF_BIN_NAME)
           if os.path.isfile(os.path.join(path, name))}
    if CONFIG_NAME in has and 'params_shapes.json' not in has:
        config_path = os.path.join(path, CONFIG_NAME)
        config = read_config_json(config_path)
        if config.get('format') == FORMAT:
            return 'safetensors'
        if config.get('model_type') in HF_MODEL_TYPES:
            return 'transformers'
        raise ValueError(f'{config_path} is neither a {FORMAT} config nor a transformers openai-gpt or gpt2 one '
                         f'(its model_type is {config.get("model_type")!r})')
    if 'params_shapes.json' not in has and has & {HPARAMS_NAME, *TF_FILES}:
        return 'tf-checkpoint'
    for name in (WEIGHTS_NAME, HF_BIN_NAME):
        if name in has and 'params_shapes.json' not in has:
            raise FileNotFoundError(f'{path} holds {name} but no {CONFIG_NAME}: put the config.json that came with '
                                    f'the weights beside them')
    return 'released'


def detect_family(path):
    """Return the family of the model a folder or transformers weights file holds: 'gpt1' or 'gpt2'."""
    kind = detect_format(path)
    if kind in ('released', 'tf-checkpoint'):
        return 'gpt1' if kind == 'released' else 'gpt2'
    if os.path.isdir(path):
        config = read_config_json(os.path.join(path, CONFIG_NAME))
        return config.get('family', 'gpt1') if kind == 'safetensors' else HF_MODEL_TYPES[config['model_type']]
    return hf_family(hf_config(path, path), hf_keys(path), path)  # a bare weights file: by its keys


def read_checkpoint(path, n_head=None, afn=None, n_vocab=None, verify=False):
    """Return the Checkpoint in any supported folder (GPT-1's released shards, GPT-2's released checkpoint, this
    project's safetensors, transformers); n_head and afn are given to formats that do not store them; verify (GPT-1's
    released shards only) as read_released's."""
    kind = detect_format(path)
    if kind == 'released':
        return read_released(path, n_head=n_head, afn=afn, verify=verify)
    if verify:
        raise ValueError(f'{path} is not a released GPT-1 model/ folder: verification checks the released shards only '
                         f'(a GPT-2 checkpoint checks its CRC32Cs whenever it is read)')
    if kind == 'tf-checkpoint':
        ckpt = read_tf_gpt2(path)
    elif kind == 'safetensors':
        ckpt = read_safetensors(path)
    else:
        ckpt = read_transformers(path, n_vocab, n_head, afn)
    stored = ckpt.config.get('n_head')
    if n_head is not None and n_head != stored:
        raise ValueError(f'--n_head {n_head} contradicts n_head={stored} in {path}: leave it out')
    if afn is not None and ckpt.family == 'gpt2' and afn != 'gelu':
        raise ValueError(f'--afn {afn}: GPT-2 ({path}) computes gelu only: leave it out')
    stored = ckpt.config.get('afn', 'gelu')
    if kind == 'safetensors' and afn is not None and afn != stored:
        raise ValueError(f'--afn {afn} contradicts afn={stored} in {path}: leave it out')
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
    raise FileNotFoundError(f'{model_dir} holds no {" + ".join(VOCAB_FILES)}: copy them there from the released '
                            f'model/ folder or pass --encoder_path and --bpe_path')


def copy_vocab(src_dir, out_dir, names, family='gpt1'):
    """Copy the two vocabulary files of src_dir (either naming) into out_dir under `names`; return True if found."""
    if os.path.isfile(src_dir):  # a transformers weights file: look beside it
        src_dir = os.path.dirname(src_dir) or '.'
    found = find_vocab(src_dir, family)
    if found:
        os.makedirs(out_dir, exist_ok=True)
        for src, name in zip(found, names):
            shutil.copyfile(src, os.path.join(out_dir, name))
    return found is not None
