"""Tests for heuristics.py: each zero-shot heuristic's scores and predictions equal an independent computation (one
plain forward per example through the model's own LM head over the whole table, a log-softmax over the token rows
written out, the cut to n_ctx written out), on hand-made data read from the datasets' files, for GPT-1 and GPT-2;
long inputs are cut, pieces too long are refused, the SST-2 words must be single tokens, CoLA's threshold is the
best one on the training split."""
import csv

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import heuristics
from models import load_model, load_tokenizer
from tests.helpers import write_tiny_checkpoint, write_tiny_gpt2

N_CTX = 64
WORDS = ('the cat sat on a mat and then it rained so we stayed in the warm house with tea and bread while '
         'the dog slept by the fire').split()


def sentence(rng, n):
    return ' '.join(rng.choice(WORDS, n)).capitalize() + '.'


@pytest.fixture(scope='module', params=['gpt1', 'gpt2'])
def family(request, tmp_path_factory):
    """(family, model, tokenizer) of a tiny model with 64 positions and the real vocabulary."""
    d = tmp_path_factory.mktemp(request.param)
    if request.param == 'gpt1':
        write_tiny_checkpoint(d, np.random.default_rng(0), n_pos=N_CTX)
    else:
        write_tiny_gpt2(d, n_ctx=N_CTX)
    return request.param, load_model(str(d), lm=True, n_head=4), load_tokenizer(str(d))


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    """Hand-made files of every task in its distribution layout, with long examples that must be cut."""
    d = tmp_path_factory.mktemp('data')
    rng = np.random.default_rng(1)
    sst = d / 'SST-2'
    sst.mkdir()
    for split in ('train', 'dev', 'test'):
        rows = [[sentence(rng, int(n)), str(rng.integers(2))] for n in rng.integers(3, 12, 7)]
        rows.append([sentence(rng, 90), '1'])  # longer than n_ctx: its last tokens are kept
        header, rows = (['index', 'sentence'], [[str(i), r[0]] for i, r in enumerate(rows)]) if split == 'test' \
            else (['sentence', 'label'], rows)
        with open(sst / f'{split}.tsv', 'w', newline='') as f:
            csv.writer(f, delimiter='\t', quoting=csv.QUOTE_NONE, escapechar='\\').writerows([header] + rows)
    cola = d / 'CoLA'
    cola.mkdir()
    for split in ('train', 'dev'):
        lines = [f'src\t{rng.integers(2)}\t\t{sentence(rng, int(n))}' for n in rng.integers(2, 12, 12)]
        (cola / f'{split}.tsv').write_text('\n'.join(lines) + '\n')
    (cola / 'test.tsv').write_text('index\tsentence\n0\tThe cat sat.\n')
    roc = d / 'roc'
    roc.mkdir()
    header = ['InputStoryid', 'InputSentence1', 'InputSentence2', 'InputSentence3', 'InputSentence4',
              'RandomFifthSentenceQuiz1', 'RandomFifthSentenceQuiz2', 'AnswerRightEnding']
    stories = [[f's{i}'] + [sentence(rng, int(n)) for n in rng.integers(3, 9, 6)] + [str(rng.integers(1, 3))]
               for i in range(4)]
    stories[1][1] = sentence(rng, 80)  # a story longer than n_ctx
    import datasets
    for name in (datasets.VAL_FILE, datasets.TEST_FILE):
        with open(roc / name, 'w', newline='') as f:
            csv.writer(f).writerows([header] + stories)
    race = d / 'RACE'
    for split in ('train', 'dev', 'test'):
        for group in ('high', 'middle'):
            folder = race / split / group
            folder.mkdir(parents=True)
            import json
            article = sentence(rng, 70 if group == 'high' else 20)
            obj = dict(article=article, questions=['What did the cat do?', 'Where was the dog?'],
                       options=[[sentence(rng, 3) for _ in range(4)] for _ in range(2)], answers=['A', 'C'])
            (folder / '1.txt').write_text(json.dumps(obj))
    return d


def reference_mean_log_prob(fam, model, context, piece):
    """The mean log-probability of piece after context: one plain forward of the model's LM head over every row,
    the softmax over the token rows only, the input cut to its last n_ctx tokens."""
    ids = (list(context) + list(piece))[-N_CTX:]
    start = len(ids) - len(piece)
    n_vocab = model.cfg.n_vocab
    with torch.no_grad():
        if fam == 'gpt1':
            x = torch.tensor([[[t, n_vocab + model.cfg.n_special + i] for i, t in enumerate(ids)]])
            logits = model(x)[0]  # [T, every row of the table]
        else:
            logits = model(torch.tensor([ids]))[0][0]  # [T, n_vocab]
    log_p = torch.log_softmax(logits[:, :n_vocab].double(), -1)  # the token rows only
    return float(np.mean([log_p[start - 1 + j, t].item() for j, t in enumerate(piece)]))


def reference_next_logits(fam, model, ids, words):
    ids = list(ids)[-N_CTX:]
    n_vocab = model.cfg.n_vocab
    with torch.no_grad():
        if fam == 'gpt1':
            logits = model(torch.tensor([[[t, n_vocab + model.cfg.n_special + i] for i, t in enumerate(ids)]]))[0]
        else:
            logits = model(torch.tensor([ids]))[0][0]
    return [logits[-1, w].item() for w in words]


def encode(fam, tokenizer, text, following=False):
    """The reference's own encoding rule: GPT-2 pieces after the first carry one leading space."""
    if fam == 'gpt2' and following:
        text = ' ' + text.strip()
    elif fam == 'gpt2':
        text = text.strip()
    return tokenizer.encode([text], verbose=False)[0]


def lm_of(family, batch_size=3):
    fam, model, tokenizer = family
    return heuristics.scoring_lm(model, tokenizer, batch_size=batch_size)


def test_rocstories_scores_equal_the_plain_computation_and_long_stories_are_cut(family, data):
    fam, model, tokenizer = family
    result = heuristics.zero_shot(lm_of(family), 'rocstories', str(data / 'roc'), 'val')
    texts, labels, _ = heuristics.read_split('rocstories', str(data / 'roc'), 'val')
    assert len(encode(fam, tokenizer, texts['story'][1])) > N_CTX  # this story is cut
    for i, (story, endings) in enumerate(zip(texts['story'], texts['endings'])):
        context = encode(fam, tokenizer, story)
        want = [reference_mean_log_prob(fam, model, context, encode(fam, tokenizer, e, True)) for e in endings]
        np.testing.assert_allclose(result.scores[i], want, rtol=1e-4, atol=1e-5)
        assert result.predictions[i] == int(np.argmax(want))
    assert result.value == pytest.approx(100 * np.mean(result.predictions == labels))


def test_race_scores_equal_the_plain_computation_with_middle_and_high(family, data):
    fam, model, tokenizer = family
    result = heuristics.zero_shot(lm_of(family), 'race', str(data), 'test')
    texts, labels, groups = heuristics.read_split('race', str(data), 'test')
    for i in range(len(labels)):
        context = encode(fam, tokenizer, texts['document'][i]) + encode(fam, tokenizer, texts['question'][i], True)
        want = [reference_mean_log_prob(fam, model, context, encode(fam, tokenizer, o, True))
                for o in texts['options'][i]]
        np.testing.assert_allclose(result.scores[i], want, rtol=1e-4, atol=1e-5)
    assert result.predictions.tolist() == result.scores.argmax(1).tolist()
    middle = np.asarray(groups) == 'middle'
    assert result.extra['middle'] == pytest.approx(100 * np.mean(result.predictions[middle] == labels[middle]))
    assert result.extra['high'] == pytest.approx(100 * np.mean(result.predictions[~middle] == labels[~middle]))


def test_sst2_compares_the_next_token_logits_of_positive_and_negative(family, data):
    fam, model, tokenizer = family
    result = heuristics.zero_shot(lm_of(family), 'sst2', str(data), 'dev')
    texts, labels, _ = heuristics.read_split('sst2', str(data), 'dev')
    words = [encode(fam, tokenizer, w, True) for w in ('negative', 'positive')]
    assert all(len(w) == 1 for w in words)
    for i, s in enumerate(texts['sentence']):
        ids = encode(fam, tokenizer, s) + encode(fam, tokenizer, 'very', True)
        want = reference_next_logits(fam, model, ids, [w[0] for w in words])
        np.testing.assert_allclose(result.scores[i], want, rtol=1e-4, atol=1e-4)
        assert result.predictions[i] == int(want[1] > want[0])
    assert result.value == pytest.approx(100 * np.mean(result.predictions == labels))


def test_cola_scores_the_tokens_after_the_first_against_the_training_threshold(family, data):
    fam, model, tokenizer = family
    from sklearn.metrics import matthews_corrcoef
    result = heuristics.zero_shot(lm_of(family), 'cola', str(data), 'dev')
    scores = {}
    for split in ('train', 'dev'):
        texts, labels, _ = heuristics.read_split('cola', str(data), split)
        ids = [encode(fam, tokenizer, s) for s in texts['sentence']]
        scores[split] = (np.array([reference_mean_log_prob(fam, model, t[:1], t[1:]) for t in ids]), labels)
    np.testing.assert_allclose(result.scores[:, 0], scores['dev'][0], rtol=1e-4, atol=1e-5)
    train_scores, train_labels = scores['train']
    mccs = {t: matthews_corrcoef(train_labels, train_scores >= t) for t in train_scores}
    best = max(mccs.values())
    assert result.extra['threshold'] == pytest.approx(min(t for t, m in mccs.items() if m >= best - 1e-9), abs=1e-4)
    assert result.predictions.tolist() == (result.scores[:, 0] >= result.extra['threshold']).astype(int).tolist()


def test_dprd_scores_the_rest_of_the_sentence_after_each_candidate(family):
    from pathlib import Path
    fam, model, tokenizer = family
    fixtures = Path(__file__).parent / 'fixtures' / 'dprd'
    result = heuristics.zero_shot(lm_of(family), 'dprd', str(fixtures), 'test')
    # the second record: 'It was late, so the cat followed the dog home because it was hungry.': the pronoun is the
    # 'it' after both candidates, not the sentence's first word
    cases = [('Mary thanked Anna because ', ('Mary', 'Anna'), ' had helped her.'),
             ('It was late, so the cat followed the dog home because ', ('the cat', 'the dog'), ' was hungry.'),
             ('The trophy would not fit in the suitcase because ', ('the trophy', 'the suitcase'), ' was too big.')]
    for i, (before, candidates, after) in enumerate(cases):
        want = [reference_mean_log_prob(fam, model, encode(fam, tokenizer, before + c),
                                        encode(fam, tokenizer, after, True)) for c in candidates]
        np.testing.assert_allclose(result.scores[i], want, rtol=1e-4, atol=1e-5)
    assert result.value == pytest.approx(100 * np.mean(result.predictions == np.array([1, 0, 0])))


def test_batches_do_not_change_the_scores(family, data):
    one = heuristics.zero_shot(lm_of(family, batch_size=1), 'rocstories', str(data / 'roc'), 'val')
    many = heuristics.zero_shot(lm_of(family, batch_size=8), 'rocstories', str(data / 'roc'), 'val')
    np.testing.assert_allclose(one.scores, many.scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('task, folder, split, other, other_file', [
    ('sst2', 'SST-2', 'dev', 'train', 'train.tsv'), ('cola', 'CoLA', 'train', 'test', 'test.tsv'),
    ('race', 'RACE', 'test', 'dev', 'dev/high/1.txt')])
def test_read_split_parses_only_the_split_it_reads(data, tmp_path, task, folder, split, other, other_file):
    import shutil
    import task_datasets
    shutil.copytree(data / folder, tmp_path / folder)
    whole = task_datasets.read_task(task, str(tmp_path))[split]
    (tmp_path / folder / other_file).write_text('not\ta\tvalid\tfile\n')  # another split's file, malformed
    texts, labels, groups = heuristics.read_split(task, str(tmp_path), split)
    assert tuple(texts.values()) == whole['fields'] and groups == whole['groups']
    np.testing.assert_array_equal(labels, whole['labels'])
    with pytest.raises(ValueError, match=other_file.split('/')[-1]):  # read when asked for
        heuristics.read_split(task, str(tmp_path), other)
    with pytest.raises(ValueError, match=f"{task} has no split 'nope': use one of train, dev, test"):
        heuristics.read_split(task, str(tmp_path), 'nope')


def test_a_piece_longer_than_the_context_is_refused(family):
    lm = lm_of(family)
    with pytest.raises(ValueError, match=r'example 0 choice 1: the scored piece has \d+ tokens; it needs 1 to n_ctx - 1'):
        heuristics.choice_scores(lm, [('A story.',)], [('Short.', ' '.join(['word'] * 80))])


class CharacterEncoder:
    """A vocabulary of single characters: no word is one token."""

    def encode(self, texts, verbose=False):
        return [[ord(c) % 200 for c in t] for t in texts]


def test_sst2_needs_single_token_sentiment_words(family):
    _, model, _ = family
    lm = heuristics.scoring_lm(model, CharacterEncoder())
    with pytest.raises(ValueError, match=r"the vocabulary has no single token for 'negative' \(it encodes to 8 "
                                         r"tokens\)"):
        heuristics.sst2_scores(lm, ['A fine film.'])


@pytest.mark.filterwarnings('ignore:A single label was found')
@given(st.lists(st.tuples(st.integers(-5, 5), st.booleans()), min_size=1, max_size=30))
@example([(0, False)] * 3 + [(0, True)] * 4 + [(1, True)] * 2 + [(-1, False)])  # a tie the rounding breaks: 1/sqrt(6) twice
def test_the_threshold_is_the_smallest_of_the_best_on_the_training_scores(pairs):
    from sklearn.metrics import matthews_corrcoef
    scores, labels = np.array([s for s, _ in pairs], dtype=float), np.array([y for _, y in pairs])
    t, mcc = heuristics.mcc_threshold(scores, labels)
    brute = {float(c): matthews_corrcoef(labels, scores >= c) for c in np.unique(scores)}
    best = max(brute.values())
    assert mcc == pytest.approx(best, abs=1e-12)
    assert t == min(c for c, m in brute.items() if abs(m - best) < 1e-12)


def test_the_pronoun_follows_both_candidates_else_it_is_the_first():
    span = heuristics.pronoun_span
    s = 'It was late, so the cat followed the dog home because it was hungry.'
    assert s[slice(*span(s, 'it', ('the cat', 'the dog'), 'x'))] == 'it' and span(s, 'it', ('the cat', 'the dog'),
                                                                                  'x')[0] == s.index('because it') + 8
    s = 'He said that Tom met Bill.'  # no occurrence after both: the first
    assert span(s, 'he', ('Tom', 'Bill'), 'x') == (0, 2)
    with pytest.raises(ValueError, match="where: the pronoun 'she' is not a word of the sentence"):
        span('Tom saw the theme.', 'she', ('Tom', 'the theme'), 'where')
