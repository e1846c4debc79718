"""Sampling from a language model, one position at a time with a key/value cache (openai/gpt-2's sample.py:
sample_sequence, top_k_logits; the GPT-1 release has no sampler): a batch of independent samples of one prompt
(sample_batch, generate_batch; every row the same length, so no padding), prompts of different lengths drawn together
(sample_prompts, generate_prompts; RaggedNextTokenLogits masks each row's padding), or one sample (sample_ids,
generate).

The LM decoder is the embedding table (`lm_logits = h @ we^T`), and only its first n_vocab rows are tokens:
special-token and position rows are never sampled; they are dropped before temperature, top-k and top-p.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from model_inputs import check_token_ids, pack_right_padded, pack_sequences
from model_pytorch import new_cache


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


def decoding_model(model, n_vocab):
    """Return (transformer, decoder weight, n_ctx, pos_offset) of a model to decode n_vocab token rows from, checked:
    the table must hold at least n_vocab token and special rows before its positions."""
    transformer, decoder = table_rows(model)
    pos_offset = transformer.pos_offset  # position i has id n_vocab + n_special + i
    if not 0 < n_vocab <= pos_offset:
        raise ValueError(f'n_vocab={n_vocab} but the table holds {pos_offset} token and special rows')
    return transformer, decoder, transformer.n_ctx, pos_offset


class TokenDecoder:
    """The LM decoder's token rows, decoder [n_vocab, n_embd], as a sampler calls it step after step: logits h @
    decoder^T of hidden states h [B, n_embd], the same dot products however they are computed. Under autocast the
    decoder is cast once, not at every step as autocast casts a slice of the table. On the CPU, measured on the
    2-core CPU of BENCHMARKS.md ("Issue 29") for GPT-2's 50,257 rows: several rows multiply in blocks of BLOCK
    decoder rows, 1.25x faster than one product at 16 rows; one row multiplies a transposed copy of the decoder,
    1.6x faster, which is made (0.1 s) once TRANSPOSE_AFTER one-row calls show a long run ahead."""

    BLOCK = 4096
    TRANSPOSE_AFTER = 32

    def __init__(self, decoder):
        self.weight = decoder  # [n_vocab, n_embd]
        self.cast = None       # the decoder in autocast's dtype, once cast
        self.weight_t = None   # [n_embd, n_vocab] transposed, once made
        self.one_row_calls = 0

    def weight_for(self, h):
        """Return the decoder as the product with h takes it: in autocast's dtype where autocast is on."""
        device = h.device.type
        if not torch.is_autocast_enabled(device):
            return self.weight
        dtype = torch.get_autocast_dtype(device)
        if self.cast is None or self.cast.dtype != dtype:
            self.cast = self.weight.to(dtype)
        return self.cast

    def __call__(self, h):
        """Return the logits [B, n_vocab] of h [B, n_embd]."""
        weight = self.weight_for(h)
        if h.device.type != 'cpu':
            return F.linear(h, weight)
        if h.size(0) == 1:
            self.one_row_calls += 1
            if self.one_row_calls > self.TRANSPOSE_AFTER and (self.weight_t is None or
                                                              self.weight_t.dtype != weight.dtype):
                self.weight_t = weight.t().contiguous()
            return F.linear(h, weight) if self.weight_t is None else h.to(weight.dtype) @ self.weight_t
        blocks = [F.linear(h, weight[i:i + self.BLOCK]) for i in range(0, weight.size(0), self.BLOCK)]
        return torch.cat(blocks, dim=-1)  # [B, n_vocab]


def prefill_packed(transformer, seqs, pos_offset):
    """Return (h_last [B, n_embd], cache, past_valid [B, T]) of non-empty id lists run together with no padding
    between them (model_inputs.pack_sequences): each row's last hidden state, and a new_cache() holding each row's
    keys and values from column 0, padded with zeros on the right up to the longest (T), which past_valid marks."""
    device = transformer.lm_weight.device
    x, segments, places = pack_sequences(seqs, pos_offset, transformer.n_ctx, transformer.n_embd)
    h, presents = transformer.forward_packed(x.to(device), segments.to(device))  # [P, W, n_embd]
    lengths = torch.tensor([len(seq) for seq in seqs])  # [B]
    longest = int(lengths.max())
    row, at = (segments >= 0).nonzero(as_tuple=True)  # [S] the packed row and place of each id of a sequence
    seq, col = segments[row, at], x[row, at, 1] - pos_offset  # [S] its sequence, its position there
    seq, col, row, at = (t.to(device) for t in (seq, col, row, at))
    cache = new_cache(len(presents), transformer.n_ctx)
    for layer, (k, v) in zip(cache, presents):  # k, v [P, H, W, hd]
        k_seqs = k.new_zeros(len(seqs), k.size(1), longest, k.size(-1))  # [B, H, T, hd]
        v_seqs = v.new_zeros(k_seqs.shape)
        k_seqs[seq, :, col] = k[row, :, at]  # [S, H, hd]
        v_seqs[seq, :, col] = v[row, :, at]
        layer.append(k_seqs, v_seqs)
    ends = torch.tensor([start + n - 1 for (_, start), n in zip(places, lengths.tolist())], device=device)  # [B]
    rows = torch.tensor([r for r, _ in places], device=device)
    past_valid = (torch.arange(longest)[None, :] < lengths[:, None]).to(device)  # [B, T]
    return h[rows, ends], cache, past_valid


class BatchNextTokenLogits:
    """Logits of the next token over the first n_vocab rows for B growing sequences of one length (TF: h @ we^T,
    sliced; sample_sequence's batch).

    Call it with the new token ids [B, t]; with use_cache each call runs only the new positions against the cached
    keys and values of the earlier ones (forward_cached), else the whole sequences again. Every row has the same
    length, so the same positions: no padding and no mask.
    """

    def __init__(self, model, n_vocab, use_cache=True):
        self.transformer, self.decoder, self.n_ctx, self.pos_offset = decoding_model(model, n_vocab)
        self.token_decoder = TokenDecoder(self.decoder[:n_vocab])  # token rows only: no special or position row
        self.n_vocab = n_vocab
        self.use_cache = use_cache
        self.ids = torch.zeros(0, 0, dtype=torch.long)  # [B, T] the ids fed so far (on the CPU)
        # per block the keys and values fed so far, written in place
        self.past = new_cache(len(self.transformer.h), self.n_ctx)

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
            logits = self.token_decoder(h[:, -1])  # [B, n_embd] -> [B, n_vocab]
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
        """Return the key/value cache: per block the (k, v) of the positions fed so far."""
        return self.batch.past

    def __call__(self, new_ids):
        """Return the float32 logits [n_vocab] of the token after self.ids + new_ids."""
        return self.batch(torch.tensor([[int(i) for i in new_ids]], dtype=torch.long))[0]  # [1, n_vocab] -> [n_vocab]


class RaggedNextTokenLogits:
    """Logits of the next token over the first n_vocab rows for B sequences of different lengths fed together, each
    row's logits those it gets alone (within float rounding).

    Call it with a list of B lists of new ids (rows may differ in length; an empty list leaves its row as it is and
    returns that row's last logits again). Each row's position ids start at 0 at its first token. With use_cache the
    first call runs the rows back to back with no padding (prefill_packed) and caches their keys and values padded
    on the right; each later call runs only the new ids, padded on the right (the attention is causal, so the
    padding after a row's ids cannot reach them), against the cached keys and values of the earlier ones, whose
    padding past_valid masks out (the transformer's forward_cached: a masked key gets the causal mask's score, so
    exactly zero weight). Without, each call runs the whole right-padded sequences again
    (model_inputs.pack_right_padded).
    """

    def __init__(self, model, n_vocab, use_cache=True):
        self.transformer, self.decoder, self.n_ctx, self.pos_offset = decoding_model(model, n_vocab)
        self.token_decoder = TokenDecoder(self.decoder[:n_vocab])  # token rows only: no special or position row
        self.n_vocab = n_vocab
        self.use_cache = use_cache
        self.seqs = None      # per row the list of ids fed so far
        # per block a LayerCache: the keys and values (k, v) [B, H, K, hd] fed so far, written in place (set by the
        # first call); past_valid marks the real ones of the K columns
        self.past = None
        self.past_valid = None  # [B, K] bool, on the decoder's device
        self.logits = None    # [B, n_vocab] the last logits of each row

    def __call__(self, new_ids):
        """Return the float32 logits [B, n_vocab] of the token after each row of self.seqs + new_ids (B lists)."""
        new_ids = [[int(i) for i in row] for row in new_ids]
        if self.seqs is None:
            if not new_ids or not all(new_ids):
                raise ValueError('give every row at least one id in the first call')
            self.seqs = [[] for _ in new_ids]
        if len(new_ids) != len(self.seqs):
            raise ValueError(f'{len(new_ids)} rows of new ids for {len(self.seqs)} sequences')
        if not any(new_ids):
            return self.logits.clone()
        for seq, new in zip(self.seqs, new_ids):
            if len(seq) + len(new) > self.n_ctx:
                raise ValueError(f'{len(seq) + len(new)} tokens exceed n_ctx={self.n_ctx}')
        starts = [len(seq) for seq in self.seqs]
        for seq, new in zip(self.seqs, new_ids):
            seq.extend(new)
        device = self.decoder.device
        with torch.no_grad():
            if self.use_cache and self.past_valid is None:  # the prompts: packed, no position spent on padding
                h_last, self.past, self.past_valid = prefill_packed(self.transformer, new_ids, self.pos_offset)
            elif self.use_cache:
                t = max(len(new) for new in new_ids)
                x = torch.zeros(len(new_ids), t, 2, dtype=torch.long)  # [B, t, 2]
                for b, (start, new) in enumerate(zip(starts, new_ids)):
                    x[b, :len(new), 0] = torch.tensor(new, dtype=torch.long)
                    # a padding position's id is any valid row: its key is masked, its output unused
                    x[b, :, 1] = self.pos_offset + (start + torch.arange(t)).clamp(max=self.n_ctx - 1)
                new_valid = torch.arange(t)[None, :] < torch.tensor([len(new) for new in new_ids])[:, None]  # [B, t]
                h, self.past = self.transformer.forward_cached(x.to(device), self.past, self.past_valid)
                new_valid = new_valid.to(device)
                self.past_valid = new_valid if self.past_valid is None else torch.cat([self.past_valid, new_valid], 1)
                last = torch.tensor([max(len(new), 1) - 1 for new in new_ids])  # [B]
                h_last = h[torch.arange(h.size(0), device=h.device), last.to(h.device)]  # [B, n_embd]
            else:
                h = self.transformer(pack_right_padded(self.seqs, self.pos_offset).to(device))  # [B, T, n_embd]
                last = torch.tensor([len(seq) - 1 for seq in self.seqs])  # [B]
                h_last = h[torch.arange(h.size(0), device=h.device), last.to(h.device)]  # [B, n_embd]
            # only token rows: special and position rows can never be drawn
            logits = self.token_decoder(h_last).float().cpu()  # [B, n_embd] -> [B, n_vocab]
        if self.logits is not None:  # a row given no new ids keeps its logits
            fed = torch.tensor([bool(new) for new in new_ids])
            logits = torch.where(fed[:, None], logits, self.logits)
        self.logits = logits
        return logits.clone()


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
    return rows, full_context_message(gen_len, step.n_ctx, len(prompt_ids))


def full_context_message(gen_len, n_ctx, prompt_len):
    """Return why a prompt of prompt_len tokens gets fewer than gen_len new ones (None when it gets them all)."""
    room = n_ctx - prompt_len
    if gen_len <= room:
        return None
    return (f'stopped after {room} of {gen_len} tokens: the context is full (n_ctx={n_ctx}, prompt {prompt_len} '
            f'tokens); use a shorter prompt or gen_len')


def sample_prompts(model, prompt_id_lists, n_vocab, settings=SamplingSettings(), generator=None, batch_size=None,
                   use_cache=True):
    """Return (rows, messages): per prompt of prompt_id_lists (lists of ids, of any lengths) a list of up to
    settings.gen_len ids continuing it, and why it stopped early (None: it did not), as sample_ids gives them.

    The prompts are drawn batch_size at a time (None: all together) by RaggedNextTokenLogits, one row each; greedy
    rows are each prompt's unbatched greedy run. Each row stops when its own context is full.
    """
    prompts = [list(prompt) for prompt in prompt_id_lists]
    if batch_size is None:
        batch_size = max(len(prompts), 1)
    if batch_size < 1:
        raise ValueError(f'batch_size={batch_size}: give 1 or more prompts to draw together')
    transformer, _ = table_rows(model)
    for number, prompt in enumerate(prompts, 1):
        try:
            check_prompt(prompt, transformer.pos_offset, transformer.n_ctx)
        except ValueError as err:
            raise ValueError(f'prompt {number}: {err}') from None
    rows = []
    for first in range(0, len(prompts), batch_size):
        rows += sample_ragged(model, prompts[first:first + batch_size], n_vocab, settings, generator, use_cache)
    messages = [full_context_message(settings.gen_len, transformer.n_ctx, len(prompt)) for prompt in prompts]
    return rows, messages


def sample_ragged(model, prompts, n_vocab, settings, generator, use_cache):
    """Return per prompt (checked lists of ids) the ids drawn after it, all prompts fed together."""
    step = RaggedNextTokenLogits(model, n_vocab, use_cache=use_cache)
    n_new = [min(settings.gen_len, step.n_ctx - len(prompt)) for prompt in prompts]
    rows = [[] for _ in prompts]
    steps = max(n_new, default=0)
    if steps > 0:
        logits = step(prompts)  # [B, n_vocab]
        for k in range(steps):
            drawn = next_tokens(logits, settings, generator).tolist()  # [B]: every row drawn, the finished dropped
            for row, token, n in zip(rows, drawn, n_new):
                if k < n:
                    row.append(token)
            if k + 1 < steps:
                logits = step([[token] if k + 1 < n else [] for token, n in zip(drawn, n_new)])
    return rows


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


def generate_prompts(model, text_encoder, prompt_id_lists, settings=SamplingSettings(), generator=None, batch_size=None,
                     n_vocab=None, use_cache=True):
    """Return one Generation per prompt of prompt_id_lists (lists of ids, of any lengths), drawn batch_size prompts at
    a time (sample_prompts); n_vocab: text_encoder's."""
    if n_vocab is None:
        n_vocab = len(text_encoder.decoder)
    rows, messages = sample_prompts(model, prompt_id_lists, n_vocab, settings, generator, batch_size, use_cache)
    return [Generation(text_encoder.decode(ids), text_encoder.decode(list(prompt_ids) + ids), ids, list(prompt_ids),
                       message) for prompt_ids, ids, message in zip(prompt_id_lists, rows, messages)]


def generate(model, text_encoder, prompt, settings=SamplingSettings(), generator=None, n_vocab=None, use_cache=True):
    """Return the Generation continuing prompt (a str) with up to settings.gen_len tokens drawn with generator;
    n_vocab: text_encoder's."""
    prompt_ids = text_encoder.encode([prompt], verbose=False)[0]
    return generate_batch(model, text_encoder, prompt_ids, 1, settings, generator, n_vocab, use_cache)[0]
