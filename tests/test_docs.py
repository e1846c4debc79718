"""The documentation cannot drift from the code: every command and Python block in README.md and docs/*.md runs
here, in the order a reader meets them, on a tiny checkpoint and tiny data in the layouts the docs name (each
script's size flags appended, so a full-size command trains a tiny model); the few that cannot run offline on a CPU
are listed below with the test that runs them or the reason."""
import contextlib
import io
import json
import random
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import datasets
import model_pytorch
from tests.helpers import write_roc_csv, write_tiny_checkpoint, write_tiny_gpt2
from tests.test_train_tasks import write_task_data

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / 'README.md'] + sorted((ROOT / 'docs').glob('*.md'))
N_EMBD, N_LAYER, N_POS = 48, 2, 128  # the tiny checkpoint: 48 states keep the released 12 heads (no --n_head needed)
# the tiny ROCStories files: with train.py's --n_valid 4 below, 16 training stories, 4 updates an epoch (the
# documented sweeps run train.py 25 times: the number of stories sets most of this test's time)
N_STORIES = {'valid': 20, 'test': 8}

# each script's flags for a tiny, fast run, appended to the documented command (argparse keeps the last value)
TINY = {
    'train.py': ['--n_embd', str(N_EMBD), '--n_layer', str(N_LAYER), '--n_iter', '1', '--n_valid', '4',
                 '--n_batch', '2', '--n_gpu', '2', '--quiet'],
    'pretrain.py': ['--n_embd', str(N_EMBD), '--n_layer', str(N_LAYER), '--n_ctx', '64', '--n_batch', '2',
                    '--n_updates', '2', '--eval_every', '1', '--eval_windows', '2', '--warmup_updates', '1', '--quiet'],
    'prepare_corpus.py': ['--val_fraction', '0.3', '--workers', '1'],
    'generate.py': ['--gen_len', '5'],
}
# what the placeholders of the one command for every task stand for: a task of each family and each data layout
TASK_RUNS = [('rocstories', 'data/'), ('race', 'race/'), ('mnli', 'glue/'), ('snli', 'snli/'),
             ('scitail', 'scitail/'), ('cola', 'glue/'), ('mrpc', 'glue/'), ('stsb', 'glue/')]
# commands that do not run here: the command as documented -> where it runs instead, or why it cannot
NOT_RUN = {
    'pip install -r requirements-dev.txt': 'installs packages from the network (.ci/run does it)',
    'pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu': 'installs packages from the network '
                                                                                '(.ci/run installs torch==2.13.0)',
    'python -m pytest': 'the test suite itself',
    'python prepare_corpus.py --input data/tinyshakespeare/ --out runs/shakespeare-corpus/ --arch gpt2':
        'the first run: tests/test_first_run.py runs its three commands on a cut-down model',
    'python pretrain.py --config configs/first_run.toml': 'the first run: tests/test_first_run.py',
    'python generate.py --model_dir runs/shakespeare/ --prompt "ROMEO:" --gen_len 120 --top_k 40 --seed 0':
        'the first run: tests/test_first_run.py',
    'python -m pytest -m cuda': 'needs a GPU (benchmarks/gpu_check.sh runs it)',
    'python -m ruff check .': "CI's lint step (.ci/run) runs it",
    'python download_model.py': 'downloads from the network; tests/test_download_model.py runs it against a local '
                                'HTTP server',
    'python download_model.py --model gpt2-124M': 'downloads from the network; tests/test_download_model.py runs it '
                                                  'against a local HTTP server',
    'torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 train.py --dataset '
    'rocstories --desc rocstories --submit --data_dir data/': 'needs two machines; one machine with several '
                                                              'processes runs in this test and tests/test_distributed.py',
    'torchrun --nproc_per_node=4 --max-restarts=3 train.py --dataset rocstories --desc rocstories --submit --data_dir '
    'data/ --save_every 50 --resume auto': 'tests/test_faults.py runs torchrun --max-restarts with --resume auto and a '
                                          'worker killed',
    'torchrun --nproc_per_node=4 train.py --dataset rocstories --desc rocstories-1558M --submit --data_dir data/ '
    '--model_dir models/1558M/ --shard --precision bf16 --micro_batch 1 --checkpoint_activations':
        'needs four GPUs and the 1558M weights; tests/test_sharding.py runs train.py --shard on 2 CPU processes',
    'torchrun --nproc_per_node=4 pretrain.py --corpus runs/gpt2-corpus/ --model_dir models/1558M/ --out '
    'runs/gpt2-1558M-more/ --shard --precision bf16 --n_batch 32 --micro_batch 1 --checkpoint_activations':
        'needs four GPUs and the 1558M weights; tests/test_sharding.py runs pretrain.py --shard on 2 and 3 CPU '
        'processes',
    'python ablations.py --tasks cola=glue/ sst2=glue/ mrpc=glue/ stsb=glue/ qqp=glue/ mnli=glue/ qnli=glue/ rte=glue/ '
    '--out ablations/': 'tests/test_ablations.py runs it on a tiny job (the GLUE tasks here lack qqp, qnli and rte)',
    'python benchmarks/bench.py --quick --in-process --configs ours-fp32 --warmup-steps 0':
        'tests/test_bench.py and benchmarks/gpu_check.sh --dry-run run it',
    'python benchmarks/bench_pretrain.py --quick': 'tests/test_bench_pretrain.py runs it',
    'python benchmarks/bench_gpt2.py --quick --precisions fp32':
        'tests/test_bench_gpt2.py and benchmarks/gpu_check.sh --dry-run run it',
    'bash benchmarks/gpu_check.sh': 'needs an NVIDIA GPU; its --dry-run runs in tests/test_bench_e2e.py',
    'bash benchmarks/gpu_check.sh --dry-run': 'tests/test_bench_e2e.py runs it (test_gpu_check_dry_run_passes)',
}
# documented commands that end with a non-zero status on the tiny setup, and why that is right
EXPECTED_STATUS = {
    'python download_model.py --verify-only': (1, 'the tiny weights are not the released files'),
    'python download_model.py --model gpt2-124M --verify-only': (1, 'the tiny GPT-2 is not the released 124M'),
}


def fenced_blocks(path):
    """Return [(language, text, line number)] of the fenced code blocks of a markdown file."""
    blocks, lang, lines, start = [], None, [], 0
    for number, line in enumerate(path.read_text(encoding='utf-8').splitlines(), start=1):
        if line.startswith('```'):
            if lang is None:
                lang, lines, start = line[3:].strip() or 'text', [], number
            else:
                blocks.append((lang, '\n'.join(lines), start))
                lang = None
        elif lang is not None:
            lines.append(line)
    assert lang is None, f'{path.name}: the block opened at line {start} is never closed'
    return blocks


def doc_steps(path):
    """Return the runnable steps of a document in order: ('command', text, line) and ('python', code, line)."""
    steps = []
    for lang, text, line in fenced_blocks(path):
        if lang == 'bash':
            for k, command in enumerate(text.splitlines()):
                command = re.split(r'\s+#\s', command.strip(), maxsplit=1)[0].strip()  # without its trailing comment
                if command and not command.startswith('#'):
                    steps.append(('command', command, line + 1 + k))
        elif lang == 'python':
            steps.append(('python', text, line + 1))
        else:
            assert lang in ('text', 'json'), f'{path.name}:{line}: a ```{lang} block; use bash, python or text'
    return steps


def all_commands():
    """Return every documented command as (document name, command)."""
    return [(path.name, text) for path in DOCS for kind, text, _ in doc_steps(path) if kind == 'command']


def make_workspace(d):
    """Fill folder d with what the documented commands read: model/ (a tiny released checkpoint and the real
    vocabulary), models/124M/ (a tiny released GPT-2 with the real vocabulary's rows), data/ (N_STORIES of ROCStories), glue/,
    race/, snli/, scitail/ (the other tasks' layouts), dprd/, texts for prepare_corpus.py (my_texts/, books/,
    books.txt, docs.jsonl), sentences.txt and configs/ (the repository's); return d."""
    rng = np.random.default_rng(0)
    write_tiny_gpt2(d / 'models' / '124M', n_ctx=N_POS, n_embd=N_EMBD, n_head=12, n_layer=N_LAYER)
    write_tiny_checkpoint(d / 'model', rng, n_embd=N_EMBD, n_layer=N_LAYER, n_pos=N_POS)
    (d / 'data').mkdir()
    write_roc_csv(d / 'data' / datasets.VAL_FILE, N_STORIES['valid'], rng)
    write_roc_csv(d / 'data' / datasets.TEST_FILE, N_STORIES['test'], rng)
    for name, folder in TASK_RUNS[1:] + [('sst2', 'glue/')]:
        write_task_data(name, d / folder, random.Random(name))
    (d / 'dprd').mkdir()
    for name in ('train.c.txt', 'test.c.txt'):  # docs/analysis.md's Winograd set
        (d / 'dprd' / name).write_bytes((ROOT / 'tests' / 'fixtures' / 'dprd' / name).read_bytes())
    words = 'the patient was seen by a doctor who said that her heart and lungs were well so she went home'.split()
    texts = [' '.join(random.Random(i).choice(words) for _ in range(120)) for i in range(40)]
    for folder in ('my_texts', 'books'):
        (d / folder).mkdir()
        for i, text in enumerate(texts):
            (d / folder / f'{i:02d}.txt').write_text(text + '\n')
    (d / 'books.txt').write_text('\n\n'.join(texts) + '\n')
    (d / 'docs.jsonl').write_text(''.join(json.dumps({'text': t}) + '\n' for t in texts))
    (d / 'sentences.txt').write_text('the cat sat on the mat.\nit rained all day, so they stayed home.\n')
    (d / 'configs').symlink_to(ROOT / 'configs', target_is_directory=True)  # the shipped configs, as in a clone
    return d


def script_main(name):
    """Return the main function of a script of the repository (imported here, once)."""
    import importlib
    return importlib.import_module(name[:-len('.py')]).main


def run_command(command, workspace, monkeypatch):
    """Run one documented command in workspace; return its exit status."""
    argv = shlex.split(command)
    if argv[0] == 'torchrun':  # its processes need the script's path from the repository
        argv = [sys.executable, '-m', 'torch.distributed.run'] + [str(ROOT / a) if a.endswith('.py') else a
                                                                  for a in argv[1:]] + TINY['train.py']
        return subprocess.run(argv, cwd=workspace, capture_output=True, text=True, timeout=600).returncode
    assert argv[0] == 'python' and argv[1].endswith('.py') and '/' not in argv[1], f'cannot run {command!r}'
    script, args = argv[1], argv[2:] + TINY.get(argv[1], [])
    monkeypatch.chdir(workspace)
    monkeypatch.setattr(sys, 'stdin', io.StringIO('the cat sat\n'))  # generate.py --interactive reads it
    try:
        status = script_main(script)(args)
    except SystemExit as exit:  # argparse and analysis.py exit this way
        status = exit.code
    return status or 0


@contextlib.contextmanager
def tiny_default_config():
    """Within the block, DEFAULT_CONFIG describes the tiny checkpoint, as a notebook user's would the released one."""
    cfg, saved = model_pytorch.DEFAULT_CONFIG, {}
    for name, value in (('n_embd', N_EMBD), ('n_layer', N_LAYER), ('n_ctx', N_POS)):
        saved[name] = getattr(cfg, name)
        setattr(cfg, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(cfg, name, value)


def expand(command):
    """Return the commands a documented command stands for: itself, or one per task for the one command for every
    task (its placeholders TASK and DATA_DIR)."""
    if 'TASK' not in command:
        return [command]
    return [command.replace('DATA_DIR', folder).replace('TASK', task) for task, folder in TASK_RUNS]


@pytest.mark.parametrize('doc', DOCS, ids=lambda p: p.name)
def test_every_command_and_python_block_of_the_doc_runs(doc, tmp_path, monkeypatch, capsys):
    workspace = make_workspace(tmp_path)
    ran = 0
    for kind, text, line in doc_steps(doc):
        if kind == 'python':
            monkeypatch.chdir(workspace)
            with tiny_default_config():
                exec(compile(text, f'{doc.name}:{line}', 'exec'), {'__name__': f'doc_{doc.stem}'})
            ran += 1
            continue
        if text in NOT_RUN:
            continue
        for command in expand(text):
            status = run_command(command, workspace, monkeypatch)
            want = EXPECTED_STATUS.get(command, (0, ''))[0]
            assert status == want, f'{doc.name}:{line}: `{command}` ended with {status}: {capsys.readouterr().err[-3000:]}'
            ran += 1
    capsys.readouterr()
    assert ran or all(kind == 'command' and text in NOT_RUN for kind, text, _ in doc_steps(doc))


def test_every_command_not_run_here_is_documented_and_every_command_is_known():
    documented = {command for _, command in all_commands()}
    assert set(NOT_RUN) <= documented, f'stale entries: {set(NOT_RUN) - documented}'
    assert set(EXPECTED_STATUS) <= documented
    for doc, command in all_commands():
        words = shlex.split(command)
        known = words[0] in ('pip', 'bash', 'torchrun') or (words[0] == 'python' and (
            words[1] == '-m' or (ROOT / words[1]).is_file()))
        assert known, f'{doc}: `{command}` runs nothing the repository has'


def test_the_one_command_for_every_task_covers_the_table():
    """The table of tasks in docs/training.md names known datasets with the data folders this test fills."""
    from train import DATASETS
    text = (ROOT / 'docs' / 'training.md').read_text(encoding='utf-8')
    rows = re.findall(r'^\| [^|]+ \| `([a-z0-9]+)` \| `([\w/]+)` \|', text, re.M)
    assert len(rows) == 12 and {task for task, _ in rows} == set(DATASETS)
    folders = dict(TASK_RUNS)
    assert all(folders.get(task, folder) == folder for task, folder in rows)  # the tasks run here, where the table says
    assert {folder for _, folder in rows} == set(folders.values())  # and every data layout of the table


def test_commands_are_in_fenced_blocks_only():
    """An indented command would escape the run above: every documented command sits in a ```bash block."""
    for path in DOCS:
        for number, line in enumerate(path.read_text(encoding='utf-8').splitlines(), start=1):
            assert not re.match(r'^ {4,}(python|torchrun|bash|pip) ', line), f'{path.name}:{number}: {line.strip()}'


def test_the_readme_is_a_front_page():
    lines = (ROOT / 'README.md').read_text(encoding='utf-8').splitlines()
    assert len(lines) <= 250
    head = '\n'.join(lines[:60])
    assert 'pip install -r requirements-dev.txt' in head and 'python -m pytest' in head


def test_every_page_opens_with_what_it_holds():
    """The first paragraph after a docs page's title says what the page holds."""
    for path in DOCS[1:]:
        title, blank, first = path.read_text(encoding='utf-8').splitlines()[:3]
        assert title.startswith('# ') and not blank, f'{path.name}: a title, then a blank line'
        assert first.startswith('This page holds '), f'{path.name}: open with "This page holds ..." after the title'


def test_the_docs_point_only_inside_the_repository():
    """Every relative link of README.md and docs/ names a file or folder of the repository; no path reaches out of it
    (a clone has nothing beside it)."""
    for path in DOCS:
        text = path.read_text(encoding='utf-8')
        assert '../shared' not in text and '`shared/' not in text, f'{path.name}: names a folder outside the repository'
        for target in re.findall(r'\]\(([^)#\s]+)(?:#[^)]*)?\)', text):
            if re.match(r'[a-z]+://', target):
                continue
            resolved = (path.parent / target).resolve()
            assert resolved.is_relative_to(ROOT) and resolved.exists(), f'{path.name}: the link {target} leads nowhere here'
