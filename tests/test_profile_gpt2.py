"""Tests of benchmarks/profile_gpt2.py: every op's time lands in one category, and the loop given for nanoGPT trains."""
import pytest
import torch

import bench_gpt2
import profile_gpt2


def test_the_categories_take_the_ops_the_table_names(capsys):
    assert profile_gpt2.category('aten::native_layer_norm') == 'layer norm'  # not the clipping's norm
    assert profile_gpt2.category('aten::linalg_vector_norm') == 'clipping'
    assert profile_gpt2.category('aten::_foreach_addcdiv_') == 'optimizer'
    assert profile_gpt2.category('aten::addmm') == profile_gpt2.category('aten::mm') == 'matmul'
    assert profile_gpt2.category('aten::_scaled_dot_product_flash_attention_for_cpu') == 'attention'
    assert profile_gpt2.category('aten::gelu_backward') == 'gelu'
    assert profile_gpt2.category('aten::_log_softmax') == 'loss (softmax)'
    assert profile_gpt2.category('aten::where') == 'other ops'


def test_a_quick_profile_accounts_for_every_op(capsys):
    assert profile_gpt2.main(['--quick', '--only', 'ours']) == 0
    lines = {line[:18].strip(): line[18:].split() for line in capsys.readouterr().out.splitlines()[2:]}
    named = [label for label, _ in profile_gpt2.CATEGORIES] + ['other ops']
    assert sum(float(lines[label][0]) for label in named) == pytest.approx(float(lines['all ops'][0]),
                                                                          abs=0.1 * len(named))
    assert float(lines['matmul'][0]) > 0 and float(lines['wall'][0]) >= float(lines['all ops'][0]) * 0.5


def test_the_nanogpt_loop_trains_its_model(tmp_path):
    """A stand-in model.py with nanoGPT's interface: GPT(config)(x, y) -> (logits, loss), configure_optimizers."""
    (tmp_path / 'model.py').write_text(
        "import torch\n"
        "from dataclasses import dataclass\n"
        "@dataclass\n"
        "class GPTConfig:\n"
        "    block_size: int; vocab_size: int; n_layer: int; n_head: int; n_embd: int; dropout: float; bias: bool\n"
        "class GPT(torch.nn.Module):\n"
        "    def __init__(self, c):\n"
        "        super().__init__(); self.e = torch.nn.Embedding(c.vocab_size, c.n_embd)\n"
        "        self.o = torch.nn.Linear(c.n_embd, c.vocab_size)\n"
        "    def forward(self, x, y):\n"
        "        logits = self.o(self.e(x))\n"
        "        return logits, torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())\n"
        "    def configure_optimizers(self, wd, lr, betas, device_type):\n"
        "        return torch.optim.AdamW(self.parameters(), lr=1e-2)\n")
    cfg = bench_gpt2.GPT2Config(n_embd=8, n_head=2, n_layer=1, n_ctx=16)
    impl = profile_gpt2.NanoGPT(str(tmp_path), cfg, 2, torch.device('cpu'))
    before = impl.model.o.weight.detach().clone()
    impl.step(bench_gpt2.make_stream(1000), 1)
    assert not torch.equal(impl.model.o.weight, before)
