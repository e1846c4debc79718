"""GPT-2, faithful to openai/gpt-2's model.py (TF: model, block, attn, mlp, norm, conv1d, positions_for, past_shape).

Module and parameter names are the original's: `wte` [n_vocab, n_embd], `wpe` [n_ctx, n_embd], blocks
`h.{i}.ln_1 / attn.c_attn / attn.c_proj / ln_2 / mlp.c_fc / mlp.c_proj`, the final `ln_f`; the TF variable
`model/h3/attn/c_attn/w` [1, nx, nf] is `h.3.attn.c_attn.w` [nx, nf]. What changed from GPT-1: layer norm at the
input of each sub-block (pre-LN) and once more after the last block, separate token and position tables, the LM
decoder tied to `wte` alone, masked attention scores of -1e10. The pieces whose math is GPT-1's are GPT-1's
(model_pytorch: Conv1D, LayerNorm with epsilon inside the square root, tanh GELU, Attention).

Two interfaces:
- `GPT2LMHeadModel.forward(ids [B, T], past=None) -> (logits [B, T, n_vocab], present)`: the original `model()`'s
  `logits` and `present` (the keys and values of the T new tokens only, [B, n_layer, 2, n_head, T, head_dim]);
  `past` is everything before them stacked the same way, and positions continue from its length.
- `GPT2Model(x)` takes the project's `x [..., T, 2]` (token id, position id), as GPT-1's TransformerModel, with
  position ids `pos_offset + i` (pos_offset = rows of wte): train.py, pretrain.py, generate.py and
  extract_features.py feed both families alike, and the task heads of model_pytorch pool its hidden states.

The original has no dropout (it was released for inference); the dropout rates exist for fine-tuning and default
to 0. It has no training code either: for training from scratch the initialisation is the original's initialisers
(wte N(0, 0.02), wpe N(0, 0.01), conv weights N(0, 0.02), biases 0, gains 1) with the paper's scaling of the
residual projections (attn.c_proj.w and mlp.c_proj.w) by 1/sqrt(N), N = 2 * n_layer residual layers, as
nanoGPT does: the paper describes it, the released code has no initialisation step that shows it.
"""
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import model_pytorch
from model_pytorch import (MLP, Attention, DoubleHeadModel, LayerNorm, TransformerBase, check_fields, checkpoint_sizes,
                           clone_config, copy_arrays, own_config, special_rows)

# The released GPT-2 sizes: (n_embd, n_head, n_layer); each has n_vocab 50257 and n_ctx 1024.
GPT2_SIZES = {'124M': (768, 12, 12), '355M': (1024, 16, 24), '774M': (1280, 20, 36), '1558M': (1600, 25, 48)}
# The released sizes (openai/gpt-2's download_model.py names them by their parameter count).
PRESETS = {size: dict(n_embd=n_embd, n_head=n_head, n_layer=n_layer) for size, (n_embd, n_head, n_layer)
           in GPT2_SIZES.items()}


@dataclass(slots=True)
class GPT2Config:
    """GPT-2's hyperparameters (TF: default_hparams and hparams.json), the one thing a model is built from and the
    config.json it is saved with; `slots` makes a misspelt attribute an error. The defaults are the 124M model's."""
    n_vocab: int = 50257          # BPE token rows of wte (encoder.json, <|endoftext|> = 50256 included)
    n_ctx: int = 1024             # rows of wpe: the longest sequence
    n_embd: int = 768
    n_head: int = 12
    n_layer: int = 12
    embd_pdrop: float = 0.0       # dropout for fine-tuning; the released code has none
    attn_pdrop: float = 0.0
    resid_pdrop: float = 0.0
    clf_pdrop: float = 0.1        # the task heads' (GPT-1's fine-tuning recipe)
    n_special: int = 0            # rows appended to wte for fine-tuning (_start_, _delimiter_, _classify_)
    checkpoint_activations: bool = False  # recompute each block's activations in backward (same gradients)

    def __post_init__(self):
        self.check()

    def check(self):
        """Raise a plain ValueError naming the first field the model cannot be built with (a reader of a file wraps
        it to name the file); numpy scalars become Python's."""
        check_fields(self, f'give the n_head of a GPT-2 size ({preset_names()})')

    @property
    def n_rows(self):
        """Return the rows of wte: tokens, then special tokens."""
        return self.n_vocab + self.n_special

    @classmethod
    def preset(cls, name, **changes):
        """Return the config of a released size ('124M', '355M', '774M', '1558M'), with changes."""
        if name not in PRESETS:
            raise ValueError(f'unknown GPT-2 size {name!r}: choose one of {preset_names()}')
        return cls(**dict(PRESETS[name], **changes))


def preset_names():
    """Return the released sizes as text: '124M, 355M, 774M, 1558M'."""
    return ', '.join(PRESETS)


class Block(nn.Module):
    """One pre-layer-norm block (TF: block): x + attn(ln_1(x)), then + mlp(ln_2(x))."""

    def __init__(self, cfg):
        super().__init__()
        nx = cfg.n_embd
        self.ln_1 = LayerNorm(nx)
        # the original masks scores with -1e10 (GPT-1: -1e9); the fused kernels use -inf, the same softmax
        self.attn = Attention(nx, cfg.n_head, cfg.attn_pdrop, cfg.resid_pdrop, mask_value=1e10)
        self.ln_2 = LayerNorm(nx)
        self.mlp = MLP(4 * nx, nx, 'gelu', cfg.resid_pdrop)

    def forward(self, x, layer_past=None, attn_mask=None):
        """Return (h, present (k, v) of the cached and new positions) for x [B, T, nx]."""
        a, present = self.attn(self.ln_1(x), layer_past, attn_mask)
        x = x + a
        return x + self.mlp(self.ln_2(x)), present


class GPT2Model(TransformerBase):
    """GPT-2's transformer up to ln_f (TF: model): x [..., T, 2] (token id, position id) -> h [B, T, n_embd]."""

    def __init__(self, cfg=None):
        super().__init__()
        self.cfg = own_config(GPT2Config() if cfg is None else cfg, GPT2Config)
        self.cfg.check()
        cfg = self.cfg
        self.wte = nn.Embedding(cfg.n_rows, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.n_ctx, cfg.n_embd)
        self.h = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = LayerNorm(cfg.n_embd)
        init_weights(self)

    @property
    def lm_weight(self):
        """Return the table the tied LM decoder multiplies by: wte (TF: logits = h @ wte^T)."""
        return self.wte.weight

    def embed_inputs(self, x):
        """Return (h [B, T, n_embd], wte) of x [B, T, 2]: token rows of wte plus position rows of wpe, dropped out."""
        positions = x[..., 1] - self.pos_offset  # ids pos_offset + i -> rows i of wpe
        h = self.wte(x[..., 0]) + self.wpe(positions)  # TF: gather(wte, X) + gather(wpe, positions_for(X))
        return F.dropout(h, self.cfg.embd_pdrop, self.training), self.wte.weight

    def final(self, h):
        """Return the last block's output after ln_f (TF: h = norm(h, 'ln_f'))."""
        return self.ln_f(h)


def init_weights(model):
    """Initialise a GPT2Model as the original's initialisers do, the residual projections scaled by 1/sqrt(N)
    (N = 2 * n_layer, the paper's; see the module docstring); return it."""
    nn.init.normal_(model.wte.weight, std=0.02)
    nn.init.normal_(model.wpe.weight, std=0.01)
    scale = 1 / math.sqrt(2 * max(len(model.h), 1))
    for block in model.h:  # Conv1D and LayerNorm start as the original's (N(0, 0.02) weights, zero biases, unit gains)
        for proj in (block.attn.c_proj, block.mlp.c_proj):
            with torch.no_grad():
                proj.w.mul_(scale)
    return model


class GPT2LMHeadModel(nn.Module):
    """GPT-2 with its language-model head, the decoder tied to wte (TF: model)."""

    def __init__(self, cfg=None):
        super().__init__()
        self.transformer = GPT2Model(cfg)
        self.cfg = self.transformer.cfg

    def forward(self, ids, past=None):
        """Return (logits [B, T, rows of wte], present [B, n_layer, 2, n_head, T, head_dim]) for token ids [B, T] after
        past [B, n_layer, 2, n_head, T_past, head_dim] (or None), exactly the original model()'s logits and present.
        """
        if ids.dim() != 2:
            raise ValueError(f'ids must be [batch, sequence] token ids, got shape {tuple(ids.shape)}')
        B, T = ids.shape
        layer_pasts = None
        past_length = 0
        if past is not None:
            assert past.dim() == 6  # [batch, n_layer, 2, heads, sequence, features], as the original's 5-D per layer
            past_length = past.size(-2)
            layer_pasts = [(past[:, i, 0], past[:, i, 1]) for i in range(past.size(1))]
        if past_length + T > self.cfg.n_ctx:
            raise ValueError(f'{past_length} cached + {T} new positions exceed n_ctx={self.cfg.n_ctx}')
        positions = self.transformer.pos_offset + past_length + torch.arange(T, device=ids.device)  # positions_for
        x = torch.stack([ids, positions.expand(B, T)], dim=-1)  # [B, T] -> [B, T, 2]
        h, presents = self.transformer.forward_cached(x, layer_pasts)
        # each block's cache holds the past and the new positions; present is the new ones only, as the original's
        present = torch.stack([torch.stack([k[..., -T:, :], v[..., -T:, :]], dim=1) for k, v in presents], dim=1)
        logits = F.linear(h, self.transformer.wte.weight)  # [B, T, n_embd] -> [B, T, rows of wte]
        return logits, present


class GPT2DoubleHeadModel(DoubleHeadModel):
    """GPT-2 with the LM head and one of GPT-1's task heads (model_pytorch), for GPT-1's fine-tuning recipe:
    x -> (lm_logits over every row of wte, task_logits)."""

    def __init__(self, cfg, clf_token, task_head_type):
        super().__init__(cfg, clf_token, task_head_type, transformer=GPT2Model(cfg))


def checkpoint_config(ckpt, n_ctx=None, n_special=None):
    """Return the GPT2Config of a GPT-2 Checkpoint: the architecture its files state, its sizes (n_ctx and n_special
    when given); an unknown field raises naming the file."""
    return model_pytorch.checkpoint_config(ckpt, n_ctx, n_special, config_class=GPT2Config)


def model_from_checkpoint(ckpt, n_ctx=None, n_special=None, lm=False, model=None, n_transfer=None):
    """Return a GPT2Model (a GPT2LMHeadModel with lm) holding a GPT-2 Checkpoint, or load it into the given model.

    Positions cropped to n_ctx (default: all stored); special rows beyond the stored ones are drawn as GPT-1's loader
    draws them (model_pytorch.draw_special_rows: numpy's global generator). A model built here is in eval mode;
    a given model keeps its mode, and its n_ctx and n_special are used. n_transfer, as GPT-1's loader: the tables,
    ln_f and the first n_transfer blocks are copied (None: every block; -1: nothing, the special rows still drawn).
    """
    if model is not None:
        n_ctx, n_special = model.cfg.n_ctx, model.cfg.n_special
    n_ctx, n_special = checkpoint_sizes(ckpt, n_ctx, n_special)
    if model is None:
        cfg = checkpoint_config(ckpt, n_ctx=n_ctx, n_special=n_special)
        model = (GPT2LMHeadModel(cfg) if lm else GPT2Model(cfg)).eval()
    transformer = getattr(model, 'transformer', model)
    arrays = dict(ckpt.blocks, **{'wte.weight': np.concatenate([ckpt.tokens, special_rows(ckpt, n_special)], 0),
                                  'wpe.weight': ckpt.positions[:n_ctx]})
    state = transformer.state_dict()
    if n_transfer is None and set(arrays) != set(state):
        raise ValueError(f'the checkpoint has {ckpt.n_layer} blocks, the model {len(transformer.h)}')
    if n_transfer is not None:
        if n_transfer > min(len(transformer.h), ckpt.n_layer):
            raise ValueError(f'n_transfer={n_transfer} but the model has {len(transformer.h)} blocks and the weights '
                             f'{ckpt.n_layer}')
        kept = [k for k in arrays if not k.startswith('h.') or int(k.split('.')[1]) < n_transfer]
        arrays = {} if n_transfer == -1 else {k: arrays[k] for k in kept}
    copy_arrays(state, arrays)
    if arrays:
        transformer.cfg.n_vocab = ckpt.n_vocab
    return model


def make_task_model(ckpt, n_ctx, n_special, clf_token, task_head_type, cfg_fields, n_transfer=None):
    """Return the GPT2DoubleHeadModel of GPT-1's fine-tuning recipe on GPT-2 weights: the checkpoint's transformer
    with positions cropped to n_ctx and n_special rows appended to wte, drawn as GPT-1's loader draws special rows
    (model_from_checkpoint, through model_pytorch.draw_special_rows; n_transfer as its); cfg_fields set the dropouts
    and switches."""
    cfg = clone_config(checkpoint_config(ckpt, n_ctx=n_ctx, n_special=n_special), **cfg_fields)
    model = GPT2DoubleHeadModel(cfg, clf_token, task_head_type)
    model_from_checkpoint(ckpt, model=model.transformer, n_transfer=n_transfer)
    return model
