"""Adam with the original's decoupled L2, global-norm clipping and warmup schedules (TF: opt.py: adam,
warmup_cosine, warmup_constant, warmup_linear).

The update at step t (counted from 1) for a parameter p with gradient g is, as in the original:

    g    <- g * max_grad_norm / max(global_norm, max_grad_norm)       (only when max_grad_norm > 0)
    m    <- b1 m + (1 - b1) g
    v    <- b2 v + (1 - b2) g^2
    lrt   = lr * sqrt(1 - b2^t) / (1 - b1^t) * schedule(t / t_total, warmup)
    p    <- p - lrt * (m / (sqrt(v) + e) + l2 * p)   for p.dim() > 1 (any p when vector_l2) and l2 > 0
    p    <- p - lrt * m / (sqrt(v) + e)              otherwise

global_norm is ONE norm over the gradients of every parameter of every group (tf.clip_by_global_norm).
"""
import math
import numbers

import torch
from torch.optim import Optimizer


def _in_warmup(x, warmup):
    """Return whether x lies in the linear warmup ramp [.., warmup]."""
    # Intentional difference: the original computes s * (x / warmup) unconditionally, so warmup=0 gives
    # 0 * inf = NaN at every step; here warmup=0 means "no warmup".
    return warmup > 0 and x <= warmup


def warmup_cosine(x, warmup=0.002):
    """Return the learning-rate factor at x = step / t_total: linear ramp, then a half cosine (TF: warmup_cosine)."""
    if _in_warmup(x, warmup):
        return x / warmup
    return 0.5 * (1 + math.cos(math.pi * x))


def warmup_constant(x, warmup=0.002):
    """Return the learning-rate factor at x = step / t_total: linear ramp, then 1 (TF: warmup_constant)."""
    if _in_warmup(x, warmup):
        return x / warmup
    return 1.0


def warmup_linear(x, warmup=0.002):
    """Return the learning-rate factor at x = step / t_total: ramp times (1 - x) (TF: warmup_linear)."""
    # As in the original, the factor keeps going past x = 1 and turns negative there.
    s = x / warmup if _in_warmup(x, warmup) else 1.0
    return s * (1 - x)


def warmup_cosine_decay(x, warmup=0.002):
    """Return the learning-rate factor at x = step / t_total: linear ramp to 1, then a half cosine from 1 at the
    end of the warmup down to 0 at x = 1 (the paper's pre-training schedule, Section 4.1; no TF counterpart)."""
    if _in_warmup(x, warmup):
        return x / warmup
    # warmup_cosine's cosine spans the whole run, so it starts below 1 after a long warmup; this one spans
    # what is left after it, as "increased linearly ... then annealed to 0 using a cosine schedule"
    done = min(1.0, (x - warmup) / (1 - warmup)) if warmup < 1 else 1.0
    return 0.5 * (1 + math.cos(math.pi * done))


SCHEDULES = {
    'warmup_cosine': warmup_cosine,
    'warmup_constant': warmup_constant,
    'warmup_linear': warmup_linear,
    'warmup_cosine_decay': warmup_cosine_decay,
}

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def moment_dtype(p):
    """Return the dtype of the moments of p: float32 for half-precision parameters, else p's own dtype."""
    return torch.float32 if p.dtype in _LOW_PRECISION else p.dtype


def _dense(g):
    """Return g as a dense tensor (TF: the original converts IndexedSlices with tf.convert_to_tensor)."""
    return g.to_dense() if g.is_sparse else g


def _check_group(group):
    """Raise ValueError naming the first invalid hyperparameter of a (defaults-filled) param group."""
    if not group['lr'] >= 0:
        raise ValueError(f"lr must be >= 0, got lr={group['lr']!r}")
    schedule = group['schedule']
    if isinstance(schedule, str):
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule={schedule!r}; use one of {sorted(SCHEDULES)} or a callable")
    elif not callable(schedule):
        raise ValueError(f"schedule must be a name in SCHEDULES or a callable f(x, warmup), got {schedule!r}")
    for name in ('b1', 'b2'):
        if not 0 <= group[name] < 1:
            raise ValueError(f"{name} must be in [0, 1), got {name}={group[name]!r}")
    if not group['e'] >= 0:
        raise ValueError(f"e must be >= 0, got e={group['e']!r}")
    if not (isinstance(group['t_total'], numbers.Real) and group['t_total'] > 0):
        raise ValueError(f"t_total must be > 0 (the total number of updates), got t_total={group['t_total']!r}")
    if not 0 <= group['warmup'] <= 1:
        raise ValueError(f"warmup must be in [0, 1] (a fraction of t_total), got warmup={group['warmup']!r}")
    if not group['l2'] >= 0:
        raise ValueError(f"l2 must be >= 0, got l2={group['l2']!r}")


def _lrt(group, t):
    """Return the bias-corrected, scheduled step size of a group at step t (t counted from 1)."""
    schedule = group['schedule']
    if isinstance(schedule, str):
        schedule = SCHEDULES[schedule]
    b1, b2 = group['b1'], group['b2']
    # The original's fixture decides: its schedule sees t / t_total with t counted from 1 (at t = 0 the
    # first update would be zero, and it is not).
    factor = float(schedule(t / group['t_total'], group['warmup']))
    # Intentional difference: this scalar is computed in float64; TF computes it in float32, where
    # 1 - b2^t loses about 5 digits early on. That alone moves the fixture trajectories by up to ~6e-6.
    return group['lr'] * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) * factor


def _decays(group, p):
    """Return whether p gets the L2 term (TF: (len(shape) > 1 or vector_l2) and l2 > 0)."""
    return (p.dim() > 1 or group['vector_l2']) and group['l2'] > 0


class OpenAIAdam(Optimizer):
    """Adam as in OpenAI's GPT-1 (TF: opt.adam): bias-corrected, scheduled lr, L2 term scaled by it, global clipping.

    Arguments are those of the original: schedule is a name in SCHEDULES or a callable f(x, warmup) -> float
    (a callable makes state_dict() unloadable with torch.load(weights_only=True); names are plain strings),
    warmup is a fraction of t_total, the total number of updates. Each param group may override any of them
    except max_grad_norm, which is optimizer-wide because the clipping norm is global. foreach=False selects
    the plain per-parameter reference loop instead of the grouped torch._foreach_* path (same math; results
    agree to float32 rounding, not bit for bit).

    Per-parameter state: 'step' (int, number of updates this parameter received), 'm' and 'v' (the moments,
    float32 for float16/bfloat16 parameters, else the parameter's dtype). p.grad is never modified: clipping
    scales a copy, as the original does (on the CPU the foreach path folds the factor into the moments' factors
    instead, the same update without the copy). A parameter whose .grad is None is skipped: it takes no part in the
    global norm and its state (step included) is left as it was.
    """

    def __init__(self, params, lr, schedule, warmup, t_total, b1=0.9, b2=0.999, e=1e-8, l2=0, vector_l2=False,
                 max_grad_norm=-1, foreach=True):
        defaults = dict(lr=lr, schedule=schedule, warmup=warmup, t_total=t_total, b1=b1, b2=b2, e=e, l2=l2,
                        vector_l2=vector_l2, max_grad_norm=max_grad_norm, foreach=foreach)
        _check_group(defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group):
        """Check the group's hyperparameters, then add it (see torch.optim.Optimizer.add_param_group)."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        _check_group({**self.defaults, **param_group})
        max_grad_norm = param_group.get('max_grad_norm', self.defaults['max_grad_norm'])
        if max_grad_norm != self.defaults['max_grad_norm']:
            raise ValueError(f"max_grad_norm is optimizer-wide (one global norm over all groups); a param group "
                             f"cannot set max_grad_norm={max_grad_norm!r} (optimizer: "
                             f"{self.defaults['max_grad_norm']!r})")
        _undecorated(Optimizer.add_param_group)(self, param_group)

    def zero_grad(self, set_to_none=True):
        """Reset the gradients (see torch.optim.Optimizer.zero_grad)."""
        _undecorated(Optimizer.zero_grad)(self, set_to_none)

    def load_state_dict(self, state_dict):
        """Load a state_dict, keeping float32 moments for half-precision parameters."""
        super().load_state_dict(state_dict)
        # torch casts loaded floating state to the parameter's dtype; restore the saved float32 moments.
        saved_ids = [i for g in state_dict['param_groups'] for i in g['params']]
        params = [p for g in self.param_groups for p in g['params']]
        for i, p in zip(saved_ids, params):
            if p.dtype in _LOW_PRECISION and i in state_dict['state']:
                for key in ('m', 'v'):
                    self.state[p][key] = state_dict['state'][i][key].to(device=p.device, dtype=torch.float32)

    @torch.no_grad()
    def step(self, closure=None):
        """Do one update of every parameter that has a gradient; return closure's loss (or None)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # [(group, params, grads)] for the params that have a grad
        work = []
        for group in self.param_groups:
            params = [p for p in group['params'] if p.grad is not None]
            if params:
                work.append((group, params, [_dense(p.grad) for p in params]))
        if not work:
            return loss
        scale = None
        max_grad_norm = self.param_groups[0]['max_grad_norm']
        if max_grad_norm > 0:
            scale = self._clip_scale(work, max_grad_norm)
        for group, params, grads in work:
            if group['foreach']:
                self._update_foreach(group, params, grads, scale)
            else:
                self._update_loop(group, params, grads, scale)
        return loss

    @staticmethod
    def _clip_scale(work, max_grad_norm):
        """Return the 0-dim float32 factor of tf.clip_by_global_norm for all gradients in work."""
        norms = []
        for group, params, grads in work:
            if group['foreach']:
                for gs in _by_device_dtype(grads).values():
                    norms.extend(torch._foreach_norm(gs, 2, dtype=torch.float32))
            else:
                norms.extend(torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads)
        device = norms[0].device
        global_norm = torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms]))
        # tf.clip_by_global_norm: a non-finite norm makes every gradient NaN rather than silently zero.
        global_norm = torch.where(torch.isfinite(global_norm), global_norm, torch.full_like(global_norm, math.nan))
        return max_grad_norm * torch.clamp(1.0 / global_norm, max=1.0 / max_grad_norm)

    def _init_state(self, p):
        """Return p's state, creating zero moments on its first update."""
        state = self.state[p]
        # Intentional difference: the original keeps one step counter t for all tensors; here each parameter
        # counts its own updates (identical when every parameter has a gradient at every step). A parameter
        # that starts training late thus gets the bias correction matching its own moments.
        if not state:
            state['step'] = 0
            state['m'] = torch.zeros_like(p, dtype=moment_dtype(p), memory_format=torch.preserve_format)
            state['v'] = torch.zeros_like(p, dtype=moment_dtype(p), memory_format=torch.preserve_format)
        return state

    def _update_loop(self, group, params, grads, scale):
        """Reference path: update each parameter on its own, op for op like the original."""
        b1, b2, e, l2 = group['b1'], group['b2'], group['e'], group['l2']
        for p, g in zip(params, grads):
            state = self._init_state(p)
            state['step'] += 1
            lrt = _lrt(group, state['step'])
            g = g.to(state['m'].dtype)
            if scale is not None:
                g = g * scale.to(g.device)
            m, v = state['m'], state['v']
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            p_old = p.to(m.dtype)
            update = m / (v.sqrt() + e)
            if _decays(group, p):
                update = update + l2 * p_old
            p.copy_(p_old - lrt * update)

    def _update_foreach(self, group, params, grads, scale):
        """Fast path: the same update with torch._foreach_* over tensors sharing device, dtype and step."""
        b1, b2, e, l2 = group['b1'], group['b2'], group['e'], group['l2']
        # (device, dtype, step) -> [p], [g], [m], [v]
        buckets = {}
        for p, g in zip(params, grads):
            state = self._init_state(p)
            state['step'] += 1
            bucket = buckets.setdefault((p.device, p.dtype, state['step']), ([], [], [], []))
            for lst, x in zip(bucket, (p, g, state['m'], state['v'])):
                lst.append(x)
        for (device, dtype, t), (ps, gs, ms, vs) in buckets.items():
            lrt = _lrt(group, t)
            low = dtype in _LOW_PRECISION
            if low:
                gs = [g.float() for g in gs]
            m_alpha, v_value = 1 - b1, 1 - b2
            if scale is not None and _reads_are_free(device):
                # On the CPU the clipping factor is read for free: folded into the moments' factors, m += (1 - b1) s g
                # and v += (1 - b2) s^2 g g, it spares a scaled copy of every gradient (a pass over all of them). The
                # same update up to float rounding; bit for bit when the norm is under max_grad_norm (s is 1).
                s = float(scale)
                m_alpha, v_value = m_alpha * s, v_value * s * s
            elif scale is not None:
                s = scale.to(device)  # stays on the device: no wait for the GPU's norm
                if low:
                    torch._foreach_mul_(gs, s)  # gs is already our own float32 copy
                else:
                    gs = torch._foreach_mul(gs, s)  # never scale p.grad in place
            torch._foreach_mul_(ms, b1)
            torch._foreach_add_(ms, gs, alpha=m_alpha)
            torch._foreach_mul_(vs, b2)
            torch._foreach_addcmul_(vs, gs, gs, value=v_value)
            del gs
            denom = torch._foreach_sqrt(vs)
            torch._foreach_add_(denom, e)
            ps32 = [p.float() for p in ps] if low else ps
            decayed = [p for p, p_orig in zip(ps32, ps) if _decays(group, p_orig)]
            if decayed:
                # p - lrt * (u + l2 p) == p * (1 - lrt l2) - lrt * u: the same update, fewer passes over memory.
                torch._foreach_mul_(decayed, 1 - lrt * l2)
            torch._foreach_addcdiv_(ps32, ms, denom, value=-lrt)
            if low:
                torch._foreach_copy_(ps, ps32)


def _undecorated(method):
    """Return a torch.optim.Optimizer method without its torch._dynamo.disable wrapper, when it has one.

    The wrapper imports torch._dynamo on first use (seconds of start-up) to keep torch.compile out of the
    optimizer; OpenAIAdam is never compiled, and a script that compiles the model imports it anyway.
    """
    return getattr(method, '__wrapped__', method)


def _reads_are_free(device):
    """Return whether the host reads a value computed on device without waiting for queued work (the CPU's case)."""
    return device.type == 'cpu'


def _by_device_dtype(tensors):
    """Return {(device, dtype): [tensor]} preserving order."""
    out = {}
    for x in tensors:
        out.setdefault((x.device, x.dtype), []).append(x)
    return out
