"""The GPT-1 paper's zero-shot heuristics (Section 5, Figure 2 right): tasks solved by the pre-trained language model
alone, without fine-tuning, for GPT-1 and GPT-2 models.

TF counterpart: none (the paper describes the heuristics; the release has no code for them). Defined exactly here,
so that results are comparable and testable:

- Log-probabilities come from a softmax over the vocabulary's token rows only (never a special or position row), no
  special token is added, and the pieces of text of an example are encoded separately with the model's own encoder
  and concatenated. GPT-2's byte-level BPE carries the space before a word inside the word's token, so a piece that
  follows another is stripped and encoded with one leading space, as it would be inside the joined text (GPT-1's
  encoder splits words with spaCy and ignores spaces between pieces).
- The mean log-probability of a piece is the mean over its tokens of log p(token | every token before it).
- An input longer than n_ctx keeps its last n_ctx tokens; the scored piece stays whole, after at least one token.
- sst2: next-token logits after encode(sentence) + encode("very"): 1 (positive) when the logit of "positive" exceeds
  that of "negative" (each a single token of the vocabulary).
- cola: the mean log-probability of the sentence's tokens after its first; 1 (acceptable) when it is >= t, t the
  training split's score that maximises the training split's Matthews correlation of that rule (smallest on ties).
- rocstories: each ending's mean log-probability after the story; the higher wins.
- race: each answer's mean log-probability after the document and the question; the highest wins.
- dprd: for each candidate, the mean log-probability of the sentence after the pronoun, after the sentence before
  the pronoun followed by the candidate; the higher wins.
"""
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from loss import per_element_ce
from model_inputs import pack_right_padded
from tasks import metric
from precision import autocast_context

TASKS = ('sst2', 'cola', 'rocstories', 'race', 'dprd')
SENTIMENT_WORDS = ('negative', 'positive')  # sst2: class 0, class 1


@dataclass
class ScoringLM:
    """What the heuristics need of a language model: its transformer, its token rows, its tokenizer."""
    transformer: torch.nn.Module  # x [B, T, 2] -> (h [B, T, n_embd], the table)
    text_encoder: object           # encode(list of texts, verbose) -> list of id lists (text_utils or BatchEncoder)
    n_vocab: int                   # the token rows: the softmax never covers special or position rows
    space_in_tokens: bool          # GPT-2's BPE: a piece after another is encoded with its leading space
    precision: str = 'fp32'
    batch_size: int = 16

    @property
    def n_ctx(self):
        return self.transformer.n_ctx

    @property
    def device(self):
        return self.transformer.lm_weight.device


def scoring_lm(model, text_encoder, n_vocab=None, precision='fp32', batch_size=16):
    """Return the ScoringLM of a GPT-1 or GPT-2 model (any head) and its tokenizer; n_vocab defaults to the model's
    token rows."""
    from encoder_gpt2 import BatchEncoder
    transformer = getattr(model, 'transformer', model)
    n_vocab = transformer.cfg.n_vocab if n_vocab is None else n_vocab
    return ScoringLM(transformer, text_encoder, n_vocab, isinstance(text_encoder, BatchEncoder), precision,
                     batch_size)


def as_piece(lm, text, following):
    """Return text as it is encoded as a piece of an example: GPT-2 strips it and, when it follows another piece, puts
    one leading space before it, as inside the joined text; GPT-1 takes it as it is."""
    if not lm.space_in_tokens:
        return text
    return ' ' + text.strip() if following else text.strip()


def encode_pieces(lm, pieces):
    """Return the id lists of pieces of text, each encoded on its own (GPT-2: each after the first with one leading
    space, as inside the joined text)."""
    return lm.text_encoder.encode([as_piece(lm, p, k > 0) for k, p in enumerate(pieces)], verbose=False)


def encode_following(lm, text):
    """Return the ids of text as a piece that follows another (GPT-2: stripped, with one leading space)."""
    return lm.text_encoder.encode([as_piece(lm, text, True)], verbose=False)[0]


def fit_context(context, piece, n_ctx, where):
    """Return (context, piece) cut to the last n_ctx tokens in all (the piece whole, after at least one token)."""
    if not 0 < len(piece) < n_ctx:
        raise ValueError(f'{where}: the scored piece has {len(piece)} tokens; it needs 1 to n_ctx - 1 = {n_ctx - 1} '
                         f'(after at least one token of context)')
    if not context:
        raise ValueError(f'{where}: nothing comes before the scored piece: it needs at least one token of context')
    keep = n_ctx - len(piece)
    return context[-keep:], piece


@contextmanager
def evaluating(module):
    """Within the block module is in eval mode and gradients are off; its mode is put back after."""
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        module.train(was_training)


def hidden_states(lm, seqs):
    """Yield (index, h [len, n_embd] float32) of each id list of seqs, run in batches of similar lengths."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for start in range(0, len(order), lm.batch_size):
        batch = order[start:start + lm.batch_size]
        x = pack_right_padded([seqs[i] for i in batch], lm.transformer.pos_offset)  # [B, T, 2]
        with autocast_context(lm.device, lm.precision):
            h = lm.transformer(x.to(lm.device))  # [B, T, n_embd]
        for b, i in enumerate(batch):
            yield i, h[b, :len(seqs[i])].float()


def token_log_probs(lm, h_rows, targets):
    """Return log p(target) [N] of each row of h_rows [N, n_embd] over the token rows only."""
    logits = h_rows @ lm.transformer.lm_weight[:lm.n_vocab].float().T  # [N, n_vocab]
    return -per_element_ce(logits, torch.as_tensor(targets, device=logits.device))


def piece_scores(lm, examples, progress=None):
    """Return the mean log-probability [len(examples)] of each (context ids, piece ids, where) piece after its
    context (each input cut to its last n_ctx tokens)."""
    seqs, starts = [], []
    for context, piece, where in examples:
        context, piece = fit_context(context, piece, lm.n_ctx, where)
        seqs.append(context + piece)
        starts.append(len(context))
    scores = [None] * len(seqs)
    with evaluating(lm.transformer):
        for i, h in hidden_states(lm, seqs):
            rows = h[starts[i] - 1:len(seqs[i]) - 1]  # the states that predict the piece's tokens
            scores[i] = token_log_probs(lm, rows, seqs[i][starts[i]:]).mean()  # on the device: read once at the end
            if progress is not None:
                progress.update(1)
    return torch.stack(scores).double().cpu().numpy() if scores else np.zeros(0)


def next_token_logits(lm, seqs, token_ids, progress=None):
    """Return the logits [len(seqs), len(token_ids)] of token_ids as the next token after each id list (each cut to
    its last n_ctx tokens)."""
    seqs = [list(s[-lm.n_ctx:]) for s in seqs]
    out = [None] * len(seqs)
    rows = lm.transformer.lm_weight[list(token_ids)].float()  # [K, n_embd]
    with evaluating(lm.transformer):
        for i, h in hidden_states(lm, seqs):
            out[i] = h[-1] @ rows.T  # [K], on the device: read once at the end
            if progress is not None:
                progress.update(1)
    return torch.stack(out).double().cpu().numpy() if out else np.zeros((0, len(token_ids)))


def single_token(lm, word):
    """Return the id of word as one token of the vocabulary (GPT-2: with its leading space), or raise naming it."""
    ids = encode_following(lm, word)
    if len(ids) != 1 or ids[0] >= lm.n_vocab:
        raise ValueError(f'the vocabulary has no single token for {word!r} (it encodes to {len(ids)} tokens): the '
                         f'sst2 heuristic compares the next-token logits of {" and ".join(SENTIMENT_WORDS)}')
    return ids[0]


def sst2_scores(lm, sentences, progress=None):
    """Return the next-token logits [N, 2] of 'negative' and 'positive' after each sentence + 'very'."""
    words = [single_token(lm, w) for w in SENTIMENT_WORDS]
    very = encode_following(lm, 'very')
    encoded = lm.text_encoder.encode([as_piece(lm, s, False) for s in sentences], verbose=False)
    return next_token_logits(lm, [ids + very for ids in encoded], words, progress)


def cola_scores(lm, sentences, progress=None):
    """Return the mean log-probability [N] of each sentence's tokens after its first."""
    encoded = lm.text_encoder.encode([s.strip() for s in sentences], verbose=False)
    return piece_scores(lm, [(ids[:1], ids[1:], f'sentence {k}') for k, ids in enumerate(encoded)], progress)


def choice_scores(lm, contexts, choices, progress=None):
    """Return the mean log-probability [N, C] of each choice after its example's context pieces."""
    texts = [as_piece(lm, p, i > 0) for pieces, options in zip(contexts, choices)
             for i, p in enumerate(list(pieces) + list(options))]
    encoded = iter(lm.text_encoder.encode(texts, verbose=False))  # one call: each text is encoded on its own
    examples = []
    for k, (pieces, options) in enumerate(zip(contexts, choices)):
        context = [t for _ in pieces for t in next(encoded)]
        examples += [(context, next(encoded), f'example {k} choice {c}') for c in range(len(options))]
    n_choices = len(choices[0]) if choices else 0
    return piece_scores(lm, examples, progress).reshape(len(contexts), n_choices)


def pronoun_span(sentence, pronoun, candidates, where):
    """Return (start, end) of the pronoun to resolve: its first whole-word occurrence (case-insensitive) after the
    first mention of both candidates, else its first whole-word occurrence."""
    matches = list(re.finditer(rf'\b{re.escape(pronoun)}\b', sentence, re.IGNORECASE))
    if not matches:
        raise ValueError(f'{where}: the pronoun {pronoun!r} is not a word of the sentence {sentence!r}')
    lower = sentence.lower()
    mentions = [lower.find(c.lower()) for c in candidates]
    if all(m >= 0 for m in mentions):
        after = max(m + len(c) for m, c in zip(mentions, candidates))
        later = [m for m in matches if m.start() >= after]
        if later:
            return later[0].span()
    return matches[0].span()


def dprd_scores(lm, sentences, pronouns, candidates, progress=None):
    """Return the mean log-probability [N, 2] of the sentence after the pronoun, after the sentence before it with
    each candidate in the pronoun's place."""
    texts = []
    for k, (sentence, pronoun, cands) in enumerate(zip(sentences, pronouns, candidates)):
        start, end = pronoun_span(sentence, pronoun, cands, f'example {k}')
        texts += [as_piece(lm, sentence[end:], True)] + [as_piece(lm, sentence[:start] + c, False) for c in cands]
    encoded = iter(lm.text_encoder.encode(texts, verbose=False))  # one call: each text is encoded on its own
    examples = []
    for k, cands in enumerate(candidates):
        rest = next(encoded)
        examples += [(next(encoded), rest, f'example {k} candidate {c!r}') for c in cands]
    return piece_scores(lm, examples, progress).reshape(len(sentences), 2)


def mcc_threshold(scores, labels):
    """Return (t, Matthews correlation) of the rule score >= t that is best on (scores, labels), t among the scores,
    the smallest t on ties."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    order = np.argsort(-scores, kind='stable')
    s, y = scores[order], labels[order]
    cut = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # the last index of each distinct score, descending
    tp = np.cumsum(y)[cut].astype(np.float64)
    fp = (cut + 1) - tp
    fn, tn = y.sum() - tp, (~y).sum() - fp
    denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    mcc = np.divide(tp * tn - fp * fn, denominator, out=np.zeros_like(tp), where=denominator > 0)
    # ties within rounding (1e-12) are ties: 8/sqrt(384) and 6/sqrt(216) are both 1/sqrt(6) but differ in the last bit
    best = np.flatnonzero(mcc >= mcc.max() - 1e-12)[-1]  # the smallest threshold among the best
    return float(s[cut[best]]), float(mcc[best])


@dataclass
class ZeroShotResult:
    """A heuristic's verdicts on one split: a prediction and each choice's score per example, the metric (None for a
    split without labels) and what else it reports (cola's threshold, race's middle/high accuracies)."""
    task: str
    split: str
    metric: str
    value: float
    predictions: np.ndarray
    scores: np.ndarray   # [N, choices] (cola: [N, 1])
    extra: dict


@dataclass
class ZeroShotData:
    """A task's split as read_split reads it (texts, labels, groups), and for CoLA off its training split, that split's
    texts and labels too (for the threshold): what a heuristic scores, read once however often it is scored."""
    task: str
    split: str
    texts: dict
    labels: object
    groups: object
    train: tuple = None


DEFAULT_SPLITS = {'sst2': 'dev', 'cola': 'dev', 'rocstories': 'test', 'race': 'test', 'dprd': 'test'}
METRICS = {'sst2': 'acc', 'cola': 'mcc', 'rocstories': 'acc', 'race': 'acc', 'dprd': 'acc'}


def read_task_split(task, data_dir, split):
    """Return {'fields', 'labels', 'groups', 'ids'} of one split of a GLUE task or RACE (as task_datasets.read_task
    gives each split), parsing that split's files only (the folder must hold every split's, as read_task's)."""
    import task_datasets
    root = task_datasets._find_root(task, data_dir)  # refuses a folder without every split, naming what it lacks
    files = dict(task_datasets.LAYOUTS[task][2])  # RACE: the last group's entry, only the split's name is used
    if split not in files:
        raise ValueError(f'{task} has no split {split!r}: use one of {", ".join(files)}')
    if task == 'race':
        return task_datasets._read_race(root, split)
    return task_datasets._read_glue(task, os.path.join(root, *files[split].split('/')), split)


def read_split(task, data_dir, split):
    """Return (texts: a dict of the task's fields, labels or None, groups or None) of one split of task."""
    import datasets
    import task_datasets
    if task in ('sst2', 'cola', 'race'):
        data = read_task_split(task, data_dir, split)
        names = ('sentence',) if task != 'race' else ('document', 'question', 'options')
        return dict(zip(names, data['fields'])), data['labels'], data['groups']
    if task == 'rocstories':
        stories, endings1, endings2, labels = datasets.story_cloze(data_dir, split)
        return dict(story=stories, endings=list(zip(endings1, endings2))), labels, None
    sentences, pronouns, candidates, labels = task_datasets.read_dprd(data_dir, split)
    return dict(sentence=sentences, pronoun=pronouns, candidates=candidates), labels, None


def task_scores(lm, task, texts, progress=None):
    """Return the heuristic's scores of task on texts (read_split's fields): [N, choices]."""
    if task == 'sst2':
        return sst2_scores(lm, texts['sentence'], progress)
    if task == 'cola':
        return cola_scores(lm, texts['sentence'], progress)[:, None]
    if task == 'rocstories':
        return choice_scores(lm, [(story,) for story in texts['story']], texts['endings'], progress)
    if task == 'race':
        return choice_scores(lm, list(zip(texts['document'], texts['question'])), texts['options'], progress)
    return dprd_scores(lm, texts['sentence'], texts['pronoun'], texts['candidates'], progress)


def n_scored(task, texts):
    """Return how many sequences task_scores runs for texts: one per example, or one per choice."""
    choices = {'rocstories': 'endings', 'race': 'options', 'dprd': 'candidates'}.get(task)
    return len(texts['sentence']) if choices is None else sum(len(c) for c in texts[choices])


def metric_value(task, predictions, labels):
    """Return the task's metric (percent) of predictions against labels."""
    return metric(METRICS[task], predictions, labels)


def read_zero_shot(task, data_dir, split=None):
    """Return the ZeroShotData of split (default DEFAULT_SPLITS[task]) of task's data in data_dir."""
    if task not in TASKS:
        raise ValueError(f'unknown zero-shot task {task!r}: use one of {", ".join(TASKS)}')
    split = DEFAULT_SPLITS[task] if split is None else split
    texts, labels, groups = read_split(task, data_dir, split)
    train = read_split('cola', data_dir, 'train')[:2] if task == 'cola' and split != 'train' else None
    return ZeroShotData(task, split, texts, labels, groups, train)


def zero_shot(lm, task, data_dir, split=None, progress=None):
    """Return the ZeroShotResult of task's heuristic on split (default DEFAULT_SPLITS[task]) of the data in
    data_dir."""
    return score_zero_shot(lm, read_zero_shot(task, data_dir, split), progress)


def score_zero_shot(lm, data, progress=None):
    """Return the ZeroShotResult of the heuristic of data's task on data (a ZeroShotData)."""
    task, labels, groups = data.task, data.labels, data.groups
    scores = task_scores(lm, task, data.texts, progress)
    extra = {}
    if task == 'cola':
        if data.train is None:  # the split is the training split: the threshold is fitted on it
            threshold, train_mcc = mcc_threshold(scores[:, 0], labels)
        else:  # fitted on the training split's scores
            train_texts, train_labels = data.train
            threshold, train_mcc = mcc_threshold(task_scores(lm, 'cola', train_texts, progress)[:, 0], train_labels)
        extra.update(threshold=threshold, train_mcc=100.0 * train_mcc)
        predictions = (scores[:, 0] >= threshold).astype(np.int64)
    else:
        predictions = scores.argmax(1)  # the first of equal scores, as np.argmax
    value = None if labels is None else metric_value(task, predictions, labels)
    if groups is not None and labels is not None:
        for group in sorted(set(groups)):
            mask = np.asarray(groups) == group
            extra[group] = metric_value(task, predictions[mask], np.asarray(labels)[mask])
    return ZeroShotResult(task, data.split, METRICS[task], value, predictions, scores, extra)
