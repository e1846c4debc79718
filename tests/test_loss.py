"""Tests for loss.py: TF parity of the losses and of every gradient, and the fast LM-loss path."""
import numpy as np
import pytest
import torch

from loss import (ClassificationLossCompute, MaskedLMLoss, MultipleChoiceLossCompute, SimilarityLossCompute, clf_losses,
                  lm_losses, lm_losses_from_hidden, similarity_losses, train_loss)
from model_pytorch import torch_name
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


@pytest.mark.parametrize('fast', [False, True])
def test_gradients_of_every_parameter_match_tf(ref, fast):
    arrays, config = ref
    model = tf_model(arrays, config).eval()
    X, M, Y = fixture_batch(arrays)
    if fast:
        h, we, clf_logits = model.hidden_and_task(X)
        lm = lm_losses_from_hidden(h, we, X, M, chunk_size=7)
    else:
        lm_logits, clf_logits = model(X)
        lm = lm_losses(lm_logits, X, M)
    loss = train_loss(clf_losses(clf_logits, Y), lm, 0.5)
    np.testing.assert_allclose(loss.item(), arrays['train_loss'], atol=1e-4, rtol=0)
    loss.backward()
    assert_grads_match(model, arrays)


@pytest.mark.parametrize('chunk_size', [None, 5, 1000])
def test_masked_lm_loss_equals_full_softmax_loss(chunk_size):
    torch.manual_seed(0)
    N, T, E, V = 6, 9, 8, 40
    h = torch.randn(N, T, E, dtype=torch.float64, requires_grad=True)
    we = torch.randn(V, E, dtype=torch.float64, requires_grad=True)
    X = torch.stack([torch.randint(0, V, (N, T)), torch.arange(T).expand(N, T)], -1)
    lengths = torch.tensor([9, 3, 5, 2, 9, 7])
    M = (torch.arange(T)[None] < lengths[:, None]).double()
    full = lm_losses(h[:, :-1].reshape(-1, E) @ we.t(), X, M)
    fast = lm_losses_from_hidden(h, we, X, M, chunk_size=chunk_size)
    torch.testing.assert_close(fast, full, atol=1e-10, rtol=1e-10)
    g_full = torch.autograd.grad(full.sum(), (h, we))
    g_fast = torch.autograd.grad(fast.sum(), (h, we))
    for a, b in zip(g_fast, g_full):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_chunked_loss_gradcheck():
    torch.manual_seed(0)
    h = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    we = torch.randn(11, 4, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 11, (7,))
    assert torch.autograd.gradcheck(lambda a, b: MaskedLMLoss.apply(a, b, targets, 3), (h, we))


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
