"""Precisions, in one place: the names a run may ask for, the autocast region of each, TF32 and fp16's loss scaler.

fp32 is the original's arithmetic (TF32 matmuls on CUDA, as TensorFlow allows them on Ampere); fp32-strict turns
TF32 off; bf16 and fp16 run the forward under autocast with fp32 weights and optimizer (fp16 with a loss scaler).
"""
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


def configure_precision(device, precision):
    """Set TF32 matmuls on CUDA for fp32 (not fp32-strict); return a GradScaler for fp16 (CUDA or CPU), else None."""
    if device.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = precision != 'fp32-strict'
        torch.backends.cudnn.allow_tf32 = precision != 'fp32-strict'
    return torch.amp.GradScaler(device.type) if precision == 'fp16' else None
