"""The shipped configs/: each parses with its script, says in its first line what it is for, and the ones that name
the paper's runs equal the scripts' defaults."""
import dataclasses
from pathlib import Path

import pytest

import pretrain
import train

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / 'configs').glob('*.toml'))
SCRIPTS = {'rocstories.toml': train, 'first_run.toml': pretrain, 'pretrain_paper.toml': pretrain,
           'gpt2_124M.toml': pretrain}


def test_every_config_is_known_and_opens_with_what_it_is_for_and_costs():
    assert {path.name for path in CONFIGS} == set(SCRIPTS)
    for path in CONFIGS:
        head = [line for line in path.read_text(encoding='utf-8').splitlines() if line.startswith('#')]
        assert head and path.read_text(encoding='utf-8').startswith('# '), path.name
        assert any(word in ' '.join(head) for word in ('minutes', 'hour', 'days', 'month')), f'{path.name}: its cost'


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: p.name)
def test_every_config_parses_with_its_script(path):
    settings = SCRIPTS[path.name].parse_args(['--config', str(path)])
    assert dataclasses.is_dataclass(settings)


def test_the_rocstories_config_is_the_papers_run_the_defaults():
    assert train.parse_args(['--config', str(ROOT / 'configs' / 'rocstories.toml')]) == train.parse_args(
        ['--submit', '--analysis'])


def test_the_paper_pretraining_config_builds_the_defaults_model_and_recipe():
    """Resolved for a GPT-1 corpus, the config's settings and model config equal those of pretrain.py's defaults."""
    meta = {'format': 'gpt1-corpus-v1'}
    ours = pretrain.resolve_arch(pretrain.parse_args(['--config', str(ROOT / 'configs' / 'pretrain_paper.toml')]),
                                 meta)
    defaults = pretrain.resolve_arch(pretrain.parse_args(['--corpus', ours.corpus, '--out', ours.out]), meta)
    differ = {k for k, v in dataclasses.asdict(ours).items() if getattr(defaults, k) != v}
    assert differ == {'n_embd', 'n_head', 'n_layer', 'afn'}  # written out in the file, None (the paper's) by default
    assert pretrain.lm_config(ours, 40478, 1) == pretrain.lm_config(defaults, 40478, 1)


def test_the_gpt2_config_is_nanogpts_openwebtext_recipe():
    s = pretrain.parse_args(['--config', str(ROOT / 'configs' / 'gpt2_124M.toml')])
    assert (s.arch, s.preset, s.n_ctx, s.n_batch, s.micro_batch, s.n_updates) == ('gpt2', '124M', 1024, 480, 12, 600000)
    assert (s.lr, s.warmup_updates, s.b1, s.b2, s.l2, s.max_grad_norm) == (6e-4, 2000, 0.9, 0.95, 0.1, 1.0)
    assert (s.embd_pdrop, s.attn_pdrop, s.resid_pdrop, s.precision) == (0.0, 0.0, 0.0, 'bf16')
