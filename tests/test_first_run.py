"""The README's first run: the corpus that ships for it, the config it names, and its commands run as documented on a
cut-down model (the whole run, about 3 minutes on two cores, is timed in BENCHMARKS.md, not here)."""
import hashlib
import importlib
import shlex
import tomllib
from pathlib import Path

import pretrain
from tests.test_docs import doc_steps

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / 'data' / 'tinyshakespeare' / 'input.txt'
# cut-down flags appended to the documented commands (argparse keeps the last value, and over --config)
CUT_DOWN = {'prepare_corpus.py': ['--workers', '1', '--quiet'],
            'pretrain.py': ['--n_layer', '1', '--n_embd', '16', '--n_head', '2', '--n_ctx', '32', '--n_batch', '2',
                            '--n_updates', '2', '--eval_windows', '2'],
            'generate.py': ['--gen_len', '8']}


def first_run_commands():
    """Return the commands of the README's first-run block (the first bash block after its '## A first run' heading)
    and the line the block starts at."""
    text = (ROOT / 'README.md').read_text(encoding='utf-8')
    heading = text.index('\n## A first run')
    start = text[:heading].count('\n') + 2
    steps = [(t, line) for kind, t, line in doc_steps(ROOT / 'README.md') if kind == 'command' and line > start]
    block = [(t, line) for t, line in steps if line - steps[0][1] < 4 and line >= steps[0][1]]
    return [t for t, _ in block], steps[0][1]


def test_the_corpus_ships_unchanged():
    """input.txt is the source's file, byte for byte (data/tinyshakespeare/SOURCES.md names both checksums)."""
    data = CORPUS.read_bytes()
    assert len(data) == 1115394 and data.count(b'\n') == 40000
    assert hashlib.sha256(data).hexdigest() == '86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed'
    blob = hashlib.sha1(b'blob %d\0' % len(data) + data).hexdigest()  # git hash-object
    assert blob == '7dcb3a2d4cc3b48b6283dd46870bfeb78f88aac9'
    sources = (CORPUS.parent / 'SOURCES.md').read_text(encoding='utf-8')
    assert hashlib.sha256(data).hexdigest() in sources and blob in sources


def test_the_readme_opens_with_three_commands_that_chain():
    """The first screen of the README holds the block: prepare the corpus, pre-train with the first-run config,
    sample; the config reads the folder the first command writes and the third samples the folder it writes."""
    commands, line = first_run_commands()
    assert line < 45 and len(commands) == 3
    prepare, train, sample = (shlex.split(c) for c in commands)
    assert prepare[:2] == ['python', 'prepare_corpus.py'] and train[:2] == ['python', 'pretrain.py']
    assert sample[:2] == ['python', 'generate.py']
    assert prepare[prepare.index('--input') + 1] == 'data/tinyshakespeare/'
    config_path = ROOT / train[train.index('--config') + 1]
    with open(config_path, 'rb') as f:
        config = tomllib.load(f)
    assert config['corpus'] == prepare[prepare.index('--out') + 1]
    assert sample[sample.index('--model_dir') + 1] == config['out']
    settings = pretrain.parse_args(['--config', str(config_path)])
    assert settings.n_updates and settings.warmup_updates < settings.n_updates  # a short run that decays


def test_the_first_run_runs_as_documented_on_a_cut_down_model(tmp_path, monkeypatch, capsys):
    """The three commands, from a folder holding the repository's data/ and configs/, with CUT_DOWN flags appended:
    each exits 0; pre-training ends naming its model folder and the sampling command; the sample follows the prompt."""
    for name in ('data', 'configs'):
        (tmp_path / name).symlink_to(ROOT / name, target_is_directory=True)
    commands, _ = first_run_commands()
    monkeypatch.chdir(tmp_path)
    outputs = []
    for command in commands:
        _, script, *args = shlex.split(command)
        main = importlib.import_module(script[:-len('.py')]).main
        assert main(args + CUT_DOWN[script]) == 0, f'{command}: {capsys.readouterr().err[-2000:]}'
        outputs.append(capsys.readouterr().out)
    config_out = shlex.split(commands[2])[shlex.split(commands[2]).index('--model_dir') + 1]
    assert (tmp_path / config_out / 'model.safetensors').is_file()
    assert f'the model is in {config_out}' in outputs[1] and 'python generate.py --model_dir' in outputs[1]
    prompt = shlex.split(commands[2])[shlex.split(commands[2]).index('--prompt') + 1]
    assert outputs[2].lstrip().startswith(prompt)
    # the command the run suggests to continue it runs too (it keeps the run's context of 32 positions)
    continued = [line for line in outputs[1].splitlines() if line.strip().startswith('continue it:')]
    _, _, _, script, *args = shlex.split(continued[0].strip())
    assert script == 'pretrain.py' and '--n_ctx' in args
    assert pretrain.main(args + ['--n_updates', '1', '--eval_windows', '1', '--quiet']) == 0, capsys.readouterr().err
