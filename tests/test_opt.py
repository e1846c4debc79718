"""Tests for opt.py: OpenAIAdam against the original opt.adam (TF fixture), and its properties."""
import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import opt as opt_module
from opt import SCHEDULES, OpenAIAdam, warmup_constant, warmup_cosine, warmup_linear

FIXTURE = Path(__file__).parent / 'fixtures' / 'tf_reference' / 'small.npz'
FIXTURE_SCHEDULES = ['warmup_linear', 'warmup_cosine', 'warmup_constant']
LINEAR = {'schedule': 'warmup_linear', 'warmup': 0.002}
OPT_KEYS = ['lr', 'schedule', 'warmup', 't_total', 'b1', 'b2', 'e', 'l2', 'vector_l2', 'max_grad_norm']


@pytest.fixture(scope='module')
def ref():
    with np.load(FIXTURE) as f:
        return {k: f[k] for k in f.files if k.startswith('adam/')}


def fixture_run(ref, schedule):
    """Return (meta, inits, grads, trajs) of one fixture run; grads_i[t], trajs_i[t] per tensor i."""
    meta = json.loads(str(ref[f'adam/{schedule}/meta']))
    n = len(meta['shapes'])
    inits, grads, trajs = ([ref[f'adam/{schedule}/{k}_{i}'] for i in range(n)] for k in ('init', 'grads', 'traj'))
    return meta, inits, grads, trajs


def make_problem(seed=0, shapes=((5, 7), (7,), (3, 4, 5), (1,))):
    """Return float32 params and a function grads(t) giving reproducible gradients for step t."""
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=g) for s in shapes]

    def grads(t):
        gt = torch.Generator().manual_seed(1000 * seed + t)
        return [torch.randn(s, generator=gt) * (1 + t % 3) for s in shapes]
    return params, grads


def run(opt, params, grads, steps, start=0):
    """Set every grad from grads(t) and step, for t in [start, start + steps)."""
    for t in range(start, start + steps):
        for p, g in zip(params, grads(t)):
            p.grad = g.to(p.dtype)
        opt.step()


# --- ground truth from the original -----------------------------------------------------------------------

@pytest.mark.parametrize('foreach', [True, False])
@pytest.mark.parametrize('schedule', FIXTURE_SCHEDULES)
def test_matches_tf_trajectory(ref, schedule, foreach):
    meta, inits, grads, trajs = fixture_run(ref, schedule)
    assert meta['n_steps'] > meta['t_total']  # the run goes past x = 1, where warmup_linear turns negative
    params = [torch.tensor(x) for x in inits]
    opt = OpenAIAdam(params, foreach=foreach, **{k: meta[k] for k in OPT_KEYS})
    for t in range(meta['n_steps']):
        for p, g in zip(params, grads):
            p.grad = torch.tensor(g[t])
        opt.step()
        for i, (p, traj) in enumerate(zip(params, trajs)):
            torch.testing.assert_close(p, torch.tensor(traj[t]), rtol=0, atol=2e-5,
                                       msg=lambda m: f'{schedule} tensor {i} step {t + 1}: {m}')
    assert all(opt.state[p]['step'] == meta['n_steps'] for p in params)


def test_tf_schedule_sees_step_counted_from_1(ref):
    # With no clipping or decay, step 1 gives m / sqrt(v) = sign(g) (1 - b1) / sqrt(1 - b2), so every entry
    # moves by lr * schedule(x) * sign(g): the fixture reads off x = 1 / t_total (t from 1); with t from 0,
    # schedule(0) = 0 and nothing would move.
    meta, inits, grads, trajs = fixture_run(ref, 'warmup_constant')
    assert meta['l2'] == 0 and meta['max_grad_norm'] <= 0
    assert warmup_constant(0 / meta['t_total'], meta['warmup']) == 0
    factor = warmup_constant(1 / meta['t_total'], meta['warmup'])
    assert factor > 0
    for init, g, traj in zip(inits, grads, trajs):
        np.testing.assert_allclose(init - traj[0], meta['lr'] * factor * np.sign(g[0]), rtol=0, atol=1e-6)


# --- the two code paths -------------------------------------------------------------------------------------

def test_foreach_and_loop_agree():
    results = []
    for foreach in (True, False):
        params, grads = make_problem()
        groups = [{'params': params[:2]}, {'params': params[2:], 'lr': 0.03, 'schedule': 'warmup_constant',
                                           'vector_l2': True}]
        opt = OpenAIAdam(groups, lr=0.01, schedule='warmup_cosine', warmup=0.1, t_total=20, l2=0.05,
                         max_grad_norm=1.0, foreach=foreach)
        run(opt, params, grads, 30)
        results.append(params)
    initial, _ = make_problem()
    for a, b, p0 in zip(*results, initial):
        assert not torch.equal(a, p0)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# --- arguments ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('kwargs, match', [
    ({'lr': -0.1}, r'lr.*-0\.1'),
    ({'schedule': 'warmup_exp'}, r"schedule='warmup_exp'"),
    ({'schedule': 3}, r'schedule.*3'),
    ({'b1': 1.0}, r'b1=1\.0'),
    ({'b1': -0.5}, r'b1=-0\.5'),
    ({'b2': 1.5}, r'b2=1\.5'),
    ({'e': -1e-8}, r'e=-1e-08'),
    ({'t_total': 0}, r't_total=0'),
    ({'t_total': -5}, r't_total=-5'),
    ({'t_total': None}, r't_total=None'),
    ({'t_total': '100'}, r"t_total='100'"),
    ({'warmup': 1.5}, r'warmup=1\.5'),
    ({'warmup': -0.1}, r'warmup=-0\.1'),
    ({'l2': -0.01}, r'l2=-0\.01'),
])
def test_invalid_arguments(kwargs, match):
    args = {'lr': 0.01, 'schedule': 'warmup_linear', 'warmup': 0.002, 't_total': 100, **kwargs}
    with pytest.raises(ValueError, match=match):
        OpenAIAdam([torch.zeros(2, requires_grad=True)], **args)


def test_invalid_group_override():
    a, b = torch.zeros(2), torch.zeros(3)
    with pytest.raises(ValueError, match=r'b2=1\.0'):
        OpenAIAdam([{'params': [a]}, {'params': [b], 'b2': 1.0}], lr=0.01, **LINEAR, t_total=10)
    with pytest.raises(ValueError, match=r'max_grad_norm=5'):
        OpenAIAdam([{'params': [a]}, {'params': [b], 'max_grad_norm': 5}], lr=0.01, **LINEAR, t_total=10,
                   max_grad_norm=1)


# --- behaviour ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('foreach', [True, False])
def test_param_without_grad_is_skipped_and_not_in_norm(foreach):
    params, grads = make_problem()
    frozen = torch.randn(4, 4) * 100
    frozen0 = frozen.clone()
    kwargs = dict(lr=0.01, **LINEAR, t_total=10, l2=0.1, max_grad_norm=0.5, foreach=foreach)
    opt = OpenAIAdam(params + [frozen], **kwargs)
    ref_params = [p.clone() for p in params]
    ref_opt = OpenAIAdam(ref_params, **kwargs)
    run(opt, params, grads, 3)
    run(ref_opt, ref_params, grads, 3)
    assert torch.equal(frozen, frozen0)  # no decay either
    assert frozen not in opt.state or not opt.state[frozen]
    for p, q in zip(params, ref_params):
        assert torch.equal(p, q)
    # a parameter that gets a gradient later starts its own step count, like its moments
    opt.zero_grad(set_to_none=True)
    frozen.grad = torch.ones(4, 4)
    moved = [p.clone() for p in params]
    opt.step()
    assert all(torch.equal(p, q) for p, q in zip(params, moved))
    assert opt.state[frozen]['step'] == 1 and opt.state[params[0]]['step'] == 3
    assert not torch.equal(frozen, frozen0)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_clipping_factor_folded_on_the_cpu_equals_the_scaled_copy_kept_on_a_gpu(monkeypatch, dtype):
    """On the CPU the clipping factor is read and folded into the moments' factors; on a GPU every gradient is scaled on
    the device instead. Both make the same updates (the GPU's path run here on the CPU)."""
    results = []
    for free in (True, False):
        monkeypatch.setattr(opt_module, '_reads_are_free', lambda device: free)
        params, grads = make_problem()
        params = [p.to(dtype) for p in params]
        adam = OpenAIAdam(params, lr=0.01, schedule='warmup_linear', warmup=0.1, t_total=20, l2=0.05, max_grad_norm=0.5)
        run(adam, params, grads, 10)  # gradients of norm 4-40: every step clipped
        results.append((params, [adam.state[p]['m'] for p in params], [adam.state[p]['v'] for p in params]))
    (pa, ma, va), (pb, mb, vb) = results
    for a, b in zip(ma + va, mb + vb):  # the float32 moments
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)
    for a, b in zip(pa, pb):
        torch.testing.assert_close(a, b)  # the dtype's own tolerance
    assert not torch.equal(pa[0], make_problem()[0][0].to(dtype))


@pytest.mark.parametrize('foreach', [True, False])
def test_clipping_uses_one_global_norm_and_keeps_grads(foreach):
    # norms 3 and 4 (global 5), in two groups: global clipping scales both by 1/5, per-parameter by 1/3 and 1/4
    a, b = torch.zeros(2), torch.zeros(1)
    opt = OpenAIAdam([{'params': [a]}, {'params': [b], 'lr': 0.5}], lr=0.01, **LINEAR, t_total=10, max_grad_norm=1.0,
                     foreach=foreach)
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])
    opt.step()
    torch.testing.assert_close(opt.state[a]['m'], 0.1 * torch.tensor([3.0, 0.0]) / 5)
    torch.testing.assert_close(opt.state[b]['m'], 0.1 * torch.tensor([4.0]) / 5)
    torch.testing.assert_close(opt.state[b]['v'], 0.001 * torch.tensor([16.0]) / 25)
    assert torch.equal(a.grad, torch.tensor([3.0, 0.0])) and torch.equal(b.grad, torch.tensor([4.0]))
    # under the limit nothing is scaled
    a.grad, b.grad = torch.tensor([0.3, 0.0]), torch.tensor([0.4])
    m_before = opt.state[b]['m'].clone()
    opt.step()
    torch.testing.assert_close(opt.state[b]['m'], 0.9 * m_before + 0.1 * torch.tensor([0.4]))


@pytest.mark.parametrize('foreach', [True, False])
def test_non_finite_norm_gives_nan_like_tf(foreach):
    a, b = torch.zeros(2), torch.zeros(3)
    opt = OpenAIAdam([a, b], lr=0.01, **LINEAR, t_total=10, max_grad_norm=1.0, foreach=foreach)
    a.grad, b.grad = torch.tensor([math.inf, 1.0]), torch.ones(3)
    opt.step()
    assert torch.isnan(b).all()  # tf.clip_by_global_norm turns every gradient to NaN, not to zero


@pytest.mark.parametrize('foreach', [True, False])
def test_state_dict_round_trip(tmp_path, foreach):
    k, m = 4, 5
    params, grads = make_problem(seed=3)
    kwargs = dict(lr=0.02, schedule='warmup_linear', warmup=0.2, t_total=8, l2=0.01, max_grad_norm=2.0,
                  foreach=foreach)

    def groups(ps):
        return [{'params': ps[:2]}, {'params': ps[2:], 'lr': 0.05, 'vector_l2': True}]
    straight = [p.clone() for p in params]
    opt = OpenAIAdam(groups(straight), **kwargs)
    run(opt, straight, grads, k + m)

    opt = OpenAIAdam(groups(params), **kwargs)
    run(opt, params, grads, k)
    torch.save(opt.state_dict(), tmp_path / 'opt.pt')
    saved = torch.load(tmp_path / 'opt.pt', weights_only=True)
    resumed = [p.detach().clone() for p in params]
    # a fresh optimizer built with other hyperparameters: the saved ones must win, as in torch
    opt2 = OpenAIAdam(groups(resumed), **{**kwargs, 'lr': 1.0})
    opt2.load_state_dict(saved)
    assert [g['lr'] for g in opt2.param_groups] == [0.02, 0.05]
    assert all(opt2.state[p]['step'] == k for p in resumed)
    run(opt2, resumed, grads, m, start=k)
    for p, q in zip(resumed, straight):
        assert torch.equal(p, q)
    assert all(opt2.state[p]['step'] == k + m for p in resumed)


def test_param_groups_lr():
    # same params and grads in two groups, the second with twice the lr and no decay: twice the move
    a, b = torch.ones(3, 2), torch.ones(3, 2)
    opt = OpenAIAdam([{'params': [a]}, {'params': [b], 'lr': 0.2}], lr=0.1, schedule='warmup_constant',
                     warmup=0, t_total=10)
    a.grad = b.grad = torch.tensor([[1.0, -2.0], [0.5, 3.0], [-1.0, 1.0]])
    opt.step()
    torch.testing.assert_close(1 - b, 2 * (1 - a))
    # lrt at t = 1 is lr * sqrt(1 - b2) / (1 - b1); m / sqrt(v) = sign(g) * (1 - b1) / sqrt(1 - b2)
    torch.testing.assert_close(1 - a, 0.1 * torch.sign(a.grad), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('foreach', [True, False])
def test_decay_uses_lrt_and_old_p(foreach):
    # zero gradient: m = v = 0, so the update is exactly p <- p - lrt * l2 * p on matrices only
    w, bias = torch.full((2, 2), 3.0), torch.full((2,), 3.0)
    opt = OpenAIAdam([w, bias], lr=0.1, schedule='warmup_linear', warmup=0.5, t_total=4, l2=0.2, foreach=foreach)
    w.grad, bias.grad = torch.zeros(2, 2), torch.zeros(2)
    opt.step()
    lrt = 0.1 * math.sqrt(1 - 0.999) / (1 - 0.9) * warmup_linear(0.25, 0.5)
    torch.testing.assert_close(w, torch.full((2, 2), 3.0 - lrt * 0.2 * 3.0))
    assert torch.equal(bias, torch.full((2,), 3.0))


def test_callable_schedule_equals_named():
    results = []
    for schedule in ('warmup_cosine', lambda x, warmup: warmup_cosine(x, warmup)):
        params, grads = make_problem(seed=5)
        opt = OpenAIAdam(params, lr=0.01, schedule=schedule, warmup=0.1, t_total=10)
        run(opt, params, grads, 12)
        results.append(params)
    for a, b in zip(*results):
        assert torch.equal(a, b)
    # and the schedule really is used: a constant one gives another trajectory
    params, grads = make_problem(seed=5)
    run(OpenAIAdam(params, lr=0.01, schedule='warmup_constant', warmup=0.1, t_total=10), params, grads, 12)
    assert not torch.equal(params[0], results[0][0])


def test_sparse_grad_same_as_dense():
    dense = torch.zeros(6, 3)
    sparse = torch.zeros(6, 3)
    g = torch.zeros(6, 3)
    g[[1, 4]] = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 2.0]])
    for p, grad in ((dense, g), (sparse, g.to_sparse())):
        opt = OpenAIAdam([p], lr=0.1, **LINEAR, t_total=5, l2=0.01)
        p.grad = grad
        opt.step()
    assert torch.equal(dense, sparse) and not torch.equal(dense, torch.zeros(6, 3))


def test_closure_loss_is_returned():
    p = torch.ones(2, requires_grad=True)
    opt = OpenAIAdam([p], lr=0.1, **LINEAR, t_total=5)

    def closure():
        opt.zero_grad()
        loss = (p * p).sum()
        loss.backward()
        return loss
    assert opt.step(closure).item() == 2.0
    assert (p < 1).all()


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_half_precision_params_keep_float32_state(tmp_path, dtype):
    runs = {}
    for foreach in (True, False):
        params, grads = make_problem(seed=7)
        params = [p.to(dtype) for p in params]
        opt = OpenAIAdam(params, lr=0.01, **LINEAR, t_total=10, l2=0.01, max_grad_norm=1.0, foreach=foreach)
        run(opt, params, grads, 3)
        assert all(opt.state[p]['m'].dtype == torch.float32 and p.dtype == dtype for p in params)
        runs[foreach] = (params, opt)
    for a, b in zip(runs[True][0], runs[False][0]):
        torch.testing.assert_close(a, b)  # default tolerances for the half dtype
    params, opt = runs[True]
    torch.save(opt.state_dict(), tmp_path / 'opt.pt')
    opt2 = OpenAIAdam([p.clone() for p in params], lr=0.01, **LINEAR, t_total=10)
    opt2.load_state_dict(torch.load(tmp_path / 'opt.pt', weights_only=True))
    for p, q in zip(params, opt2.param_groups[0]['params']):
        for key in ('m', 'v'):
            assert opt2.state[q][key].dtype == torch.float32
            assert torch.equal(opt2.state[q][key], opt.state[p][key])


# --- schedules ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize('fn, x, warmup, expected', [
    (warmup_cosine, 0.001, 0.002, 0.5),
    (warmup_cosine, 0.1, 0.1, 1.0),  # x == warmup is still on the ramp, as in the original (x <= warmup)
    (warmup_cosine, 0.5, 0.002, 0.5),
    (warmup_cosine, 0.25, 0.002, 0.5 * (1 + math.sqrt(0.5))),
    (warmup_cosine, 1.0, 0.002, 0.0),
    (warmup_cosine, 1.5, 0.002, 0.5),
    (warmup_constant, 0.0005, 0.002, 0.25),
    (warmup_constant, 0.7, 0.002, 1.0),
    (warmup_constant, 2.0, 0.002, 1.0),
    (warmup_linear, 0.001, 0.002, 0.5 * 0.999),
    (warmup_linear, 0.25, 0.002, 0.75),
    (warmup_linear, 1.0, 0.002, 0.0),
    (warmup_linear, 1.2, 0.002, -0.2),  # negative past x = 1, as in the original
    (warmup_linear, 0.0, 0.0, 1.0),  # warmup=0: no ramp (the original gives NaN)
])
def test_schedule_values(fn, x, warmup, expected):
    got = fn(x, warmup)
    assert isinstance(got, float)
    assert got == pytest.approx(expected, abs=1e-12)


def test_schedules_default_warmup_and_table():
    from opt import warmup_cosine_decay
    assert SCHEDULES == {'warmup_cosine': warmup_cosine, 'warmup_constant': warmup_constant,
                         'warmup_linear': warmup_linear, 'warmup_cosine_decay': warmup_cosine_decay}
    assert warmup_linear(0.001) == pytest.approx(0.5 * 0.999)
    assert warmup_cosine(0.1) == pytest.approx(0.5 * (1 + math.cos(0.1 * math.pi)))


def test_optimizer_deepcopy_keeps_settings():
    params, grads = make_problem(seed=9)
    opt = OpenAIAdam(params, lr=0.01, **LINEAR, t_total=10, max_grad_norm=1.0, foreach=False)
    run(opt, params, grads, 2)
    clone = copy.deepcopy(opt)
    assert clone.param_groups[0]['foreach'] is False and clone.param_groups[0]['max_grad_norm'] == 1.0
    assert clone.state_dict()['state'][0]['step'] == 2


def test_building_and_stepping_does_not_import_torch_dynamo():
    """torch.optim.Optimizer's add_param_group and zero_grad import torch._dynamo on first use (seconds of a
    run's start-up); OpenAIAdam calls them without that wrapper, and they still do their work."""
    import subprocess
    import sys
    code = ('import sys, torch\n'
            'from opt import OpenAIAdam\n'
            'p = torch.nn.Parameter(torch.ones(3))\n'
            'o = OpenAIAdam([p], lr=0.1, schedule="warmup_constant", warmup=0.0, t_total=10)\n'
            'p.grad = torch.ones(3)\n'
            'o.step()\n'
            'o.zero_grad()\n'
            'assert p.grad is None and o.param_groups[0]["lr"] == 0.1 and not torch.equal(p, torch.ones(3))\n'
            'print("torch._dynamo" in sys.modules)\n')
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120, cwd=root)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == 'False'


def test_warmup_cosine_decay_is_the_papers_pretraining_schedule():
    """Linear from 0 over the warmup, then a cosine from 1 down to 0 over the rest (paper, Section 4.1)."""
    from opt import warmup_cosine_decay
    n, w = 10_000, 2_000
    f = [warmup_cosine_decay(t / n, w / n) for t in range(1, n + 1)]
    assert f[0] == pytest.approx(1 / w) and f[w - 1] == pytest.approx(1.0)  # step w ends the ramp at 1
    assert f[w + (n - w) // 2 - 1] == pytest.approx(0.5, abs=1e-3)  # half way down the cosine
    assert f[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a <= b for a, b in zip(f[:w - 1], f[1:w])) and all(a >= b for a, b in zip(f[w - 1:-1], f[w:]))
    assert max(abs(a - b) for a, b in zip(f[:-1], f[1:])) < 2 / w  # continuous: no jump after the warmup
    assert warmup_cosine_decay(0.5, 0.0) == pytest.approx(0.5)  # no warmup: the plain cosine
    assert 'warmup_cosine_decay' in SCHEDULES
