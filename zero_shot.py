"""Zero-shot heuristics of the GPT-1 paper (Section 5, Figure 2 right): tasks solved by a pre-trained language model
without fine-tuning (heuristics.py defines each exactly), for GPT-1 and GPT-2 weights in any format.

TF counterpart: none (the paper describes the heuristics; the release has no code for them).

    python zero_shot.py --task sst2 --model_dir model/ --data_dir glue/
    python zero_shot.py --task rocstories --model_dir models/124M/ --data_dir data/ --split val --out roc.tsv
"""
import argparse
import json
import sys
from dataclasses import dataclass

from distributed import check_device
from flags import add_precision_arg, add_weights_args, weights_choice
from heuristics import TASKS, n_scored, read_zero_shot, score_zero_shot, scoring_lm
from models import WeightsChoice, load_with_tokenizer
from utils import close_bars, progress

SPLIT_HELP = ('sst2, cola: dev (default) or train (cola: the threshold is always fitted on train); rocstories: test '
              '(default, the Story Cloze test CSV) or val (the whole val CSV); race: dev or test (default); dprd: train '
              'or test (default)')


def parse_args(argv=None):
    """Return the parsed command line."""
    p = argparse.ArgumentParser(description='Zero-shot heuristics of the GPT-1 paper (Section 5, Figure 2 right): '
                                            'tasks solved by a pre-trained language model without fine-tuning, for '
                                            'GPT-1 and GPT-2 weights in any format.')
    p.add_argument('--task', required=True, choices=TASKS, help='the task (heuristics.py defines each heuristic)')
    p.add_argument('--data_dir', required=True, help="the task's data (as train.py reads it; DPRD: train.c.txt, "
                                                     "test.c.txt)")
    p.add_argument('--split', default=None, help=SPLIT_HELP)
    p.add_argument('--out', default=None, help='write index, prediction and each choice\'s score per example (TSV; '
                                               'default: none, the metric is only printed)')
    p.add_argument('--batch_size', type=int, default=16, help='sequences per forward pass (default: 16)')
    add_precision_arg(p)
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    add_weights_args(p)
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error(f'--batch_size {args.batch_size}: give at least 1')
    return args


@dataclass(frozen=True)
class ZeroShotSettings:
    """What zero_shot.py's command line asks for: the task's split, the weights, how to run them, where to write."""
    task: str
    data_dir: str
    weights: WeightsChoice
    device: str
    split: str = None        # None: heuristics.DEFAULT_SPLITS[task]
    out: str = None          # the TSV of every example's prediction and scores (None: none)
    batch_size: int = 16     # sequences per forward pass
    precision: str = 'fp32'
    quiet: bool = False      # no progress bar


def settings_of(namespace):
    """Return the ZeroShotSettings of the parsed command line."""
    return ZeroShotSettings(namespace.task, namespace.data_dir, weights_choice(namespace), namespace.device,
                            namespace.split, namespace.out, namespace.batch_size, namespace.precision, namespace.quiet)


def write_tsv(path, result):
    """Write index, prediction and the scores of each example (in the split's order) to path; return path."""
    from checkpoint import atomic_write
    n_scores = result.scores.shape[1]
    names = ['score'] if result.task == 'cola' else [f'score_{k}' for k in range(n_scores)]

    def write(tmp):
        with open(tmp, 'w', encoding='utf-8') as f:
            f.write('\t'.join(['index', 'prediction'] + names) + '\n')
            for i, (prediction, scores) in enumerate(zip(result.predictions, result.scores)):
                f.write('\t'.join([str(i), str(int(prediction))] + [repr(float(v)) for v in scores]) + '\n')
    return atomic_write(path, write)


def summary(result):
    """Return the JSON-able record of a result: task, split, metric and value, examples, extras."""
    return dict(task=result.task, split=result.split, metric=result.metric, value=result.value,
                n=int(len(result.predictions)), **result.extra)


def run_zero_shot(settings):
    """Score the split, print the metric line and the JSON record, write the TSV; return the record."""
    task = settings.task
    device = check_device(settings.device)
    data = read_zero_shot(task, settings.data_dir, settings.split)  # bad data fails before the model loads
    model, text_encoder = load_with_tokenizer(settings.weights, lm=True)
    lm = scoring_lm(model.to(device), text_encoder, precision=settings.precision, batch_size=settings.batch_size)
    total = n_scored(task, data.texts) + (0 if data.train is None else n_scored('cola', data.train[0]))
    with progress(total=total, desc=f'{task} {data.split}', disable=settings.quiet) as bar:
        result = score_zero_shot(lm, data, progress=bar)
    record = summary(result)
    shown = 'n/a (no labels)' if result.value is None else f'{result.value:.2f}'
    extra = ''.join(f', {k} {v:.4g}' for k, v in result.extra.items())
    print(f'{task} {data.split}: {result.metric} {shown} on {record["n"]} examples{extra}', flush=True)
    print(json.dumps(record), flush=True)
    if settings.out:
        write_tsv(settings.out, result)
    return record


def main(argv=None):
    """Run zero_shot.py from the command line; return the exit code."""
    settings = settings_of(parse_args(argv))
    try:
        run_zero_shot(settings)
    except (OSError, ValueError) as err:
        close_bars()  # the error is the last line, after no bar's debris
        print(f'zero_shot.py: error: {err}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
