"""Tests for tasks.py: the paper's input transforms, truncation, metrics and label decoding."""
import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

from tasks import (FINE_TUNING_TASKS, ROCSTORIES, TASKS, compute_metrics, confusion, decode_predictions, fit_parts,
                   get_task, label_names, needed_n_ctx, predictions, transform)

N_VOCAB, N_SPECIAL = 50, 3
ENC = {'_start_': 50, '_delimiter_': 51, '_classify_': 52}
S, D, C = 50, 51, 52


def layout(X, M, i, c):
    """The token ids of sequence c of example i, up to its mask."""
    return X[i, c, :int(M[i, c].sum()), 0].tolist()


def test_classification_layout():
    X, M, cut = transform(TASKS['cola'], ([[1, 2, 3], [4]],), ENC, n_ctx=6, n_vocab=N_VOCAB, n_special=N_SPECIAL)
    assert X.shape == (2, 1, 6, 2) and M.shape == (2, 1, 6) and cut == 0
    assert layout(X, M, 0, 0) == [S, 1, 2, 3, C]
    assert layout(X, M, 1, 0) == [S, 4, C]
    assert X[1, 0, :, 0].tolist() == [S, 4, C, 0, 0, 0]
    assert M[1, 0].tolist() == [1, 1, 1, 0, 0, 0]
    assert X[0, 0, :, 1].tolist() == list(range(53, 59))


def test_entailment_layout():
    X, M, _ = transform(TASKS['mnli'], ([[1, 2]], [[3, 4, 5]]), ENC, 9, N_VOCAB, N_SPECIAL)
    assert X.shape == (1, 1, 9, 2)
    assert layout(X, M, 0, 0) == [S, 1, 2, D, 3, 4, 5, C]


def test_similarity_layout_has_both_orderings():
    X, M, _ = transform(TASKS['stsb'], ([[1, 2]], [[3]]), ENC, 8, N_VOCAB, N_SPECIAL)
    assert X.shape == (1, 2, 8, 2)
    assert layout(X, M, 0, 0) == [S, 1, 2, D, 3, C]
    assert layout(X, M, 0, 1) == [S, 3, D, 1, 2, C]
    assert X[0, 1, :, 1].tolist() == list(range(53, 61))


def test_multiple_choice_layout_one_sequence_per_answer():
    doc, question = [1, 2, 3], [4]
    options = [[5], [6, 6], [7], [8, 8, 8]]
    X, M, _ = transform(TASKS['race'], ([doc], [question], [options]), ENC, 12, N_VOCAB, N_SPECIAL)
    assert X.shape == (1, 4, 12, 2)
    for k, option in enumerate(options):
        assert layout(X, M, 0, k) == [S, 1, 2, 3, 4, D] + option + [C]


def test_race_truncates_the_document_only_and_counts():
    doc, question = list(range(1, 21)), [30, 31]
    options = [[40], [41], [42], [43, 44]]
    X, M, cut = transform(TASKS['race'], ([doc, [1]], [question, [2]], [options, [[5], [6], [7], [8]]]), ENC, 10,
                          N_VOCAB, N_SPECIAL)
    assert cut == 1
    # the longest sequence (answer of 2 tokens) keeps 10 - 3 special - 2 question - 2 answer = 3 document tokens
    assert layout(X, M, 0, 3) == [S, 1, 2, 3, 30, 31, D, 43, 44, C]
    assert layout(X, M, 0, 0) == [S, 1, 2, 3, 4, 30, 31, D, 40, C]
    assert layout(X, M, 1, 0) == [S, 1, 2, D, 5, C]


def test_entailment_truncates_the_longest_part_from_its_end():
    premise, hypothesis = list(range(1, 11)), [20, 21, 22]
    X, M, cut = transform(TASKS['rte'], ([premise], [hypothesis]), ENC, 10, N_VOCAB, N_SPECIAL)
    assert cut == 1 and M.sum() == 10
    assert layout(X, M, 0, 0) == [S, 1, 2, 3, 4, D, 20, 21, 22, C]


def test_fit_parts_evens_out_and_keeps_whole_parts():
    parts, cut = fit_parts([[1] * 10, [2] * 6, [3] * 2], 12, ())
    assert cut and [len(p) for p in parts] == [5, 5, 2]
    parts, cut = fit_parts([[1] * 3, [2] * 3], 6, ())
    assert not cut and parts == [[1] * 3, [2] * 3]
    with pytest.raises(ValueError, match='parts kept whole need 7 tokens'):
        fit_parts([[1] * 5, [2] * 7], 6, (0,))


def test_needed_n_ctx_counts_special_tokens():
    assert needed_n_ctx(TASKS['mrpc'], [([[1, 2]], [[3]])], ENC) == 6
    assert needed_n_ctx(TASKS['sst2'], [([[1] * 7, [2]],), ([[3] * 9],)], ENC) == 11


def test_metrics_match_sklearn_and_scipy():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 40)
    logits = rng.standard_normal((40, 2))
    preds = logits.argmax(1)
    cola = compute_metrics(TASKS['cola'], logits, labels)
    assert cola['mcc'] == pytest.approx(matthews_corrcoef(labels, preds) * 100)
    assert cola['acc'] == pytest.approx(np.mean(preds == labels) * 100)
    mrpc = compute_metrics(TASKS['mrpc'], logits, labels)
    assert mrpc['f1'] == pytest.approx(f1_score(labels, preds) * 100)
    scores, gold = rng.uniform(0, 5, 30), rng.uniform(0, 5, 30)
    stsb = compute_metrics(TASKS['stsb'], scores, gold)
    assert stsb['pearson'] == pytest.approx(pearsonr(scores, gold)[0] * 100)
    assert stsb['spearman'] == pytest.approx(spearmanr(scores, gold)[0] * 100)
    assert list(stsb) == ['pearson', 'spearman'] and list(cola) == ['mcc', 'acc']


def test_predictions_confusion_and_decoding():
    logits = np.array([[0.1, 0.9, 0.0], [2.0, 0.0, 1.0], [0.0, 0.0, 3.0]])
    assert predictions(TASKS['mnli'], logits).tolist() == [1, 0, 2]
    assert confusion(TASKS['mnli'], predictions(TASKS['mnli'], logits), [1, 2, 2]).tolist() == [[0, 0, 0], [0, 1, 0], [1, 0, 1]]
    names = ('contradiction', 'entailment', 'neutral')
    assert decode_predictions(TASKS['mnli'], [1, 0, 2], names) == ['entailment', 'contradiction', 'neutral']
    assert decode_predictions(TASKS['stsb'], np.array([1.23456, 4.0]), None) == ['1.235', '4.000']


def test_task_registry_covers_the_papers_tasks():
    assert set(TASKS) == {'cola', 'sst2', 'mrpc', 'qqp', 'stsb', 'mnli', 'qnli', 'rte', 'snli', 'scitail', 'race'}
    assert TASKS['stsb'].head_type == ('similarity', 1) and TASKS['mrpc'].head_type == ('similarity', 2)
    assert TASKS['race'].head_type == 'multiple_choice' and TASKS['snli'].head_type == ('classification', 3)
    assert [f for _, f in TASKS['mnli'].submissions] == ['MNLI-m.tsv', 'MNLI-mm.tsv']
    with pytest.raises(ValueError, match='known tasks are rocstories, cola'):
        get_task('squad')


def test_rocstories_is_a_task_like_the_others():
    """ROCStories: 2 endings scored by the multiple-choice head, accuracy on 'va', the original's ROCStories.tsv of
    0/1 ending indices (no label names) and no dev predictions file."""
    assert get_task('rocstories') is ROCSTORIES and get_task('race') is TASKS['race']
    assert list(FINE_TUNING_TASKS) == ['rocstories'] + sorted(TASKS)
    assert ROCSTORIES.head_type == 'multiple_choice' and ROCSTORIES.n_choices == 2 and TASKS['race'].n_choices == 4
    assert ROCSTORIES.metrics == ('acc',) and ROCSTORIES.dev == ('va',) and not ROCSTORIES.dev_predictions
    assert ROCSTORIES.submissions == (('test', 'ROCStories.tsv'),) and label_names(ROCSTORIES) is None
    assert all(task.dev_predictions for task in TASKS.values())
    logits = np.array([[0.2, 0.7], [1.5, -1.0], [0.0, 3.0]])
    assert decode_predictions(ROCSTORIES, predictions(ROCSTORIES, logits), None) == [1, 0, 1]
    assert compute_metrics(ROCSTORIES, logits, [1, 1, 1]) == {'acc': pytest.approx(200 / 3)}
    assert label_names(TASKS['mnli']) == ('contradiction', 'entailment', 'neutral') and label_names(TASKS['stsb']) is None
