"""Tests for sample.py: token rows only, cache equals no cache, greedy/top-k/top-p, n_ctx, seeds."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model_pytorch import LMModel
from sample import NextTokenLogits, SamplingSettings, next_token, sample_ids, top_k_filter, top_p_filter
from tests.helpers import small_cfg

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


def test_never_samples_a_special_or_position_row_even_when_they_dominate():
    torch.manual_seed(1)
    model = LMModel(small_cfg(n_embd=16, n_head=2), vocab=V + N_SPECIAL + N_CTX, n_ctx=N_CTX).eval()
    with torch.no_grad():
        last = model.transformer.h[-1].ln_2
        last.g.zero_()
        last.b.fill_(1.0)  # every hidden state is all ones, so a row's logit is its sum
        model.transformer.embed.weight[V:] = 10.0  # special and position rows: logit 160 against ~0
    assert full_logits(model, PROMPT).argmax() >= V  # the unmasked decoder would pick them
    gen = torch.Generator().manual_seed(0)
    for kwargs in (dict(greedy=True), dict(temperature=100.0), dict(top_k=5), dict(top_p=0.5), dict()):
        ids, _ = sample_ids(model, PROMPT, V, SamplingSettings(gen_len=12, **kwargs), gen)
        assert len(ids) == 12 and max(ids) < V, kwargs


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
    cached, uncached = NextTokenLogits(model, V), NextTokenLogits(model, V, use_cache=False)
    feed = PROMPT
    for token in ids_cuda:
        torch.testing.assert_close(cached(feed), uncached(feed), rtol=1e-4, atol=1e-4)
        feed = [token]
