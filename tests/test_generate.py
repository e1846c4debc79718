"""Tests for generate.py: the command line over sample.py with the real vocabulary, every flag by its effect."""
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import convert
import generate
import models
import precision
import weights
from model_pytorch import N_VOCAB
from sample import SamplingSettings, generate as generate_text
from tests.helpers import VOCAB_DIR
from text_utils import TextEncoder
from weights import TF_BLOCK, write_released_shards

ROOT = Path(__file__).resolve().parents[1]


# --- the real vocabulary and the command line ----------------------------------------------------------

def write_tiny_real_vocab_model(folder, seed=0, n_layer=1):
    """Write released shards of an n_layer n_embd 8 model with the 40478 real token rows and 16 positions, plus
    the real vocabulary files; return folder."""
    rng = np.random.default_rng(seed)
    nx = 8
    shapes = {'attn/c_attn/w': (1, nx, 3 * nx), 'attn/c_attn/b': (3 * nx,), 'attn/c_proj/w': (1, nx, nx),
              'attn/c_proj/b': (nx,), 'ln_1/g': (nx,), 'ln_1/b': (nx,), 'mlp/c_fc/w': (1, nx, 4 * nx),
              'mlp/c_fc/b': (4 * nx,), 'mlp/c_proj/w': (1, 4 * nx, nx), 'mlp/c_proj/b': (nx,), 'ln_2/g': (nx,),
              'ln_2/b': (nx,)}
    arrays = [rng.normal(size=(16, nx)), rng.normal(size=(N_VOCAB, nx))]
    arrays += [rng.normal(size=shapes[name]) * 0.5 + (1.0 if name.endswith('/g') else 0.0)
               for _ in range(n_layer) for name in TF_BLOCK]
    write_released_shards(folder, [a.astype(np.float32) for a in arrays])
    for name in weights.VOCAB_FILES:
        shutil.copyfile(VOCAB_DIR / name, folder / name)
    return folder


@pytest.fixture(scope='module')
def real_vocab_dir(tmp_path_factory):
    return write_tiny_real_vocab_model(tmp_path_factory.mktemp('gen') / 'model')


@pytest.fixture(scope='module')
def text_encoder():
    return TextEncoder(*weights.vocab_paths(VOCAB_DIR))


def test_generate_returns_readable_text_and_ids(real_vocab_dir, text_encoder):
    model = models.load_model(str(real_vocab_dir), n_head=2, lm=True)
    assert model.cfg.n_vocab == N_VOCAB == len(text_encoder.decoder)
    result = generate_text(model, text_encoder, 'The cat sat on the mat.', SamplingSettings(gen_len=5, greedy=True))
    assert result.prompt_ids == text_encoder.encode(['The cat sat on the mat.'], verbose=False)[0]
    assert len(result.ids) == 5 and max(result.ids) < N_VOCAB and result.message is None
    assert result.text == text_encoder.decode(result.ids) and '</w>' not in result.full_text
    assert result.full_text.startswith('the cat sat on the mat . ')
    assert result.full_text == text_encoder.decode(result.prompt_ids + result.ids)


def run_cli(argv, stdin='', monkeypatch=None, capsys=None):
    """Return (exit code, stdout, stderr) of generate.main(argv) with the given stdin."""
    monkeypatch.setattr('sys.stdin', io.StringIO(stdin))
    rc = generate.main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_prompt_seed_interactive_and_errors(real_vocab_dir, tmp_path, monkeypatch, capsys):
    base = ['--model_dir', str(real_vocab_dir), '--n_head', '2', '--device', 'cpu', '--gen_len', '6']
    rc, out, err = run_cli(base + ['--prompt', 'Hello world', '--seed', '0'], monkeypatch=monkeypatch, capsys=capsys)
    assert rc == 0 and err == ''
    assert out.startswith('hello world ') and len(out.strip()) > len('hello world')
    # the same model converted to safetensors and sampled with the same seed gives the same text
    assert convert.main(['shards-to-safetensors', '--model_dir', str(real_vocab_dir), '--out',
                         str(tmp_path / 'st'), '--n_head', '2']) == 0
    capsys.readouterr()
    rc, out_st, _ = run_cli(['--model_dir', str(tmp_path / 'st'), '--device', 'cpu', '--gen_len', '6', '--prompt',
                             'Hello world', '--seed', '0'], monkeypatch=monkeypatch, capsys=capsys)
    assert rc == 0 and out_st == out
    # interactive: one generation per non-empty stdin line; the context filling up is a note, not an error
    rc, out, err = run_cli(base + ['--interactive', '--greedy', '--gen_len', '40'],
                           stdin='first prompt\n\nsecond prompt here\n', monkeypatch=monkeypatch, capsys=capsys)
    lines = out.splitlines()
    assert rc == 0 and len(lines) == 2
    assert lines[0].startswith('first prompt ') and lines[1].startswith('second prompt here ')
    assert err.count('generate.py: note: stopped after 14 of 40 tokens') == 1
    assert err.count('generate.py: note: stopped after 13 of 40 tokens') == 1
    # errors: one line on stderr, non-zero exit
    rc, out, err = run_cli(['--model_dir', str(tmp_path / 'none'), '--prompt', 'x'], monkeypatch=monkeypatch,
                           capsys=capsys)
    assert rc == 1 and err.startswith('generate.py: error: ') and err.count('\n') == 1
    rc, out, err = run_cli(base + ['--prompt', 'x', '--temperature', '0'], monkeypatch=monkeypatch, capsys=capsys)
    assert rc == 1 and 'temperature=0.0' in err and err.count('\n') == 1
    rc, out, err = run_cli(base + ['--prompt', ' '.join(['word'] * 20)], monkeypatch=monkeypatch, capsys=capsys)
    assert rc == 1 and 'longer than n_ctx=16' in err


# --- every flag of the command line, each checked by its effect -------------------------------------------

PROMPT_TEXT = 'the weather today is'  # 4 BPE tokens


def step_logits(model, n_vocab, ids):
    """Return the token-row logits [n_vocab] after ids from the uncached forward of an LMModel (no sampler code)."""
    transformer = model.transformer
    pos_offset = transformer.embed.weight.shape[0] - transformer.n_ctx
    x = torch.tensor([[[t, pos_offset + i] for i, t in enumerate(ids)]])  # [1, T, 2]
    with torch.no_grad():
        return model(x)[0, -1, :n_vocab]


def argmax_decoding(model_dir, text_encoder, gen_len, **load_kw):
    """Return the ids greedy decoding of PROMPT_TEXT gives, computed here from a freshly loaded model."""
    model = models.load_model(str(model_dir), lm=True, **load_kw)
    prompt_ids = text_encoder.encode([PROMPT_TEXT], verbose=False)[0]
    new = []
    for _ in range(min(gen_len, model.transformer.n_ctx - len(prompt_ids))):
        new.append(int(step_logits(model, model.cfg.n_vocab, prompt_ids + new).argmax()))
    return new


ENCODERS = {}  # (encoder_path, bpe_path) -> TextEncoder, so that each CLI run does not rebuild the same one


def cached_text_encoder(encoder_path, bpe_path):
    """Return the TextEncoder of these two files, built once per pair of paths."""
    key = (str(encoder_path), str(bpe_path))
    if key not in ENCODERS:
        ENCODERS[key] = TextEncoder(encoder_path, bpe_path)
    return ENCODERS[key]


@pytest.fixture
def cli(real_vocab_dir, monkeypatch, capsys):
    """Return run(*flags, stdin='') -> (exit code, stdout, stderr, the Generations made) of generate.main on the
    tiny model, with --prompt PROMPT_TEXT, --n_head 2 and --device cpu unless flags override them; run.models
    holds the models the last run loaded."""
    made = []
    real_generate, real_load = generate.generate, generate.load_with_tokenizer

    def spy_generate(*args, **kwargs):
        made.append(real_generate(*args, **kwargs))
        return made[-1]

    def spy_load(*args, **kwargs):
        model, text_encoder = real_load(*args, **kwargs)
        run.models.append(model)
        return model, text_encoder

    monkeypatch.setattr(generate, 'generate', spy_generate)
    monkeypatch.setattr(generate, 'load_with_tokenizer', spy_load)
    monkeypatch.setattr('text_utils.TextEncoder', cached_text_encoder)

    def run(*flags, stdin=''):
        made.clear()
        run.models = []
        monkeypatch.setattr('sys.stdin', io.StringIO(stdin))
        rc = generate.main(['--model_dir', str(real_vocab_dir), '--n_head', '2', '--device', 'cpu',
                            '--prompt', PROMPT_TEXT, *flags])
        out = capsys.readouterr()
        return rc, out.out, out.err, list(made)
    return run


def test_cli_greedy_is_argmax_decoding_and_gen_len_counts_the_new_tokens(cli, real_vocab_dir, text_encoder):
    want = argmax_decoding(real_vocab_dir, text_encoder, 9, n_head=2)
    assert len(set(want)) > 1  # a real sequence, not one token repeated
    for gen_len in (0, 1, 9):
        rc, out, err, [result] = cli('--greedy', '--gen_len', str(gen_len))
        assert rc == 0 and err == ''
        assert result.prompt_ids == text_encoder.encode([PROMPT_TEXT], verbose=False)[0]  # --prompt
        assert result.ids == want[:gen_len] and len(result.ids) == gen_len
        assert out == text_encoder.decode(result.prompt_ids + want[:gen_len]) + '\n'


def test_cli_seed_reproduces_a_sample_and_another_seed_changes_it(cli, real_vocab_dir, text_encoder):
    def sample(seed):
        rc, out, _, [result] = cli('--gen_len', '8', '--seed', seed)
        assert rc == 0
        return out, result.ids
    first = sample('0')
    assert sample('0') == first
    assert sample('1') != first
    assert first[1] != argmax_decoding(real_vocab_dir, text_encoder, 8, n_head=2)  # it samples


def test_cli_temperature_top_k_and_top_p_shape_the_sampling(cli, real_vocab_dir, text_encoder):
    greedy = argmax_decoding(real_vocab_dir, text_encoder, 6, n_head=2)

    def ids(*flags):
        rc, _, err, [result] = cli('--gen_len', '6', '--seed', '0', *flags)
        assert rc == 0 and err == '', err
        return result.ids
    assert ids('--top_k', '0', '--temperature', '5') != greedy  # the control: this seed does sample off the argmax
    assert ids('--top_k', '0', '--temperature', '1e-4') == greedy  # a very low temperature is greedy
    assert ids('--top_k', '1', '--temperature', '5') == greedy  # top-k 1 is greedy whatever the temperature
    assert ids('--top_k', '0', '--top_p', '1e-6', '--temperature', '5') == greedy  # so is a tiny nucleus
    # top-k 3 at a high temperature: every token is among the 3 most likely after its prefix, not always the first
    model = models.load_model(str(real_vocab_dir), n_head=2, lm=True)
    prompt_ids = text_encoder.encode([PROMPT_TEXT], verbose=False)[0]
    sampled = ids('--top_k', '3', '--temperature', '100')
    ranks = []
    for k, token in enumerate(sampled):
        logits = step_logits(model, N_VOCAB, prompt_ids + sampled[:k])
        ranks.append(int((logits > logits[token]).sum()))
    assert max(ranks) <= 2 and max(ranks) > 0, ranks


def test_cli_model_flags_build_the_model_they_name(cli, real_vocab_dir, text_encoder, tmp_path):
    prompt_ids = text_encoder.encode([PROMPT_TEXT], verbose=False)[0]
    default = models.load_model(str(real_vocab_dir), n_head=2, lm=True)
    for flags, load_kw in ((['--afn', 'relu'], dict(n_head=2, afn='relu')), (['--n_head', '4'], dict(n_head=4))):
        assert cli('--greedy', '--gen_len', '8', *flags)[0] == 0
        [used] = cli.models
        want = models.load_model(str(real_vocab_dir), lm=True, **load_kw)
        torch.testing.assert_close(step_logits(used, N_VOCAB, prompt_ids), step_logits(want, N_VOCAB, prompt_ids),
                                   rtol=0, atol=0)
        assert not torch.allclose(step_logits(used, N_VOCAB, prompt_ids), step_logits(default, N_VOCAB, prompt_ids))
    # --model_dir: a converted folder stores n_head, so a contradicting --n_head is refused
    assert convert.main(['shards-to-safetensors', '--model_dir', str(real_vocab_dir), '--out', str(tmp_path / 'st'),
                         '--n_head', '2']) == 0
    rc, _, _, [result] = cli('--greedy', '--gen_len', '8', '--model_dir', str(tmp_path / 'st'))
    assert rc == 0 and result.ids == argmax_decoding(real_vocab_dir, text_encoder, 8, n_head=2)
    rc, out, err, _ = cli('--greedy', '--model_dir', str(tmp_path / 'st'), '--n_head', '4')
    assert rc == 1 and out == '' and '--n_head 4 contradicts n_head=2' in err and err.count('\n') == 1


def test_cli_n_ctx_crops_the_positions(cli, real_vocab_dir, text_encoder):
    full = argmax_decoding(real_vocab_dir, text_encoder, 12, n_head=2)
    rc, _, err, [result] = cli('--greedy', '--gen_len', '40', '--n_ctx', '8')
    assert rc == 0 and result.ids == full[:4]  # the first 8 positions are kept: the same first tokens
    assert err == ('generate.py: note: stopped after 4 of 40 tokens: the context is full (n_ctx=8, prompt 4 tokens); '
                   'use a shorter prompt or gen_len\n')
    rc, _, err, _ = cli('--n_ctx', '17')
    assert rc == 1 and 'n_ctx=17' in err and '1..16' in err


def test_cli_vocabulary_paths(cli, real_vocab_dir, tmp_path):
    bare = tmp_path / 'bare'
    shutil.copytree(real_vocab_dir, bare, ignore=shutil.ignore_patterns(*weights.VOCAB_FILES))
    rc, out, err, _ = cli('--greedy', '--model_dir', str(bare))
    assert rc == 1 and out == '' and '--encoder_path and --bpe_path' in err and err.count('\n') == 1
    rc, out, err, _ = cli('--greedy', '--model_dir', str(bare), '--encoder_path', str(VOCAB_DIR / weights.VOCAB_FILES[0]),
                          '--bpe_path', str(VOCAB_DIR / weights.VOCAB_FILES[1]))
    assert rc == 0 and out == cli('--greedy')[1]


def test_cli_device(cli):
    assert generate.parse_args(['--prompt', 'x']).device == ('cuda' if torch.cuda.is_available() else 'cpu')
    for device, message in (('cuda:99', '--device cuda:99: this machine has'), ('nonsense', "--device 'nonsense'")):
        rc, out, err, made = cli('--greedy', '--device', device)
        assert rc == 1 and out == '' and made == [] and err.startswith(f'generate.py: error: {message}')
        assert err.count('\n') == 1


def test_cli_interactive_reads_every_line_and_survives_a_bad_one(cli):
    rc, out, err, made = cli('--interactive', '--greedy', '--gen_len', '2',
                             stdin='first prompt\n' + 'word ' * 20 + '\n\nlast one\n')
    assert rc == 0 and [r.full_text for r in made] == out.splitlines()
    assert [line.split()[:2] for line in out.splitlines()] == [['the', 'weather'], ['first', 'prompt'], ['last', 'one']]
    assert err == 'generate.py: error: the prompt is 20 tokens, longer than n_ctx=16: shorten it\n'
    with pytest.raises(SystemExit):
        generate.parse_args(['--model_dir', 'model/'])  # neither --prompt nor --interactive


def test_script_exit_code_and_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / 'generate.py'), '--model_dir', str(tmp_path / 'none'),
                           '--prompt', 'x'], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stdout == ''
    assert proc.stderr.startswith('generate.py: error: ') and proc.stderr.count('\n') == 1


def test_gpt2_folder_generates_with_its_own_tokenizer(tmp_path, capsys):
    """A released GPT-2 folder (no vocabulary files beside it) generates through GPT-2's encoder: the greedy ids are
    the argmax of the uncached forward at every step, decoded by the original's decode."""
    from encoder_gpt2 import get_encoder
    from tests.helpers import write_tiny_gpt2
    folder = write_tiny_gpt2(tmp_path / 'gpt2', seed=3)
    assert generate.main(['--model_dir', str(folder), '--prompt', 'Hello, world', '--gen_len', '6', '--greedy']) == 0
    out = capsys.readouterr().out.rstrip('\n')
    enc = get_encoder()
    prompt = enc.encode('Hello, world')
    model = models.load_model(str(folder), lm=True)
    ids = list(prompt)
    for _ in range(6):
        with torch.no_grad():
            ids.append(int(model(torch.tensor([ids]))[0][0, -1].argmax()))
    assert out == enc.decode(ids)
    # a GPT-1 vocabulary is no GPT-2 vocabulary: one line naming it, no traceback
    assert generate.main(['--model_dir', str(folder), '--prompt', 'hi', '--encoder_path',
                          str(VOCAB_DIR / 'encoder_bpe_40000.json'), '--bpe_path', str(VOCAB_DIR / 'vocab_40000.bpe')]) == 1
    err = capsys.readouterr().err
    assert 'encoder_bpe_40000.json' in err and 'not a GPT-2 encoder.json' in err and err.count('\n') == 1


# --- several samples, unconditional samples and --out (openai/gpt-2's generate_*_samples.py) ----------------------

HEADER = '=' * 40 + ' SAMPLE {} ' + '=' * 40


def split_samples(out, n):
    """Return the n texts of stdout printed with SAMPLE headers 1..n, checking the headers."""
    lines = out.splitlines()
    assert lines[::2] == [HEADER.format(k) for k in range(1, n + 1)] and len(lines) == 2 * n, out
    return lines[1::2]


@pytest.fixture(scope='module')
def gpt2_dir(tmp_path_factory):
    from tests.helpers import write_tiny_gpt2
    return write_tiny_gpt2(tmp_path_factory.mktemp('gen2') / 'gpt2', seed=3, n_ctx=16)


def test_cli_unconditional_samples_repeat_with_their_seed(gpt2_dir, tmp_path, monkeypatch, capsys):
    from encoder_gpt2 import get_encoder
    enc = get_encoder()

    def samples(seed, *flags):
        rc, out, err = run_cli(['--model_dir', str(gpt2_dir), '--device', 'cpu', '--unconditional', '--nsamples', '4',
                                '--batch_size', '2', '--length', '6', '--seed', seed, *flags],
                               monkeypatch=monkeypatch, capsys=capsys)
        assert rc == 0 and err == '', err
        return split_samples(out, 4)
    first = samples('0', '--out', str(tmp_path / 's.jsonl'))
    assert samples('0') == first and samples('1') != first
    assert len(set(first)) == 4  # four samples, not one repeated
    records = [json.loads(line) for line in (tmp_path / 's.jsonl').read_text(encoding='utf-8').splitlines()]
    assert len(records) == 4 and [r['text'] for r in records] == first
    for record in records:
        assert set(record) == {'prompt', 'text', 'ids'} and record['prompt'] == '<|endoftext|>'
        assert len(record['ids']) == 6 and enc.decode(record['ids']) == record['text']
    # the samples continue <|endoftext|>: greedy ones are the argmax of the uncached forward after it
    rc, out, _ = run_cli(['--model_dir', str(gpt2_dir), '--unconditional', '--greedy', '--nsamples', '2', '--length',
                          '5'], monkeypatch=monkeypatch, capsys=capsys)
    model = models.load_model(str(gpt2_dir), lm=True)
    ids = [enc.encoder['<|endoftext|>']]
    for _ in range(5):
        with torch.no_grad():
            ids.append(int(model(torch.tensor([ids]))[0][0, -1].argmax()))
    assert rc == 0 and split_samples(out, 2) == [enc.decode(ids[1:])] * 2
    rc, out, _ = run_cli(['--model_dir', str(gpt2_dir), '--unconditional', '--greedy', '--length', '5'],
                         monkeypatch=monkeypatch, capsys=capsys)
    assert rc == 0 and split_samples(out, 1) == [enc.decode(ids[1:])]  # one unconditional sample has its header too


def test_cli_nsamples_of_a_prompt_print_headers_and_write_out(cli, real_vocab_dir, text_encoder, tmp_path):
    want = argmax_decoding(real_vocab_dir, text_encoder, 5, n_head=2)
    full = text_encoder.decode(text_encoder.encode([PROMPT_TEXT], verbose=False)[0] + want)
    rc, out, err, _ = cli('--greedy', '--gen_len', '5', '--nsamples', '4', '--batch_size', '2', '--out',
                          str(tmp_path / 'g.jsonl'))
    assert rc == 0 and err == '' and split_samples(out, 4) == [full] * 4
    lines = (tmp_path / 'g.jsonl').read_text(encoding='utf-8').splitlines()
    assert [json.loads(line) for line in lines] == [{'prompt': PROMPT_TEXT, 'text': text_encoder.decode(want),
                                                     'ids': want}] * 4
    # a sampled batch: every row a sample of its own, the whole repeated by the seed
    rc, out, _, _ = cli('--gen_len', '6', '--nsamples', '4', '--batch_size', '4', '--seed', '0', '--top_k', '0',
                        '--temperature', '2')
    assert rc == 0 and len(set(split_samples(out, 4))) == 4
    assert cli('--gen_len', '6', '--nsamples', '4', '--batch_size', '4', '--seed', '0', '--top_k', '0',
               '--temperature', '2')[1] == out
    # one sample with --out: printed as before, without a header
    rc, out, _, [result] = cli('--greedy', '--gen_len', '5', '--out', str(tmp_path / 'one.jsonl'))
    assert rc == 0 and out == full + '\n'
    assert json.loads((tmp_path / 'one.jsonl').read_text(encoding='utf-8')) == {
        'prompt': PROMPT_TEXT, 'text': result.text, 'ids': want}
    assert generate.parse_args(['--prompt', 'x', '--length', '7']).gen_len == 7  # --length is --gen_len


def test_cli_flags_that_cannot_go_together_are_one_line_exit_2(cli, real_vocab_dir, gpt2_dir, tmp_path, monkeypatch,
                                                                 capsys):
    for flags, message in ((['--nsamples', '3', '--batch_size', '2'], '--nsamples 3 is not a multiple of --batch_size 2'),
                           (['--nsamples', '0'], '--nsamples 0 --batch_size 1: give 1 or more'),
                           (['--unconditional'], '--unconditional samples from <|endoftext|> alone')):
        rc, out, err, made = cli(*flags)  # cli gives --prompt
        assert rc == 2 and out == '' and made == [] and err.startswith('generate.py: error: '), flags
        assert message in err and err.count('\n') == 1, err
    rc, out, err = run_cli(['--model_dir', str(gpt2_dir), '--unconditional', '--interactive'],
                           monkeypatch=monkeypatch, capsys=capsys)
    assert rc == 2 and '--unconditional samples from <|endoftext|> alone' in err and err.count('\n') == 1
    rc, out, err = run_cli(['--model_dir', str(real_vocab_dir), '--n_head', '2', '--unconditional', '--out',
                            str(tmp_path / 'x.jsonl')], monkeypatch=monkeypatch, capsys=capsys)
    assert rc == 2 and out == '' and err.startswith('generate.py: error: --unconditional starts from <|endoftext|>')
    assert 'GPT-1' in err and err.count('\n') == 1 and not (tmp_path / 'x.jsonl').exists()


def test_cli_precision_runs_the_forward_under_autocast_with_fp32s_greedy_tokens(cli, real_vocab_dir, text_encoder,
                                                                                  monkeypatch):
    """--precision bf16 runs the sampler's forward under a bf16 autocast (seen from inside it). Along fp32's greedy
    sequence, bf16's forward picks fp32's token at every step where fp32's margin between the best and second-best
    logit is more than twice bf16's error on that step's logits (at least 3 of the 9 steps here), and the command's
    greedy run agrees with fp32's up to its first step without that margin."""
    import sample
    model = models.load_model(str(real_vocab_dir), lm=True, n_head=2)
    prompt_ids = text_encoder.encode([PROMPT_TEXT], verbose=False)[0]
    want = argmax_decoding(real_vocab_dir, text_encoder, 9, n_head=2)
    safe = []
    for k in range(len(want)):
        logits = step_logits(model, model.cfg.n_vocab, prompt_ids + want[:k])
        with torch.autocast('cpu', dtype=torch.bfloat16):
            low = step_logits(model, model.cfg.n_vocab, prompt_ids + want[:k]).float()
        top2 = logits.topk(2).values
        safe.append(float(top2[0] - top2[1]) > 2 * float((low - logits).abs().max()))
        if safe[-1]:
            assert int(low.argmax()) == want[k]
    assert sum(safe) >= 3
    seen = []
    real_call = sample.BatchNextTokenLogits.__call__

    def spy(self, new_ids):
        seen.append((torch.is_autocast_enabled('cpu'), torch.get_autocast_dtype('cpu')))
        return real_call(self, new_ids)

    monkeypatch.setattr(sample.BatchNextTokenLogits, '__call__', spy)
    rc, _, err, [result] = cli('--greedy', '--gen_len', '9', '--precision', 'bf16')
    slow = precision.slow_on_this_cpu(torch.device('cpu'), 'bf16')  # the one line a CPU without bf16 products gets
    assert rc == 0 and err == (f'{slow}\n' if slow else '') and set(seen) == {(True, torch.bfloat16)}
    agreed = safe.index(False) if False in safe else len(safe)
    assert agreed >= 1 and result.ids[:agreed] == want[:agreed]
    seen.clear()
    rc, _, _, [result] = cli('--greedy', '--gen_len', '9')
    assert rc == 0 and result.ids == want and not any(on for on, _ in seen)  # fp32: no autocast


# --- --input: prompts of different lengths drawn together -------------------------------------------------------

INPUT_PROMPTS = ['the weather today is', 'hello', 'a much longer prompt that goes on and on']


def test_cli_input_greedy_prints_and_writes_what_each_prompt_gives_alone(cli, real_vocab_dir, tmp_path,
                                                                         monkeypatch, capsys):
    alone = [cli('--greedy', '--gen_len', '8', '--prompt', prompt) for prompt in INPUT_PROMPTS]
    assert all(rc == 0 for rc, _, _, _ in alone)
    want_out = ''.join(out for _, out, _, _ in alone)
    want_err = ''.join(err for _, _, err, _ in alone)
    assert 'stopped after' in want_err  # the long prompt fills n_ctx=16 early: its note, as alone
    (tmp_path / 'prompts.txt').write_text('\n'.join(INPUT_PROMPTS[:2]) + '\n\n  \n' + INPUT_PROMPTS[2] + '\n',
                                          encoding='utf-8')
    base = ['--model_dir', str(real_vocab_dir), '--n_head', '2', '--device', 'cpu', '--greedy', '--gen_len', '8',
            '--input', str(tmp_path / 'prompts.txt')]
    import sample
    rows_fed, real_call = [], sample.RaggedNextTokenLogits.__call__

    def spy(self, new_ids):
        rows_fed.append(len(new_ids))
        return real_call(self, new_ids)
    monkeypatch.setattr(sample.RaggedNextTokenLogits, '__call__', spy)
    for batch_size in ('3', '2', '1'):
        rows_fed.clear()
        rc, out, err = run_cli(base + ['--batch_size', batch_size, '--out', str(tmp_path / 'o.jsonl')],
                               monkeypatch=monkeypatch, capsys=capsys)
        assert rc == 0 and out == want_out and err == want_err, batch_size
        assert max(rows_fed) == int(batch_size)  # the prompts are drawn batch_size at a time
        records = [json.loads(line) for line in (tmp_path / 'o.jsonl').read_text(encoding='utf-8').splitlines()]
        assert records == [{'prompt': prompt, 'text': result.text, 'ids': result.ids}
                           for prompt, (_, _, _, [result]) in zip(INPUT_PROMPTS, alone)]


def test_cli_input_samples_repeat_with_their_seed(gpt2_dir, tmp_path, monkeypatch, capsys):
    (tmp_path / 'p.txt').write_text('Hello, world\nOnce upon a time there was\n', encoding='utf-8')

    def texts(seed, batch_size='2'):
        rc, out, err = run_cli(['--model_dir', str(gpt2_dir), '--device', 'cpu', '--input', str(tmp_path / 'p.txt'),
                                '--batch_size', batch_size, '--length', '6', '--seed', seed, '--top_k', '0'],
                               monkeypatch=monkeypatch, capsys=capsys)
        assert rc == 0 and err == '', err
        return out.splitlines()
    first = texts('0')
    assert len(first) == 2 and first[0].startswith('Hello, world') and first[1].startswith('Once upon a time')
    assert texts('0') == first and texts('1') != first


def test_cli_input_errors_are_one_line(cli, real_vocab_dir, tmp_path, monkeypatch, capsys):
    (tmp_path / 'p.txt').write_text('hello\n', encoding='utf-8')
    given = ['--input', str(tmp_path / 'p.txt')]
    for flags, message in (([], '--input reads the prompts from its file: drop --prompt'),  # cli gives --prompt
                           (['--nsamples', '2'], '--input reads the prompts')):
        rc, out, err, made = cli(*given, *flags)
        assert rc == 2 and out == '' and made == [] and message in err and err.count('\n') == 1, err
    base = ['--model_dir', str(real_vocab_dir), '--n_head', '2', '--device', 'cpu']
    (tmp_path / 'blank.txt').write_text('\n  \n', encoding='utf-8')
    (tmp_path / 'long.txt').write_text('hello\n\n' + 'word ' * 20 + '\n', encoding='utf-8')
    for flags, rc_want, message in (
            (given + ['--interactive'], 2, '--input reads the prompts from its file: drop --prompt, --interactive'),
            (given + ['--unconditional'], 2, '--input reads the prompts from its file'),
            (given + ['--nsamples', '2', '--batch_size', '2'], 2, '--input draws one sample per prompt: drop --nsamples 2'),
            (given + ['--batch_size', '0'], 2, '--nsamples 1 --batch_size 0: give 1 or more'),
            (['--input', str(tmp_path / 'none.txt')], 1, 'none.txt'),
            (['--input', str(tmp_path / 'blank.txt')], 1, 'blank.txt holds no prompt'),
            (['--input', str(tmp_path / 'long.txt')], 1, 'long.txt line 3: the prompt is 20 tokens, longer than n_ctx=16')):
        rc, out, err = run_cli(base + flags, monkeypatch=monkeypatch, capsys=capsys)
        assert rc == rc_want and out == '' and err.startswith('generate.py: error: ') and message in err, (flags, err)
        assert err.count('\n') == 1
    assert generate.parse_args(given + ['--batch_size', '4']).batch_size == 4  # any number of prompts at a time
