"""Tests for model_gpt2.py: the original model()'s logits and present on a checkpoint TensorFlow wrote, incremental
decoding through past, greedy sampling as the original sample.py, the pieces shared with GPT-1, the task heads on
GPT-2's hidden states, the configuration and the initialisation."""
import copy
import math

import numpy as np
import pytest
import torch

import loss
import model_gpt2
import models
from model_gpt2 import GPT2Config, GPT2DoubleHeadModel, GPT2LMHeadModel, GPT2Model
from model_pytorch import GPTConfig, causal_mask, gelu
from sample import SamplingSettings, sample_ids
from tests.helpers import FIXTURES

GPT2 = FIXTURES / 'gpt2'
CKPT = GPT2 / 'ckpt_small'  # n_vocab 96, n_ctx 32, n_embd 32, 4 heads, 2 layers, written by tf.train.Saver


@pytest.fixture(scope='module')
def ref():
    """The original code's outputs on the fixture checkpoint (tests/fixtures/make_gpt2_fixtures.py)."""
    with np.load(GPT2 / 'tf_gpt2_small.npz', allow_pickle=False) as d:
        return {k: d[k] for k in d.files}


@pytest.fixture(scope='module')
def lm():
    return models.load_model(str(CKPT), lm=True)


def ids_of(array):
    return torch.from_numpy(np.asarray(array, dtype=np.int64))


def close(got, want, rel=1e-4):
    """Assert got (a tensor) is within rel of want (an array), relative to want's scale."""
    got = got.detach().numpy()
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= rel * max(np.abs(want).max(), 1.0), np.abs(got - want).max()


# --- parity with the original TensorFlow code -----------------------------------------------------------------

def test_logits_and_present_are_the_originals(lm, ref):
    assert isinstance(lm, GPT2LMHeadModel) and not lm.training
    with torch.no_grad():
        logits, present = lm(ids_of(ref['X']))
    close(logits, ref['logits'])
    close(present, ref['present'])  # [B, n_layer, 2, n_head, T, head_dim]: the keys and values of these tokens
    assert present.shape == (3, 2, 2, 4, 24, 8)


def test_past_continues_positions_and_present_holds_only_the_new_tokens(lm, ref):
    X = ids_of(ref['X'])
    T1 = X.shape[1] - ref['logits_step2'].shape[1]
    with torch.no_grad():
        _, past = lm(X[:, :T1])
        logits, present = lm(X[:, T1:], past=past)
    close(logits, ref['logits_step2'])
    close(present, ref['present_step2'])
    close(logits, ref['logits_incremental'])
    # the caller appends present to past along the sequence axis, as sample.py does: the whole sequence's cache
    close(torch.cat([past, present], dim=-2), ref['present'])
    with torch.no_grad():  # positions come from the past's length: without it the same tokens score otherwise
        alone, _ = lm(X[:, T1:])
    assert not torch.allclose(alone, logits, atol=1e-3)


def test_full_context_logits_and_losses(lm, ref):
    with torch.no_grad():
        logits, _ = lm(ids_of(ref['X_nctx']))
    close(logits, ref['logits_nctx'])
    X = ids_of(ref['X'])
    with torch.no_grad():
        logits, _ = lm(X)
    losses = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 96), X[:, 1:].reshape(-1), reduction='none')
    np.testing.assert_allclose(losses.view(3, 23).numpy(), ref['lm_losses'], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match='exceed n_ctx=32'):
        lm(torch.zeros(1, 33, dtype=torch.long))


def test_greedy_sampling_is_the_original_sample_sequence_with_top_k_1(lm, ref):
    context = int(ref['config'].item().split('"context_len": ')[1].split(',')[0])
    for row in ref['greedy_tokens']:
        gen_len = len(row) - context
        new, message = sample_ids(lm, row[:context].tolist(), 96, SamplingSettings(gen_len=gen_len, greedy=True))
        assert new == row[context:].tolist() and message is None
        top1, _ = sample_ids(lm, row[:context].tolist(), 96, SamplingSettings(gen_len=gen_len, top_k=1),
                             generator=torch.Generator().manual_seed(0))
        assert top1 == new


def test_the_pieces_shared_with_gpt1_compute_the_originals_functions(ref):
    torch.testing.assert_close(gelu(torch.from_numpy(ref['unit/gelu_x'])), torch.from_numpy(ref['unit/gelu_y']),
                               rtol=1e-5, atol=1e-6)
    from model_pytorch import LayerNorm
    torch.testing.assert_close(LayerNorm(64)(torch.from_numpy(ref['unit/norm_x'])), torch.from_numpy(ref['unit/norm_y']),
                               rtol=1e-5, atol=1e-5)
    for nd, ns in ((1, 5), (3, 7), (4, 4)):  # the original's attention_mask: lower triangle from the lower right
        np.testing.assert_array_equal(causal_mask(nd, ns, 'cpu').numpy(), ref[f'unit/attention_mask_{nd}_{ns}'] == 1)


def test_explicit_attention_masks_with_the_originals_1e10_and_equals_the_fused_kernel(lm, ref):
    explicit = copy.deepcopy(lm)
    for block in explicit.transformer.h:
        assert block.attn.mask_value == 1e10
        block.attn.impl = 'explicit'
    with torch.no_grad():
        torch.testing.assert_close(explicit(ids_of(ref['X']))[0], lm(ids_of(ref['X']))[0], rtol=1e-5, atol=1e-5)


# --- structure ------------------------------------------------------------------------------------------------

def tiny_cfg(**changes):
    return GPT2Config(**{**dict(n_vocab=50, n_ctx=16, n_embd=32, n_head=4, n_layer=2), **changes})


def test_pre_layer_norm_blocks_and_final_ln_f_are_the_computation():
    """The block is x + attn(ln_1(x)), then + mlp(ln_2(x)); ln_f after the last block; the decoder is wte."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(tiny_cfg(n_layer=1)).eval()
    t = model.transformer
    ids = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        h = t.wte(ids) + t.wpe(torch.arange(7))
        block = t.h[0]
        h = h + block.attn(block.ln_1(h))[0]
        h = h + block.mlp(block.ln_2(h))
        want = t.ln_f(h) @ t.wte.weight.t()
        torch.testing.assert_close(model(ids)[0], want, rtol=1e-5, atol=1e-5)


def test_causal_and_the_projects_x_interface_equals_the_originals_ids():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(tiny_cfg()).eval()
    ids = torch.randint(0, 50, (2, 10))
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 50
    with torch.no_grad():
        torch.testing.assert_close(model(ids)[0][:, :-1], model(changed)[0][:, :-1])
        x = torch.stack([ids, model.transformer.pos_offset + torch.arange(10).expand(2, 10)], dim=-1)  # [B, T, 2]
        torch.testing.assert_close(model.transformer(x) @ model.transformer.wte.weight.t(), model(ids)[0])
        states = model.transformer.all_hidden_states(x)
    assert len(states) == 3 and torch.equal(states[-1], model.transformer(x))  # the last one after ln_f


def test_dropout_is_off_by_default_and_each_rate_reaches_the_model():
    cfg = GPT2Config()
    assert (cfg.embd_pdrop, cfg.attn_pdrop, cfg.resid_pdrop) == (0.0, 0.0, 0.0)  # the released code has none
    ids = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(1))
    for name in ('embd_pdrop', 'attn_pdrop', 'resid_pdrop'):
        torch.manual_seed(0)
        model = GPT2LMHeadModel(tiny_cfg(**{name: 0.3})).train()
        outs = []
        for seed in (1, 2):
            torch.manual_seed(seed)
            outs.append(model(ids)[0])
        assert (outs[0] - outs[1]).abs().max() > 1e-3, name
        model.eval()
        torch.testing.assert_close(model(ids)[0], model(ids)[0], rtol=0, atol=0)


def test_presets_are_the_released_sizes_and_a_typo_raises():
    sizes = {name: (c.n_embd, c.n_head, c.n_layer) for name in model_gpt2.PRESETS
             for c in [GPT2Config.preset(name)]}
    assert sizes == {'124M': (768, 12, 12), '355M': (1024, 16, 24), '774M': (1280, 20, 36), '1558M': (1600, 25, 48)}
    assert (GPT2Config().n_vocab, GPT2Config().n_ctx) == (50257, 1024)
    with pytest.raises(ValueError, match="unknown GPT-2 size '125M'"):
        GPT2Config.preset('125M')
    with pytest.raises(TypeError):
        GPT2Config(n_heads=12)
    cfg = GPT2Config()
    with pytest.raises(AttributeError):
        cfg.n_heads = 12
    with pytest.raises(ValueError, match='n_head=5 does not divide n_embd=768'):
        GPT2Config(n_head=5)
    model = GPT2Model(tiny_cfg())
    assert model.cfg == tiny_cfg() and model.wte.weight.shape == (50, 32) and model.wpe.weight.shape == (16, 32)
    assert model.cfg is not tiny_cfg() and GPT2Model(tiny_cfg(n_special=3)).pos_offset == 53  # the rows of wte
    with pytest.raises(TypeError, match='must be a GPT2Config, not GPTConfig'):
        GPT2Model(GPTConfig(n_embd=32, n_head=4, n_layer=2))
    n_params = sum(p.numel() for p in GPT2LMHeadModel(GPT2Config.preset('124M')).parameters())
    assert n_params == 124_439_808  # the 124M model: wte, wpe, 12 blocks, ln_f


def test_initialisation_is_the_originals_with_scaled_residual_projections():
    torch.manual_seed(0)
    model = GPT2Model(GPT2Config(n_vocab=2000, n_ctx=512, n_embd=256, n_head=4, n_layer=8))
    assert abs(model.wte.weight.std().item() - 0.02) < 1e-3 and abs(model.wpe.weight.std().item() - 0.01) < 1e-3
    block = model.h[3]
    assert abs(block.attn.c_attn.w.std().item() - 0.02) < 1e-3 and abs(block.mlp.c_fc.w.std().item() - 0.02) < 1e-3
    scaled = 0.02 / math.sqrt(2 * 8)
    for w in (block.attn.c_proj.w, block.mlp.c_proj.w):
        assert abs(w.std().item() - scaled) < 0.1 * scaled
    assert torch.equal(block.ln_1.g, torch.ones(256)) and torch.equal(block.attn.c_attn.b, torch.zeros(768))


# --- GPT-1's task heads on GPT-2 ------------------------------------------------------------------------------

def test_double_head_model_pools_gpt2_states_and_scores_choices_from_a_shared_prefix():
    torch.manual_seed(0)
    n_vocab, n_special, n_ctx = 50, 3, 16
    clf = n_vocab + 2
    model = GPT2DoubleHeadModel(tiny_cfg(n_special=n_special), clf, 'multiple_choice').eval()
    assert model.transformer.wte.weight.shape == (53, 32) and model.lm_head.decoder.weight is model.transformer.wte.weight
    x = torch.zeros(2, 2, 12, 2, dtype=torch.long)
    x[..., 1] = model.transformer.pos_offset + torch.arange(12)
    x[..., :6, 0] = torch.randint(0, n_vocab, (2, 1, 6))  # a shared story
    x[..., 6:10, 0] = torch.randint(0, n_vocab, (2, 2, 4))  # two endings
    x[..., 10, 0] = clf
    with torch.no_grad():
        lm_logits, task = model(x)
        h = model.transformer(x)
        want = model.task_head.clf(h[:, 10].view(2, 2, 32)).view(2, 2)
        cached = model.choice_logits_from_shared_prefix(x, torch.tensor([6, 6]))
    assert lm_logits.shape == (4 * 11, 53) and task.shape == (2, 2)
    torch.testing.assert_close(task, want)
    torch.testing.assert_close(cached, task, rtol=1e-5, atol=1e-5)
    assert n_ctx == model.cfg.n_ctx


def test_task_model_appends_special_rows_drawn_as_gpt1_draws_them(ref):
    ckpt = __import__('weights').read_checkpoint(str(CKPT))
    np.random.seed(3)
    model = model_gpt2.make_task_model(ckpt, 24, 3, 98, 'multiple_choice', dict(clf_pdrop=0.1))
    np.random.seed(3)
    special = (np.random.randn(3, 32) * 0.02).astype(np.float32)
    wte = model.transformer.wte.weight.detach().numpy()
    np.testing.assert_array_equal(wte[:96], ref['model/wte'])
    np.testing.assert_array_equal(wte[96:], special)
    np.testing.assert_array_equal(model.transformer.wpe.weight.detach().numpy(), ref['model/wpe'][:24])
    assert (model.cfg.n_vocab, model.cfg.n_special, model.cfg.n_ctx) == (96, 3, 24)


@pytest.mark.parametrize('lm_coef', [0.5, 0.0])
def test_double_head_model_trains_through_forward_with_gpt1s_losses(lm_coef):
    """GPT2DoubleHeadModel inherits losses and forward with targets: the task and masked LM losses of its
    hidden_and_task outputs, bit for bit, dropout draws included."""
    torch.manual_seed(0)
    clf = 52
    model = GPT2DoubleHeadModel(tiny_cfg(n_special=3, embd_pdrop=0.1, resid_pdrop=0.1), clf, 'multiple_choice').train()
    x = torch.zeros(3, 2, 12, 2, dtype=torch.long)
    x[..., 1] = model.transformer.pos_offset + torch.arange(12)
    x[..., 0] = torch.randint(0, 50, (3, 2, 12))
    x[..., 9, 0] = clf
    m = (torch.arange(12) < 10).float().expand(3, 2, 12)
    y = torch.tensor([0, 1, 1])
    torch.manual_seed(1)
    h, we, logits = model.hidden_and_task(x)
    want = (logits, loss.clf_losses(logits, y),
            loss.lm_losses_from_hidden(h, we, x, m, chunk_size=loss.LM_CHUNK) if lm_coef else None)
    for compute in (model.losses, model):
        torch.manual_seed(1)
        got = compute(x, m, y, lm_coef)
        assert len(got) == 3 and (got[2] is None) == (want[2] is None)
        for a, b in zip(got, want):
            if b is not None:
                torch.testing.assert_close(a, b, atol=0, rtol=0)
