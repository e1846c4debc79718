"""Tests of precision.py: the warning that a half precision is slow on a CPU without its matrix instructions."""
import pytest
import torch

import precision

CPU = torch.device('cpu')


@pytest.fixture
def cpu_has(monkeypatch):
    """Set which of torch.cpu's instruction checks say yes; return the setter."""
    def has(*names):
        for name in ('avx512_bf16', 'amx_tile', 'avx512', 'amx_fp16'):
            monkeypatch.setattr(torch.cpu, f'_is_{name}_supported', lambda name=name: name in names)
    return has


def test_a_half_precision_without_its_instructions_is_named_with_the_fix(cpu_has):
    cpu_has('avx512')  # AVX-512 without bf16: bf16 products fall back to plain loops
    warning = precision.slow_on_this_cpu(CPU, 'bf16')
    assert warning.startswith('warning: --precision bf16: this CPU has no avx512_bf16 or amx_tile') and \
        'use --precision fp32' in warning and '\n' not in warning
    assert precision.slow_on_this_cpu(CPU, 'fp16') is None
    cpu_has()  # AVX2 only
    assert 'no avx512 or amx_fp16' in precision.slow_on_this_cpu(CPU, 'fp16')


def test_no_warning_where_the_precision_is_fast_or_not_a_cpu_product(cpu_has):
    cpu_has('amx_tile')
    assert precision.slow_on_this_cpu(CPU, 'bf16') is None
    cpu_has('avx512_bf16')
    assert precision.slow_on_this_cpu(CPU, 'bf16') is None
    cpu_has()
    for name in ('fp32', 'fp32-strict'):
        assert precision.slow_on_this_cpu(CPU, name) is None
    assert precision.slow_on_this_cpu(torch.device('cuda'), 'bf16') is None


def test_a_torch_that_cannot_tell_is_trusted(monkeypatch):
    monkeypatch.delattr(torch.cpu, '_is_avx512_bf16_supported', raising=False)
    assert precision.slow_on_this_cpu(CPU, 'bf16') is None


def test_configure_precision_prints_the_warning_once_on_stderr(cpu_has, capsys):
    cpu_has()
    assert precision.configure_precision(CPU, 'bf16') is None
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith('warning: --precision bf16')
    precision.configure_precision(CPU, 'fp32')
    assert capsys.readouterr().err == ''

