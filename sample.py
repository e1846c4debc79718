"""Sampling from a language model, one position at a time with a key/value cache (openai/gpt-2's sample.py:
sample_sequence, top_k_logits; the GPT-1 release has no sampler).

The LM decoder is the embedding table (`lm_logits = h @ we^T`), and only its first n_vocab rows are tokens:
special-token and position rows are never sampled; they are dropped before temperature, top-k and top-p.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from model_inputs import check_token_ids


@dataclass(frozen=True)
class SamplingSettings:
    """How many tokens to draw and how (TF: sample_sequence's length, temperature, top_k; top_p and greedy added);
    a bad value raises a ValueError naming it when the settings are made."""
    gen_len: int = 40          # tokens to generate after the prompt (fewer when the context fills)
    top_k: int = 0             # sample among the k most likely tokens (0: all)
    top_p: float = 1.0         # nucleus: the smallest most-probable set reaching p (1: off)
    temperature: float = 1.0   # the logits are divided by it
    greedy: bool = False       # take the most likely token (temperature, top_k and top_p unused)

    def __post_init__(self):
        if self.gen_len < 0:
            raise ValueError(f'gen_len={self.gen_len}: give 0 or more tokens to generate')
        if self.top_k < 0:
            raise ValueError(f'top_k={self.top_k}: give 0 (off) or a positive number')
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f'top_p={self.top_p}: give a probability in (0, 1] (1: off)')
        if not self.greedy and not self.temperature > 0:
            raise ValueError(f'temperature={self.temperature}: give a positive value, or use greedy decoding')


@dataclass
class Generation:
    """What generate() returns: the continuation's text and ids, the prompt's ids, and why it stopped early."""
    text: str          # the continuation alone, decoded
    full_text: str     # prompt and continuation, decoded together
    ids: list          # the sampled token ids
    prompt_ids: list   # the prompt's BPE ids
    message: str = None  # set when the context filled before gen_len tokens


def table_rows(model):
    """Return (transformer, decoder weight [rows, n_embd]) of an LMModel, DoubleHeadModel or TransformerModel."""
    transformer = getattr(model, 'transformer', model)
    return transformer, transformer.lm_weight  # the LM decoder is tied to the table


class NextTokenLogits:
    """Logits of the next token over the first n_vocab rows for a growing sequence (TF: h @ we^T, sliced).

    Call it with the new token ids; with use_cache each call runs only the new positions against the cached
    keys and values of the earlier ones (forward_cached), else the whole sequence again.
    """

    def __init__(self, model, n_vocab, use_cache=True):
        self.transformer, self.decoder = table_rows(model)
        self.n_ctx = self.transformer.n_ctx
        self.pos_offset = self.transformer.pos_offset  # position i has id n_vocab + n_special + i
        if not 0 < n_vocab <= self.pos_offset:
            raise ValueError(f'n_vocab={n_vocab} but the table holds {self.pos_offset} token and special rows')
        self.n_vocab = n_vocab
        self.use_cache = use_cache
        self.ids = []
        self.past = None

    def __call__(self, new_ids):
        """Return the float32 logits [n_vocab] of the token after self.ids + new_ids."""
        start = len(self.ids)
        if start + len(new_ids) > self.n_ctx:
            raise ValueError(f'{start + len(new_ids)} tokens exceed n_ctx={self.n_ctx}')
        self.ids.extend(int(i) for i in new_ids)
        if self.use_cache:
            positions = range(start, len(self.ids))
            tokens = self.ids[start:]
        else:
            positions = range(len(self.ids))
            tokens = self.ids
        device = self.decoder.device
        x = torch.tensor([[[t, self.pos_offset + p] for t, p in zip(tokens, positions)]], device=device)  # [1, T, 2]
        with torch.no_grad():
            if self.use_cache:
                h, self.past = self.transformer.forward_cached(x, self.past)
            else:
                h = self.transformer(x)
            # only token rows: special and position rows can never be drawn
            logits = F.linear(h[0, -1], self.decoder[:self.n_vocab])  # [n_embd] -> [n_vocab]
        return logits.float().cpu()


def top_k_filter(logits, k):
    """Return logits [..., V] with all but the k largest set to -inf (k 0: unchanged)."""
    if k <= 0 or k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float('-inf'))


def top_p_filter(logits, p):
    """Return logits [..., V] keeping the smallest most-probable set whose probability reaches p (nucleus)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = F.softmax(sorted_logits, dim=-1)
    before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above each one
    drop_sorted = before >= p  # the set is complete before this token; the top token is always kept
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float('-inf'))


def next_token(logits, settings=SamplingSettings(), generator=None):
    """Return the id drawn from logits [V]: argmax when greedy, else a sample after temperature, top-k, top-p."""
    if settings.greedy:
        return int(torch.argmax(logits))
    logits = top_p_filter(top_k_filter(logits / settings.temperature, settings.top_k), settings.top_p)
    return int(torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator))


def sample_ids(model, prompt_ids, n_vocab, settings=SamplingSettings(), generator=None, use_cache=True):
    """Return (new ids, message): up to settings.gen_len tokens after prompt_ids, drawn with generator; message says
    why it stopped early."""
    gen_len = settings.gen_len
    step = NextTokenLogits(model, n_vocab, use_cache=use_cache)
    if not prompt_ids:
        raise ValueError('the prompt is empty: give at least one word to continue')
    check_token_ids([prompt_ids], step.pos_offset, ['the prompt'])
    if len(prompt_ids) > step.n_ctx:
        raise ValueError(f'the prompt is {len(prompt_ids)} tokens, longer than n_ctx={step.n_ctx}: shorten it')
    room = step.n_ctx - len(prompt_ids)
    new_ids = []
    if gen_len == 0:
        return new_ids, None
    logits = step(prompt_ids)
    for _ in range(min(gen_len, room)):
        new_ids.append(next_token(logits, settings, generator))
        if len(new_ids) < min(gen_len, room):
            logits = step(new_ids[-1:])
    message = None
    if gen_len > room:
        message = (f'stopped after {len(new_ids)} of {gen_len} tokens: the context is full (n_ctx={step.n_ctx}, '
                   f'prompt {len(prompt_ids)} tokens); use a shorter prompt or gen_len')
    return new_ids, message


def generate(model, text_encoder, prompt, settings=SamplingSettings(), generator=None, n_vocab=None, use_cache=True):
    """Return the Generation continuing prompt (a str) with up to settings.gen_len tokens drawn with generator;
    n_vocab: text_encoder's."""
    if n_vocab is None:
        n_vocab = len(text_encoder.decoder)
    prompt_ids = text_encoder.encode([prompt], verbose=False)[0]
    ids, message = sample_ids(model, prompt_ids, n_vocab, settings, generator, use_cache)
    return Generation(text_encoder.decode(ids), text_encoder.decode(prompt_ids + ids), ids, prompt_ids, message)
