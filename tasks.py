"""The paper's fine-tuning tasks, ROCStories and eleven others: input transforms, heads, metrics and submissions.

The original release has code for ROCStories only (TF: train.py's transform_roc, pred_fns, filenames,
label_decoders); its record is ROCSTORIES, its input transform train.transform_roc. For the other tasks
(TASKS) this module follows the paper (Section 3.3, Figure 1): every sequence is
`_start_ ... _classify_`, pooled at `_classify_`, with the auxiliary LM loss over the same tokens.
- classification (CoLA, SST-2): `_start_ text _classify_`;
- entailment (SNLI, MNLI, QNLI, RTE, SciTail): `_start_ premise _delimiter_ hypothesis _classify_`;
- similarity (MRPC, QQP, STS-B): both orderings of `_start_ A _delimiter_ B _classify_`, summed pooled states;
- multiple choice (RACE): `_start_ document question _delimiter_ answer_k _classify_` for each answer.
"""
from dataclasses import dataclass

import numpy as np

from task_datasets import TASK_LABELS

FAMILIES = ('classification', 'entailment', 'similarity', 'multiple_choice')
SPECIAL_TOKENS = ('_start_', '_delimiter_', '_classify_')


@dataclass(frozen=True)
class Task:
    """How one dataset is fine-tuned, evaluated and submitted."""
    name: str
    family: str
    n_class: int                 # 1: regression (STS-B)
    metrics: tuple               # the first one selects the best epoch (the paper's metric)
    dev: tuple                   # dev split names; the first is the validation set ('va_' in the log)
    submissions: tuple           # (test split name, submission file name) pairs
    truncate: tuple = ()         # indices of the fields that may be cut to fit n_ctx (all when empty)
    reported_groups: tuple = ()  # extra metric breakdowns by the split's 'groups' (RACE: middle, high)
    # --submit also writes each dev split's predictions with gold labels, which --analysis reports; ROCStories
    # writes none: its analysis is the original's, of the test submission and the log (analysis.rocstories)
    dev_predictions: bool = True

    @property
    def head_type(self):
        """Return the DoubleHeadModel task_head_type of this task."""
        if self.family == 'multiple_choice':
            return 'multiple_choice'
        if self.family == 'similarity':
            return ('similarity', self.n_class)
        return ('classification', self.n_class)

    @property
    def n_choices(self):
        """Return the number of sequences per example: 2 orderings (similarity), k answers, or 1."""
        return {'similarity': 2, 'multiple_choice': self.n_class}.get(self.family, 1)


def _glue(name, family, n_class, metrics, file, **kw):
    return Task(name, family, n_class, metrics, ('dev',), (('test', file),), **kw)


TASKS = {
    'cola': _glue('cola', 'classification', 2, ('mcc', 'acc'), 'CoLA.tsv'),
    'sst2': _glue('sst2', 'classification', 2, ('acc',), 'SST-2.tsv'),
    'mrpc': _glue('mrpc', 'similarity', 2, ('f1', 'acc'), 'MRPC.tsv'),
    'qqp': _glue('qqp', 'similarity', 2, ('f1', 'acc'), 'QQP.tsv'),
    'stsb': _glue('stsb', 'similarity', 1, ('pearson', 'spearman'), 'STS-B.tsv'),
    'mnli': Task('mnli', 'entailment', 3, ('acc',), ('dev_matched', 'dev_mismatched'),
                 (('test_matched', 'MNLI-m.tsv'), ('test_mismatched', 'MNLI-mm.tsv'))),
    'qnli': _glue('qnli', 'entailment', 2, ('acc',), 'QNLI.tsv'),
    'rte': _glue('rte', 'entailment', 2, ('acc',), 'RTE.tsv'),
    'snli': _glue('snli', 'entailment', 3, ('acc',), 'SNLI.tsv'),
    'scitail': _glue('scitail', 'entailment', 2, ('acc',), 'SciTail.tsv'),
    # the document is cut to fit, the question and the answers stay whole
    'race': Task('race', 'multiple_choice', 4, ('acc',), ('dev',), (('test', 'RACE.tsv'),), truncate=(0,),
                 reported_groups=('middle', 'high')),
}
# the original's task: pick the right one of a story's 2 endings, validated on 'va' (n_valid stories held out of the
# Story Cloze validation set), submitted as the 0/1 ending index (TF: pred_fns argmax, label_decoders None)
ROCSTORIES = Task('rocstories', 'multiple_choice', 2, ('acc',), ('va',), (('test', 'ROCStories.tsv'),),
                  dev_predictions=False)
FINE_TUNING_TASKS = {'rocstories': ROCSTORIES, **{name: TASKS[name] for name in sorted(TASKS)}}  # train.py --dataset


def get_task(name):
    """Return the fine-tuning Task called name (ROCStories or one of TASKS), or raise ValueError listing them."""
    if name not in FINE_TUNING_TASKS:
        raise ValueError(f'unknown task {name!r}: known tasks are {", ".join(FINE_TUNING_TASKS)}')
    return FINE_TUNING_TASKS[name]


def fit_parts(parts, budget, truncatable):
    """Return (parts cut from their ends to total at most budget tokens, whether anything was cut).

    The longest cuttable part is shortened first, so parts end up as even as the budget allows.
    """
    parts = [list(p) for p in parts]
    excess = sum(len(p) for p in parts) - budget
    if excess <= 0:
        return parts, False
    cuttable = [i for i in range(len(parts)) if not truncatable or i in truncatable]
    whole = sum(len(p) for i, p in enumerate(parts) if i not in cuttable)
    if whole > budget:
        raise ValueError(f'the parts kept whole need {whole} tokens, more than the {budget} that n_ctx leaves '
                         f'besides the special tokens: raise --n_ctx')
    while excess > 0:
        i = max(cuttable, key=lambda j: len(parts[j]))
        lengths = sorted((len(parts[j]) for j in cuttable), reverse=True)
        runner_up = lengths[1] if len(lengths) > 1 else 0
        cut = min(excess, max(len(parts[i]) - runner_up, 1))
        parts[i] = parts[i][:len(parts[i]) - cut]
        excess -= cut
    return parts, True


def sequences(task, example, encoder):
    """Return the token parts of each sequence of one example: [[part, ...] per choice] with separators."""
    start, delimiter = encoder['_start_'], encoder['_delimiter_']
    if task.family == 'classification':
        (text,) = example
        return [[[start], text]]
    if task.family == 'entailment':
        premise, hypothesis = example
        return [[[start], premise, [delimiter], hypothesis]]
    if task.family == 'similarity':
        a, b = example
        return [[[start], a, [delimiter], b], [[start], b, [delimiter], a]]
    document, question, options = example
    return [[[start], document, question, [delimiter], option] for option in options]


def text_parts(task):
    """Return the indices, within sequences()' parts, of the text parts (the rest are separators)."""
    return {'classification': (1,), 'entailment': (1, 3), 'similarity': (1, 3),
            'multiple_choice': (1, 2, 4)}[task.family]


def transform(task, fields, encoder, n_ctx, n_vocab, n_special):
    """Return (X [n, C, n_ctx, 2] int64, M [n, C, n_ctx] float32, n_truncated) for encoded fields.

    Each sequence is `_start_ ... _classify_` with positions n_vocab + n_special + i; a sequence too long
    for n_ctx has its longest text part cut from its end (only task.truncate's fields for RACE).
    """
    n = len(fields[0])
    n_choices = task.n_choices
    X = np.zeros((n, n_choices, n_ctx, 2), dtype=np.int64)
    M = np.zeros((n, n_choices, n_ctx), dtype=np.float32)
    clf_token = encoder['_classify_']
    texts = text_parts(task)
    n_truncated = 0
    for i, example in enumerate(zip(*fields)):
        cut_any = False
        for c, parts in enumerate(sequences(task, example, encoder)):
            n_separators = sum(len(p) for j, p in enumerate(parts) if j not in texts) + 1  # + _classify_
            texts_only = [parts[j] for j in texts]
            fitted, cut = fit_parts(texts_only, n_ctx - n_separators, task.truncate)
            cut_any |= cut
            for j, part in zip(texts, fitted):
                parts[j] = part
            seq = [t for p in parts for t in p] + [clf_token]
            X[i, c, :len(seq), 0] = seq
            M[i, c, :len(seq)] = 1
        n_truncated += cut_any
    X[..., 1] = np.arange(n_vocab + n_special, n_vocab + n_special + n_ctx)
    return X, M, n_truncated


def needed_n_ctx(task, splits, encoder):
    """Return the longest sequence (special tokens included) over the given encoded splits' fields."""
    longest = 0
    for fields in splits:
        for example in zip(*fields):
            for parts in sequences(task, example, encoder):
                longest = max(longest, sum(len(p) for p in parts) + 1)
    return longest


def predictions(task, logits):
    """Return the predicted class ids [n] (or scores for regression) from the head's outputs."""
    logits = np.asarray(logits)
    return logits.reshape(-1) if task.n_class == 1 else np.argmax(logits, 1)


def compute_metrics(task, outputs, labels):
    """Return {metric: value in percent} of the task's metrics for head outputs against gold labels."""
    return score_predictions(task, predictions(task, outputs), labels)


def score_predictions(task, preds, labels):
    """Return {metric: value in percent} for predicted class ids (or scores) against gold labels."""
    return {name: metric(name, preds, labels) for name in task.metrics}


def metric(name, preds, labels):
    """Return the metric `name` (acc, mcc, f1, pearson, spearman) in percent of predictions against gold labels."""
    # imported where needed, not at import time: scipy and scikit-learn take seconds to load
    preds, labels = np.asarray(preds), np.asarray(labels)
    if name == 'acc':  # sklearn's accuracy_score: the mean of the matches
        if preds.shape != labels.shape:
            raise ValueError(f'{len(preds)} predictions for {len(labels)} labels')
        return float(np.average(labels == preds) * 100.)
    if name == 'mcc':
        from sklearn.metrics import matthews_corrcoef
        return float(matthews_corrcoef(labels, preds) * 100.)
    if name == 'f1':
        from sklearn.metrics import f1_score
        return float(f1_score(labels, preds) * 100.)
    if name == 'pearson':
        from scipy.stats import pearsonr
        return float(pearsonr(preds, labels)[0]) * 100.
    if name == 'spearman':
        from scipy.stats import spearmanr
        return float(spearmanr(preds, labels)[0]) * 100.
    raise ValueError(f'unknown metric {name!r}')


def confusion(task, preds, labels):
    """Return the confusion matrix [n_class, n_class] (rows: gold) of predicted class ids."""
    from sklearn.metrics import confusion_matrix
    return confusion_matrix(np.asarray(labels), np.asarray(preds), labels=list(range(task.n_class)))


def label_names(task):
    """Return the names the task's files write for its class ids (task_datasets.TASK_LABELS), or None: scores
    (regression, STS-B) or the class ids themselves (ROCStories, which has no entry there)."""
    return TASK_LABELS.get(task.name)


def decode_predictions(task, preds, label_names):
    """Return the predictions as the leaderboard writes them: label names, scores for regression, or class ids when
    label_names is None (ROCStories: the original's 0/1 ending index)."""
    if task.n_class == 1:
        return [f'{float(p):.3f}' for p in preds]
    if label_names is None:
        return [int(p) for p in preds]
    return [label_names[int(p)] for p in preds]
