"""Tests for loss.py: TF parity of the losses and of every gradient, and the fast LM-loss path."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import loss
from loss import (ClassificationLossCompute, MaskedLMLoss, MultipleChoiceLossCompute, SimilarityLossCompute, clf_losses,
                  lm_losses, lm_losses_from_hidden, similarity_losses, train_loss)
from weights import torch_name
from tests.helpers import load_tf_reference, tf_model


@pytest.fixture(scope='module')
def ref():
    return load_tf_reference()


def fixture_batch(arrays):
    return (torch.from_numpy(arrays['X']).long(), torch.from_numpy(arrays['M']),
            torch.from_numpy(arrays['Y']).long())


def test_losses_match_tf(ref):
    arrays, config = ref
    model = tf_model(arrays, config).eval()
    X, M, Y = fixture_batch(arrays)
    with torch.no_grad():
        lm_logits, clf_logits = model(X)
        clf = clf_losses(clf_logits, Y)
        lm = lm_losses(lm_logits, X, M)
        loss = train_loss(clf, lm, lm_coef=0.5)
    np.testing.assert_allclose(clf.numpy(), arrays['clf_losses'], atol=1e-4, rtol=0)
    np.testing.assert_allclose(lm.numpy(), arrays['lm_losses'], atol=1e-4, rtol=0)
    np.testing.assert_allclose(loss.item(), arrays['train_loss'], atol=1e-4, rtol=0)
    with torch.no_grad():  # the model's own losses (DoubleHeadModel.losses): the same per-example losses
        _, clf, lm = model.losses(X, M, Y, lm_coef=0.5)
    np.testing.assert_allclose(clf.numpy(), arrays['clf_losses'], atol=1e-4, rtol=0)
    np.testing.assert_allclose(lm.numpy(), arrays['lm_losses'], atol=1e-4, rtol=0)


def tf_grad_names(arrays):
    return [str(n) for n in arrays['param_names']]


def model_param(model, tf_name):
    """The parameter of our model holding TF variable tf_name ('model/h0/attn/c_attn/w:0')."""
    name = tf_name[:-2]
    if name == 'model/we':
        return model.transformer.embed.weight
    if name.startswith('model/clf/'):
        return getattr(model.task_head.clf, name.rsplit('/', 1)[1])
    return model.transformer.get_parameter(torch_name(name))


def assert_grads_match(model, arrays):
    names = tf_grad_names(arrays)
    assert len(names) == len(list(model.parameters())) == 27
    for tf_name in names:
        g = model_param(model, tf_name).grad.numpy()
        expected = arrays[f'grad/{tf_name}'].reshape(g.shape)
        # relative error, with an absolute floor for gradients that are zero in exact arithmetic
        # (the multiple-choice bias: softmax over choices is invariant to it; TF gives 1.5e-8)
        err = np.linalg.norm(g - expected)
        assert err <= 2e-3 * np.linalg.norm(expected) + 1e-6, f'{tf_name}: error {err:.2e}'


@pytest.mark.parametrize('path', ['full', 'fast', 'model'])
def test_gradients_of_every_parameter_match_tf(ref, path):
    """full: the original's full softmax; fast: the masked, chunked LM loss; model: training through the model
    (forward with targets, as train.py's update calls it)."""
    arrays, config = ref
    model = tf_model(arrays, config).eval()
    X, M, Y = fixture_batch(arrays)
    if path == 'model':
        _, clf, lm = model(X, M, Y, 0.5, check=False)
    elif path == 'fast':
        h, we, clf_logits = model.hidden_and_task(X)
        lm = lm_losses_from_hidden(h, we, X, M, chunk_size=7)
        clf = clf_losses(clf_logits, Y)
    else:
        lm_logits, clf_logits = model(X)
        lm = lm_losses(lm_logits, X, M)
        clf = clf_losses(clf_logits, Y)
    loss = train_loss(clf, lm, 0.5)
    np.testing.assert_allclose(loss.item(), arrays['train_loss'], atol=1e-4, rtol=0)
    loss.backward()
    assert_grads_match(model, arrays)


def lm_case(N=6, T=9, E=8, V=40, dtype=torch.float64, lengths=(9, 3, 5, 2, 9, 7), seed=0):
    """Return (h [N, T, E], we [V, E], X [N, T, 2], M [N, T]) with h and we requiring grad; M 1 up to each length."""
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(N, T, E, generator=gen).to(dtype).requires_grad_()
    we = torch.randn(V, E, generator=gen).to(dtype).requires_grad_()
    X = torch.stack([torch.randint(0, V, (N, T), generator=gen), torch.arange(T).expand(N, T)], -1)
    M = (torch.arange(T)[None] < torch.tensor(lengths)[:, None]).to(dtype)
    return h, we, X, M


def full_softmax_lm(h, we, X, M):
    """Return the original's LM losses: every position's logits, then the mask-weighted mean (loss.lm_losses)."""
    return lm_losses(h[:, :-1].reshape(-1, h.size(-1)) @ we.t(), X, M)


def losses_and_grads(fn, h, we, X, M, weights=None):
    """Return (fn's losses, d (losses . weights) / d h, d / d we); random weights exercise every row's scale."""
    losses = fn(h, we, X, M)
    if weights is None:
        weights = torch.rand(losses.shape, generator=torch.Generator().manual_seed(1)).to(losses.dtype) + 0.5
    return (losses.detach(),) + torch.autograd.grad((losses * weights).sum(), (h, we))


def assert_relative(actual, expected, tol):
    """Assert ||actual - expected|| <= tol * ||expected|| (and equal shapes and dtypes)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    err = (actual.double() - expected.double()).norm().item()
    assert err <= tol * expected.double().norm().item(), f'relative error {err / expected.double().norm():.2e}'


# chunk sizes: all at once, one row per chunk, uneven last chunks (of K = 29 rows), exactly K, more than K
@pytest.mark.parametrize('chunk_size', [None, 1, 4, 7, 29, 1000])
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
def test_masked_lm_loss_equals_full_softmax_loss(chunk_size, dtype):
    h, we, X, M = lm_case(dtype=dtype)
    assert int(M[:, 1:].sum()) == 29
    full = losses_and_grads(full_softmax_lm, h, we, X, M)
    fast = losses_and_grads(lambda *a: lm_losses_from_hidden(*a, chunk_size=chunk_size), h, we, X, M)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    for a, b in zip(fast, full):
        assert_relative(a, b, tol)
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)


@pytest.mark.parametrize('shape', [(2, 30, 16, 301), (3, 12, 48, 1000), (1, 5, 4, 3)])
@pytest.mark.parametrize('chunk_size', [None, 8])
@pytest.mark.parametrize('block_rows', [None, 5])
def test_masked_lm_loss_equals_full_softmax_loss_at_other_shapes(shape, chunk_size, block_rows, monkeypatch):
    N, T, E, V = shape
    if block_rows:  # the forward's log-softmax in blocks of 5 rows (uneven), as at full size in blocks of 103
        monkeypatch.setattr(loss, 'LOG_SOFTMAX_BLOCK', block_rows * V)
    lengths = [T - 3 * i for i in range(N)]
    h, we, X, M = lm_case(N, T, E, V, torch.float32, lengths, seed=N * T)
    h.data.mul_(3)  # peaked softmaxes: the targets' p - 1 and small probabilities both matter
    full = losses_and_grads(full_softmax_lm, h, we, X, M)
    fast = losses_and_grads(lambda *a: lm_losses_from_hidden(*a, chunk_size=chunk_size), h, we, X, M)
    for a, b in zip(fast, full):
        assert_relative(a, b, 2e-6)


@pytest.mark.parametrize('chunk_size', [None, 5])
def test_masked_lm_loss_under_bf16_autocast_matches_the_autocast_path(chunk_size):
    """Under autocast the logits are bf16 (as autocast's matmul would make them) and the loss fp32.

    Losses: the same log-softmax of the same bf16 logits as the plain autocast path. Gradients: within bf16
    rounding (2^-8) of the plain autocast path, which rounds softmax - onehot to bf16 too.
    """
    h, we, X, M = lm_case(N=4, T=20, E=32, V=500, dtype=torch.float32, lengths=(20, 13, 7, 16))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        plain = losses_and_grads(full_softmax_lm, h, we, X, M)
        fast = losses_and_grads(lambda *a: lm_losses_from_hidden(*a, chunk_size=chunk_size), h, we, X, M)
    fp32 = losses_and_grads(full_softmax_lm, h, we, X, M)
    assert fast[0].dtype == torch.float32 and fast[1].dtype == fast[2].dtype == torch.float32
    torch.testing.assert_close(fast[0], plain[0], atol=1e-5, rtol=1e-5)
    # the matmul really ran in bf16: the fp32 losses differ by far more than the tolerance above
    assert (fast[0] - fp32[0]).abs().max() > 1e-3
    for a, b, c in zip(fast[1:], plain[1:], fp32[1:]):
        assert_relative(a, b, 1e-2)
        # and no farther from the fp32 gradient than the plain autocast path is (8e-3 here)
        assert (a - c).norm() <= 1.1 * (b - c).norm()


def test_masked_lm_loss_without_autocast_keeps_the_inputs_dtype():
    """bf16 inputs outside autocast: bf16 logits like rows @ we.T, an fp32 loss, bf16 gradients."""
    h, we, X, M = lm_case(N=3, T=10, E=16, V=64, dtype=torch.bfloat16, lengths=(10, 4, 7))
    plain = losses_and_grads(full_softmax_lm, h, we, X, M)
    fast = losses_and_grads(lambda *a: lm_losses_from_hidden(*a, chunk_size=4), h, we, X, M)
    torch.testing.assert_close(fast[0], plain[0], atol=1e-5, rtol=1e-5)
    for a, b in zip(fast[1:], plain[1:]):
        assert_relative(a, b, 2e-2)


def test_masked_lm_loss_backward_inside_autocast_stays_fp32():
    """A forward outside autocast and a backward inside it (the engine runs on the calling thread): fp32 grads."""
    h, we, X, M = lm_case(dtype=torch.float32)
    expected = torch.autograd.grad(full_softmax_lm(h, we, X, M).sum(), (h, we))
    for chunk_size in (None, 4):
        losses = lm_losses_from_hidden(h, we, X, M, chunk_size=chunk_size)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            grads = torch.autograd.grad(losses.sum(), (h, we))
        for a, b in zip(grads, expected):
            assert_relative(a, b, 2e-6)


def test_masked_lm_loss_fp16_gradient_does_not_overflow_with_a_large_loss_scale():
    """fp16 autocast with a large loss scale: the gradient stays finite and equals the scaled one.

    Each row's incoming gradient is up to 2^17 / 3 (< 65504, so the plain path's scaled softmax fits in fp16),
    but scaled rows of size ~3 would not: backward brings them to at most 1 before the cast.
    """
    h, we, X, M = lm_case(N=3, T=10, E=16, V=64, dtype=torch.float32, lengths=(10, 4, 7))
    scale = 2.0 ** 17
    with torch.autocast('cpu', dtype=torch.float16):
        fast = losses_and_grads(lambda *a: lm_losses_from_hidden(*a, chunk_size=4), h, we, X, M,
                                weights=torch.full((3,), scale))
    fp32 = losses_and_grads(full_softmax_lm, h, we, X, M, weights=torch.full((3,), scale))
    for a, b in zip(fast[1:], fp32[1:]):
        assert torch.isfinite(a).all()
        assert_relative(a, b, 1e-2)


@pytest.mark.parametrize('chunk_size', [None, 3])
def test_masked_lm_loss_of_sequences_with_no_masked_position(chunk_size):
    """A sequence with no position past the first: NaN loss (0 / 0, as the original's), no effect on the others."""
    h, we, X, M = lm_case(lengths=(9, 1, 5, 0, 9, 7))
    fast = lm_losses_from_hidden(h, we, X, M, chunk_size=chunk_size)
    assert torch.isnan(fast[[1, 3]]).all() and torch.isfinite(fast[[0, 2, 4, 5]]).all()
    keep = [0, 2, 4, 5]
    full = full_softmax_lm(h[keep], we, X[keep], M[keep])
    torch.testing.assert_close(fast[keep], full, atol=1e-12, rtol=1e-12)
    g_fast = torch.autograd.grad(fast[keep].sum(), (h, we))
    g_full = torch.autograd.grad(full.sum(), (h, we))
    for a, b in zip(g_fast, g_full):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
    assert torch.all(g_fast[0][[1, 3]] == 0)


@pytest.mark.parametrize('chunk_size', [None, 3])
def test_masked_lm_loss_with_no_masked_position_at_all(chunk_size):
    """K = 0 (each mask 1 at the first position only): every loss NaN, zero gradients, no error."""
    h, we, X, M = lm_case(lengths=(1,) * 6)
    fast = lm_losses_from_hidden(h, we, X, M, chunk_size=chunk_size)
    assert fast.shape == (6,) and torch.isnan(fast).all()
    g_h, g_we = torch.autograd.grad(fast.nansum(), (h, we), allow_unused=True)
    assert torch.all(g_h == 0) and torch.all(g_we == 0)
    with torch.no_grad():
        assert torch.isnan(lm_losses_from_hidden(h, we, X, M, chunk_size=chunk_size)).all()


@pytest.mark.parametrize('chunk_size', [None, 4])
def test_masked_lm_loss_tied_dropped_table_gets_both_gradients(chunk_size):
    """we is the dropout of the table, used by the lookup and by the decoder: the table's gradient sums both."""
    h0, table, X, M = lm_case()
    table = table.detach().requires_grad_()
    mask = (torch.rand(table.shape, generator=torch.Generator().manual_seed(2)) > 0.1).double() / 0.9
    proj = torch.randn(table.size(1), table.size(1), generator=torch.Generator().manual_seed(3)).double()

    def hidden():
        we = table * mask  # a fixed dropout mask, so both paths see the same dropped table
        return torch.tanh(we[X[..., 0]] @ proj), we

    h, we = hidden()
    full = torch.autograd.grad(full_softmax_lm(h, we, X, M).sum(), table)[0]
    h, we = hidden()
    fast = torch.autograd.grad(lm_losses_from_hidden(h, we, X, M, chunk_size=chunk_size).sum(), table)[0]
    torch.testing.assert_close(fast, full, atol=1e-12, rtol=1e-12)
    assert torch.all(fast[mask == 0] == 0)


@pytest.mark.parametrize('chunk_size', [7, 3])
def test_masked_lm_loss_backward_twice_with_retain_graph(chunk_size):
    """One chunk keeps its logits for the first backward; a second backward (retain_graph) recomputes them."""
    torch.manual_seed(0)
    rows = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    we = torch.randn(11, 4, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 11, (7,))
    losses = MaskedLMLoss.apply(rows, we, targets, chunk_size)
    first = torch.autograd.grad(losses.sum(), (rows, we), retain_graph=True)
    second = torch.autograd.grad(losses.sum(), (rows, we))
    expected = torch.autograd.grad(F.cross_entropy(rows @ we.t(), targets, reduction='sum'), (rows, we))
    for a, b, c in zip(first, second, expected):
        torch.testing.assert_close(a, c, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(b, c, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize('chunk_size', [3, 7, 100])
def test_chunked_loss_gradcheck(chunk_size):
    torch.manual_seed(0)
    h = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    we = torch.randn(11, 4, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 11, (7,))
    assert torch.autograd.gradcheck(lambda a, b: MaskedLMLoss.apply(a, b, targets, chunk_size), (h, we))


def test_lm_loss_is_mask_weighted_mean_over_positions():
    # two positions with known losses: uniform logits over V give log(V) each
    V = 5
    X = torch.zeros(1, 4, 2, dtype=torch.long)
    M = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    logits = torch.zeros(3, V)
    torch.testing.assert_close(lm_losses(logits, X, M), torch.tensor([np.log(V)], dtype=torch.float32))


def test_train_loss_reductions():
    clf = torch.tensor([1.0, 3.0])
    lm = torch.tensor([2.0, 4.0, 6.0, 8.0])
    assert train_loss(clf, lm, 0.5).item() == pytest.approx(2.0 + 0.5 * 5.0)
    assert train_loss(clf, lm, 0).item() == pytest.approx(2.0)
    assert train_loss(clf, None, 0.5).item() == pytest.approx(2.0)


def test_similarity_loss_is_squared_error():
    torch.testing.assert_close(similarity_losses(torch.tensor([1.0, 4.5]), torch.tensor([2.0, 4.0])),
                               torch.tensor([1.0, 0.25]))


def test_compatibility_wrapper_returns_losses_and_steps(ref):
    arrays, config = ref
    model = tf_model(arrays, config).eval()
    X, M, Y = fixture_batch(arrays)
    compute = MultipleChoiceLossCompute(torch.nn.CrossEntropyLoss(reduction='none'),
                                        torch.nn.CrossEntropyLoss(reduction='none'), 0.5)
    lm_logits, clf_logits = model(X)
    clf, lm = compute(X, Y, M, clf_logits, lm_logits, only_return_losses=True)
    np.testing.assert_allclose(clf.detach().numpy(), arrays['clf_losses'], atol=1e-4)
    np.testing.assert_allclose(lm.detach().numpy(), arrays['lm_losses'], atol=1e-4)

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    compute = ClassificationLossCompute(None, None, 0.5, opt)
    before = model.task_head.clf.w.detach().clone()
    value = compute(X, Y, M, clf_logits, lm_logits)
    assert value == pytest.approx(float(arrays['train_loss']), abs=1e-4)
    expected = before - 0.1 * torch.from_numpy(arrays['grad/model/clf/w:0'])
    torch.testing.assert_close(model.task_head.clf.w.detach(), expected, atol=1e-5, rtol=1e-4)
    assert all(p.grad is None or torch.all(p.grad == 0) for p in model.parameters())


def test_similarity_wrapper_uses_squared_error():
    compute = SimilarityLossCompute(None, None, 0.5)
    scores = torch.tensor([1.0, 2.0])
    task, lm = compute(None, torch.tensor([0.0, 0.0]), None, scores, only_return_losses=True)
    torch.testing.assert_close(task, torch.tensor([1.0, 4.0]))
    assert lm is None


@pytest.mark.parametrize('n_rows', [37, 48, 50257])
def test_aligned_logits_are_the_product_with_rows_a_multiple_of_16_apart_and_minus_infinity_beyond(n_rows):
    torch.manual_seed(0)
    rows, we = torch.randn(5, 8), torch.randn(n_rows, 8)
    logits = loss.aligned_logits(rows, we)
    assert logits.shape[1] % 16 == 0 and n_rows <= logits.shape[1] < n_rows + 16
    assert torch.equal(logits[:, :n_rows], rows @ we.t())
    assert bool((logits[:, n_rows:] == float('-inf')).all())
    # the extra columns change no softmax: the fused loss equals the plain cross-entropy over the V columns
    targets = torch.randint(0, n_rows, (5,))
    torch.testing.assert_close(loss.token_losses(rows, we, targets), loss.per_element_ce(rows @ we.t(), targets),
                               atol=1e-6, rtol=0)
