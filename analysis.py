"""ROCStories results: best validation accuracy, test accuracy, learning curves, errors (TF: analysis.py).

    python analysis.py --log log/rocstories.jsonl [--pred submission/ROCStories.tsv] [--data_dir data/]
                       [--plot curves.png] [--errors]
    python analysis.py --task mnli --pred submission/mnli_dev_matched_predictions.tsv
    python analysis.py --pretrain_log runs/name/log.jsonl [--plot losses.png]     # pretrain.py's loss curves
"""
import argparse
import csv
import io
import math
import os
import sys

import numpy as np

import untrusted
from datasets import TEST_FILE, _rocstories
from untrusted import BadFile, show


# what each log is and who writes it, for the messages about a log that is missing or not one
LOG_KINDS = {'train.py': ('the .jsonl that train.py writes', 'train.py writes it to <log_dir>/<desc>.jsonl'),
             'pretrain.py': ('the log.jsonl that pretrain.py writes', 'pretrain.py writes it to <out>/log.jsonl')}
# the fields of a log's records that analysis.py reads: counters (ints >= 0) and scores (numbers or null; the ones
# reported finite, which the scripts always log)
LOG_COUNTERS = ('n_updates', 'n_epochs', 'tokens')
LOG_SCORES = ('tr_cost', 'va_cost', 'tr_acc', 'va_acc', 'train_loss', 'val_loss', 'val_ppl', 'tokens_per_s', 'lr')
FINITE_SCORES = ('va_acc',)  # a loss may be NaN or infinite (an fp16 overflow): drawn as a gap, never the best
MAX_LOG_BYTES = 1 << 30  # a log of a run with an evaluation every update for a year is smaller


def _is_number(value, finite=False):
    """Return whether value is a number (an int within a float's range, not a bool, or a float); with finite, a
    finite one."""
    if untrusted.is_int(value):
        return abs(value) < 1 << 1000
    return isinstance(value, float) and (not finite or math.isfinite(value))


def check_log_record(record, kind):
    """Raise a ValueError saying what is wrong with a log record's fields that analysis.py reads."""
    for key, value in record.items():
        if key in LOG_COUNTERS:
            untrusted.int_field(key, value, 0, 1 << 53)
        elif key in LOG_SCORES or key.startswith('zs_'):
            if value is not None and not _is_number(value, finite=key in FINITE_SCORES):
                raise ValueError(f'{key} must be a {"finite " if key in FINITE_SCORES else ""}number or null, not '
                                 f'{show(value)}')
    if kind == 'pretrain.py' and record.get('val_loss') is not None and 'n_updates' not in record:
        raise ValueError('an evaluation (val_loss) without its n_updates')


def read_log(log_path, kind='train.py'):
    """Return the records of a JSON-lines log of train.py or pretrain.py (kind), without its first line (a
    ResultLogger's header: the run's arguments), each field analysis.py reads checked. Only untrusted.BadFile (a
    MissingFile for a missing log) escapes, one line naming the log, the line and what kind of log was expected."""
    expected, writer = LOG_KINDS[kind]
    with untrusted.reading(log_path):
        text = untrusted.read_text(log_path, limit=MAX_LOG_BYTES, what='log',
                                   missing=f'no log there; {writer}')
        records = []
        for lineno, line in enumerate(io.StringIO(text, newline=None), start=1):
            if not line.strip():
                continue
            where = f'{log_path}: line {lineno}'
            try:
                record = untrusted.parse_json(line, where, constants=True)  # json.dumps writes NaN as NaN
            except BadFile as err:
                reason = str(err)[len(where) + 2:]
                raise BadFile(f'{where}: not JSON ({reason}); pass {expected}', log_path) from None
            if not isinstance(record, dict):
                raise BadFile(f'{where}: expected a JSON object, got {show(line.strip(), 60)}; pass {expected}',
                              log_path)
            if lineno > 1:
                try:
                    check_log_record(record, kind)
                except ValueError as err:
                    raise BadFile(f'{where}: {err}; pass {expected}', log_path) from None
                records.append(record)
        return records


def best_valid_accuracy(log_path):
    """Return the highest va_acc in the log (the first such entry on ties, like np.argmax)."""
    # The original indexes log['va_acc'] on every line after the first; lines without va_acc are skipped
    # here so that a log holding other records still works.
    accs = [record['va_acc'] for record in read_log(log_path) if record.get('va_acc') is not None]
    if not accs:
        raise BadFile(f'{log_path}: no va_acc entries after the first line; was training logged to this file?',
                      log_path)
    return accs[int(np.argmax(accs))]


def read_tsv(path, missing, quoting=csv.QUOTE_MINIMAL):
    """Return the rows of a tab-separated file that train.py wrote (a regular file, UTF-8, bounded)."""
    text = untrusted.read_text(path, limit=untrusted.JSON_MAX_BYTES, what='predictions file', missing=missing)
    try:
        return list(csv.reader(io.StringIO(text, newline=''), delimiter='\t', quoting=quoting))
    except csv.Error as err:
        raise BadFile(f'{path}: not a predictions file of train.py ({err})', path) from None


def read_predictions(pred_path):
    """Return the predictions (0 or 1: the first or second ending) of an 'index<TAB>prediction' TSV (as train.py
    writes it) as an int array. Only untrusted.BadFile escapes, one line naming the file."""
    with untrusted.reading(pred_path):
        rows = read_tsv(pred_path, 'no predictions there; train.py --submit writes it to '
                                   '<submission_dir>/ROCStories.tsv')
        if not rows or 'prediction' not in rows[0]:
            raise BadFile(f'{pred_path}: line 1: expected the header "index<TAB>prediction"', pred_path)
        col = rows[0].index('prediction')
        has_index = 'index' in rows[0]
        preds = []
        for lineno, row in enumerate(rows[1:], start=2):
            if len(row) != len(rows[0]):
                raise BadFile(f'{pred_path}: line {lineno}: {len(row)} fields, expected {len(rows[0])} like the '
                              f'header', pred_path)
            # The original (pandas) takes the prediction column in file order; an index column is checked to be
            # 0, 1, 2, ... here so that a reordered file cannot be scored against the wrong stories.
            if has_index and row[rows[0].index('index')].strip() != str(lineno - 2):
                raise BadFile(f'{pred_path}: line {lineno}: index {show(row[rows[0].index("index")], 60)}, '
                              f'expected {lineno - 2}; rows must be in test-file order', pred_path)
            if row[col].strip() not in ('0', '1'):
                raise BadFile(f'{pred_path}: line {lineno}: prediction {show(row[col], 60)} is not an integer 0 or '
                              f'1 (the first or the second ending)', pred_path)
            preds.append(int(row[col]))
        return np.asarray(preds, dtype=np.int64)


def read_test_set(data_dir):
    """Return (stories, endings1, endings2, labels) of the test CSV in data_dir; labels as an int array. Only
    untrusted.BadFile escapes (a MissingFile for a missing file), one line naming the file."""
    path = os.path.join(data_dir, TEST_FILE)
    with untrusted.reading(path):
        teX1, teX2, teX3, teY = _rocstories(path, require_labels=False)
        if teY is None:
            raise BadFile(f'{path}: no AnswerRightEnding column, so there is no test accuracy to compute; use the '
                          f'labelled 2016 test CSV', path)
        return teX1, teX2, teX3, np.asarray(teY, dtype=np.int64)


def _check_counts(pred_path, preds, labels):
    """Raise ValueError when predictions and test labels differ in number."""
    if len(preds) != len(labels):
        raise ValueError(f'{pred_path}: {len(preds)} predictions for {len(labels)} test stories; '
                         f'predict the whole test file')


def compute_test_accuracy(data_dir, pred_path):
    """Return the accuracy in percent of the predictions in pred_path against the test file's labels."""
    preds = read_predictions(pred_path)
    labels = read_test_set(data_dir)[3]
    _check_counts(pred_path, preds, labels)
    return float(np.mean(preds == labels) * 100.)


def rocstories(data_dir, pred_path, log_path):
    """Print and return (valid_acc, test_acc): the log's best va_acc and the test accuracy (TF: rocstories)."""
    valid_accuracy = best_valid_accuracy(log_path)
    test_acc = compute_test_accuracy(data_dir, pred_path)
    print('ROCStories Valid Accuracy: %.2f' % (valid_accuracy))
    print('ROCStories Test Accuracy:  %.2f' % (test_acc))
    return valid_accuracy, test_acc


def draw_curves(records, panels, out_path, figsize):
    """Draw, in one panel per (ylabel, [(key, label)]), each key of records against n_updates into out_path;
    return out_path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # a Figure on the Agg canvas: no pyplot, so no global backend is chosen or changed
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    for ax, (ylabel, series) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        for key, label in series:
            points = [(r['n_updates'], r[key]) for r in records if r.get(key) is not None and 'n_updates' in r]
            if points:
                ax.plot(*zip(*points), marker='o', label=label)
        ax.set_xlabel('n_updates')
        ax.set_ylabel(ylabel)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_path)
    return out_path


def plot_curves(log_path, out_path):
    """Draw train/valid cost and accuracy against n_updates from the log into out_path; return out_path."""
    records = [r for r in read_log(log_path) if 'n_updates' in r]
    if not records:
        raise BadFile(f'{log_path}: no entries with n_updates to plot', log_path)
    panels = [(ylabel, [(f'tr_{kind}', 'train'), (f'va_{kind}', 'valid')])
              for kind, ylabel in (('cost', 'cost'), ('acc', 'accuracy (%)'))]
    return draw_curves(records, panels, out_path, figsize=(10, 4))


def pretrain_report(log_path):
    """Print and return the summary of a pretrain.py log: the last and the best validation loss (nats/token)."""
    records = [r for r in read_log(log_path, 'pretrain.py') if r.get('val_loss') is not None]
    if not records:
        raise BadFile(f'{log_path}: no val_loss entries; pass the log.jsonl that pretrain.py writes', log_path)
    # NaN (an overflowed evaluation) is never the best; min() would take it when it comes first
    best = min(records, key=lambda r: r['val_loss'] if math.isfinite(r['val_loss']) else math.inf)
    last = records[-1]
    print(f"{len(records)} evaluations, last at update {last['n_updates']}: val loss {last['val_loss']:.4f} "
          f"(perplexity {math.exp(min(last['val_loss'], 700.0)):.2f})")
    print(f"best val loss {best['val_loss']:.4f} at update {best['n_updates']}")
    for key in zero_shot_keys(records):
        scored = [r for r in records if r.get(key) is not None]
        if scored:
            print(f"zero-shot {key[3:]}: {scored[-1][key]:.2f} at update {scored[-1]['n_updates']} (first "
                  f"{scored[0][key]:.2f})")
    return dict(last=last, best=best)


def zero_shot_keys(records):
    """Return the zero-shot scores a pretrain.py log holds ('zs_sst2', ...), in the order they first appear."""
    return list(dict.fromkeys(k for r in records for k in r if k.startswith('zs_')))


def plot_pretrain_curves(log_path, out_path):
    """Draw the training and validation losses (nats/token) of a pretrain.py log against n_updates, and beside them
    its zero-shot scores (pretrain.py --zero_shot: the paper's Figure 2, right); return out_path."""
    from heuristics import METRICS
    records = read_log(log_path, 'pretrain.py')
    panels = [('loss (nats per token)', [('train_loss', 'train'), ('val_loss', 'valid')])]
    keys = zero_shot_keys(records)
    if keys:
        panels.append(('zero-shot score (%)', [(k, f'{k[3:]} ({METRICS.get(k[3:], "?")})') for k in keys]))
    return draw_curves(records, panels, out_path, figsize=(6 * len(panels), 4))


def read_transfer(path):
    """Return the record train.py --n_transfer K1,K2,... writes (<desc>_transfer.json), checked: a metric name and
    points, each {n_transfer: int >= -1, median: number, runs: [{best_va: number, ...}]}. Only untrusted.BadFile
    escapes, one line naming the file."""
    expected = 'pass the <desc>_transfer.json that train.py --n_transfer K1,K2,... writes'
    with untrusted.reading(path):
        try:
            record = untrusted.read_json(path, what='transfer record', missing=f'no transfer record there; {expected}')
        except untrusted.MissingFile:
            raise
        except BadFile as err:
            raise BadFile(f'{err}; {expected}', path) from None
        points = record.get('points')
        if not isinstance(points, list) or not points:
            raise BadFile(f'{path}: no "points"; {expected}', path)
        if not isinstance(record.get('metric'), str):
            raise BadFile(f'{path}: "metric" must be a name, not {show(record.get("metric"))}; {expected}', path)
        for k, point in enumerate(points):
            where = f'{path}: points[{k}]'
            if not isinstance(point, dict) or not isinstance(point.get('runs'), list):
                raise BadFile(f'{where} must be an object with "runs", not {show(point)}; {expected}', path)
            if not untrusted.is_int(point.get('n_transfer')) or not -1 <= point['n_transfer'] <= 1 << 16:
                raise BadFile(f'{where}.n_transfer must be an integer >= -1, not {show(point.get("n_transfer"))}; '
                              f'{expected}', path)
            scores = [('median', point.get('median'))] + [
                (f'runs[{j}].best_va', run.get('best_va') if isinstance(run, dict) else run)
                for j, run in enumerate(point['runs'])]
            for name, value in scores:
                if not _is_number(value, finite=True):
                    raise BadFile(f'{where}.{name} must be a finite number, not {show(value)}; {expected}', path)
        return record


def transfer_report(path):
    """Print and return the table of a transfer sweep: the validation metric per number of layers transferred."""
    record = read_transfer(path)
    print(f"layers transferred  valid {record['metric']} (median of runs, each run)")
    for point in record['points']:
        runs = ', '.join(f"{r['best_va']:.2f}" for r in point['runs'])
        print(f"{point['n_transfer']:>18}  {point['median']:.2f} ({runs})")
    return record


def plot_transfer(path, out_path):
    """Draw the validation metric against the number of layers transferred (the paper's Figure 2, left): each run
    a dot, the median a line; return out_path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    record = read_transfer(path)
    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ks = [p['n_transfer'] for p in record['points']]
    ax.plot(ks, [p['median'] for p in record['points']], marker='o', label='median')
    for p in record['points']:
        ax.scatter([p['n_transfer']] * len(p['runs']), [r['best_va'] for r in p['runs']], s=12, color='gray')
    ax.set_xlabel('layers transferred')
    ax.set_ylabel(f"valid {record['metric']}")
    ax.set_xticks(ks)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_path)
    return out_path


def misclassified(data_dir, pred_path):
    """Return the misclassified test stories as (index, story, ending1, ending2, predicted, true), 1-based endings."""
    preds = read_predictions(pred_path)
    teX1, teX2, teX3, labels = read_test_set(data_dir)
    _check_counts(pred_path, preds, labels)
    return [(i, teX1[i], teX2[i], teX3[i], int(preds[i]) + 1, int(labels[i]) + 1)
            for i in np.flatnonzero(preds != labels).tolist()]


def read_task_predictions(task_name, pred_path):
    """Return (predictions, gold labels) as class ids (scores for STS-B) from a dev file train.py wrote. Only
    untrusted.BadFile escapes for a bad file, one line naming it (an unknown task is a ValueError)."""
    from task_datasets import TASK_LABELS
    names = TASK_LABELS[task_name]
    with untrusted.reading(pred_path):
        rows = read_tsv(pred_path, 'no predictions there; train.py --submit writes '
                                   '<submission_dir>/<task>_<dev split>_predictions.tsv', quoting=csv.QUOTE_NONE)
        if not rows or rows[0][1:3] != ['prediction', 'label']:
            raise BadFile(f'{pred_path}: line 1: expected the header "index<TAB>prediction<TAB>label"', pred_path)
        preds, gold = [], []
        for lineno, row in enumerate(rows[1:], start=2):
            if len(row) != 3:
                raise BadFile(f'{pred_path}: line {lineno}: expected 3 fields, got {len(row)}', pred_path)
            try:
                values = [float(v) if names is None else names.index(v) for v in row[1:]]
            except ValueError:
                values = None
            if values is None or not all(math.isfinite(v) for v in values):
                raise BadFile(f'{pred_path}: line {lineno}: {show(row[1:], 80)} are not labels of {task_name} '
                              f'({names or "finite scores"})', pred_path)
            preds.append(values[0])
            gold.append(values[1])
        return np.asarray(preds), np.asarray(gold)


def task_report(task_name, pred_path):
    """Print and return the task's metrics (and confusion matrix) for a dev predictions file."""
    from tasks import confusion, get_task, score_predictions
    task = get_task(task_name)
    preds, gold = read_task_predictions(task_name, pred_path)
    metrics = score_predictions(task, preds, gold)
    print(f'{task_name} {os.path.basename(pred_path)}: ' + ', '.join(f'{k} {v:.2f}' for k, v in metrics.items()))
    if task.n_class > 1:
        print('confusion matrix (rows: gold, columns: predicted):')
        print(confusion(task, preds.astype(int), gold.astype(int)))
    return metrics


def parse_args(argv=None):
    """Return the parsed command line."""
    parser = argparse.ArgumentParser(description='Report the results of train.py (ROCStories from its log and '
                                                 'predictions, the paper\'s other tasks from dev predictions, a '
                                                 '--n_transfer sweep) and the losses and zero-shot scores of a '
                                                 'pretrain.py log, with their curves.')
    parser.add_argument('--log', help='the ResultLogger .jsonl of the run (ROCStories; default: none, then give '
                                      '--task with --pred, --pretrain_log or --transfer)')
    parser.add_argument('--task', help='one of the paper\'s other tasks (cola, mnli, ...): report --pred, a dev '
                                       'predictions file with gold labels (default: none, ROCStories from --log)')
    parser.add_argument('--pred', help='predictions TSV (index<TAB>prediction); gives the test accuracy (default: '
                                       'none)')
    parser.add_argument('--data_dir', default='data/', help='folder of the Story Cloze Test CSVs (default: data/)')
    parser.add_argument('--plot', help='write learning curves to this image file (e.g. curves.png; default: none)')
    parser.add_argument('--errors', action='store_true', help='list misclassified test stories (needs --pred)')
    parser.add_argument('--pretrain_log', help='the log.jsonl of pretrain.py: its losses and zero-shot scores (and, '
                                               'with --plot, their curves; default: none)')
    parser.add_argument('--transfer', help='the <desc>_transfer.json of train.py --n_transfer K1,K2,...: the metric '
                                           'per layers transferred (and, with --plot, the figure; default: none)')
    return parser.parse_args(argv)


def main(argv=None):
    """Print the results the command line asks for; exit non-zero with one line on stderr on bad input."""
    args = parse_args(argv)
    try:
        if args.pretrain_log:
            pretrain_report(args.pretrain_log)
            if args.plot:
                print(f'loss curves written to {plot_pretrain_curves(args.pretrain_log, args.plot)}')
            return
        if args.transfer:
            transfer_report(args.transfer)
            if args.plot:
                print(f'transfer curve written to {plot_transfer(args.transfer, args.plot)}')
            return
        if args.task and args.task != 'rocstories':  # ROCStories is the report below, from --log
            if not args.pred:
                raise ValueError('--task needs --pred: the <task>_<dev split>_predictions.tsv that train.py writes')
            task_report(args.task, args.pred)
            return
        if not args.log:
            raise ValueError('--pretrain_log needs a path: the log.jsonl that pretrain.py writes'
                             if args.pretrain_log is not None else
                             '--log is required (the .jsonl that train.py writes), or --task with --pred')
        if args.errors and not args.pred:
            raise ValueError('--errors needs --pred (the predictions TSV) and --data_dir')
        if args.pred:
            rocstories(args.data_dir, args.pred, args.log)
        else:
            print('ROCStories Valid Accuracy: %.2f' % best_valid_accuracy(args.log))
        if args.plot:
            print(f'learning curves written to {plot_curves(args.log, args.plot)}')
        if args.errors:
            wrong = misclassified(args.data_dir, args.pred)
            print(f'{len(wrong)} misclassified test stories')
            for i, story, ending1, ending2, predicted, true in wrong:
                print(f'\n[{i}] {story}\n  1: {ending1}\n  2: {ending2}\n  predicted {predicted}, true {true}')
    except (OSError, ValueError) as e:  # a BadFile (one line naming the file) is a ValueError
        print(f'analysis.py: error: {untrusted.one_line(e)}', file=sys.stderr)
        sys.exit(2)


if __name__ == '__main__':
    main()
