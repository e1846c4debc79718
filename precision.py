"""Precisions, in one place: the names a run may ask for, the autocast region of each, TF32 and fp16's loss scaler.

fp32 is the original's arithmetic (TF32 matmuls on CUDA, as TensorFlow allows them on Ampere); fp32-strict turns
TF32 off; bf16 and fp16 run the forward under autocast with fp32 weights and optimizer (fp16 with a loss scaler).
"""
import sys
from contextlib import nullcontext

import torch

PRECISIONS = ('fp32', 'fp32-strict', 'bf16', 'fp16')


def autocast_context(device, precision):
    """Return the autocast context of a precision (a no-op context for fp32)."""
    if precision in ('bf16', 'fp16'):
        return torch.autocast(device.type, dtype=torch.bfloat16 if precision == 'bf16' else torch.float16)
    return nullcontext()


def no_autocast(device_type):
    """Return a context that turns autocast off for device_type (a no-op context where it is off)."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return nullcontext()


def matmul_dtype(a, b):
    """Return the dtype a @ b runs in here: autocast's where autocast is on and casts them, else their promoted one."""
    dtype = torch.promote_types(a.dtype, b.dtype)
    if torch.is_autocast_enabled(a.device.type) and dtype != torch.float64:  # autocast leaves float64 alone
        return torch.get_autocast_dtype(a.device.type)
    return dtype


# a CPU computes a precision's matrix products at speed only with these instructions (torch.cpu's checks)
CPU_MATRIX_INSTRUCTIONS = {'bf16': ('avx512_bf16', 'amx_tile'), 'fp16': ('avx512', 'amx_fp16')}


def slow_on_this_cpu(device, precision):
    """Return the one-line warning that precision runs far slower than fp32 on device, a CPU without the instructions
    for its products (torch falls back to plain loops there: 30-75x slower than fp32 on an AVX2 CPU), or None."""
    if device.type != 'cpu' or precision not in CPU_MATRIX_INSTRUCTIONS:
        return None
    checks = [getattr(torch.cpu, f'_is_{name}_supported', None) for name in CPU_MATRIX_INSTRUCTIONS[precision]]
    if any(check is None or check() for check in checks):  # a torch that cannot tell is trusted
        return None
    return (f'warning: --precision {precision}: this CPU has no {" or ".join(CPU_MATRIX_INSTRUCTIONS[precision])} '
            f'instructions, so its {precision} products run 30-75x slower than fp32 here: use --precision fp32 '
            f'(the results are computed all the same)')


def configure_precision(device, precision):
    """Set TF32 matmuls on CUDA for fp32 (not fp32-strict); warn (stderr) when the precision is slow on this CPU; return
    a GradScaler for fp16 (CUDA or CPU), else None."""
    warning = slow_on_this_cpu(device, precision)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    if device.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = precision != 'fp32-strict'
        torch.backends.cudnn.allow_tf32 = precision != 'fp32-strict'
    return torch.amp.GradScaler(device.type) if precision == 'fp16' else None
