"""Sampling from a language model, one position at a time with a key/value cache (openai/gpt-2's sample.py:
sample_sequence, top_k_logits; the GPT-1 release has no sampler): a batch of independent samples of one prompt
(sample_batch, generate_batch; every row the same length, so no padding), or one sample (sample_ids, generate).

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


class BatchNextTokenLogits:
    """Logits of the next token over the first n_vocab rows for B growing sequences of one length (TF: h @ we^T,
    sliced; sample_sequence's batch).

    Call it with the new token ids [B, t]; with use_cache each call runs only the new positions against the cached
    keys and values of the earlier ones (forward_cached), else the whole sequences again. Every row has the same
    length, so the same positions: no padding and no mask.
    """

    def __init__(self, model, n_vocab, use_cache=True):
        self.transformer, self.decoder = table_rows(model)
        self.n_ctx = self.transformer.n_ctx
        self.pos_offset = self.transformer.pos_offset  # position i has id n_vocab + n_special + i
        if not 0 < n_vocab <= self.pos_offset:
            raise ValueError(f'n_vocab={n_vocab} but the table holds {self.pos_offset} token and special rows')
        self.n_vocab = n_vocab
        self.use_cache = use_cache
        self.ids = torch.zeros(0, 0, dtype=torch.long)  # [B, T] the ids fed so far (on the CPU)
        self.past = None

    def __call__(self, new_ids):
        """Return the float32 logits [B, n_vocab] of the token after each row of self.ids + new_ids [B, t]."""
        new_ids = torch.as_tensor(new_ids, dtype=torch.long).cpu()
        start = self.ids.size(1)
        if start + new_ids.size(1) > self.n_ctx:
            raise ValueError(f'{start + new_ids.size(1)} tokens exceed n_ctx={self.n_ctx}')
        if start and new_ids.size(0) != self.ids.size(0):
            raise ValueError(f'{new_ids.size(0)} rows of new ids for {self.ids.size(0)} sequences')
        self.ids = new_ids if start == 0 else torch.cat([self.ids, new_ids], dim=1)  # [B, start + t]
        first = start if self.use_cache else 0
        tokens = self.ids[:, first:]  # [B, T'] the positions this call runs
        positions = self.pos_offset + torch.arange(first, self.ids.size(1))  # [T']
        x = torch.stack([tokens, positions.expand_as(tokens)], dim=-1)  # [B, T'] -> [B, T', 2]
        with torch.no_grad():
            if self.use_cache:
                h, self.past = self.transformer.forward_cached(x.to(self.decoder.device), self.past)
            else:
                h = self.transformer(x.to(self.decoder.device))
            # only token rows: special and position rows can never be drawn
            logits = F.linear(h[:, -1], self.decoder[:self.n_vocab])  # [B, n_embd] -> [B, n_vocab]
        return logits.float().cpu()


class NextTokenLogits:
    """BatchNextTokenLogits for one sequence: called with a list of new ids, it returns the logits [n_vocab]."""

    def __init__(self, model, n_vocab, use_cache=True):
        self.batch = BatchNextTokenLogits(model, n_vocab, use_cache)
        self.n_ctx, self.pos_offset = self.batch.n_ctx, self.batch.pos_offset

    @property
    def ids(self):
        """Return the ids fed so far, a list."""
        return self.batch.ids[0].tolist() if self.batch.ids.numel() else []

    @property
    def past(self):
        """Return the key/value cache: per block the (k, v) of the positions fed so far (None before the first)."""
        return self.batch.past

    def __call__(self, new_ids):
        """Return the float32 logits [n_vocab] of the token after self.ids + new_ids."""
        return self.batch(torch.tensor([[int(i) for i in new_ids]], dtype=torch.long))[0]  # [1, n_vocab] -> [n_vocab]


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


def next_tokens(logits, settings=SamplingSettings(), generator=None):
    """Return the ids [B] drawn from logits [B, V], one per row and independently: argmax when greedy, else a sample
    after temperature, top-k, top-p."""
    if settings.greedy:
        return torch.argmax(logits, dim=-1)
    logits = top_p_filter(top_k_filter(logits / settings.temperature, settings.top_k), settings.top_p)
    return torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)[:, 0]  # [B, 1] -> [B]


def next_token(logits, settings=SamplingSettings(), generator=None):
    """Return the id drawn from logits [V]: argmax when greedy, else a sample after temperature, top-k, top-p."""
    return int(next_tokens(logits[None], settings, generator)[0])  # [V] -> [1, V] -> an int


def check_prompt(prompt_ids, pos_offset, n_ctx):
    """Return nothing; raise a ValueError when prompt_ids is empty, holds a non-token id or exceeds n_ctx."""
    if not prompt_ids:
        raise ValueError('the prompt is empty: give at least one word to continue')
    check_token_ids([prompt_ids], pos_offset, ['the prompt'])
    if len(prompt_ids) > n_ctx:
        raise ValueError(f'the prompt is {len(prompt_ids)} tokens, longer than n_ctx={n_ctx}: shorten it')


def sample_batch(model, prompt_ids, n_vocab, batch_size=1, settings=SamplingSettings(), generator=None,
                 use_cache=True):
    """Return (rows, message): batch_size lists of up to settings.gen_len ids continuing the one prompt_ids, each row
    drawn independently with generator; message says why they stopped early (TF: sample_sequence)."""
    if batch_size < 1:
        raise ValueError(f'batch_size={batch_size}: give 1 or more samples to draw together')
    gen_len = settings.gen_len
    step = BatchNextTokenLogits(model, n_vocab, use_cache=use_cache)
    check_prompt(prompt_ids, step.pos_offset, step.n_ctx)
    room = step.n_ctx - len(prompt_ids)
    n_new = min(gen_len, room)
    drawn = []  # n_new tensors [B]
    if n_new > 0:
        logits = step(torch.tensor([prompt_ids]).expand(batch_size, -1))  # [1, P] -> [B, P]; -> [B, n_vocab]
        for _ in range(n_new):
            drawn.append(next_tokens(logits, settings, generator))
            if len(drawn) < n_new:
                logits = step(drawn[-1][:, None])  # [B] -> [B, 1]; -> [B, n_vocab]
    rows = torch.stack(drawn, dim=1).tolist() if drawn else [[] for _ in range(batch_size)]  # [B, n_new]
    message = None
    if gen_len > room:
        message = (f'stopped after {n_new} of {gen_len} tokens: the context is full (n_ctx={step.n_ctx}, '
                   f'prompt {len(prompt_ids)} tokens); use a shorter prompt or gen_len')
    return rows, message


def sample_ids(model, prompt_ids, n_vocab, settings=SamplingSettings(), generator=None, use_cache=True):
    """Return (new ids, message): up to settings.gen_len tokens after prompt_ids, drawn with generator; message says
    why it stopped early (sample_batch's batch of one)."""
    rows, message = sample_batch(model, prompt_ids, n_vocab, 1, settings, generator, use_cache)
    return rows[0], message


def generate_batch(model, text_encoder, prompt_ids, batch_size=1, settings=SamplingSettings(), generator=None,
                   n_vocab=None, use_cache=True):
    """Return batch_size Generations continuing the one prompt_ids (a list of ids), each drawn independently with
    generator; n_vocab: text_encoder's."""
    if n_vocab is None:
        n_vocab = len(text_encoder.decoder)
    rows, message = sample_batch(model, prompt_ids, n_vocab, batch_size, settings, generator, use_cache)
    return [Generation(text_encoder.decode(ids), text_encoder.decode(prompt_ids + ids), ids, list(prompt_ids), message)
            for ids in rows]


def generate(model, text_encoder, prompt, settings=SamplingSettings(), generator=None, n_vocab=None, use_cache=True):
    """Return the Generation continuing prompt (a str) with up to settings.gen_len tokens drawn with generator;
    n_vocab: text_encoder's."""
    prompt_ids = text_encoder.encode([prompt], verbose=False)[0]
    return generate_batch(model, text_encoder, prompt_ids, 1, settings, generator, n_vocab, use_cache)[0]
