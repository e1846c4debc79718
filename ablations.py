"""The ablations of the GPT-1 paper (Table 5, its transformer rows): the full method, the model trained without
pre-training, and without the auxiliary LM objective, over a list of tasks; the table printed in the paper's layout
(rows the variants, columns the average and each task's validation metric) and saved as JSON.

TF counterpart: none (the paper reports the table; the release has no code for it). The table's LSTM row is out of
scope (it is another architecture). Each run is a train.py run (a subprocess, or under --launcher such as torchrun),
started with --resume auto: a second invocation picks up runs that were stopped and only re-reads finished ones.

    python ablations.py --tasks rocstories=data/ sst2=glue/ cola=glue/ --out ablations/
    python ablations.py --tasks mnli=glue/ --out ablations/ --launcher "torchrun --nproc_per_node=4" -- --n_iter 3
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass

from checkpoint import write_json
from flags import task_dirs

VARIANTS = {  # name: (the paper's row, train.py's flags)
    'full': ('Transformer w/ aux LM (full)', ()),
    'no_pretraining': ('Transformer w/o pre-training', ('--from_scratch',)),
    'no_aux_lm': ('Transformer w/o aux LM', ('--lm_coef', '0')),
}
SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'train.py')


@dataclass(frozen=True)
class AblationSettings:
    """What ablations.py's command line asks for: the tasks with their data folders, the runs' folder, seeds per run,
    the variants (the table's rows), the command that runs train.py and train.py's own flags for every run."""
    tasks: tuple                  # ((task, data_dir), ...), in the table's column order
    out: str
    n_runs: int = 1
    variants: tuple = tuple(VARIANTS)
    launcher: str = None          # e.g. 'torchrun --nproc_per_node=4' (None: this Python)
    train_args: tuple = ()


def parse_args(argv=None):
    """Return the AblationSettings of the command line (train.py's own flags after --); a bad value is an argparse
    error."""
    p = argparse.ArgumentParser(description='The ablations of the GPT-1 paper (Table 5, its transformer rows): the '
                                            'full method, the model trained without pre-training, and without the '
                                            'auxiliary LM objective, over a list of tasks, run by train.py.')
    p.add_argument('--tasks', nargs='+', required=True, metavar='TASK=DATA_DIR',
                   help="each task (train.py's --dataset) with its data folder")
    p.add_argument('--out', required=True, help='the folder of the runs (log/, save/, submission/) and the table')
    p.add_argument('--n_runs', type=int, default=1, help='seeds per run; the table shows their median (default: 1)')
    p.add_argument('--variants', default=','.join(VARIANTS), help=f'which rows (default all: {", ".join(VARIANTS)})')
    p.add_argument('--launcher', default=None, help='the command that runs train.py (default this Python; e.g. '
                                                    '"torchrun --nproc_per_node=4")')
    p.add_argument('train_args', nargs='*', help="train.py's flags for every run, after -- (default: none)")
    namespace = p.parse_args(argv)
    try:
        tasks = task_dirs(namespace.tasks, '--tasks')
    except ValueError as err:
        p.error(str(err))
    variants = namespace.variants.split(',')
    for name in variants:
        if name not in VARIANTS:
            p.error(f'--variants {name!r}: choose among {", ".join(VARIANTS)}')
    if namespace.n_runs < 1:
        p.error(f'--n_runs {namespace.n_runs}: give at least 1')
    return AblationSettings(tasks=tuple(tasks), out=namespace.out, n_runs=namespace.n_runs, variants=tuple(variants),
                            launcher=namespace.launcher, train_args=tuple(namespace.train_args))


def run_command(settings, task, data_dir, variant):
    """Return (train.py's command line, the JSON file its result goes to) of one task and variant."""
    flags = VARIANTS[variant][1]
    desc = f'{task}_{variant}'
    log_dir = os.path.join(settings.out, 'log')
    launcher = [sys.executable] if settings.launcher is None else shlex.split(settings.launcher)
    cmd = launcher + [SCRIPT, '--dataset', task, '--data_dir', data_dir, '--desc', desc, '--log_dir', log_dir,
                      '--save_dir', os.path.join(settings.out, 'save'), '--submission_dir',
                      os.path.join(settings.out, 'submission'), '--n_runs', str(settings.n_runs), *flags,
                      *settings.train_args, '--resume', 'auto']
    result = os.path.join(log_dir, f'{desc}_runs.json' if settings.n_runs > 1 else f'{desc}_summary.json')
    return cmd, result


def read_result(path):
    """Return (metric name, value) of a train.py result file: a run's summary or a multi-seed sweep's median."""
    with open(path, encoding='utf-8') as f:
        record = json.load(f)
    return record['metric'], record['median'] if 'median' in record else record['best_va']


def run_all(settings):
    """Run every task and variant of the AblationSettings in turn; return the table's record."""
    rows = {variant: {} for variant in settings.variants}
    metrics = {}
    for task, data_dir in settings.tasks:
        for variant in settings.variants:
            cmd, result = run_command(settings, task, data_dir, variant)
            print(f'ablations.py: {task}, {variant}: {shlex.join(cmd)}', flush=True)
            done = subprocess.run(cmd)
            if done.returncode != 0:
                raise RuntimeError(f'train.py for {task} ({variant}) ended with status {done.returncode}; its own '
                                   f'error is above; run ablations.py again to pick up where it stopped')
            metrics[task], rows[variant][task] = read_result(result)
    for scores in rows.values():
        scores['avg'] = sum(scores[task] for task, _ in settings.tasks) / len(settings.tasks)
    return dict(tasks=[task for task, _ in settings.tasks], metrics=metrics, n_runs=settings.n_runs,
                rows=[dict(variant=v, method=VARIANTS[v][0], **rows[v]) for v in rows])


def format_table(record):
    """Return the table in the paper's layout: a row per variant, the average then each task's metric."""
    tasks = record['tasks']
    heads = ['Avg. Score'] + [f"{task} ({record['metrics'][task]})" for task in tasks]
    width = max(len(r['method']) for r in record['rows'])
    lines = [f"{'Method':<{width}}  " + '  '.join(f'{h:>{max(len(h), 6)}}' for h in heads)]
    for row in record['rows']:
        cells = [row['avg']] + [row[task] for task in tasks]
        lines.append(f"{row['method']:<{width}}  " + '  '.join(f'{v:>{max(len(h), 6)}.1f}'
                                                                for h, v in zip(heads, cells)))
    return '\n'.join(lines)


def main(argv=None):
    """Run ablations.py from the command line; return the exit code."""
    settings = parse_args(argv)
    try:
        record = run_all(settings)
        path = write_json(os.path.join(settings.out, 'ablations.json'), record)
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        print(f'ablations.py: error: {err}', file=sys.stderr)
        return 2
    print(format_table(record))
    print(f'ablations.py: table written to {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
