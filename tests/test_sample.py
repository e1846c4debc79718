"""Tests for sample.py: token rows only, cache equals no cache, greedy/top-k/top-p, n_ctx, seeds, batches."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from model_pytorch import LMModel
from model_gpt2 import GPT2Config, GPT2LMHeadModel
from sample import (BatchNextTokenLogits, NextTokenLogits, RaggedNextTokenLogits, SamplingSettings, TokenDecoder,
                    next_token, prefill_packed, sample_batch, sample_ids, sample_prompts, top_k_filter, top_p_filter)
from tests.helpers import hf_gpt2_and_ours, small_cfg

V, N_SPECIAL, N_CTX = 100, 2, 16  # the tiny model: 100 token rows, 2 special rows, 16 positions


@pytest.fixture(scope='module')
def lm():
    """A random eval-mode LMModel: n_embd 16, 2 heads, 2 layers, table [100 tokens; 2 special; 16 positions]."""
    torch.manual_seed(0)
    model = LMModel(small_cfg(n_embd=16, n_head=2), vocab=V + N_SPECIAL + N_CTX, n_ctx=N_CTX).eval()
    with torch.no_grad():
        model.transformer.embed.weight.normal_(std=1.0)  # confident enough for distinct argmaxes
    return model


def full_logits(model, ids):
    """Return the uncached LMModel logits [rows] after ids (no slicing, no masking)."""
    x = torch.tensor([[[t, V + N_SPECIAL + i] for i, t in enumerate(ids)]])  # [1, T, 2]
    with torch.no_grad():
        return model(x)[0, -1]


PROMPT = [5, 17, 42, 3]


def special_rows_dominate_lm():
    """Return a tiny LMModel whose every hidden state is all ones and whose special and position rows are all 10, so
    that the unmasked decoder's argmax is always one of them (logit 160 against ~0)."""
    torch.manual_seed(1)
    model = LMModel(small_cfg(n_embd=16, n_head=2), vocab=V + N_SPECIAL + N_CTX, n_ctx=N_CTX).eval()
    with torch.no_grad():
        last = model.transformer.h[-1].ln_2
        last.g.zero_()
        last.b.fill_(1.0)  # every hidden state is all ones, so a row's logit is its sum
        model.transformer.embed.weight[V:] = 10.0
    return model


def test_never_samples_a_special_or_position_row_even_when_they_dominate():
    model = special_rows_dominate_lm()
    assert full_logits(model, PROMPT).argmax() >= V  # the unmasked decoder would pick them
    gen = torch.Generator().manual_seed(0)
    for kwargs in (dict(greedy=True), dict(temperature=100.0), dict(top_k=5), dict(top_p=0.5), dict()):
        ids, _ = sample_ids(model, PROMPT, V, SamplingSettings(gen_len=12, **kwargs), gen)
        assert len(ids) == 12 and max(ids) < V, kwargs
        rows, _ = sample_batch(model, PROMPT, V, 5, SamplingSettings(gen_len=12, **kwargs), gen)  # a batch too
        assert len(rows) == 5 and all(len(row) == 12 and max(row) < V for row in rows), kwargs


def test_cached_and_uncached_logits_are_equal_at_every_step(lm):
    cached, uncached = NextTokenLogits(lm, V), NextTokenLogits(lm, V, use_cache=False)
    feed = PROMPT
    for step in range(N_CTX - len(PROMPT)):
        a, b = cached(feed), uncached(feed)
        assert a.shape == (V,)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a, full_logits(lm, cached.ids)[:V], rtol=1e-5, atol=1e-5)
        feed = [int(a.argmax() + step) % V]
    assert len(cached.past[0][0][0, 0]) == N_CTX - 1  # the cache holds one key per fed position
    with pytest.raises(ValueError, match='exceed n_ctx'):
        cached([1, 2])


def test_greedy_is_the_argmax_of_the_uncached_forward_at_every_step(lm):
    ids, message = sample_ids(lm, PROMPT, V, SamplingSettings(gen_len=10, greedy=True))
    assert message is None and len(ids) == 10
    for k in range(10):
        assert ids[k] == int(full_logits(lm, PROMPT + ids[:k])[:V].argmax())
    assert len(set(ids)) > 1  # a real sequence, not one token repeated


def test_top_k_1_is_greedy(lm):
    greedy, _ = sample_ids(lm, PROMPT, V, SamplingSettings(gen_len=10, greedy=True))
    top1, _ = sample_ids(lm, PROMPT, V, SamplingSettings(gen_len=10, top_k=1, temperature=3.0),
                         torch.Generator().manual_seed(7))
    assert top1 == greedy


def test_top_k_filter_keeps_the_k_largest():
    logits = torch.tensor([0.1, 3.0, -1.0, 2.0, 0.5])
    kept = torch.isfinite(top_k_filter(logits, 2))
    assert kept.tolist() == [False, True, False, True, False]
    assert torch.equal(top_k_filter(logits, 0), logits)


def test_top_p_filter_keeps_the_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([0.15, 0.5, 0.05, 0.3]))
    assert torch.isfinite(top_p_filter(logits, 0.8)).tolist() == [False, True, False, True]   # 0.5 + 0.3
    assert torch.isfinite(top_p_filter(logits, 0.81)).tolist() == [True, True, False, True]  # + 0.15
    assert torch.isfinite(top_p_filter(logits, 0.4)).tolist() == [False, True, False, False]
    assert torch.isfinite(top_p_filter(logits, 1.0)).all()
    assert int(torch.isfinite(top_p_filter(torch.zeros(4), 0.5)).sum()) == 2  # exactly p: no third token


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2 ** 31), p=st.floats(0.01, 0.99), n=st.integers(2, 50))
def test_top_p_filter_property(seed, p, n):
    logits = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3
    probs = torch.softmax(logits, dim=-1)
    kept = torch.isfinite(top_p_filter(logits, p))
    k = int(kept.sum())
    order = torch.argsort(probs, descending=True)
    assert kept[order[:k]].all()  # the kept tokens are the k most probable
    assert probs[kept].sum() >= p - 1e-12  # they reach p
    assert probs[order[:k - 1]].sum() < p  # and no smaller set does


def test_sampling_follows_the_filtered_distribution():
    logits = torch.log(torch.tensor([0.6, 0.25, 0.1, 0.05]))
    gen = torch.Generator().manual_seed(0)
    draws = [next_token(logits, SamplingSettings(top_p=0.8), gen) for _ in range(2000)]
    counts = np.bincount(draws, minlength=4) / 2000
    assert counts[2] == counts[3] == 0
    assert abs(counts[0] - 0.6 / 0.85) < 0.04


def test_stops_at_n_ctx_with_a_message(lm):
    ids, message = sample_ids(lm, PROMPT * 2 + [1, 2], V, SamplingSettings(gen_len=40, greedy=True))
    assert len(ids) == N_CTX - 10
    assert 'stopped after 6 of 40 tokens' in message and 'n_ctx=16' in message
    ids, message = sample_ids(lm, list(range(N_CTX)), V, SamplingSettings(gen_len=3))
    assert ids == [] and 'stopped after 0 of 3' in message
    ids, message = sample_ids(lm, PROMPT, V, SamplingSettings(gen_len=N_CTX - len(PROMPT), greedy=True))
    assert len(ids) == 12 and message is None  # exactly filling the context is no early stop
    with pytest.raises(ValueError, match='longer than n_ctx=16'):
        sample_ids(lm, list(range(N_CTX + 1)), V)
    with pytest.raises(ValueError, match='empty'):
        sample_ids(lm, [], V)


def test_a_prompt_id_outside_the_token_rows_is_refused(lm):
    for bad, match in ((V + N_SPECIAL, f'token id {V + N_SPECIAL}, beyond the model\'s {V + N_SPECIAL} token rows'),
                       (-1, 'token id -1, below 0')):
        with pytest.raises(ValueError, match=match):
            sample_ids(lm, PROMPT + [bad], V)


def test_seed_reproducibility(lm):
    def draw(seed):
        return sample_ids(lm, PROMPT, V, SamplingSettings(gen_len=12, temperature=2.0),
                          torch.Generator().manual_seed(seed))[0]
    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


def test_bad_sampling_arguments(lm):
    for kwargs, match in ((dict(temperature=0.0), 'temperature'), (dict(top_p=0.0), 'top_p'),
                          (dict(top_k=-1), 'top_k'), (dict(gen_len=-2), 'gen_len')):
        with pytest.raises(ValueError, match=match):
            sample_ids(lm, PROMPT, V, SamplingSettings(**kwargs))
    greedy = SamplingSettings(temperature=0.0, greedy=True, gen_len=2)  # greedy needs no temperature
    assert sample_ids(lm, PROMPT, V, greedy)[0]


@pytest.mark.cuda
def test_cached_generation_on_cuda_equals_the_cpu(lm):
    """Greedy decoding with the key/value cache on CUDA gives the CPU's ids, and its logits equal the uncached
    forward's at every step."""
    import copy
    model = copy.deepcopy(lm).cuda()
    ids_cpu, _ = sample_ids(lm, PROMPT, V, SamplingSettings(gen_len=10, greedy=True))
    ids_cuda, _ = sample_ids(model, PROMPT, V, SamplingSettings(gen_len=10, greedy=True))
    assert ids_cuda == ids_cpu
    rows, _ = sample_batch(model, PROMPT, V, 3, SamplingSettings(gen_len=10, greedy=True))  # a batch on CUDA too
    assert rows == [ids_cpu] * 3
    cached, uncached = NextTokenLogits(model, V), NextTokenLogits(model, V, use_cache=False)
    feed = PROMPT
    for token in ids_cuda:
        torch.testing.assert_close(cached(feed), uncached(feed), rtol=1e-4, atol=1e-4)
        feed = [token]


# --- batches of one prompt ------------------------------------------------------------------------------------

def tiny_gpt2(seed=0):
    """Return a random eval-mode GPT2LMHeadModel: 96 token rows, 16 positions, n_embd 16, 2 heads, 2 layers."""
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(n_vocab=96, n_ctx=N_CTX, n_embd=16, n_head=2, n_layer=2)).eval()
    with torch.no_grad():  # every weight away from its initial value: distinct argmaxes
        for p in model.parameters():
            p.add_(torch.randn(p.shape) * 0.5)
    return model


@pytest.mark.parametrize('family', ['gpt1', 'gpt2'])
def test_greedy_batch_rows_equal_the_unbatched_greedy_run(lm, family):
    model, n_vocab = (lm, V) if family == 'gpt1' else (tiny_gpt2(), 96)
    greedy = SamplingSettings(gen_len=10, greedy=True)
    want, _ = sample_ids(model, PROMPT, n_vocab, greedy)
    assert len(set(want)) > 1  # a real sequence, not one token repeated
    for use_cache in (True, False):
        rows, message = sample_batch(model, PROMPT, n_vocab, 4, greedy, use_cache=use_cache)
        assert rows == [want] * 4 and message is None


@pytest.mark.parametrize('family', ['gpt1', 'gpt2'])
def test_batch_logits_are_each_rows_own_logits_at_every_step(lm, family):
    """Rows of different ids (one length) fed together get the logits each gets alone, cached or not."""
    model, n_vocab = (lm, V) if family == 'gpt1' else (tiny_gpt2(), 96)
    prompts = torch.tensor([PROMPT, [9, 8, 7, 6], [1, 1, 2, 3]])  # [3, 4]
    batch, uncached = BatchNextTokenLogits(model, n_vocab), BatchNextTokenLogits(model, n_vocab, use_cache=False)
    alone = [NextTokenLogits(model, n_vocab) for _ in range(3)]
    feed = prompts
    for _ in range(5):
        logits = batch(feed)
        assert logits.shape == (3, n_vocab)
        torch.testing.assert_close(logits, uncached(feed), rtol=1e-5, atol=1e-5)
        for row, step in zip(range(3), alone):
            torch.testing.assert_close(logits[row], step(feed[row].tolist()), rtol=1e-5, atol=1e-5)
        feed = logits.argmax(dim=-1, keepdim=True)  # [3] -> [3, 1]
    assert batch.ids.shape == (3, 8) and batch.ids[:, :4].equal(prompts)
    with pytest.raises(ValueError, match='2 rows of new ids for 3 sequences'):
        batch(feed[:2])


def test_batch_rows_are_independent_samples_and_a_seed_repeats_them(lm):
    def draw(seed, batch_size=4):
        return sample_batch(lm, PROMPT, V, batch_size, SamplingSettings(gen_len=10, temperature=2.0),
                            torch.Generator().manual_seed(seed))[0]
    rows = draw(3)
    assert draw(3) == rows and draw(4) != rows
    assert len({tuple(row) for row in rows}) == 4  # each row drawn on its own
    assert draw(3, batch_size=1)[0] == sample_ids(lm, PROMPT, V, SamplingSettings(gen_len=10, temperature=2.0),
                                                  torch.Generator().manual_seed(3))[0]  # sample_ids: the batch of one


def test_batch_stops_at_n_ctx_and_refuses_what_sample_ids_refuses(lm):
    rows, message = sample_batch(lm, PROMPT * 2 + [1, 2], V, 3, SamplingSettings(gen_len=40, greedy=True))
    assert [len(row) for row in rows] == [6, 6, 6] and 'stopped after 6 of 40 tokens' in message
    assert sample_batch(lm, PROMPT, V, 2, SamplingSettings(gen_len=0)) == ([[], []], None)
    for args, match in (((PROMPT, V, 0), 'batch_size=0'), (([], V, 2), 'empty'), ((PROMPT + [V + N_SPECIAL], V, 2), 'token id'),
                        ((list(range(N_CTX + 1)), V, 2), 'longer than n_ctx=16')):
        with pytest.raises(ValueError, match=match):
            sample_batch(lm, *args)


def test_greedy_batch_rows_equal_transformers_generate(tmp_path):
    hf, ours = hf_gpt2_and_ours(tmp_path, seed=2)
    prompt = [5, 17, 42, 9]
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt] * 3), max_new_tokens=12, do_sample=False, pad_token_id=0,
                          attention_mask=torch.ones(3, 4, dtype=torch.long))
    rows, _ = sample_batch(ours, prompt, 96, 3, SamplingSettings(gen_len=12, greedy=True))
    assert rows == out[:, 4:].tolist() and len(set(rows[0])) > 1


# --- prompts of different lengths drawn together ----------------------------------------------------------------

RAGGED = [[5, 17], [9, 8, 7, 6, 5], [1, 1, 2, 3, 4, 5, 6, 7, 8]]  # lengths 2, 5, 9: the last fills n_ctx=16 early


@pytest.mark.parametrize('family', ['gpt1', 'gpt2'])
def test_greedy_rows_of_prompts_of_different_lengths_equal_each_unbatched_greedy_run(lm, family):
    model, n_vocab = (lm, V) if family == 'gpt1' else (tiny_gpt2(), 96)
    greedy = SamplingSettings(gen_len=10, greedy=True)
    want = [sample_ids(model, prompt, n_vocab, greedy) for prompt in RAGGED]
    assert all(len(set(ids)) > 1 for ids, _ in want)  # real sequences, not one token repeated
    assert [len(ids) for ids, _ in want] == [10, 10, 7] and 'stopped after 7 of 10 tokens' in want[2][1]
    for use_cache in (True, False):
        for batch_size in (None, 2, 1):
            rows, messages = sample_prompts(model, RAGGED, n_vocab, greedy, batch_size=batch_size,
                                            use_cache=use_cache)
            assert rows == [ids for ids, _ in want] and messages == [m for _, m in want], (use_cache, batch_size)


@pytest.mark.parametrize('family', ['gpt1', 'gpt2'])
def test_ragged_logits_are_each_rows_own_logits_at_every_step(lm, family):
    """Rows of different lengths fed together get, at every step, the logits each gets alone, cached or not; a row
    given no new ids keeps its logits."""
    model, n_vocab = (lm, V) if family == 'gpt1' else (tiny_gpt2(), 96)
    for use_cache in (True, False):
        ragged = RaggedNextTokenLogits(model, n_vocab, use_cache=use_cache)
        alone = [NextTokenLogits(model, n_vocab, use_cache=use_cache) for _ in RAGGED]
        feed, previous = RAGGED, None
        for step in range(7):
            logits = ragged(feed)
            assert logits.shape == (3, n_vocab)
            for row, (new, single) in enumerate(zip(feed, alone)):
                want = single(new) if new else previous[row]
                torch.testing.assert_close(logits[row], want, rtol=1e-5, atol=1e-5)
            previous = logits
            # the second row sits out one step; the first gets two ids at once
            feed = [[int(t)] for t in logits.argmax(dim=-1)]
            feed[1] = [] if step == 2 else feed[1]
            feed[0] = feed[0] + [3] if step == 4 else feed[0]
        assert [len(seq) for seq in ragged.seqs] == [2 + 6 + 1, 5 + 5, 9 + 6]
        with pytest.raises(ValueError, match='2 rows of new ids for 3 sequences'):
            ragged(feed[:2])
        with pytest.raises(ValueError, match='17 tokens exceed n_ctx=16'):
            ragged([[1], [1], [1, 2]])
    with pytest.raises(ValueError, match='at least one id'):
        RaggedNextTokenLogits(model, n_vocab)([[1], []])


def test_the_padding_of_a_ragged_batch_is_masked_out_of_attention(lm):
    """The cached path runs each step against keys of which some are padding: changing what the padding holds
    changes nothing (its keys get no weight), while the same ids unmasked would."""
    ragged = RaggedNextTokenLogits(lm, V)
    first = ragged(RAGGED)
    assert ragged.past_valid.tolist()[0] == [True] * 2 + [False] * 7
    k0, v0 = ragged.past[0]
    with torch.no_grad():
        for k, v in ragged.past:  # scramble the cached padding of the first row
            k[0, :, 2:].normal_(std=10.0)
            v[0, :, 2:].normal_(std=10.0)
    again = ragged([[int(first[0].argmax())], [], []])
    single = NextTokenLogits(lm, V)
    single(RAGGED[0])
    torch.testing.assert_close(again[0], single([int(first[0].argmax())]), rtol=1e-5, atol=1e-5)


def test_the_prompts_run_packed_leave_each_row_the_cache_and_state_it_gets_alone(lm):
    """prefill_packed: each prompt's last hidden state, and its keys/values from column 0 with zeros after them
    (marked invalid), as the prompt alone gives them."""
    with torch.no_grad():
        h_last, cache, past_valid = prefill_packed(lm.transformer, RAGGED, lm.transformer.pos_offset)
        assert past_valid.tolist() == [[i < len(p) for i in range(9)] for p in RAGGED]
        for b, prompt in enumerate(RAGGED):
            x = torch.tensor([[[t, V + N_SPECIAL + i] for i, t in enumerate(prompt)]])  # [1, T, 2]
            h, past = lm.transformer.forward_cached(x)
            torch.testing.assert_close(h_last[b], h[0, -1], atol=1e-5, rtol=1e-5)
            for (k, v), (k1, v1) in zip(cache, past):
                torch.testing.assert_close(k[b, :, :len(prompt)], k1[0], atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(v[b, :, :len(prompt)], v1[0], atol=1e-5, rtol=1e-5)
                assert not k[b, :, len(prompt):].any() and not v[b, :, len(prompt):].any()


@pytest.mark.parametrize('rows', [1, 3])
def test_the_token_decoder_gives_the_one_product_however_it_computes_it(rows):
    """In blocks of decoder rows (several rows), then through its transposed copy (one row, after enough calls)."""
    torch.manual_seed(0)
    decoder = torch.randn(10_000, 24)  # 10,000 rows: 2 whole blocks and a part
    token_decoder = TokenDecoder(decoder)
    for _ in range(TokenDecoder.TRANSPOSE_AFTER + 2):
        h = torch.randn(rows, 24)
        torch.testing.assert_close(token_decoder(h), h @ decoder.T, atol=1e-5, rtol=1e-5)
    assert (token_decoder.weight_t is not None) == (rows == 1)


def test_under_autocast_the_token_decoder_casts_the_decoder_once():
    torch.manual_seed(0)
    decoder, h = torch.randn(5000, 24), torch.randn(3, 24)
    token_decoder = TokenDecoder(decoder)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        logits, expected = token_decoder(h), F.linear(h, decoder)
        cast = token_decoder.cast
        token_decoder(h)
    assert logits.dtype == expected.dtype == torch.bfloat16 and token_decoder.cast is cast
    torch.testing.assert_close(logits, expected)
    assert token_decoder(h).dtype == torch.float32  # autocast off: the fp32 decoder


def test_sampling_prompts_of_different_lengths_never_draws_a_special_or_position_row():
    model = special_rows_dominate_lm()
    assert full_logits(model, RAGGED[0]).argmax() >= V  # the unmasked decoder would pick them
    gen = torch.Generator().manual_seed(0)
    for kwargs in (dict(greedy=True), dict(temperature=100.0), dict(top_k=5), dict(top_p=0.5), dict()):
        for use_cache in (True, False):
            rows, _ = sample_prompts(model, RAGGED, V, SamplingSettings(gen_len=12, **kwargs), gen,
                                     use_cache=use_cache)
            assert [len(row) for row in rows] == [12, 11, 7] and max(max(row) for row in rows) < V, kwargs


def test_sample_prompts_seeds_and_refusals(lm):
    def draw(seed, batch_size=None):
        return sample_prompts(lm, RAGGED, V, SamplingSettings(gen_len=6, temperature=2.0),
                              torch.Generator().manual_seed(seed), batch_size)[0]
    rows = draw(3)
    assert draw(3) == rows and draw(4) != rows and [len(row) for row in rows] == [6, 6, 6]
    assert draw(3, batch_size=1)[0] == sample_ids(lm, RAGGED[0], V, SamplingSettings(gen_len=6, temperature=2.0),
                                                  torch.Generator().manual_seed(3))[0]  # the first batch of one
    assert sample_prompts(lm, RAGGED, V, SamplingSettings(gen_len=0)) == ([[], [], []], [None, None, None])
    assert sample_prompts(lm, [], V) == ([], [])
    for args, kwargs, match in (((RAGGED, V), dict(batch_size=0), 'batch_size=0'),
                                (([[1], []], V), {}, 'prompt 2: the prompt is empty'),
                                (([[1], [2, V + N_SPECIAL]], V), {}, 'prompt 2: the prompt holds token id'),
                                (([list(range(N_CTX + 1))], V), {}, 'prompt 1: .*longer than n_ctx=16')):
        with pytest.raises(ValueError, match=match):
            sample_prompts(lm, *args, **kwargs)


def test_greedy_gpt1_rows_of_prompts_of_different_lengths_equal_transformers_greedy_on_each(tmp_path):
    """GPT-1: transformers' openai-gpt takes no per-row positions for a padded batch, so each prompt is generated
    alone there; our batched rows equal each."""
    import models
    from transformers import OpenAIGPTConfig, OpenAIGPTLMHeadModel
    from tests.test_convert import randomize
    config = OpenAIGPTConfig(vocab_size=103, n_positions=16, n_embd=32, n_layer=2, n_head=4)
    hf = randomize(OpenAIGPTLMHeadModel(config), seed=3).eval()
    with torch.no_grad():
        hf.transformer.tokens_embed.weight.mul_(10.0)  # a table that makes each prompt's tokens differ
    hf.save_pretrained(tmp_path / 'hf')
    ours = models.load_model(str(tmp_path / 'hf'), lm=True)
    rows, _ = sample_prompts(ours, RAGGED[:2] + [[4, 4, 2]], 103, SamplingSettings(gen_len=6, greedy=True))
    with torch.no_grad():
        for prompt, row in zip(RAGGED[:2] + [[4, 4, 2]], rows):
            out = hf.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False, pad_token_id=0)
            assert row == out[0, len(prompt):].tolist()
    assert len({tuple(row) for row in rows}) == 3


def test_greedy_rows_of_prompts_of_different_lengths_equal_transformers_left_padded_generate(tmp_path):
    hf, ours = hf_gpt2_and_ours(tmp_path, seed=2)
    prompts = [[5, 17], [9, 8, 7, 6, 5], [1, 1, 2, 3, 4, 5, 6, 7, 8]]
    T = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (T - len(p)) + p for p in prompts])  # left padded
    mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0,
                          output_scores=True, return_dict_in_generate=True)
    rows, _ = sample_prompts(ours, prompts, 96, SamplingSettings(gen_len=12, greedy=True))
    assert rows == out.sequences[:, T:].tolist() and len({tuple(row) for row in rows}) == 3
    assert len({token for row in rows for token in row}) > 3
    ragged, feed = RaggedNextTokenLogits(ours, 96), prompts  # and the logits of every step are transformers'
    for scores, drawn in zip(out.scores, out.sequences[:, T:].T):
        torch.testing.assert_close(ragged(feed), scores, rtol=1e-4, atol=1e-4)
        feed = [[int(t)] for t in drawn]
