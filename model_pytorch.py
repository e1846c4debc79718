"""The GPT-1 transformer, its heads and the loader of the released weights.

TF counterpart: train.py's `model`, `embed`, `block`, `attn`, `_attn`, `mlp`, `norm`, `conv1d`, `clf`
and the weight-loading lines of its `__main__`. Module and parameter names follow the TF variable
scopes, so `model/h3/attn/c_attn/w:0` is `h.3.attn.c_attn.w` here (with the TF `[1, nx, nf]`
squeezed to `[nx, nf]`).

Input contract, stated once: `x [..., T, 2] int64` holds (token id, position id) pairs; position ids
are rows `n_vocab + n_special + i` of the same embedding table; `m [..., T] float` masks the tokens.
"""
import copy
import json
import math
import os
import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint


@dataclass(slots=True)
class GPTConfig:
    """Model hyperparameters; `slots` makes a misspelt attribute (`cfg.n_heads = 4`) an error."""
    n_embd: int = 768
    n_head: int = 12
    n_layer: int = 12
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    resid_pdrop: float = 0.1
    clf_pdrop: float = 0.1
    afn: str = 'gelu'


# Shared default, as in the earlier port's README (`args = DEFAULT_CONFIG`); copy.deepcopy it before
# changing fields you do not want every later user of DEFAULT_CONFIG to see.
DEFAULT_CONFIG = GPTConfig()

N_VOCAB = 40478          # BPE tokens in encoder_bpe_40000.json
N_CTX_RELEASED = 512     # positions stored in the released weights
N_SHARDS = 10            # params_0.npy ... params_9.npy

# TF variable names inside one block, in the order the released shards store them.
TF_BLOCK = ['attn/c_attn/w', 'attn/c_attn/b', 'attn/c_proj/w', 'attn/c_proj/b', 'ln_1/g', 'ln_1/b',
            'mlp/c_fc/w', 'mlp/c_fc/b', 'mlp/c_proj/w', 'mlp/c_proj/b', 'ln_2/g', 'ln_2/b']

TASK_HEAD_TYPES = ('multiple_choice', 'similarity', 'inference', 'classification')


def gelu(x):
    """Return the tanh approximation of GELU, the original's `gelu` (TF: gelu)."""
    return F.gelu(x, approximate='tanh')


def swish(x):
    """Return x * sigmoid(x) (TF: swish)."""
    return F.silu(x)


ACT_FNS = {'relu': F.relu, 'swish': swish, 'gelu': gelu}


def config_value(cfg, name):
    """Return `cfg.name`, with an error naming the missing field (any attribute object is a config)."""
    try:
        return getattr(cfg, name)
    except AttributeError:
        raise ValueError(f'config {type(cfg).__name__} has no field {name!r}: start from '
                         f'copy.deepcopy(DEFAULT_CONFIG) and set the fields you need') from None


def tf_param_names(n_layer):
    """Return the TF names of the released arrays in shard order: positions, tokens, then each block."""
    return ['model/we:positions', 'model/we:tokens'] + [f'model/h{i}/{n}' for i in range(n_layer)
                                                        for n in TF_BLOCK]


def torch_name(tf_name):
    """Return the state_dict key of a TF block variable: 'model/h3/attn/c_attn/w' -> 'h.3.attn.c_attn.w'."""
    name = tf_name[len('model/'):] if tf_name.startswith('model/') else tf_name
    return re.sub(r'^h(\d+)/', r'h.\1.', name).replace('/', '.')


class Conv1D(nn.Module):
    """A 1x1 convolution, i.e. x @ w + b with w [nx, nf] (TF: conv1d with rf=1, clf)."""

    def __init__(self, nf, nx):
        super().__init__()
        self.nf = nf
        self.w = nn.Parameter(torch.empty(nx, nf).normal_(std=0.02))
        self.b = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        size_out = x.shape[:-1] + (self.nf,)
        x = torch.addmm(self.b, x.reshape(-1, x.size(-1)), self.w)  # [N, nx] -> [N, nf]
        return x.view(size_out)


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


def uses_sdpa_math(q):
    """Return whether SDPA would run q's dtype and device with dropout on its math kernel upcast to fp32: bf16
    or fp16 on the CPU."""
    return q.device.type == 'cpu' and q.dtype in (torch.bfloat16, torch.float16)


class Attention(nn.Module):
    """Masked multi-head self-attention (TF: attn, _attn, mask_attn_weights)."""

    def __init__(self, nx, n_head, attn_pdrop, resid_pdrop):
        super().__init__()
        if nx % n_head != 0:
            raise ValueError(f'n_embd ({nx}) must be divisible by n_head ({n_head})')
        self.n_head = n_head
        self.c_attn = Conv1D(nx * 3, nx)
        self.c_proj = Conv1D(nx, nx)
        self.attn_pdrop = attn_pdrop
        self.resid_pdrop = resid_pdrop
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
        w = w * b - 1e9 * (1 - b)
        w = F.softmax(w, dim=-1)
        if self.keep_weights:
            self.last_weights = w.detach()
        w = F.dropout(w, self.attn_pdrop, self.training)
        return torch.matmul(w, v)

    def forward(self, x, layer_past=None, past_valid=None):
        """Return (a [B, T, nx], present (k, v)) for x [B, T, nx] and optional cached (k, v).

        past_valid [B, P] marks which of the P cached positions are real, when the cache holds prefixes of
        different lengths padded on the right (None: all of them).
        """
        q, k, v = self.c_attn(x).split(x.size(-1), dim=2)  # [B, T, 3*nx] -> 3 x [B, T, nx]
        q, k, v = self.split_heads(q), self.split_heads(k), self.split_heads(v)
        if layer_past is not None:
            k = torch.cat([layer_past[0], k], dim=-2)
            v = torch.cat([layer_past[1], v], dim=-2)
        present = (k, v)
        n_q, n_k = q.size(-2), k.size(-2)
        mask = None if past_valid is None else cached_mask(past_valid, n_q)  # [B, 1, n_q, n_k]
        # Intentional difference (speed, bf16/fp16 on the CPU in training): SDPA's one CPU kernel with dropout
        # (math) upcasts to fp32 throughout, 1.5x slower; the explicit path keeps the scores, the softmax's
        # output (its reductions run in fp32) and P @ V in q's dtype, as the flash kernels on a GPU do, and
        # draws the same dropout masks.
        if self.impl == 'explicit' or self.keep_weights or (self.training and self.attn_pdrop > 0
                                                             and uses_sdpa_math(q)):
            a = self.explicit_attn(q, k, v, mask)
        else:
            dropout_p = self.attn_pdrop if self.training else 0.0
            if mask is None and n_q == n_k:
                a = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
            else:  # queries are the last n_q positions of a cached prefix
                a = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p,
                                                   attn_mask=causal_mask(n_q, n_k, q.device) if mask is None else mask)
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
        nx = config_value(cfg, 'n_embd')
        self.attn = Attention(nx, config_value(cfg, 'n_head'), config_value(cfg, 'attn_pdrop'),
                              config_value(cfg, 'resid_pdrop'))
        self.ln_1 = LayerNorm(nx)
        self.mlp = MLP(4 * nx, nx, config_value(cfg, 'afn'), config_value(cfg, 'resid_pdrop'))
        self.ln_2 = LayerNorm(nx)

    def forward(self, x, layer_past=None, past_valid=None):
        """Return (h, present) for x [B, T, nx]."""
        a, present = self.attn(x, layer_past, past_valid)
        n = self.ln_1(x + a)
        h = self.ln_2(n + self.mlp(n))
        return h, present


class TransformerModel(nn.Module):
    """The GPT-1 transformer: x [..., T, 2] -> hidden states [-1, T, n_embd] (TF: model, embed)."""

    def __init__(self, cfg, vocab=40990, n_ctx=512):
        super().__init__()
        self.vocab = vocab
        self.n_ctx = n_ctx
        self.n_embd = config_value(cfg, 'n_embd')
        self.embd_pdrop = config_value(cfg, 'embd_pdrop')
        # Rows are [tokens; special tokens; positions], the original's single `we` table.
        self.embed = nn.Embedding(vocab, self.n_embd)
        nn.init.normal_(self.embed.weight, std=0.02)
        # Each block built afresh: independent initial weights (the earlier port deep-copied one).
        self.h = nn.ModuleList([Block(cfg) for _ in range(config_value(cfg, 'n_layer'))])
        # Recompute each block's activations in the backward pass instead of keeping them (the batch
        # of 32 on small GPUs); dropout masks are replayed, so the gradients are unchanged.
        self.checkpoint_activations = False

    def embedding_table(self):
        """Return the embedding table as this forward pass sees it (dropped out when training)."""
        # TF drops entries of the table itself (`we = dropout(we)`); the lookup and the tied LM
        # decoder then share that one dropped table, so a token seen twice sees the same row.
        return F.dropout(self.embed.weight, self.embd_pdrop, self.training)

    def run(self, x, past=None, collect_hidden=False, past_valid=None):
        """Return (h, we, presents, hidden_states) for x [..., T, 2]; the core of every forward."""
        if x.size(-1) != 2:
            raise ValueError(f'x must be [..., T, 2] (token id, position id), got shape {tuple(x.shape)}')
        x = x.reshape(-1, x.size(-2), 2)  # [..., T, 2] -> [B, T, 2]
        we = self.embedding_table()
        h = F.embedding(x, we).sum(dim=2)  # [B, T, 2, n_embd] -> [B, T, n_embd]
        hidden_states = [h] if collect_hidden else None
        presents = []
        checkpointing = self.checkpoint_activations and self.training and torch.is_grad_enabled()
        for i, block in enumerate(self.h):
            layer_past = None if past is None else past[i]
            if checkpointing:
                h, present = torch.utils.checkpoint.checkpoint(block, h, layer_past, past_valid, use_reentrant=False)
            else:
                h, present = block(h, layer_past, past_valid)
            presents.append(present)
            if collect_hidden:
                hidden_states.append(h)
        return h, we, presents, hidden_states

    def forward(self, x, return_we=False):
        """Return h [B, T, n_embd]; with return_we, (h, the table used), for a tied LM decoder."""
        h, we, _, _ = self.run(x)
        return (h, we) if return_we else h

    def all_hidden_states(self, x):
        """Return the embeddings and every block's output: a list of n_layer + 1 [B, T, n_embd]."""
        return self.run(x, collect_hidden=True)[3]

    def forward_cached(self, x, past=None, past_valid=None):
        """Return (h, presents) for new positions x given the (k, v) cache `past` of earlier ones.

        past_valid [B, P] marks the real positions of a cache of ragged prefixes padded on the right.
        """
        h, _, presents, _ = self.run(x, past=past, past_valid=past_valid)
        return h, presents


class LMHead(nn.Module):
    """Language-model decoder tied to the embedding table (TF: lm_logits = h @ we^T)."""

    def __init__(self, model, cfg, trunc_and_reshape=True):
        super().__init__()
        self.n_embd = config_value(cfg, 'n_embd')
        embed_shape = model.embed.weight.shape
        self.decoder = nn.Linear(embed_shape[1], embed_shape[0], bias=False)
        self.decoder.weight = model.embed.weight  # tied weights
        self.trunc_and_reshape = trunc_and_reshape

    def forward(self, h, we=None):
        """Return logits over every row of the table: [B*(T-1), rows] when truncating, else [B, T, rows]."""
        if self.trunc_and_reshape:
            h = h[:, :-1].reshape(-1, self.n_embd)  # [B, T, n_embd] -> [B*(T-1), n_embd]
        # `we` is the dropped table of the same forward pass; the original's softmax covers every
        # row (tokens, special tokens and positions).
        return F.linear(h, self.decoder.weight if we is None else we)


def pool_idx(x, clf_token):
    """Return the index of the first clf_token in each sequence of x [N, T, 2] (TF: argmax of equal)."""
    is_clf = x[..., 0] == clf_token  # [N, T]
    missing = ~is_clf.any(dim=1)
    # Under torch.compile the check is left out: its data-dependent branch would split the graph in two.
    # The eager evaluation of the same data still runs it.
    if not torch.compiler.is_compiling() and missing.any():
        raise ValueError(f'{int(missing.sum())} of {x.size(0)} sequences hold no classify token '
                         f'(id {clf_token}); end every sequence with it (see transform_roc)')
    return is_clf.int().argmax(dim=1)


def pool(h, x, clf_token):
    """Return the hidden state at the first clf_token: h [N, T, n_embd] -> [N, n_embd]."""
    x = x.reshape(-1, x.size(-2), 2)
    return h[torch.arange(h.size(0), device=h.device), pool_idx(x, clf_token)]


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
        self.n_embd = config_value(cfg, 'n_embd')
        self.clf_pdrop = config_value(cfg, 'clf_pdrop')
        self.clf = Conv1D(1, self.n_embd)  # TF: model/clf/w [n_embd, 1], model/clf/b [1]

    def forward(self, h, x):
        """Return logits [B, C] for h [B*C, T, n_embd] and x [B, C, T, 2]."""
        n_choices = x.size(1)
        clf_h = pool(h, x, self.clf_token).view(-1, n_choices, self.n_embd)  # [B*C, n] -> [B, C, n]
        clf_h = shared_dropout(clf_h, self.clf_pdrop, self.training)
        return self.clf(clf_h).view(-1, n_choices)  # [B, C, 1] -> [B, C]


class ClfHead(nn.Module):
    """A linear classifier on the pooled state of one sequence per example (paper: classification, entailment)."""

    def __init__(self, clf_token, cfg, n_class):
        super().__init__()
        self.clf_token = clf_token
        self.n_embd = config_value(cfg, 'n_embd')
        self.clf_pdrop = config_value(cfg, 'clf_pdrop')
        self.clf = Conv1D(n_class, self.n_embd)

    def forward(self, h, x):
        """Return logits [B, n_class] for h [B, T, n_embd] and x [B, T, 2] (or [B, 1, T, 2])."""
        clf_h = pool(h, x, self.clf_token).unsqueeze(1)  # [B, n_embd] -> [B, 1, n_embd]
        clf_h = shared_dropout(clf_h, self.clf_pdrop, self.training)
        return self.clf(clf_h).squeeze(1)


class SimilarityHead(nn.Module):
    """Sum of the pooled states of both orderings, then a linear layer (paper, Section 3.3: similarity)."""

    def __init__(self, clf_token, cfg, n_class=1):
        super().__init__()
        self.clf_token = clf_token
        self.n_class = n_class
        self.n_embd = config_value(cfg, 'n_embd')
        self.clf_pdrop = config_value(cfg, 'clf_pdrop')
        self.clf = Conv1D(n_class, self.n_embd)

    def forward(self, h, x):
        """Return scores [B] (n_class 1, regression) or logits [B, n_class] for x [B, 2, T, 2]."""
        clf_h = pool(h, x, self.clf_token).view(-1, 2, self.n_embd).sum(dim=1, keepdim=True)  # -> [B, 1, n]
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

    def __init__(self, cfg=DEFAULT_CONFIG, vocab=40990, n_ctx=512, return_probs=False):
        super().__init__()
        self.transformer = TransformerModel(cfg, vocab=vocab, n_ctx=n_ctx)
        self.lm_head = LMHead(self.transformer, cfg, trunc_and_reshape=False)
        self.return_probs = return_probs

    def forward(self, x):
        """Return logits [B, T, rows] over the whole table (softmax probabilities with return_probs)."""
        h, we = self.transformer(x, return_we=True)
        lm_logits = self.lm_head(h, we)
        return F.softmax(lm_logits, dim=-1) if self.return_probs else lm_logits


class DoubleHeadModel(nn.Module):
    """Transformer with the LM head and a task head: x -> (lm_logits, task_logits) (TF: model)."""

    def __init__(self, cfg, clf_token, task_head_type, vocab=40990, n_ctx=512):
        super().__init__()
        self.transformer = TransformerModel(cfg, vocab=vocab, n_ctx=n_ctx)
        self.lm_head = LMHead(self.transformer, cfg)
        self.task_head = make_task_head(clf_token, cfg, task_head_type)

    def forward(self, x):
        """Return (lm_logits [N*(T-1), rows], task_logits) exactly as the original computes them."""
        h, we = self.transformer(x, return_we=True)
        return self.lm_head(h, we), self.task_head(h, x)

    def hidden_and_task(self, x):
        """Return (h, we, task_logits) without LM logits, for losses that decode only masked positions."""
        h, we = self.transformer(x, return_we=True)
        return h, we, self.task_head(h, x)

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


def sniff_weights_file(path):
    """Return a description of what path holds when it is plainly not an .npy array, else None."""
    from download_model import sniff  # the owner of what release downloads look like
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


def shard_layout(path):
    """Return (number of float32 values, offset of the first one) of a params_N.npy shard, or raise naming what is
    wrong with it; the values themselves are not read."""
    from download_model import read_npy_header  # the owner of what release downloads look like
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path} is missing: the weights are the model/ folder of '
                                f'github.com/openai/finetune-transformer-lm (run download_model.py)')
    problem = sniff_weights_file(path)
    if problem:
        raise ValueError(f'{path} is {problem}')
    with open(path, 'rb') as f:
        header = read_npy_header(f)
        if header is None:
            raise ValueError(f'{path} is corrupt: its .npy header cannot be read; download it again')
        shape, _, dtype, canonical = header
        offset, size = f.tell(), os.fstat(f.fileno()).st_size
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
    return shape[0], offset


def read_shard_into(path, offset, out):
    """Fill out (a float32 array) with the values of the shard at path that start at byte offset."""
    with open(path, 'rb') as f:
        f.seek(offset)
        n_read = f.readinto(memoryview(out).cast('B'))
    if n_read != out.nbytes:
        raise ValueError(f'{path} changed while being read ({n_read} of {out.nbytes} bytes): read it again')


def is_released_file(path):
    """Return whether the file at path is byte for byte the released file of its name (git blob SHA-1)."""
    from download_model import RELEASED_FILES, git_blob_sha1
    expected = RELEASED_FILES.get(os.path.basename(path))
    return expected is not None and git_blob_sha1(path) == expected


def read_shapes(path):
    """Return the list of array shapes in params_shapes.json, or raise naming the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path} is missing: the weights are the model/ folder of '
                                f'github.com/openai/finetune-transformer-lm (run download_model.py)')
    try:
        with open(path) as f:
            shapes = json.load(f)
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f'{path} is not valid JSON ({err}): download it again') from None
    if not (isinstance(shapes, list) and all(isinstance(s, list) and all(isinstance(d, int) for d in s)
                                             for s in shapes)):
        raise ValueError(f'{path} must be a JSON list of shapes (lists of ints)')
    if len(shapes) < 2 or (len(shapes) - 2) % len(TF_BLOCK) != 0:
        raise ValueError(f'{path} lists {len(shapes)} arrays; expected 2 embeddings plus '
                         f'{len(TF_BLOCK)} per block')
    return shapes


def load_released_arrays(path):
    """Return the released arrays, each reshaped, in TF order: [positions, tokens, block arrays...]."""
    shapes = read_shapes(os.path.join(path, 'params_shapes.json'))
    files = [os.path.join(path, f'params_{n}.npy') for n in range(N_SHARDS)]
    layouts = [shard_layout(f) for f in files]  # every file checked before any value is read
    sizes = [int(np.prod(shape)) for shape in shapes]
    total = sum(n for n, _ in layouts)
    if total != sum(sizes):
        raise ValueError(f'the shards in {path} hold {total} floats but params_shapes.json describes '
                         f'{sum(sizes)}: a shard is truncated or from another checkpoint')
    # each shard is read straight into its place of one buffer: no concatenation copy
    flat = np.empty(total, dtype='<f4')
    bounds = np.cumsum([0] + [n for n, _ in layouts])
    for f, (_, offset), start, stop in zip(files, layouts, bounds[:-1], bounds[1:]):
        read_shard_into(f, offset, flat[start:stop])
    offsets = np.cumsum(sizes)[:-1]
    return [a.reshape(shape) for a, shape in zip(np.split(flat, offsets), shapes)]


def check_shape(name, param, array):
    """Raise a ValueError naming the parameter when array's shape does not fit param."""
    if tuple(param.shape) != tuple(array.shape):
        raise ValueError(f'shape mismatch for {name}: the model has {tuple(param.shape)}, the weights '
                         f'give {tuple(array.shape)} (check n_embd/n_layer/n_ctx/n_special)')


def load_openai_pretrained_model(model, n_ctx=-1, n_special=-1, n_transfer=12, n_embd=768, path='./model/',
                                 path_names=None, verify=False):
    """Load the released weights into a TransformerModel (or a model with `.transformer`); return it.

    path may also be a convert.py folder (model.safetensors + config.json) or a transformers openai-gpt folder
    or weights file, e.g. the output of pretrain.py: loaded the same way (their special rows are not used).

    As the original train.py: positions cropped to n_ctx, then `we = [tokens; special; positions]`
    with the special rows drawn as `np.random.randn(n_special, n_embd) * 0.02` from numpy's global
    generator, and the table plus the first n_transfer blocks copied (n_transfer -1: nothing).
    n_ctx and n_special of -1 are read off the model. `path_names` is accepted for compatibility with
    the earlier port and ignored. With verify=True every file's git blob SHA-1 is checked first against
    the released values (a dict {file name: SHA-1} checks against those instead).
    """
    transformer = getattr(model, 'transformer', model)
    if is_released_folder(path):
        if verify:
            verify_weights(path, expected=verify if isinstance(verify, dict) else None)
        arrays = load_released_arrays(path)
    elif verify:
        raise ValueError(f'{path} is not a released model/ folder: verification checks the released shards only')
    else:
        arrays = converted_arrays(path, transformer)
    n_layer_stored = (len(arrays) - 2) // len(TF_BLOCK)
    positions, tokens = arrays[0], arrays[1]
    if n_embd != tokens.shape[1]:
        if n_embd != 768:  # the default is the released size; smaller checkpoints need not pass it
            raise ValueError(f'n_embd={n_embd} but the weights in {path} have n_embd={tokens.shape[1]}')
        n_embd = tokens.shape[1]
    if n_ctx == -1:
        n_ctx = transformer.n_ctx
    if n_ctx > positions.shape[0]:
        raise ValueError(f'n_ctx={n_ctx} exceeds the {positions.shape[0]} positions stored in {path}')
    if n_special == -1:
        n_special = transformer.embed.weight.shape[0] - tokens.shape[0] - n_ctx
        if n_special < 0:
            raise ValueError(f'the model table has {transformer.embed.weight.shape[0]} rows, fewer than the '
                             f'{tokens.shape[0]} tokens + {n_ctx} positions of the weights')
    special = (np.random.randn(n_special, n_embd) * 0.02).astype(np.float32)
    we = np.concatenate([tokens, special, positions[:n_ctx]], 0)

    state = transformer.state_dict()
    updates = {}
    if n_transfer != -1:  # the original: -1 copies nothing, k copies the table and k blocks
        n_transfer = min(n_transfer, n_layer_stored)
        if n_transfer > len(transformer.h):
            raise ValueError(f'n_transfer={n_transfer} but the model has only {len(transformer.h)} blocks')
        check_shape('embed.weight', state['embed.weight'], we)
        updates['embed.weight'] = we
        names = tf_param_names(n_layer_stored)[2:2 + n_transfer * len(TF_BLOCK)]
        for tf_name, array in zip(names, arrays[2:]):
            key = torch_name(tf_name)
            if array.ndim == 3:  # TF conv1d weights [1, nx, nf] -> [nx, nf]
                array = array.reshape(array.shape[1:])
            check_shape(key, state[key], array)
            updates[key] = array
    with torch.no_grad():
        for key, array in updates.items():
            state[key].copy_(torch.from_numpy(np.ascontiguousarray(array)))
    return model


def is_released_folder(path):
    """Return whether path is (or, missing its files, is meant to be) a released model/ folder: not a weights file
    and not a folder with a config.json of convert.py or transformers."""
    if os.path.isfile(path):
        return False
    return (os.path.isfile(os.path.join(path, 'params_shapes.json'))
            or not os.path.isfile(os.path.join(path, 'config.json')))


def converted_arrays(path, transformer):
    """Return the weights of a convert.py or transformers folder in the released order and shapes
    ([positions, tokens, blocks]), after checking the architecture they state against the model's."""
    from convert import read_checkpoint, released_arrays  # convert builds on this module
    ckpt = read_checkpoint(path)
    if len(transformer.h):
        block = transformer.h[0]
        if block.attn.n_head != ckpt.cfg.n_head:
            raise ValueError(f'{path} holds a model with n_head={ckpt.cfg.n_head}, this model has '
                             f'{block.attn.n_head}: pass --n_head {ckpt.cfg.n_head}')
        if block.mlp.act is not ACT_FNS[ckpt.cfg.afn]:
            raise ValueError(f'{path} holds a model with afn={ckpt.cfg.afn!r}: pass --afn {ckpt.cfg.afn}')
    # stored special rows (e.g. pre-training's separator) are not copied: the original draws every special row
    return released_arrays(ckpt)


def verify_weights(path, expected=None):
    """Raise ValueError naming the first weights file in path whose git blob SHA-1 does not match.

    expected maps file names to SHA-1s; None means the values of the released files.
    """
    from download_model import verify_model_dir  # the owner of the released hashes
    names = ['params_shapes.json'] + [f'params_{n}.npy' for n in range(N_SHARDS)]
    problems = verify_model_dir(path, names=names, expected=expected)
    if problems:
        raise ValueError(problems[0])


def clone_config(cfg, **changes):
    """Return a deep copy of cfg with the given fields changed (typos raise)."""
    cfg = copy.deepcopy(cfg)
    for name, value in changes.items():
        config_value(cfg, name)
        setattr(cfg, name, value)
    return cfg


def write_released_shards(path, arrays, n_shards=N_SHARDS):
    """Write arrays in the released format (params_shapes.json + n_shards flat float32 .npy); return path."""
    os.makedirs(path, exist_ok=True)
    flat = np.concatenate([np.asarray(a, dtype=np.float32).reshape(-1) for a in arrays])
    with open(os.path.join(path, 'params_shapes.json'), 'w') as f:
        json.dump([list(np.shape(a)) for a in arrays], f)
    for n, shard in enumerate(np.array_split(flat, n_shards)):
        np.save(os.path.join(path, f'params_{n}.npy'), shard)
    return path
