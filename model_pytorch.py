"""The GPT-1 transformer, its heads and the loader of the released weights.

TF counterpart: train.py's `model`, `embed`, `block`, `attn`, `_attn`, `mlp`, `norm`, `conv1d`, `clf`
and the weight-loading lines of its `__main__`. Module and parameter names follow the TF variable
scopes, so `model/h3/attn/c_attn/w:0` is `h.3.attn.c_attn.w` here (with the TF `[1, nx, nf]`
squeezed to `[nx, nf]`).

Input contract, stated once: `x [..., T, 2] int64` holds (token id, position id) pairs; position ids
are rows `n_vocab + n_special + i` of the same embedding table; `m [..., T] float` masks the tokens.
"""
import copy
import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from loss import LM_CHUNK, lm_losses_from_hidden, task_losses
from untrusted import BadFile, show
from weights import AFNS, block_keys, check_config_fields, detect_format, read_checkpoint, read_released


def gelu(x):
    """Return the tanh approximation of GELU, the original's `gelu` (TF: gelu)."""
    return F.gelu(x, approximate='tanh')


def swish(x):
    """Return x * sigmoid(x) (TF: swish)."""
    return F.silu(x)


ACT_FNS = {'relu': F.relu, 'swish': swish, 'gelu': gelu}
assert set(ACT_FNS) == set(AFNS), 'weights.AFNS names the activations a config may state'


def check_fields(cfg, hint):
    """Check every field of a config dataclass by weights.check_config_fields' rules (the one place that owns them:
    sizes ints, not bools, within untrusted.SIZE_LIMITS, dropouts finite in [0, 1), afn one of ACT_FNS,
    checkpoint_activations a bool, n_head dividing n_embd; hint: what to give instead of such an n_head), in
    declaration order, turning numpy scalars into Python's; a plain ValueError names the first bad field."""
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    for name, value in check_config_fields(fields, hint=hint).items():
        setattr(cfg, name, value)


@dataclass(slots=True)
class GPTConfig:
    """GPT-1's hyperparameters, the one thing a model is built from and the config.json it is saved with; `slots`
    makes a misspelt attribute (`cfg.n_heads = 4`) an error."""
    n_embd: int = 768
    n_head: int = 12
    n_layer: int = 12
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    resid_pdrop: float = 0.1
    clf_pdrop: float = 0.1
    afn: str = 'gelu'
    n_vocab: int = 40478          # BPE token rows of the table (encoder_bpe_40000.json)
    n_special: int = 0            # special-token rows after them (_start_, _delimiter_, _classify_, ...)
    n_ctx: int = 512              # position rows after those: the longest sequence
    checkpoint_activations: bool = False  # recompute each block's activations in backward (same gradients)

    def __post_init__(self):
        self.check()

    def check(self):
        """Raise a plain ValueError naming the first field the model cannot be built with (a reader of a file wraps
        it to name the file); numpy scalars become Python's."""
        check_fields(self, 'give the n_head the weights were trained with (the released GPT-1 has 12)')

    @property
    def n_rows(self):
        """Return the rows of the embedding table: tokens, special tokens and positions."""
        return self.n_vocab + self.n_special + self.n_ctx


# The earlier port's README builds `TransformerModel(DEFAULT_CONFIG)`; a model copies its config, but the object
# itself is shared by every importer: clone_config(DEFAULT_CONFIG, ...) rather than changing its fields.
DEFAULT_CONFIG = GPTConfig()

N_VOCAB = DEFAULT_CONFIG.n_vocab    # BPE tokens in encoder_bpe_40000.json
N_CTX_RELEASED = DEFAULT_CONFIG.n_ctx  # positions stored in the released weights

TASK_HEAD_TYPES = ('multiple_choice', 'similarity', 'inference', 'classification')


class Conv1D(nn.Module):
    """A 1x1 convolution, i.e. x @ w + b with w [nx, nf] (TF: conv1d with rf=1, clf).

    Inference under a CPU autocast (no gradient for w) multiplies by a copy of w cast and transposed to [nf, nx],
    nn.Linear's layout, made once per value of w: oneDNN's bf16 product of w's own layout runs 13-19x slower on a
    CPU without bf16 instructions (measured on the 2-core AVX2 CPU of BENCHMARKS.md, "Issue 29"); the same products.
    """

    def __init__(self, nf, nx):
        super().__init__()
        self.nf = nf
        self.w = nn.Parameter(torch.empty(nx, nf).normal_(std=0.02))
        self.b = nn.Parameter(torch.zeros(nf))
        self.inference_copy = None  # (the key of w's value and dtype, w cast and transposed [nf, nx])

    def forward(self, x):
        size_out = x.shape[:-1] + (self.nf,)
        x = x.reshape(-1, x.size(-1))  # [N, nx]
        if x.device.type == 'cpu' and torch.is_autocast_enabled('cpu') and not (
                torch.is_grad_enabled() and self.w.requires_grad):
            w_t = self.cast_transposed(torch.get_autocast_dtype('cpu'))  # [nf, nx]
            x = F.linear(x.to(w_t.dtype), w_t, self.b.to(w_t.dtype))  # [N, nx] -> [N, nf]
        else:
            x = torch.addmm(self.b, x, self.w)  # [N, nx] -> [N, nf]
        return x.view(size_out)

    def cast_transposed(self, dtype):
        """Return w cast to dtype and transposed, [nf, nx] contiguous, made again only when w's value changed."""
        key = (self.w.data_ptr(), self.w._version, dtype)
        if self.inference_copy is None or self.inference_copy[0] != key:
            self.inference_copy = (key, self.w.detach().to(dtype).t().contiguous())
        return self.inference_copy[1]


class LayerNorm(nn.Module):
    """Layer norm with epsilon inside the square root and parameters named g, b (TF: norm, _norm)."""

    def __init__(self, n_state, e=1e-5):
        super().__init__()
        self.g = nn.Parameter(torch.ones(n_state))
        self.b = nn.Parameter(torch.zeros(n_state))
        self.e = e

    def forward(self, x):
        # (x - mean) / sqrt(var + e) * g + b with the biased variance: exactly TF's _norm.
        return F.layer_norm(x, self.g.shape, self.g, self.b, self.e)


def causal_mask(n_q, n_k, device):
    """Return a [n_q, n_k] bool mask, True where query i (the last n_q of n_k positions) may attend."""
    return torch.ones(n_q, n_k, dtype=torch.bool, device=device).tril(diagonal=n_k - n_q)


def cached_mask(past_valid, n_q):
    """Return the [B, 1, n_q, P + n_q] bool mask of n_q new positions on top of a cache of P positions of which
    only past_valid [B, P] are real (ragged prefixes padded on the right): causal among the new ones."""
    B, P = past_valid.shape
    past = past_valid[:, None, None, :].expand(B, 1, n_q, P)
    new = causal_mask(n_q, n_q, past_valid.device).expand(B, 1, n_q, n_q)
    return torch.cat([past, new], dim=-1)


def packed_mask(segments):
    """Return the [P, 1, W, W] bool mask of rows [P, W] that hold several sequences back to back, segments [P, W]
    naming the sequence of each position: each position attends to the earlier ones of its own sequence."""
    W = segments.size(-1)
    same = segments[:, :, None] == segments[:, None, :]  # [P, W, W]
    return (same & causal_mask(W, W, segments.device))[:, None]


def uses_sdpa_math(q):
    """Return whether SDPA would run q's dtype and device with dropout on its math kernel upcast to fp32: bf16
    or fp16 on the CPU."""
    return q.device.type == 'cpu' and q.dtype in (torch.bfloat16, torch.float16)


class LayerCache:
    """One block's keys and values [B, H, n, hd] of the n positions fed so far, for decoding: kept in buffers with room
    to grow (doubled when full), so a step writes only its new positions instead of copying the whole cache as
    concatenation does, never past max_positions (None: no bound). It reads as the pair (k, v) of views of the filled
    part. For use without autograd."""

    def __init__(self, max_positions=None):
        self.k_buf = self.v_buf = None  # [B, H, capacity, hd]
        self.n = 0
        self.max_positions = max_positions

    @property
    def k(self):
        """Return the keys [B, H, n, hd] fed so far (a view of the buffer)."""
        return self.k_buf[..., :self.n, :]

    @property
    def v(self):
        """Return the values [B, H, n, hd] fed so far (a view of the buffer)."""
        return self.v_buf[..., :self.n, :]

    def append(self, k, v):
        """Return (keys, values) of the positions fed so far and k, v [B, H, t, hd] written after them."""
        t = k.size(-2)
        if self.k_buf is None or self.n + t > self.k_buf.size(-2):
            capacity = 2 * (self.n + t)
            if self.max_positions is not None:
                capacity = max(min(capacity, self.max_positions), self.n + t)
            self.grow(capacity, k)
        self.k_buf[..., self.n:self.n + t, :] = k
        self.v_buf[..., self.n:self.n + t, :] = v
        self.n += t
        return self.k, self.v

    def grow(self, capacity, like):
        """Move the filled part into new buffers of capacity positions, shaped and typed as like [B, H, t, hd]."""
        shape = like.shape[:-2] + (capacity, like.size(-1))
        k_buf, v_buf = like.new_empty(shape), like.new_empty(shape)
        if self.n:
            k_buf[..., :self.n, :], v_buf[..., :self.n, :] = self.k, self.v
        self.k_buf, self.v_buf = k_buf, v_buf

    def __iter__(self):
        return iter((self.k, self.v))

    def __getitem__(self, i):
        return (self.k, self.v)[i]

    def __len__(self):
        return 2


def new_cache(n_layer, max_positions=None):
    """Return an empty key/value cache for n_layer blocks, to pass as forward_cached's past; its buffers never grow
    past max_positions (e.g. the model's n_ctx; None: no bound)."""
    return [LayerCache(max_positions) for _ in range(n_layer)]


class Attention(nn.Module):
    """Masked multi-head self-attention (TF: attn, _attn, mask_attn_weights)."""

    def __init__(self, nx, n_head, attn_pdrop, resid_pdrop, mask_value=1e9):
        super().__init__()
        if nx % n_head != 0:
            raise ValueError(f'n_embd ({nx}) must be divisible by n_head ({n_head})')
        self.n_head = n_head
        self.c_attn = Conv1D(nx * 3, nx)
        self.c_proj = Conv1D(nx, nx)
        self.attn_pdrop = attn_pdrop
        self.resid_pdrop = resid_pdrop
        self.mask_value = mask_value  # what masked scores lose: GPT-1's 1e9, GPT-2's 1e10
        # 'sdpa' uses torch's fused kernels; 'explicit' computes the original's w*b - 1e9*(1-b) and
        # keeps the attention weights in `last_weights` for inspection.
        self.impl = 'sdpa'
        self.keep_weights = False
        self.last_weights = None

    def split_heads(self, x):
        """Return x [B, T, nx] as [B, n_head, T, nx // n_head]."""
        B, T, nx = x.shape
        return x.view(B, T, self.n_head, nx // self.n_head).transpose(1, 2)

    def explicit_attn(self, q, k, v, mask=None):
        """Return the original's attention output, computing the weights in full (TF: _attn)."""
        w = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(v.size(-1))  # [B, H, Tq, Tk]
        b = (causal_mask(q.size(-2), k.size(-2), q.device) if mask is None else mask).to(w.dtype)
        w = w * b - self.mask_value * (1 - b)
        w = F.softmax(w, dim=-1)
        if self.keep_weights:
            self.last_weights = w.detach()
        w = F.dropout(w, self.attn_pdrop, self.training)
        return torch.matmul(w, v)

    def forward(self, x, layer_past=None, attn_mask=None):
        """Return (a [B, T, nx], present (k, v)) for x [B, T, nx] and optional cached (k, v) or LayerCache.

        attn_mask [B or 1, 1, T, n_k] bool: True where a query may attend to a key (None: causal, the T queries
        being the last of the n_k positions).
        """
        q, k, v = self.c_attn(x).split(x.size(-1), dim=2)  # [B, T, 3*nx] -> 3 x [B, T, nx]
        q, k, v = self.split_heads(q), self.split_heads(k), self.split_heads(v)
        if isinstance(layer_past, LayerCache):  # written in place: present is the same cache
            k, v = layer_past.append(k, v)
            present = layer_past
        else:
            if layer_past is not None:
                k = torch.cat([layer_past[0], k], dim=-2)
                v = torch.cat([layer_past[1], v], dim=-2)
            present = (k, v)
        n_q, n_k = q.size(-2), k.size(-2)
        # Intentional difference (speed, bf16/fp16 on the CPU in training): SDPA's one CPU kernel with dropout
        # (math) upcasts to fp32 throughout, 1.5x slower; the explicit path keeps the scores, the softmax's
        # output (its reductions run in fp32) and P @ V in q's dtype, as the flash kernels on a GPU do, and
        # draws the same dropout masks.
        if self.impl == 'explicit' or self.keep_weights or (self.training and self.attn_pdrop > 0
                                                             and uses_sdpa_math(q)):
            a = self.explicit_attn(q, k, v, attn_mask)
        else:
            dropout_p = self.attn_pdrop if self.training else 0.0
            if attn_mask is None and n_q == n_k:
                a = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
            else:  # the mask given (a cache of ragged prefixes, packed sequences), else causal over the last n_q
                a = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p,
                                                   attn_mask=causal_mask(n_q, n_k, q.device) if attn_mask is None
                                                   else attn_mask)
        a = a.transpose(1, 2).reshape(x.shape)  # [B, H, T, hd] -> [B, T, nx]
        a = F.dropout(self.c_proj(a), self.resid_pdrop, self.training)
        return a, present


class MLP(nn.Module):
    """Position-wise feed-forward layer (TF: mlp)."""

    def __init__(self, n_state, nx, afn, resid_pdrop):
        super().__init__()
        if afn not in ACT_FNS:
            raise ValueError(f'unknown afn {afn!r}: choose one of {sorted(ACT_FNS)}')
        self.c_fc = Conv1D(n_state, nx)
        self.c_proj = Conv1D(nx, n_state)
        self.act = ACT_FNS[afn]
        self.resid_pdrop = resid_pdrop

    def forward(self, x):
        h = self.act(self.c_fc(x))  # [B, T, nx] -> [B, T, 4*nx]
        return F.dropout(self.c_proj(h), self.resid_pdrop, self.training)


class Block(nn.Module):
    """One post-layer-norm transformer block (TF: block)."""

    def __init__(self, cfg):
        super().__init__()
        nx = cfg.n_embd
        self.attn = Attention(nx, cfg.n_head, cfg.attn_pdrop, cfg.resid_pdrop)
        self.ln_1 = LayerNorm(nx)
        self.mlp = MLP(4 * nx, nx, cfg.afn, cfg.resid_pdrop)
        self.ln_2 = LayerNorm(nx)

    def forward(self, x, layer_past=None, attn_mask=None):
        """Return (h, present) for x [B, T, nx]."""
        a, present = self.attn(x, layer_past, attn_mask)
        n = self.ln_1(x + a)
        h = self.ln_2(n + self.mlp(n))
        return h, present


def own_config(cfg, config_class):
    """Return a deep copy of cfg, a config_class (a model keeps a config of its own); anything else is a TypeError
    naming the class to build."""
    if not isinstance(cfg, config_class):
        raise TypeError(f'the config must be a {config_class.__name__}, not {type(cfg).__name__}: build one with '
                        f'{config_class.__name__}(n_embd=..., ...) or clone_config(a config, field=value, ...)')
    return copy.deepcopy(cfg)


def resized_config(cfg, vocab=None, n_ctx=None):
    """Return a GPTConfig of a model's own: a copy of the GPTConfig cfg, resized by the earlier port's `vocab` (rows
    of the table) and `n_ctx` arguments when given.

    The earlier port's vocab does not say which rows are tokens: cfg's n_vocab when they fit, the rest special
    rows; else all of them tokens. Loading weights sets the split the weights give.
    """
    cfg = own_config(cfg, GPTConfig)
    if n_ctx is not None:
        cfg.n_ctx = n_ctx
    if vocab is not None:
        rows = vocab - cfg.n_ctx  # token and special rows
        if rows < 0:
            raise ValueError(f'vocab={vocab} rows cannot hold n_ctx={cfg.n_ctx} positions')
        cfg.n_vocab, cfg.n_special = (cfg.n_vocab, rows - cfg.n_vocab) if cfg.n_vocab <= rows else (rows, 0)
    cfg.check()
    return cfg


class TransformerBase(nn.Module):
    """What GPT-1's and GPT-2's transformers share: the blocks `h` run over the embedded inputs, with a (k, v) cache,
    activation checkpointing and every block's output on request. A subclass embeds the inputs (embed_inputs) and
    may normalise the last block's output (final)."""

    @property
    def n_ctx(self):
        """Return the number of positions: the longest sequence."""
        return self.cfg.n_ctx

    @property
    def n_embd(self):
        """Return the width of the hidden states."""
        return self.cfg.n_embd

    @property
    def pos_offset(self):
        """Return the id of position 0 in x: the token and special-token rows before it (GPT-1: rows of the one
        table, the positions after them; GPT-2: the rows of wte)."""
        return self.cfg.n_vocab + self.cfg.n_special

    def final(self, h):
        """Return the last block's output as the transformer returns it (GPT-1: as it is)."""
        return h

    def run_blocks(self, x, past=None, collect_hidden=False, attn_mask=None):
        """Return (h, the table the tied LM decoder uses, presents, hidden_states) for x [..., T, 2]; the core of
        every forward.

        past: per block the (k, v) of earlier positions (or a new_cache()); attn_mask [B or 1, 1, T, n_k] bool:
        which keys each query may see, for every block (None: causal). hidden_states: the embeddings and each
        block's output, the last as final() returns it.
        """
        if x.size(-1) != 2:
            raise ValueError(f'x must be [..., T, 2] (token id, position id), got shape {tuple(x.shape)}')
        x = x.reshape(-1, x.size(-2), 2)  # [..., T, 2] -> [B, T, 2]
        h, we = self.embed_inputs(x)  # [B, T, 2] -> [B, T, n_embd]
        hidden_states = [h] if collect_hidden else None
        presents = []
        # checkpoint_activations: recompute each block in the backward pass instead of keeping its activations
        # (the batch of 32 on small GPUs); dropout masks are replayed, so the gradients are unchanged.
        checkpointing = self.cfg.checkpoint_activations and self.training and torch.is_grad_enabled()
        for i, block in enumerate(self.h):
            layer_past = None if past is None else past[i]
            if checkpointing:
                h, present = torch.utils.checkpoint.checkpoint(block, h, layer_past, attn_mask, use_reentrant=False)
            else:
                h, present = block(h, layer_past, attn_mask)
            presents.append(present)
            if collect_hidden:
                hidden_states.append(h)
        h = self.final(h)
        if collect_hidden:
            hidden_states[-1] = h
        return h, we, presents, hidden_states

    def forward(self, x, return_we=False):
        """Return h [B, T, n_embd]; with return_we, (h, the table used), for a tied LM decoder."""
        h, we, _, _ = self.run_blocks(x)
        return (h, we) if return_we else h

    def all_hidden_states(self, x):
        """Return the embeddings and every block's output: a list of n_layer + 1 [B, T, n_embd]."""
        return self.run_blocks(x, collect_hidden=True)[3]

    def forward_cached(self, x, past=None, past_valid=None):
        """Return (h, presents) for new positions x given the (k, v) cache `past` of earlier ones; each present holds
        the cached and the new positions (the next call's past).

        past_valid [B, P] marks the real positions of a cache of ragged prefixes padded on the right.
        """
        attn_mask = None if past_valid is None else cached_mask(past_valid, x.size(-2))  # [B, 1, T, P + T]
        h, _, presents, _ = self.run_blocks(x, past=past, attn_mask=attn_mask)
        return h, presents

    def forward_packed(self, x, segments):
        """Return (h [P, W, n_embd], presents (k, v) [P, H, W, hd] per block) for rows x [P, W, 2] that each hold
        several sequences back to back, segments [P, W] naming the sequence of each position: each sequence runs
        as it would alone (its own position ids are in x), the padding of a row being a sequence of its own."""
        h, _, presents, _ = self.run_blocks(x, attn_mask=packed_mask(segments))
        return h, presents


class TransformerModel(TransformerBase):
    """The GPT-1 transformer: x [..., T, 2] -> hidden states [-1, T, n_embd] (TF: model, embed)."""

    def __init__(self, cfg=None, vocab=None, n_ctx=None):
        super().__init__()
        self.cfg = resized_config(GPTConfig() if cfg is None else cfg, vocab, n_ctx)
        # Rows are [tokens; special tokens; positions], the original's single `we` table.
        self.embed = nn.Embedding(self.cfg.n_rows, self.cfg.n_embd)
        nn.init.normal_(self.embed.weight, std=0.02)
        # Each block built afresh: independent initial weights (the earlier port deep-copied one).
        self.h = nn.ModuleList([Block(self.cfg) for _ in range(self.cfg.n_layer)])

    @property
    def lm_weight(self):
        """Return the table the tied LM decoder multiplies by: every row, as the original's softmax."""
        return self.embed.weight

    def embedding_table(self):
        """Return the embedding table as this forward pass sees it (dropped out when training)."""
        # TF drops entries of the table itself (`we = dropout(we)`); the lookup and the tied LM
        # decoder then share that one dropped table, so a token seen twice sees the same row.
        return F.dropout(self.embed.weight, self.cfg.embd_pdrop, self.training)

    def embed_inputs(self, x):
        """Return (h [B, T, n_embd], we: the table of this pass) of x [B, T, 2]: each token's and position's rows
        of the dropped-out table summed (TF: embed)."""
        we = self.embedding_table()
        return F.embedding(x, we).sum(dim=2), we  # [B, T, 2, n_embd] -> [B, T, n_embd]


class LMHead(nn.Module):
    """Language-model decoder tied to the embedding table (TF: lm_logits = h @ we^T)."""

    def __init__(self, model, cfg, trunc_and_reshape=True):
        super().__init__()
        self.n_embd = cfg.n_embd
        embed_shape = model.lm_weight.shape
        self.decoder = nn.Linear(embed_shape[1], embed_shape[0], bias=False)
        self.decoder.weight = model.lm_weight  # tied weights
        self.trunc_and_reshape = trunc_and_reshape

    def forward(self, h, we=None):
        """Return logits over every row of the table: [B*(T-1), rows] when truncating, else [B, T, rows]."""
        if self.trunc_and_reshape:
            h = h[:, :-1].reshape(-1, self.n_embd)  # [B, T, n_embd] -> [B*(T-1), n_embd]
        # `we` is the dropped table of the same forward pass; the original's softmax covers every
        # row (tokens, special tokens and positions).
        return F.linear(h, self.decoder.weight if we is None else we)


def pool_idx(x, clf_token, check=True):
    """Return the index of the first clf_token in each sequence of x [N, T, 2] (TF: argmax of equal); with check, a
    sequence without one is an error (a read of the device: train.py's updates, whose sequences end with clf_token by
    construction, leave it out)."""
    is_clf = x[..., 0] == clf_token  # [N, T]
    # Under torch.compile the check is left out: its data-dependent branch would split the graph in two.
    # The eager evaluation of the same data still runs it.
    if not check or torch.compiler.is_compiling():
        return is_clf.int().argmax(dim=1)
    missing = ~is_clf.any(dim=1)
    if missing.any():
        raise ValueError(f'{int(missing.sum())} of {x.size(0)} sequences hold no classify token '
                         f'(id {clf_token}); end every sequence with it (see transform_roc)')
    return is_clf.int().argmax(dim=1)


def pool(h, x, clf_token, check=True):
    """Return the hidden state at the first clf_token: h [N, T, n_embd] -> [N, n_embd] (check: as pool_idx)."""
    x = x.reshape(-1, x.size(-2), 2)
    return h[torch.arange(h.size(0), device=h.device), pool_idx(x, clf_token, check)]


def shared_dropout(clf_h, pdrop, training):
    """Return clf_h [B, C, n_embd] dropped with one mask per example shared by its C choices."""
    if not training or pdrop == 0:
        return clf_h
    # TF: tf.nn.dropout(clf_h, 1 - clf_pdrop, noise_shape=[B, 1, n_embd])
    mask = F.dropout(clf_h.new_ones(clf_h.size(0), 1, clf_h.size(2)), pdrop, True)
    return clf_h * mask


class MultipleChoiceHead(nn.Module):
    """One score per choice, compared across choices by the loss (TF: the clf part of model)."""

    def __init__(self, clf_token, cfg):
        super().__init__()
        self.clf_token = clf_token
        self.n_embd = cfg.n_embd
        self.clf_pdrop = cfg.clf_pdrop
        self.clf = Conv1D(1, self.n_embd)  # TF: model/clf/w [n_embd, 1], model/clf/b [1]

    def forward(self, h, x, check=True):
        """Return logits [B, C] for h [B*C, T, n_embd] and x [B, C, T, 2] (check: as pool_idx)."""
        n_choices = x.size(1)
        clf_h = pool(h, x, self.clf_token, check).view(-1, n_choices, self.n_embd)  # [B*C, n] -> [B, C, n]
        clf_h = shared_dropout(clf_h, self.clf_pdrop, self.training)
        return self.clf(clf_h).view(-1, n_choices)  # [B, C, 1] -> [B, C]


class ClfHead(nn.Module):
    """A linear classifier on the pooled state of one sequence per example (paper: classification, entailment)."""

    def __init__(self, clf_token, cfg, n_class):
        super().__init__()
        self.clf_token = clf_token
        self.n_embd = cfg.n_embd
        self.clf_pdrop = cfg.clf_pdrop
        self.clf = Conv1D(n_class, self.n_embd)

    def forward(self, h, x, check=True):
        """Return logits [B, n_class] for h [B, T, n_embd] and x [B, T, 2] (or [B, 1, T, 2]) (check: as pool_idx)."""
        clf_h = pool(h, x, self.clf_token, check).unsqueeze(1)  # [B, n_embd] -> [B, 1, n_embd]
        clf_h = shared_dropout(clf_h, self.clf_pdrop, self.training)
        return self.clf(clf_h).squeeze(1)


class SimilarityHead(nn.Module):
    """Sum of the pooled states of both orderings, then a linear layer (paper, Section 3.3: similarity)."""

    def __init__(self, clf_token, cfg, n_class=1):
        super().__init__()
        self.clf_token = clf_token
        self.n_class = n_class
        self.n_embd = cfg.n_embd
        self.clf_pdrop = cfg.clf_pdrop
        self.clf = Conv1D(n_class, self.n_embd)

    def forward(self, h, x, check=True):
        """Return scores [B] (n_class 1, regression) or logits [B, n_class] for x [B, 2, T, 2] (check: as
        pool_idx)."""
        clf_h = pool(h, x, self.clf_token, check).view(-1, 2, self.n_embd).sum(dim=1, keepdim=True)  # -> [B, 1, n]
        clf_h = shared_dropout(clf_h, self.clf_pdrop, self.training)
        logits = self.clf(clf_h).squeeze(1)  # [B, 1, n_class] -> [B, n_class]
        return logits.squeeze(-1) if self.n_class == 1 else logits


def make_task_head(clf_token, cfg, task_head_type):
    """Return the head for task_head_type: a name or a (name, n_class) pair."""
    name, n_class = (task_head_type, None) if isinstance(task_head_type, str) else tuple(task_head_type)
    if name == 'multiple_choice':
        return MultipleChoiceHead(clf_token, cfg)
    if name == 'similarity':
        return SimilarityHead(clf_token, cfg, n_class or 1)
    if name == 'inference':
        return ClfHead(clf_token, cfg, n_class or 3)
    if name == 'classification' and n_class:
        return ClfHead(clf_token, cfg, n_class)
    raise ValueError(f'unknown task_head_type {task_head_type!r}: use one of {TASK_HEAD_TYPES[:3]} '
                     f"or ('classification', n_class)")


class LMModel(nn.Module):
    """Transformer with the tied language-model head."""

    def __init__(self, cfg=None, vocab=None, n_ctx=None, return_probs=False):
        super().__init__()
        self.transformer = TransformerModel(cfg, vocab=vocab, n_ctx=n_ctx)
        self.cfg = self.transformer.cfg
        self.lm_head = LMHead(self.transformer, self.cfg, trunc_and_reshape=False)
        self.return_probs = return_probs

    def forward(self, x):
        """Return logits [B, T, rows] over the whole table (softmax probabilities with return_probs)."""
        h, we = self.transformer(x, return_we=True)
        lm_logits = self.lm_head(h, we)
        return F.softmax(lm_logits, dim=-1) if self.return_probs else lm_logits


# Eager under torch.compile: the compiled region is the transformer and the heads, as before the model owned its
# losses; the LM loss's selection of masked positions has a data-dependent shape that would split the graph.
@torch.compiler.disable
def losses_of_outputs(h, we, task_logits, x, m, y, lm_coef):
    """Return (task losses [B], LM losses [B*C] or None when lm_coef is 0) of a DoubleHeadModel's hidden states h,
    table we and task logits for inputs x, mask m and labels y (TF: clf_losses, lm_losses)."""
    lm = None
    if lm_coef > 0:
        lm = lm_losses_from_hidden(h, we, x, m, chunk_size=LM_CHUNK)
    return task_losses(task_logits, y), lm


class DoubleHeadModel(nn.Module):
    """Transformer with the LM head and a task head: x -> (lm_logits, task_logits), or with the targets m and y the
    per-example losses (TF: model)."""

    def __init__(self, cfg, clf_token, task_head_type, vocab=None, n_ctx=None, transformer=None):
        super().__init__()
        # transformer: another family's transformer with the same interface (model_gpt2.GPT2DoubleHeadModel)
        self.transformer = TransformerModel(cfg, vocab=vocab, n_ctx=n_ctx) if transformer is None else transformer
        self.cfg = self.transformer.cfg
        self.lm_head = LMHead(self.transformer, self.cfg)
        self.task_head = make_task_head(clf_token, self.cfg, task_head_type)

    def forward(self, x, m=None, y=None, lm_coef=0.5, check=True):
        """Return (lm_logits [N*(T-1), rows], task_logits) exactly as the original computes them; given the mask m
        and labels y, return self.losses(x, m, y, lm_coef, check) instead.

        The losses go through forward because DDP and torch.compile wrap forward only: training calls
        `net(x, m, y, lm_coef)` on the wrapped model. check: as hidden_and_task's.
        """
        if (m is None) != (y is None):
            raise ValueError('give both the mask m and the labels y (for the losses) or neither (for the logits)')
        if m is not None:
            return self.losses(x, m, y, lm_coef, check)
        h, we = self.transformer(x, return_we=True)
        return self.lm_head(h, we), self.task_head(h, x, check)

    def losses(self, x, m, y, lm_coef, check=True):
        """Return (task_logits, task losses [B], LM losses [B*C] or None when lm_coef is 0) of x [B, C, T, 2] (or
        [B, T, 2]) with mask m [..., T] and labels y [B] (TF: clf_losses, lm_losses): loss.task_losses, squared
        error for a similarity head's one score, else cross-entropy.

        The LM losses decode only the positions whose mask is 1, LM_CHUNK at a time (loss.lm_losses_from_hidden):
        the original's full-softmax losses at less cost. check: as hidden_and_task's (an update whose sequences
        end with clf_token by construction leaves it out: a read of the device per micro-batch).
        """
        h, we, task_logits = self.hidden_and_task(x, check)
        return (task_logits, *losses_of_outputs(h, we, task_logits, x, m, y, lm_coef))

    def hidden_and_task(self, x, check=True):
        """Return (h, we, task_logits) without LM logits, for losses that decode only masked positions (check: a
        sequence without clf_token is an error, as pool_idx)."""
        h, we = self.transformer(x, return_we=True)
        return h, we, self.task_head(h, x, check)

    def choice_logits_from_shared_prefix(self, x, prefix):
        """Return the task logits [B, C] of multiple-choice x [B, C, T, 2] whose C sequences share their first
        prefix[b] >= 1 positions (tokens and position ids): each prefix runs once, each choice's rest on top of
        its key/value cache. Evaluation only (training draws separate dropout masks for the choices)."""
        if self.training:
            raise RuntimeError('choice_logits_from_shared_prefix is for evaluation: call model.eval() first')
        B, C, T, _ = x.shape
        P = int(prefix.max())
        # every example's prefix, padded on the right with what its first choice holds there (masked below)
        _, past = self.transformer.forward_cached(x[:, 0, :P])  # [B, P, 2] -> per block (k, v) [B, H, P, hd]
        past = [(k.repeat_interleave(C, 0), v.repeat_interleave(C, 0)) for k, v in past]  # -> [B*C, H, P, hd]
        valid = torch.arange(P, device=x.device) < prefix[:, None]  # [B, P]
        # each choice's rest up to its classify token, shifted to start at 0 and as long as the longest rest;
        # what lies past a sequence's classify token (padding, or position T-1 repeated) comes after the pooled
        # position, so causal attention keeps it out of the pooled state
        ends = pool_idx(x.reshape(B * C, T, 2), self.task_head.clf_token).view(B, C) + 1  # [B, C]
        R = int((ends - prefix[:, None]).max())
        idx = (prefix[:, None] + torch.arange(R, device=x.device)).clamp(max=T - 1)  # [B, R]
        rest = x.gather(2, idx[:, None, :, None].expand(B, C, R, 2))  # [B, C, T, 2] -> [B, C, R, 2]
        h, _ = self.transformer.forward_cached(rest.reshape(B * C, R, 2), past, valid.repeat_interleave(C, 0))
        return self.task_head(h, rest)


def check_shape(name, param, array):
    """Raise a ValueError naming the parameter when array's shape does not fit param."""
    if tuple(param.shape) != tuple(array.shape):
        raise ValueError(f'shape mismatch for {name}: the model has {tuple(param.shape)}, the weights '
                         f'give {tuple(array.shape)} (check n_embd/n_layer/n_ctx/n_special)')


def copy_arrays(state, arrays):
    """Copy each array into the state_dict tensor of its key, every shape checked before anything is copied."""
    for key, array in arrays.items():
        check_shape(key, state[key], array)
    with torch.no_grad():
        for key, array in arrays.items():
            state[key].copy_(torch.from_numpy(np.ascontiguousarray(array)))


def check_architecture(ckpt, cfg, path):
    """Raise a ValueError naming, in one line, every field of the heads and activation that a checkpoint states and
    the model's config contradicts."""
    names = [name for name in ('n_head', 'afn') if name in ckpt.config and ckpt.config[name] != getattr(cfg, name)]
    if names:
        stated = ', '.join(f'{name}={show(ckpt.config[name])}' for name in names)
        built = ', '.join(f'{name}={getattr(cfg, name)!r}' for name in names)
        raise ValueError(f"{path} holds a model with {stated}, this model has {built}: build it with the weights' "
                         f"architecture")


def check_transfer(n_transfer, n_blocks, ckpt_layers, path):
    """Return how many blocks to copy (the original's n_transfer, at most the checkpoint's blocks; -1: none) into a
    model of n_blocks from a checkpoint of ckpt_layers; raise a ValueError when blocks the checkpoint does not hold
    would stay randomly initialised without n_transfer asking for that."""
    if n_transfer == -1:
        return -1
    if n_transfer > ckpt_layers and n_blocks > ckpt_layers:
        raise ValueError(f'{path} holds {ckpt_layers} blocks but the model has {n_blocks}: blocks {ckpt_layers} to '
                         f'{n_blocks - 1} would stay randomly initialised; build the model with n_layer={ckpt_layers} '
                         f'(the weights\'), or transfer n_transfer={ckpt_layers} blocks or fewer on purpose')
    n_transfer = min(n_transfer, ckpt_layers)
    if n_transfer > n_blocks:
        raise ValueError(f'n_transfer={n_transfer} but the model has only {n_blocks} blocks')
    return n_transfer


def load_openai_pretrained_model(model, n_ctx=-1, n_special=-1, n_transfer=12, n_embd=768, path='./model/',
                                 verify=False, ckpt=None):
    """Load the released weights into a TransformerModel (or a model with `.transformer`); return it.

    path may also be this project's safetensors folder (model.safetensors + config.json) or a transformers
    openai-gpt folder or weights file, e.g. the output of pretrain.py: loaded the same way (their special rows
    are not used). The files are read by weights.py; ckpt: a Checkpoint already read from path (then path only
    names it in messages; verify=True with a ckpt is refused: it was read without being verified here).

    As the original train.py: positions cropped to n_ctx, then `we = [tokens; special; positions]`
    with the special rows drawn as `np.random.randn(n_special, n_embd) * 0.02` from numpy's global
    generator, and the table plus the first n_transfer blocks copied (n_transfer -1: nothing).
    n_ctx and n_special of -1 are read off the model. With verify=True every file's git blob SHA-1 is checked
    first against the released values (a dict {file name: SHA-1} checks against those instead).

    A model with more blocks than the checkpoint is refused unless n_transfer asks for at most the checkpoint's
    blocks: a block the weights do not hold is never left randomly initialised silently.
    """
    transformer = getattr(model, 'transformer', model)
    if ckpt is not None and verify:
        raise ValueError(f'verify=True with a checkpoint already read from {path}: verify it while reading it '
                         f'(weights.read_checkpoint(path, verify=True)), or pass no ckpt')
    if ckpt is None and detect_format(path) == 'released':
        ckpt = read_released(path, verify=verify)
    elif ckpt is None and verify:
        raise ValueError(f'{path} is not a released model/ folder: verification checks the released shards only')
    elif ckpt is None:
        ckpt = read_checkpoint(path)
    if len(transformer.h):
        check_architecture(ckpt, transformer.cfg, path)
    if n_embd != ckpt.n_embd:
        if n_embd != 768:  # the default is the released size; smaller checkpoints need not pass it
            raise ValueError(f'n_embd={n_embd} but the weights in {path} have n_embd={ckpt.n_embd}')
        n_embd = ckpt.n_embd
    if n_ctx == -1:
        n_ctx = transformer.n_ctx
    if n_ctx > ckpt.n_pos:
        raise ValueError(f'n_ctx={n_ctx} exceeds the {ckpt.n_pos} positions stored in {path}')
    if n_special == -1:
        n_special = transformer.embed.weight.shape[0] - ckpt.n_vocab - n_ctx
        if n_special < 0:
            raise ValueError(f'the model table has {transformer.embed.weight.shape[0]} rows, fewer than the '
                             f'{ckpt.n_vocab} tokens + {n_ctx} positions of the weights')
    n_transfer = check_transfer(n_transfer, len(transformer.h), ckpt.n_layer, path)
    # the original draws every special row; stored ones (e.g. pre-training's separator) are not copied
    we = embedding_table(ckpt, draw_special_rows(n_special, n_embd), n_ctx)

    state = transformer.state_dict()
    updates = {}
    if n_transfer != -1:  # the original: -1 copies nothing, k copies the table and k blocks
        updates['embed.weight'] = we
        for key in block_keys(n_transfer):
            updates[key] = ckpt.blocks[key]
    copy_arrays(state, updates)
    if updates:  # the table's rows are now the weights' tokens and the drawn special rows
        transformer.cfg.n_vocab, transformer.cfg.n_special = ckpt.n_vocab, n_special
    return model


def checkpoint_config(ckpt, n_ctx=None, n_special=None, config_class=GPTConfig):
    """Return the config (a GPTConfig, or config_class) of a Checkpoint: the architecture its files state, the config's
    defaults for what they do not (GPT-1: the released 12 heads and gelu), its sizes (n_ctx and n_special when
    given). A field of the wrong type or range is a BadFile naming the file it was read from (ckpt.source; a plain
    ValueError when the checkpoint names none, as released shards, whose n_head and afn come from the caller); a bad
    n_ctx or n_special argument is a plain ValueError naming the argument."""
    for name, value in (('n_ctx', n_ctx), ('n_special', n_special)):  # the caller's: never blamed on the file
        if value is not None:
            try:
                check_config_fields({name: value})
            except ValueError as err:
                raise ValueError(f'the argument {name}={show(value)}: {err}') from None
    fields = dict(ckpt.config, n_embd=ckpt.n_embd, n_layer=ckpt.n_layer, n_vocab=ckpt.n_vocab,
                  n_special=ckpt.n_special if n_special is None else n_special,
                  n_ctx=ckpt.n_pos if n_ctx is None else n_ctx)
    try:
        unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(config_class)}, key=str)
        if unknown:
            raise ValueError(f'states {show(unknown[0])}, which is no field of {config_class.__name__}')
        return config_class(**fields)
    except ValueError as err:
        if ckpt.source is None:
            raise ValueError(f'the checkpoint {err}' if unknown else str(err)) from None
        raise BadFile(f'{ckpt.source}: {err}', ckpt.source) from None


def checkpoint_sizes(ckpt, n_ctx=None, n_special=None):
    """Return (n_ctx, n_special) of a model holding ckpt (default: as stored), checked against what it stores."""
    n_ctx = ckpt.n_pos if n_ctx is None else n_ctx
    n_special = ckpt.n_special if n_special is None else n_special
    if not 0 < n_ctx <= ckpt.n_pos:
        raise ValueError(f'n_ctx={n_ctx} but the checkpoint stores {ckpt.n_pos} positions: use 1..{ckpt.n_pos}')
    if n_special < ckpt.n_special:
        raise ValueError(f'n_special={n_special} but the checkpoint stores {ckpt.n_special} special rows: '
                         f'the model needs at least as many')
    return n_ctx, n_special


def draw_special_rows(n_special, n_embd):
    """Return n_special new special-token rows [n_special, n_embd] float32, drawn as the original train.py draws
    them: np.random.randn(n_special, n_embd) * 0.02 from numpy's global generator (np.random.seed reproduces it)."""
    return (np.random.randn(n_special, n_embd) * 0.02).astype(np.float32)


def special_rows(ckpt, n_special):
    """Return ckpt's special rows and the ones beyond them up to n_special, drawn by draw_special_rows."""
    return np.concatenate([ckpt.special, draw_special_rows(n_special - ckpt.n_special, ckpt.n_embd)], 0)


def embedding_table(ckpt, special, n_ctx):
    """Return GPT-1's table [tokens; special; positions] of ckpt, its positions cropped to n_ctx (TF: we)."""
    return np.concatenate([ckpt.tokens, special, ckpt.positions[:n_ctx]], 0)


def model_from_checkpoint(ckpt, n_ctx=None, n_special=None, lm=False, model=None):
    """Return a TransformerModel (an LMModel with lm) holding ckpt, or load ckpt into the given model.

    As the original train.py: positions cropped to n_ctx (default: all stored), special rows beyond the stored
    ones drawn as np.random.randn(k, n_embd) * 0.02 from numpy's global generator. A model built here is in
    eval mode; a given model keeps its mode, and its n_ctx and n_special (from its table) are used.
    """
    if model is not None:
        transformer = getattr(model, 'transformer', model)
        n_ctx = transformer.n_ctx
        n_special = transformer.embed.weight.shape[0] - n_ctx - ckpt.n_vocab
    n_ctx, n_special = checkpoint_sizes(ckpt, n_ctx, n_special)
    if model is None:
        cfg = checkpoint_config(ckpt, n_ctx=n_ctx, n_special=n_special)
        model = (LMModel(cfg) if lm else TransformerModel(cfg)).eval()
        transformer = getattr(model, 'transformer', model)
    table = embedding_table(ckpt, special_rows(ckpt, n_special), n_ctx)
    state = transformer.state_dict()
    arrays = dict(ckpt.blocks, **{'embed.weight': table})
    if set(arrays) != set(state):
        raise ValueError(f'the checkpoint has {ckpt.n_layer} blocks, the model {len(transformer.h)}')
    copy_arrays(state, arrays)
    transformer.cfg.n_vocab, transformer.cfg.n_special = ckpt.n_vocab, n_special
    return model


def clone_config(cfg, **changes):
    """Return a deep copy of the config dataclass cfg with the given fields changed (a name that is no field raises);
    as dataclasses.replace, but the values are checked when a model is built, not here."""
    names = {f.name for f in dataclasses.fields(cfg)}
    cfg = copy.deepcopy(cfg)
    for name, value in changes.items():
        if name not in names:
            raise ValueError(f'config {type(cfg).__name__} has no field {name!r}')
        setattr(cfg, name, value)
    return cfg
