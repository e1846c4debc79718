"""Tests for model_pytorch.py: TF parity, dropout structure, heads and the weight loader."""
import argparse
import contextlib
import copy
import inspect
import json

import numpy as np
import pytest
import torch

import loss
import model_pytorch
from loss import clf_losses, lm_losses_from_hidden, similarity_losses
from model_pytorch import (DEFAULT_CONFIG, ClfHead, GPTConfig, DoubleHeadModel, LMHead, LMModel, MultipleChoiceHead,
                           TransformerModel, clone_config, load_openai_pretrained_model)
from weights import tf_param_names, torch_name, write_released_shards
from tests.helpers import FIXTURES, SMALL_MODEL, fixture_arrays, load_tf_reference, small_cfg, tf_model


@pytest.fixture(scope='module')
def ref():
    return load_tf_reference()


def set_attn_impl(model, impl):
    for block in model.transformer.h:
        block.attn.impl = impl


def make_x(n_vocab, n_ctx, batch, generator=None, n_special=0):
    """Random token ids with the position ids after the vocabulary: [batch, n_ctx, 2]."""
    x = torch.empty(batch, n_ctx, 2, dtype=torch.long)
    x[..., 0] = torch.randint(0, n_vocab, (batch, n_ctx), generator=generator)
    x[..., 1] = torch.arange(n_vocab + n_special, n_vocab + n_special + n_ctx)
    return x


# --- the configuration -------------------------------------------------------------------------

def test_default_config_values_and_copy():
    cfg = copy.deepcopy(DEFAULT_CONFIG)
    assert (cfg.n_embd, cfg.n_head, cfg.n_layer, cfg.afn) == (768, 12, 12, 'gelu')
    assert cfg.embd_pdrop == cfg.attn_pdrop == cfg.resid_pdrop == cfg.clf_pdrop == 0.1
    cfg.n_layer = 2
    assert cfg.n_layer == 2 and DEFAULT_CONFIG.n_layer == 12


def test_config_rejects_misspelt_field():
    cfg = copy.deepcopy(DEFAULT_CONFIG)
    with pytest.raises(AttributeError):
        cfg.n_heads = 4


def test_a_model_takes_a_config_not_a_namespace():
    ns = argparse.Namespace(n_embd=16, n_head=2, n_layer=1, embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0,
                            clf_pdrop=0.0, afn='relu')
    with pytest.raises(TypeError, match='must be a GPTConfig, not Namespace'):
        TransformerModel(ns, vocab=50, n_ctx=8)
    with pytest.raises(TypeError, match='must be a GPTConfig, not Namespace'):
        DoubleHeadModel(ns, clf_token=49, task_head_type='multiple_choice', vocab=50, n_ctx=8)
    model = TransformerModel(clone_config(DEFAULT_CONFIG, **vars(ns)), vocab=50, n_ctx=8)
    assert model(make_x(40, 8, 3)).shape == (3, 8, 16)


def test_no_model_shares_a_default_config():
    """The default config is None -> a fresh GPTConfig(), never one object shared by every model built without one."""
    for cls in (TransformerModel, LMModel):
        assert inspect.signature(cls).parameters['cfg'].default is None
    model = TransformerModel(vocab=600, n_ctx=16)
    assert model.cfg is not DEFAULT_CONFIG and (model.cfg.n_vocab, model.cfg.n_special, model.cfg.n_ctx) == (584, 0, 16)
    assert DEFAULT_CONFIG == GPTConfig() and len(model.h) == 12


def test_model_keeps_its_own_config_built_from_a_config_or_its_fields():
    cfg = small_cfg(n_vocab=50, n_special=3, n_ctx=8)
    model = DoubleHeadModel(cfg, clf_token=52, task_head_type='multiple_choice')
    assert model.cfg == cfg and model.cfg is not cfg and model.transformer.cfg is model.cfg  # a copy of its own
    assert model.transformer.embed.weight.shape == (61, 32) and model.transformer.n_ctx == 8
    cfg.n_layer = 5
    assert len(model.transformer.h) == 2 and model.cfg.n_layer == 2
    fields = {k: getattr(cfg, k) for k in ('n_embd', 'n_head', 'n_layer', 'embd_pdrop', 'attn_pdrop', 'resid_pdrop',
                                           'clf_pdrop', 'afn')}
    from_fields = TransformerModel(clone_config(DEFAULT_CONFIG, **fields), vocab=61, n_ctx=8)
    assert isinstance(from_fields.cfg, GPTConfig) and (from_fields.cfg.n_vocab, from_fields.cfg.n_special) == (53, 0)
    # the earlier port's vocab argument keeps the config's n_vocab when the rows hold it
    assert (TransformerModel(small_cfg(n_vocab=50), vocab=61, n_ctx=8).cfg.n_special) == 3
    with pytest.raises(ValueError, match="no field 'n_heads'"):
        clone_config(cfg, n_heads=4)


def test_unknown_afn_and_bad_heads_rejected():
    with pytest.raises(ValueError, match="afn must be one of 'gelu', 'relu', 'swish', not 'tanh'"):
        TransformerModel(small_cfg(afn='tanh'), vocab=50, n_ctx=8)
    with pytest.raises(ValueError, match='divisible'):
        TransformerModel(small_cfg(n_head=5), vocab=50, n_ctx=8)


# --- parity with the original TensorFlow code ---------------------------------------------------

@pytest.mark.parametrize('impl', ['sdpa', 'explicit'])
def test_tf_parity_eval(ref, impl):
    arrays, config = ref
    model = tf_model(arrays, config).eval()
    set_attn_impl(model, impl)
    np.testing.assert_array_equal(model.transformer.embed.weight.detach().numpy(), arrays['we'])
    X = torch.from_numpy(arrays['X']).long()
    with torch.no_grad():
        h = model.transformer(X)
        lm_logits, clf_logits = model(X)
    np.testing.assert_allclose(h.numpy(), arrays['h'], atol=2e-5, rtol=0)
    np.testing.assert_allclose(lm_logits.numpy(), arrays['lm_logits'], atol=2e-5, rtol=0)
    np.testing.assert_allclose(clf_logits.numpy(), arrays['clf_logits'], atol=2e-5, rtol=0)


def test_special_rows_follow_numpy_global_seed(ref):
    arrays, config = ref
    np.random.seed(config['seed'])
    expected = (np.random.randn(3, config['n_embd']) * 0.02).astype(np.float32)
    np.testing.assert_array_equal(expected, arrays['special'])
    model = tf_model(arrays, config)
    rows = model.transformer.embed.weight.detach().numpy()[config['n_vocab']:config['n_vocab'] + 3]
    np.testing.assert_array_equal(rows, arrays['special'])


# --- structure of the computation ---------------------------------------------------------------

def test_causal():
    torch.manual_seed(0)
    model = TransformerModel(small_cfg(), vocab=60, n_ctx=10).eval()
    x = make_x(50, 10, 2)
    y = x.clone()
    y[:, -1, 0] = (y[:, -1, 0] + 1) % 50
    with torch.no_grad():
        hx, hy = model(x), model(y)
    torch.testing.assert_close(hx[:, :-1], hy[:, :-1])
    assert not torch.allclose(hx[:, -1], hy[:, -1])


def test_sdpa_equals_explicit_attention_with_gradients():
    torch.manual_seed(0)
    model = LMModel(small_cfg(), vocab=60, n_ctx=10)
    x = make_x(50, 10, 3)
    outs = []
    for impl in ['sdpa', 'explicit']:
        set_attn_impl(model, impl)
        model.zero_grad()
        logits = model(x)
        logits.square().mean().backward()
        outs.append((logits.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(outs[0][0], outs[1][0], atol=1e-5, rtol=1e-5)
    for g0, g1 in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(g0, g1, atol=1e-6, rtol=1e-4)


def test_attention_weights_kept_for_inspection_are_causal():
    torch.manual_seed(0)
    model = TransformerModel(small_cfg(), vocab=60, n_ctx=6).eval()
    model.h[0].attn.keep_weights = True
    model(make_x(50, 6, 2))
    w = model.h[0].attn.last_weights  # [B, H, T, T]
    assert w.shape == (2, 4, 6, 6)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 6))
    assert torch.all(w.triu(diagonal=1) == 0)


def test_embedding_dropout_acts_on_the_table_shared_with_the_decoder():
    torch.manual_seed(0)
    cfg = small_cfg(n_layer=0)
    cfg.embd_pdrop = 0.5
    model = DoubleHeadModel(cfg, clf_token=49, task_head_type='multiple_choice', vocab=70, n_ctx=10).train()
    x = make_x(49, 10, 4).view(2, 2, 10, 2)
    x[..., 9, 0] = 49
    x[1, 1] = x[0, 0]  # the same (token, position) pairs in two different sequences
    torch.manual_seed(1)
    h, we = model.transformer(x, return_we=True)
    assert (we == 0).any() and not torch.equal(we, model.transformer.embed.weight)
    xf = x.view(-1, 10, 2)
    # every lookup reads rows of the one dropped table: a token seen twice sees the same dropped row
    torch.testing.assert_close(h, we[xf[..., 0]] + we[xf[..., 1]])
    torch.testing.assert_close(h[3], h[0])
    torch.manual_seed(1)
    lm_logits, _ = model(x)
    torch.testing.assert_close(lm_logits, h[:, :-1].reshape(-1, 32) @ we.t())


ATTN_PATHS = ['sdpa', 'explicit', 'sdpa-cached', 'explicit-cached']


def attention_output(attn, x, path, n_past=3):
    """Return an Attention's output for x [B, T, nx] along one path: the full sequence, or its last T - n_past
    positions on top of a (k, v) cache of the first n_past."""
    attn.impl = path.split('-')[0]
    if not path.endswith('cached'):
        return attn(x)[0]
    _, past = attn(x[:, :n_past])
    return attn(x[:, n_past:], past)[0]


@pytest.mark.parametrize('path', ATTN_PATHS)
def test_attention_dropout_acts_in_training_on_every_path(path):
    """Training: the output depends on the dropout draw, and its mean over draws is the evaluation output
    (inverted dropout of the attention weights, which the output is linear in when resid_pdrop is 0)."""
    from model_pytorch import Attention
    torch.manual_seed(0)
    attn = Attention(16, 4, attn_pdrop=0.4, resid_pdrop=0.0)
    x = torch.randn(1, 7, 16)
    attn.eval()
    with torch.no_grad():
        expected = attention_output(attn, x, path)
        attn.train()
        torch.manual_seed(1)
        a1 = attention_output(attn, x, path)
        torch.manual_seed(2)
        a2 = attention_output(attn, x, path)
        torch.manual_seed(1)
        torch.testing.assert_close(attention_output(attn, x, path), a1, atol=0, rtol=0)
        assert (a1 - a2).abs().max() > 1e-3 and (a1 - expected).abs().max() > 1e-3
        n = 4000  # independent draws, one per copy of x
        draws = attention_output(attn, x.expand(n, 7, 16).contiguous(), path)
    mean, sem = draws.mean(0), draws.std(0) / n ** 0.5
    assert torch.all((mean - expected[0]).abs() <= 5 * sem + 1e-6)


@pytest.mark.parametrize('path', ATTN_PATHS)
def test_attention_dropout_is_off_in_evaluation(path):
    from model_pytorch import Attention
    torch.manual_seed(0)
    attn = Attention(16, 4, attn_pdrop=0.9, resid_pdrop=0.9).eval()
    plain = Attention(16, 4, attn_pdrop=0.0, resid_pdrop=0.0).eval()
    plain.load_state_dict(attn.state_dict())
    x = torch.randn(2, 7, 16)
    with torch.no_grad():
        outs = []
        for seed in (1, 2):
            torch.manual_seed(seed)
            outs.append(attention_output(attn, x, path))
        torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)
        torch.testing.assert_close(outs[0], attention_output(plain, x, path))


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_cpu_reduced_precision_training_attention_keeps_the_fp32_dropout_draws(dtype):
    """CPU training under bf16/fp16 autocast with attention dropout: the default path runs without SDPA's math
    kernel (the only one with dropout there, which upcasts to fp32), and its output and gradients are within the
    dtype's rounding of the fp32 path's from the same seed: the same dropout masks, applied in the same places."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from model_pytorch import Attention
    torch.manual_seed(0)
    attn = Attention(64, 4, attn_pdrop=0.3, resid_pdrop=0.0).train()
    x = torch.randn(2, 16, 64)
    outs = {}
    for precision in ('fp32', 'reduced', 'other seed'):
        attn.zero_grad()
        torch.manual_seed(2 if precision == 'other seed' else 1)
        reduced = precision != 'fp32'
        no_math = sdpa_kernel([SDPBackend.FLASH_ATTENTION]) if reduced else contextlib.nullcontext()
        with torch.autocast('cpu', dtype=dtype, enabled=reduced), no_math:
            a = attn(x)[0]
        assert a.dtype == (torch.float32 if precision == 'fp32' else dtype)
        a.float().square().sum().backward()
        outs[precision] = (a.detach().float(), [p.grad.clone() for p in attn.parameters()])
    def rel_err(a, ref):
        """Return the largest error of a against ref, relative to ref's largest entry."""
        return ((a - ref).abs().max() / ref.abs().max()).item()

    bound = 0.02 if dtype == torch.bfloat16 else 3e-3  # a few roundings to 8 (bf16) or 11 (fp16) bits
    assert rel_err(outs['reduced'][0], outs['fp32'][0]) < bound
    assert all(rel_err(g, g32) < bound for g, g32 in zip(outs['reduced'][1], outs['fp32'][1]))
    assert rel_err(outs['other seed'][0], outs['fp32'][0]) > 10 * bound  # another draw is far outside the bound


@pytest.mark.parametrize('impl', ['sdpa', 'explicit'])
@pytest.mark.parametrize('which', ['embd_pdrop', 'attn_pdrop', 'resid_pdrop'])
def test_each_dropout_of_the_config_reaches_the_model(which, impl):
    """Each dropout rate alone, through the config: training outputs depend on the draw, evaluation's do not."""
    torch.manual_seed(0)
    model = TransformerModel(small_cfg(**{which: 0.3}), vocab=60, n_ctx=8)
    for block in model.h:
        block.attn.impl = impl
    x = make_x(50, 8, 2)
    outs = {}
    with torch.no_grad():
        for mode in ('train', 'eval'):
            getattr(model, mode)()
            for seed in (1, 2):
                torch.manual_seed(seed)
                outs[mode, seed] = model(x)
    assert (outs['train', 1] - outs['train', 2]).abs().max() > 1e-3
    torch.testing.assert_close(outs['eval', 1], outs['eval', 2], atol=0, rtol=0)


def test_classifier_dropout_shares_one_mask_across_choices():
    torch.manual_seed(0)
    cfg = small_cfg()
    cfg.clf_pdrop = 0.5
    head = MultipleChoiceHead(clf_token=7, cfg=cfg).train()
    with torch.no_grad():
        head.clf.w.fill_(1.0)
    B, T = 64, 5
    x = torch.zeros(B, 2, T, 2, dtype=torch.long)
    x[:, :, -1, 0] = 7
    h = torch.rand(B, 1, T, 32).expand(B, 2, T, 32).reshape(B * 2, T, 32)  # both choices identical
    logits = head(h, x)
    torch.testing.assert_close(logits[:, 0], logits[:, 1])
    assert logits[:, 0].unique().numel() > 1  # masks differ between examples
    head.eval()
    torch.testing.assert_close(head(h, x), h[:, -1].sum(-1).view(B, 2))


def test_pooling_at_first_classify_token_and_missing_token_error():
    head = ClfHead(clf_token=9, cfg=small_cfg(), n_class=3).eval()
    x = torch.zeros(2, 6, 2, dtype=torch.long)
    x[0, 2, 0] = x[0, 4, 0] = 9
    x[1, 5, 0] = 9
    h = torch.randn(2, 6, 32)
    expected = torch.stack([h[0, 2], h[1, 5]]) @ head.clf.w + head.clf.b
    torch.testing.assert_close(head(h, x), expected)
    x[1, 5, 0] = 3
    with pytest.raises(ValueError, match='1 of 2 sequences hold no classify token'):
        head(h, x)


def test_similarity_head_symmetric():
    torch.manual_seed(0)
    model = DoubleHeadModel(small_cfg(), clf_token=49, task_head_type='similarity', vocab=70, n_ctx=10).eval()
    x = make_x(48, 10, 6).view(3, 2, 10, 2)
    x[..., 9, 0] = 49
    swapped = x.flip(1)
    with torch.no_grad():
        _, s = model(x)
        _, t = model(swapped)
    assert s.shape == (3,)
    torch.testing.assert_close(s, t)


def test_task_head_types():
    cfg = small_cfg()
    assert isinstance(DoubleHeadModel(cfg, 5, 'inference', 60, 8).task_head.clf.w, torch.nn.Parameter)
    assert DoubleHeadModel(cfg, 5, 'inference', 60, 8).task_head.clf.w.shape == (32, 3)
    assert DoubleHeadModel(cfg, 5, ('classification', 4), 60, 8).task_head.clf.w.shape == (32, 4)
    assert DoubleHeadModel(cfg, 5, ('similarity', 2), 60, 8).task_head.clf.w.shape == (32, 2)
    with pytest.raises(ValueError, match='unknown task_head_type'):
        DoubleHeadModel(cfg, 5, 'regression', 60, 8)


def test_initialisation_independent_layers_and_zero_head_biases():
    torch.manual_seed(0)
    model = DoubleHeadModel(DEFAULT_CONFIG, clf_token=3, task_head_type='multiple_choice', vocab=1000, n_ctx=16)
    w0, w1 = model.transformer.h[0].attn.c_attn.w, model.transformer.h[1].attn.c_attn.w
    assert not torch.equal(w0, w1)
    assert abs(w0.std().item() - 0.02) < 1e-3
    assert torch.all(model.task_head.clf.b == 0)
    assert abs(model.task_head.clf.w.std().item() - 0.02) < 5e-3
    assert torch.all(model.transformer.h[0].ln_1.g == 1) and torch.all(model.transformer.h[0].ln_1.b == 0)


def test_lm_head_tied_and_over_every_row():
    torch.manual_seed(0)
    model = TransformerModel(small_cfg(), vocab=70, n_ctx=10)
    head = LMHead(model, small_cfg())
    assert head.decoder.weight is model.embed.weight
    h = model(make_x(50, 10, 2))
    assert head(h).shape == (2 * 9, 70)
    lm = LMModel(small_cfg(), vocab=70, n_ctx=10, return_probs=True).eval()
    probs = lm(make_x(50, 10, 2))
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 10))


def test_state_dict_keys_read_like_tf_names():
    model = TransformerModel(small_cfg(), vocab=70, n_ctx=10)
    keys = set(model.state_dict())
    for tf_name in tf_param_names(2)[2:]:
        assert torch_name(tf_name) in keys
    assert torch_name('model/h3/attn/c_attn/w') == 'h.3.attn.c_attn.w'
    assert model.state_dict()['h.1.mlp.c_fc.w'].shape == (32, 128)


def test_all_hidden_states_and_kv_cache_match_full_forward():
    torch.manual_seed(0)
    model = TransformerModel(small_cfg(), vocab=70, n_ctx=12).eval()
    x = make_x(50, 12, 2)
    with torch.no_grad():
        full = model(x)
        layers = model.all_hidden_states(x)
        assert len(layers) == 3
        torch.testing.assert_close(layers[-1], full)
        h, past = model.forward_cached(x[:, :5])
        steps = [h]
        for t in range(5, 12):
            h, past = model.forward_cached(x[:, t:t + 1], past)
            steps.append(h)
        cached = torch.cat(steps, dim=1)
        # a block of 3 new positions on top of a cache uses the offset causal mask
        h3, _ = model.forward_cached(x[:, 7:10], model.forward_cached(x[:, :7])[1])
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h3, full[:, 7:10], atol=1e-5, rtol=1e-5)


# --- training through the model -----------------------------------------------------------------

def fixture_batch(arrays):
    return (torch.from_numpy(arrays['X']).long(), torch.from_numpy(arrays['M']),
            torch.from_numpy(arrays['Y']).long())


def expected_losses(model, x, m, y, lm_coef, check):
    """Return what train.py's update computed from hidden_and_task's outputs before the model owned its losses: the
    task logits, the task losses (squared error of one score, else cross-entropy) and the masked, chunked LM losses
    (None when lm_coef is 0)."""
    h, we, logits = model.hidden_and_task(x, check)
    task = similarity_losses(logits, y) if logits.dim() == 1 else clf_losses(logits, y)
    lm = lm_losses_from_hidden(h, we, x, m, chunk_size=loss.LM_CHUNK) if lm_coef > 0 else None
    return logits, task, lm


def assert_same_losses(got, want):
    """Assert two (logits, task losses, LM losses or None) triples are equal bit for bit."""
    assert len(got) == len(want) == 3 and (got[2] is None) == (want[2] is None)
    for a, b in zip(got, want):
        if b is not None:
            torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize('lm_coef', [0.5, 0.0])
def test_losses_and_forward_with_targets_are_the_training_losses(ref, lm_coef):
    """In training mode (the same dropout draws from the same seed): losses, and forward given m and y, equal the
    loss functions on hidden_and_task's outputs, values and gradients."""
    arrays, config = ref
    model = tf_model(arrays, config, pdrop=0.1).train()
    X, M, Y = fixture_batch(arrays)
    results = []
    for compute in (lambda: expected_losses(model, X, M, Y, lm_coef, False),
                    lambda: model.losses(X, M, Y, lm_coef, check=False),
                    lambda: model(X, M, Y, lm_coef, check=False),
                    lambda: model(X, m=M, y=Y, lm_coef=lm_coef)):
        torch.manual_seed(3)
        out = compute()
        total = loss.train_loss(out[1], out[2], lm_coef)
        results.append((out, torch.autograd.grad(total, list(model.parameters()))))
    (want, want_grads), rest = results[0], results[1:]
    assert want[1].shape == (3,) and (want[2] is None or want[2].shape == (6,))
    for got, grads in rest:
        assert_same_losses(got, want)
        for a, b in zip(grads, want_grads):
            torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize('head', ['similarity', ('similarity', 3), 'inference'])
def test_losses_of_each_head_are_its_task_loss(head):
    """A regression head (similarity, one score) is scored by squared error, every other head by cross-entropy."""
    torch.manual_seed(0)
    model = DoubleHeadModel(small_cfg(), clf_token=49, task_head_type=head, vocab=70, n_ctx=10).eval()
    pair = head != 'inference'
    x = make_x(48, 10, 8 if pair else 4).view(4, 2 if pair else 1, 10, 2)
    x[..., 7, 0] = 49
    m = torch.zeros(x.shape[:-1])
    m[..., :8] = 1
    y = torch.tensor([0.5, 4.0, 2.5, 1.0]) if head == 'similarity' else torch.tensor([0, 2, 1, 2])
    with torch.no_grad():
        want = expected_losses(model, x, m, y, 0.5, True)
        assert_same_losses(model.losses(x, m, y, 0.5), want)
        assert_same_losses(model(x, m, y, 0.5), want)
    if head == 'similarity':
        torch.testing.assert_close(want[1], (want[0] - y) ** 2, atol=0, rtol=0)
    else:
        torch.testing.assert_close(want[1], torch.nn.functional.cross_entropy(want[0], y, reduction='none'))


def test_forward_with_targets_is_one_graph_for_torch_compile(ref):
    """torch.compile of the model traces the transformer and the heads as one graph with no break; the losses, whose
    masked selection has a data-dependent shape, run eagerly after it (the compiled region train.py had before)."""
    arrays, config = ref
    model = tf_model(arrays, config).train()
    X, M, Y = fixture_batch(arrays)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(X, M, Y, lm_coef=0.5, check=False)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)
    assert [str(r.reason).count('losses_of_outputs') > 0 for r in explained.break_reasons] == [True]


def test_forward_without_targets_returns_the_logits_as_before(ref):
    arrays, config = ref
    model = tf_model(arrays, config).eval()
    X, M, Y = fixture_batch(arrays)
    with torch.no_grad():
        lm_logits, task_logits = model(X)
        h, we = model.transformer(X, return_we=True)
        torch.testing.assert_close(lm_logits, model.lm_head(h, we), atol=0, rtol=0)
        torch.testing.assert_close(task_logits, model.task_head(h, X), atol=0, rtol=0)
        assert lm_logits.shape == (6 * 15, model.transformer.embed.weight.shape[0]) and task_logits.shape == (3, 2)
        for partial in (dict(m=M), dict(y=Y)):
            with pytest.raises(ValueError, match='give both the mask m and the labels y'):
                model(X, **partial)
        X[0, 0, :, 0] = 0  # no classify token: forward checks as hidden_and_task does
        with pytest.raises(ValueError, match='hold no classify token'):
            model(X)
        with pytest.raises(ValueError, match='hold no classify token'):
            model(X, M, Y)


# --- the weight loader --------------------------------------------------------------------------

def test_full_size_synthetic_shards_load_every_array_in_place(tmp_path):
    with open(FIXTURES / 'released_params_shapes.json') as f:
        shapes = json.load(f)
    assert len(shapes) == 146
    arrays = [np.float32(i) + (np.arange(np.prod(s), dtype=np.float32) % 1000) / 1000 for i, s in enumerate(shapes)]
    arrays = [a.reshape(s) for a, s in zip(arrays, shapes)]
    assert sum(a.size for a in arrays) > 116_000_000
    write_released_shards(tmp_path, arrays)
    del arrays

    args = DEFAULT_CONFIG
    model = TransformerModel(args)
    load_openai_pretrained_model(model, path=str(tmp_path))
    sd = model.state_dict()
    assert sd['embed.weight'].shape == (40990, 768)

    def expected(i):
        return np.float32(i) + (np.arange(np.prod(shapes[i]), dtype=np.float32) % 1000) / 1000

    table = sd['embed.weight'].numpy()
    np.testing.assert_array_equal(table[:40478], expected(1).reshape(40478, 768))
    np.testing.assert_array_equal(table[40478:], expected(0).reshape(512, 768))
    for i, tf_name in enumerate(tf_param_names(12)[2:], start=2):
        np.testing.assert_array_equal(sd[torch_name(tf_name)].numpy().reshape(-1), expected(i), err_msg=tf_name)


def test_n_ctx_crop_and_special_rows(tmp_path):
    arrays = fixture_arrays()  # 24 stored positions
    model = TransformerModel(small_cfg(), vocab=100 + 2 + 8, n_ctx=8)
    np.random.seed(5)
    load_openai_pretrained_model(model, path=str(SMALL_MODEL), n_embd=32)
    np.random.seed(5)
    special = (np.random.randn(2, 32) * 0.02).astype(np.float32)
    table = model.embed.weight.detach().numpy()
    np.testing.assert_array_equal(table[:100], arrays[1])
    np.testing.assert_array_equal(table[100:102], special)
    np.testing.assert_array_equal(table[102:], arrays[0][:8])
    too_long = TransformerModel(small_cfg(), vocab=100 + 30, n_ctx=30)
    with pytest.raises(ValueError, match='n_ctx=30 exceeds the 24 positions'):
        load_openai_pretrained_model(too_long, path=str(SMALL_MODEL), n_embd=32)


def test_every_loader_draws_special_rows_in_one_place(monkeypatch):
    """load_openai_pretrained_model, model_from_checkpoint and GPT-2's make_task_model draw new special rows through
    model_pytorch.draw_special_rows, the original's np.random.randn(n, n_embd) * 0.02 from numpy's global generator."""
    import model_gpt2
    from weights import read_checkpoint, read_released
    np.random.seed(5)
    drawn = model_pytorch.draw_special_rows(2, 32)
    np.random.seed(5)
    np.testing.assert_array_equal(drawn, (np.random.randn(2, 32) * 0.02).astype(np.float32))
    assert drawn.dtype == np.float32
    calls = []

    def constant_rows(n_special, n_embd):
        calls.append((n_special, n_embd))
        return np.full((n_special, n_embd), 7.0, np.float32)

    monkeypatch.setattr(model_pytorch, 'draw_special_rows', constant_rows)
    model = TransformerModel(small_cfg(), vocab=100 + 2 + 8, n_ctx=8)
    load_openai_pretrained_model(model, path=str(SMALL_MODEL), n_embd=32)
    assert np.all(model.embed.weight.detach().numpy()[100:102] == 7.0)
    ckpt = read_released(str(SMALL_MODEL), n_head=4)
    built = model_pytorch.model_from_checkpoint(ckpt, n_ctx=8, n_special=3)
    assert np.all(built.embed.weight.detach().numpy()[100:103] == 7.0)
    gpt2 = model_gpt2.make_task_model(read_checkpoint(str(FIXTURES / 'gpt2' / 'ckpt_small')), 24, 3, 98,
                                      'multiple_choice', dict(clf_pdrop=0.1))
    assert np.all(gpt2.transformer.wte.weight.detach().numpy()[96:] == 7.0)
    assert calls == [(2, 32), (3, 32), (3, 32)]


def test_n_transfer_limits_what_is_copied():
    arrays = fixture_arrays()
    torch.manual_seed(0)
    model = TransformerModel(small_cfg(), vocab=100 + 24, n_ctx=24)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    load_openai_pretrained_model(model, path=str(SMALL_MODEL), n_transfer=1, n_embd=32)
    sd = model.state_dict()
    np.testing.assert_array_equal(sd['h.0.attn.c_attn.w'].numpy(), arrays[2][0])
    assert torch.equal(sd['h.1.attn.c_attn.w'], before['h.1.attn.c_attn.w'])
    model2 = TransformerModel(small_cfg(), vocab=100 + 24, n_ctx=24)
    before2 = {k: v.clone() for k, v in model2.state_dict().items()}
    load_openai_pretrained_model(model2, path=str(SMALL_MODEL), n_transfer=-1, n_embd=32)
    assert all(torch.equal(before2[k], v) for k, v in model2.state_dict().items())


def test_shape_mismatch_names_parameter_and_both_shapes(shard_dir):
    model = TransformerModel(small_cfg(n_embd=16, n_head=4), vocab=124, n_ctx=24)
    with pytest.raises(ValueError, match=r'shape mismatch for embed.weight: the model has \(124, 16\), '
                                         r'the weights give \(124, 32\)'):
        load_openai_pretrained_model(model, path=str(shard_dir), n_embd=32)
    wide = TransformerModel(small_cfg(), vocab=124, n_ctx=24)
    wide.h[1].mlp.c_fc.w = torch.nn.Parameter(torch.zeros(32, 64))
    with pytest.raises(ValueError, match=r'shape mismatch for h\.1\.mlp\.c_fc\.w: the model has \(32, 64\), '
                                         r'the weights give \(32, 128\)'):
        load_openai_pretrained_model(wide, path=str(shard_dir), n_embd=32)


def test_failed_load_changes_nothing(shard_dir):
    model = TransformerModel(small_cfg(), vocab=124, n_ctx=24)
    model.h[1].ln_2.g = torch.nn.Parameter(torch.ones(31))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match='ln_2.g'):
        load_openai_pretrained_model(model, path=str(shard_dir), n_embd=32)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_activation_checkpointing_gives_the_same_gradients_with_dropout():
    torch.manual_seed(0)
    model = LMModel(small_cfg(pdrop=0.3), vocab=60, n_ctx=10).train()
    x = make_x(50, 10, 3)
    grads = []
    for flag in (False, True):
        model.cfg.checkpoint_activations = flag
        model.zero_grad()
        torch.manual_seed(7)
        model(x).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-6)


# --- on a GPU (python -m pytest -m cuda) --------------------------------------------------------

@pytest.mark.cuda
def test_tf_parity_on_cuda_in_fp32_strict(ref):
    """--precision fp32-strict on CUDA (no TF32): the original's outputs within the CPU tolerance."""
    import precision
    arrays, config = ref
    device = torch.device('cuda')
    precision.configure_precision(device, 'fp32-strict')
    assert not torch.backends.cuda.matmul.allow_tf32
    model = tf_model(arrays, config).eval().to(device)
    X = torch.from_numpy(arrays['X']).long().to(device)
    with torch.no_grad():
        h = model.transformer(X)
        lm_logits, clf_logits = model(X)
    np.testing.assert_allclose(h.cpu().numpy(), arrays['h'], atol=2e-5, rtol=0)
    np.testing.assert_allclose(lm_logits.cpu().numpy(), arrays['lm_logits'], atol=2e-5, rtol=0)
    np.testing.assert_allclose(clf_logits.cpu().numpy(), arrays['clf_logits'], atol=2e-5, rtol=0)


@pytest.mark.cuda
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float16])
def test_default_attention_path_runs_on_fused_sdpa_kernels_on_cuda(dtype):
    """The default (SDPA) path, training with attention dropout and in evaluation, forward and backward, runs
    with only the flash and memory-efficient kernels allowed: no fallback to the math kernel."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    torch.manual_seed(0)
    model = LMModel(small_cfg(pdrop=0.1, n_embd=64, n_head=4), vocab=160, n_ctx=32).cuda()
    x = make_x(100, 32, 4, n_special=28).cuda()
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
        with torch.autocast('cuda', dtype=dtype, enabled=dtype != torch.float32):
            model.train()
            model(x).float().square().mean().backward()
            model.eval()
            with torch.no_grad():
                model(x)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# --- the shared-prefix evaluation path ----------------------------------------------------------

def ragged_choices(rng, B, C, T, n_vocab=40, n_special=3):
    """Multiple-choice x [B, C, T, 2] and lengths [B, C]: a shared prefix of random length per example, then
    each choice's own tokens and a classify token, right-padded; position ids after the special rows."""
    clf = n_vocab + n_special - 1
    x = torch.zeros(B, C, T, 2, dtype=torch.long)
    lengths, prefixes = torch.zeros(B, C, dtype=torch.long), torch.zeros(B, dtype=torch.long)
    for b in range(B):
        p = int(rng.integers(1, T - 3))
        prefixes[b] = p
        x[b, :, :p, 0] = torch.from_numpy(rng.integers(0, n_vocab, p))
        for c in range(C):
            n = int(rng.integers(p + 2, T + 1))
            x[b, c, p:n - 1, 0] = torch.from_numpy(rng.integers(0, n_vocab, n - 1 - p))
            x[b, c, n - 1, 0] = clf
            lengths[b, c] = n
    x[..., 1] = torch.arange(n_vocab + n_special, n_vocab + n_special + T)
    return x, lengths, prefixes


@pytest.mark.parametrize('impl', ['sdpa', 'explicit'])
@pytest.mark.parametrize('n_choices', [2, 4])
def test_choices_scored_from_a_shared_prefix_equal_the_plain_forward(impl, n_choices):
    rng = np.random.default_rng(n_choices)
    torch.manual_seed(0)
    T = 12
    model = DoubleHeadModel(small_cfg(pdrop=0.3), clf_token=42, task_head_type='multiple_choice', vocab=43 + T,
                            n_ctx=T).eval()
    set_attn_impl(model, impl)
    x, _, prefixes = ragged_choices(rng, 6, n_choices, T)
    assert len(set(prefixes.tolist())) > 2  # ragged: the key-padding mask matters
    with torch.no_grad():
        plain = model.hidden_and_task(x)[2]
        cached = model.choice_logits_from_shared_prefix(x, prefixes)
        shorter = model.choice_logits_from_shared_prefix(x, (prefixes - 1).clamp(min=1))  # any shared part works
    torch.testing.assert_close(cached, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shorter, plain, atol=1e-5, rtol=1e-5)
    with pytest.raises(RuntimeError, match='evaluation'):
        model.train().choice_logits_from_shared_prefix(x, prefixes)


def tiny_transformer(family):
    """Return a random eval-mode GPT-1 or GPT-2 transformer of 2 blocks, 16 positions."""
    import model_gpt2
    torch.manual_seed(0)
    if family == 'gpt1':
        return TransformerModel(small_cfg(n_layer=2), vocab=50 + 16, n_ctx=16).eval()
    return model_gpt2.GPT2Model(model_gpt2.GPT2Config(n_vocab=50, n_ctx=16, n_embd=32, n_head=4, n_layer=2)).eval()


@pytest.mark.parametrize('family', ['gpt1', 'gpt2'])
def test_sequences_packed_into_rows_run_as_each_runs_alone(family):
    """forward_packed: several sequences back to back in a row (and a row's padding) give each sequence the hidden
    states and keys/values it gets alone, from its own positions 0.."""
    from model_inputs import pack_sequences
    model = tiny_transformer(family)
    seqs = [[3, 9, 4], [7], [1, 2, 3, 4, 5, 6], [8, 8]]
    x, segments, places = pack_sequences(seqs, model.pos_offset, n_ctx=7, n_embd=model.n_embd)
    assert x.size(0) < len(seqs)  # some rows hold several sequences
    with torch.no_grad():
        h, presents = model.forward_packed(x, segments)
        for seq, (row, start) in zip(seqs, places):
            alone = torch.tensor([[[t, model.pos_offset + i] for i, t in enumerate(seq)]])  # [1, T, 2]
            h_alone, past = model.forward_cached(alone)
            span = slice(start, start + len(seq))
            torch.testing.assert_close(h[row, span], h_alone[0], atol=1e-5, rtol=1e-5)
            for (k, v), (k1, v1) in zip(presents, past):
                torch.testing.assert_close(k[row, :, span], k1[0], atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(v[row, :, span], v1[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('family', ['gpt1', 'gpt2'])
def test_the_in_place_cache_gives_what_the_concatenated_one_gives(family):
    """new_cache(): keys and values written into buffers that grow (past their first room) read as the (k, v) pairs
    of concatenation, and the hidden states at every step are the same."""
    from model_pytorch import LayerCache, new_cache
    model = tiny_transformer(family)
    x = make_x(50, 16, 2)
    x[..., 1] += model.pos_offset - 50
    cache, past = new_cache(len(model.h), max_positions=16), None
    with torch.no_grad():
        for first, last in ((0, 3), (3, 4), (4, 11), (11, 12), (12, 16)):
            h_cache, cache = model.forward_cached(x[:, first:last], cache)
            h_cat, past = model.forward_cached(x[:, first:last], past)
            torch.testing.assert_close(h_cache, h_cat, atol=1e-6, rtol=1e-6)
    assert all(isinstance(layer, LayerCache) for layer in cache)
    assert cache[0].k_buf.size(-2) == 16  # it grew, up to n_ctx and no further
    for (k, v), (k1, v1) in zip(cache, past):
        assert k.shape == k1.shape == (2, k1.size(1), 16, k1.size(-1))
        torch.testing.assert_close(k, k1, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(v, v1, atol=1e-6, rtol=1e-6)


def test_conv1d_under_cpu_autocast_inference_multiplies_a_transposed_copy_made_once_per_value():
    """The layout oneDNN's bf16 product runs fast on a CPU without bf16 instructions: the same products as w's own
    layout, the copy reused until w changes, and never used where w needs a gradient."""
    torch.manual_seed(0)
    conv, x = model_pytorch.Conv1D(48, 32), torch.randn(2, 5, 32)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        with torch.no_grad():
            out = conv(x)
            copy_ = conv.inference_copy[1]
            assert conv(x) is not None and conv.inference_copy[1] is copy_  # reused
            expected = torch.addmm(conv.b, x.reshape(-1, 32), conv.w).view(2, 5, 48)  # autocast's own product
            conv.w.mul_(2.0)  # a new value of w: a new copy
            doubled = conv(x)
        assert conv.inference_copy[1] is not copy_ and copy_.shape == (48, 32)
        conv.inference_copy = None
        assert conv(x).requires_grad and conv.inference_copy is None  # training: w's own product, autograd's
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(doubled.float(), 2 * out.float(), atol=0.05, rtol=0.02)


def test_padded_cache_positions_are_masked_out():
    """Keys of cache positions past an example's prefix are never attended to: changing them changes nothing."""
    torch.manual_seed(0)
    model = TransformerModel(small_cfg(), vocab=60, n_ctx=10).eval()
    x = make_x(50, 10, 2)
    valid = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    with torch.no_grad():
        _, past = model.forward_cached(x[:, :6])
        h = model.forward_cached(x[:, 6:], past, valid)[0]
        noisy = [(k.clone(), v.clone()) for k, v in past]
        for k, v in noisy:
            k[1, :, 4:] += 5.0
            v[1, :, 4:] -= 5.0
        torch.testing.assert_close(model.forward_cached(x[:, 6:], noisy, valid)[0], h)
        assert not torch.allclose(model.forward_cached(x[:, 6:], noisy)[0][1], h[1])  # unmasked, they would count


@pytest.mark.parametrize('family', ['gpt1', 'gpt2'])
def test_a_checkpoint_that_does_not_fit_leaves_the_model_as_it_was(family):
    import model_gpt2
    import model_pytorch
    from weights import checkpoint_from_model
    module = model_pytorch if family == 'gpt1' else model_gpt2
    build = (lambda: TransformerModel(small_cfg(n_layer=2))) if family == 'gpt1' else (
        lambda: model_gpt2.GPT2Model(model_gpt2.GPT2Config(n_vocab=50, n_ctx=16, n_embd=32, n_head=4, n_layer=2)))
    torch.manual_seed(0)
    ckpt = checkpoint_from_model(build())
    last = list(ckpt.blocks)[-1]  # every other block array comes before it
    ckpt.blocks[last] = ckpt.blocks[last][..., :-1]
    torch.manual_seed(1)
    into = build()
    before = {k: v.clone() for k, v in into.state_dict().items()}
    with pytest.raises(ValueError, match='shape mismatch'):
        module.model_from_checkpoint(ckpt, model=into)
    assert all(torch.equal(before[k], v) for k, v in into.state_dict().items())
