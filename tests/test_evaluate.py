"""Tests for evaluate.py: every figure of every task equals a naive computation written here (one plain forward per
scored token, log_softmax over the token rows) on tiny random GPT-1 and GPT-2 models; the readers read the real
files' formats (excerpts in tests/fixtures/evaluation/); bad input is one line."""
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import evaluate
from models import load_model, load_tokenizer
from tests.helpers import write_tiny_checkpoint, write_tiny_gpt2

FIXTURES = Path(__file__).resolve().parent / 'fixtures' / 'evaluation'
WIKI = FIXTURES / 'wiki.valid.tokens'
LAMBADA = FIXTURES / 'lambada_test.jsonl'
N_CTX = 64  # both tiny models' positions
TEXT = ('The cat sat on the mat. It was a sunny day, and the dog ran to the park!\n\nShe read a long book; he baked '
        'a sweet cake. "Why?" asked the old man, who was happy at night. ') * 3
HELLASWAG = [
    dict(ind=4, activity_label='Removing ice from car', ctx_a='Then, the man writes over the snow covering the window '
         'of a car, and a woman wearing winter clothes smiles.', ctx_b='then',
         ctx='Then, the man writes over the snow covering the window of a car, and a woman wearing winter clothes '
             'smiles. then', split='val', split_type='indomain', label=3, source_id='activitynet~v_-1IBHYS3L-Y',
         endings=[', the man adds wax to the windshield and cuts it.', ', a person board a ski lift, while two men '
                  'supporting the head of the person wearing winter clothes snow as the we girls sled.',
                  ', the man puts on a christmas coat, knitted with netting.', ', the man continues removing the snow '
                  'on his car.']),
    dict(ind=8, activity_label='Baking cookies', ctx_a='A female chef in white uniform shows a stack of baking pans in '
         'a large kitchen presenting them.', ctx_b='the pans',
         ctx='A female chef in white uniform shows a stack of baking pans in a large kitchen presenting them. the pans',
         split='val', split_type='indomain', label=3, source_id='activitynet~v_-2dxp-mv2zo',
         endings=['contain egg yolks and baking soda.', 'are then sprinkled with brown sugar.', 'are placed in a '
                  'strainer on the counter.', 'are filled with pastries and loaded into the oven.']),
    dict(ind=12, activity_label='Getting a haircut', ctx_a='The man in the center is demonstrating a hairstyle on the '
         'person wearing the blue shirt.', ctx_b='the man in the blue shirt',
         ctx='The man in the center is demonstrating a hairstyle on the person wearing the blue shirt. the man in the '
             'blue shirt', split='val', split_type='indomain', label=1, source_id='activitynet~v_-3w7mpnF1PU',
         endings=['is standing on the sponge cutting the hair of the person wearing the blue shirt.', 'is sitting on '
                  'a chair.', 'is doing the same thing.', 'smiles.']),
]


@pytest.fixture(scope='module', params=['gpt1', 'gpt2'])
def family_dir(request, tmp_path_factory):
    """Return (family, weights folder, extra flags) of a tiny random model of each family."""
    d = tmp_path_factory.mktemp(request.param)
    if request.param == 'gpt1':
        write_tiny_checkpoint(d, np.random.default_rng(0), n_embd=32, n_layer=2, n_pos=N_CTX)
        return 'gpt1', d, ['--n_head', '4']
    return 'gpt2', write_tiny_gpt2(d / 'model', n_ctx=N_CTX), []


@pytest.fixture(scope='module')
def naive(family_dir):
    """Return the Naive scorer of the tiny model."""
    family, path, flags = family_dir
    n_head = 4 if family == 'gpt1' else None
    return Naive(family, load_model(str(path), lm=True, n_head=n_head), load_tokenizer(str(path)))


class Naive:
    """log p(token | context) by one plain forward of the context alone, a softmax over the token rows only."""

    def __init__(self, family, model, tokenizer):
        self.family, self.tokenizer = family, tokenizer
        self.transformer = getattr(model, 'transformer', model)
        self.table = self.transformer.lm_weight[:self.transformer.cfg.n_vocab].detach().double()  # the token rows

    def encode(self, text):
        return self.tokenizer.encode([text], verbose=False)[0]

    def log_probs(self, context):
        """Return log p(next token | context) [n_vocab] in float64."""
        context = list(context)
        x = torch.stack([torch.tensor(context), self.transformer.pos_offset + torch.arange(len(context))], -1)
        with torch.no_grad():
            h = self.transformer(x[None])[0, -1].double()  # [n_embd]
        return F.log_softmax(self.table @ h, -1)

    def continuation(self, context, target, n_ctx=N_CTX):
        """Return (summed log p of target after context, every target token the argmax) on the last n_ctx tokens."""
        seq = (list(context) + list(target))[-n_ctx:]
        start = len(seq) - len(target)
        logp, hit = 0.0, True
        for i in range(start, len(seq)):
            scores = self.log_probs(seq[:i])
            logp += float(scores[seq[i]])
            hit = hit and int(scores.argmax()) == seq[i]
        return logp, hit

    def pieces(self, context, piece):
        """Return the ids of (context, piece): GPT-2 the piece after one space, GPT-1 each as it is."""
        if self.family == 'gpt2':
            return self.encode(context.strip()), self.encode(' ' + piece.strip())
        return self.encode(context), self.encode(piece)


def naive_stream(naive, ids, n_ctx, stride):
    """Return (nll_sum, n_tokens): token i (i >= 1) scored after ids[b:i], b the start of the first window (starts 0,
    stride, 2 stride, ...; n_ctx inputs each) whose inputs reach position i - 1."""
    nll, n = 0.0, 0
    for i in range(1, len(ids)):
        b = 0
        while b + n_ctx < i:  # window [b, b + n_ctx) holds inputs up to b + n_ctx - 1: it scores target i <= b + n_ctx
            b += stride
        nll -= float(naive.log_probs(ids[b:i])[ids[i]])
        n += 1
    return nll, n


def run(family_dir, task, data, tmp_path, *extra):
    """Return evaluate.py's JSON record of task on data (and check the printed line is its summary)."""
    family, path, flags = family_dir
    out = tmp_path / f'{task}.json'
    assert evaluate.main(['--task', task, '--data', str(data), '--model_dir', str(path), *flags, '--device', 'cpu',
                          '--quiet', '--out', str(out), *extra]) == 0
    return json.loads(out.read_text())


def check_perplexity(record, nll, n_tokens, n_bytes, n_words):
    assert record['n_tokens'] == n_tokens
    assert record['nll_sum'] == pytest.approx(nll, rel=1e-5)
    assert record['token_ppl'] == pytest.approx(math.exp(nll / n_tokens), rel=1e-5)
    assert record['bits_per_byte'] == pytest.approx(nll / math.log(2) / n_bytes, rel=1e-5)
    assert record['word_ppl'] == pytest.approx(math.exp(nll / n_words), rel=1e-5)


@pytest.mark.parametrize('stride', [None, 24])
def test_text_figures_equal_the_naive_computation(family_dir, naive, tmp_path, capsys, stride):
    data = tmp_path / 'text.txt'
    data.write_text(TEXT, encoding='utf-8')
    n_ctx = 32  # the weights' --n_ctx crops the model: the windows are 32 tokens
    extra = ['--n_ctx', str(n_ctx), '--batch_size', '2'] + ([] if stride is None else ['--stride', str(stride)])
    record = run(family_dir, 'text', data, tmp_path, *extra)
    ids = naive.encode(TEXT)
    assert len(ids) > 3 * n_ctx  # several windows, the last one short
    nll, n = naive_stream(naive, ids, n_ctx, stride or n_ctx)
    assert n == len(ids) - 1  # each token after the first scored exactly once
    check_perplexity(record, nll, n, len(TEXT.encode('utf-8')), len(TEXT.split()))
    assert record['task'] == 'text' and record['n_ctx'] == n_ctx and record['stride'] == (stride or n_ctx)
    assert record['n_examples'] == len(evaluate.window_spans(len(ids) - 1, n_ctx, stride or n_ctx))
    line = capsys.readouterr().out.strip().splitlines()
    assert line == [evaluate.summary_line(record)]


def test_a_smaller_stride_changes_only_the_later_windows(family_dir, naive, tmp_path):
    """The tokens of the first window are scored alike; the later ones see more context with stride < n_ctx."""
    data = tmp_path / 'text.txt'
    data.write_text(TEXT, encoding='utf-8')
    whole = run(family_dir, 'text', data, tmp_path, '--n_ctx', '32')
    overlap = run(family_dir, 'text', data, tmp_path, '--n_ctx', '32', '--stride', '8')
    assert whole['n_tokens'] == overlap['n_tokens']
    ids = naive.encode(TEXT)
    first = sum(-float(naive.log_probs(ids[:i])[ids[i]]) for i in range(1, 33))
    later_whole = naive_stream(naive, ids, 32, 32)[0] - first
    later_overlap = naive_stream(naive, ids, 32, 8)[0] - first
    assert later_whole != pytest.approx(later_overlap, rel=1e-4)
    assert whole['nll_sum'] - overlap['nll_sum'] == pytest.approx(later_whole - later_overlap, rel=1e-3, abs=1e-3)


def test_limit_scores_the_first_windows_only(family_dir, naive, tmp_path):
    data = tmp_path / 'text.txt'
    data.write_text(TEXT, encoding='utf-8')
    record = run(family_dir, 'text', data, tmp_path, '--n_ctx', '32', '--limit', '2')
    assert record['n_examples'] == 2 and record['n_tokens'] == 64
    ids = naive.encode(TEXT)
    assert record['nll_sum'] == pytest.approx(naive_stream(naive, ids[:65], 32, 32)[0], rel=1e-5)
    assert record['bits_per_byte'] is None and record['word_ppl'] is None  # they need the whole file


def test_wikitext_figures_equal_the_naive_computation(family_dir, naive, tmp_path):
    original = WIKI.read_text(encoding='utf-8')
    lines = ''.join(original.splitlines(keepends=True)[:6])  # the heading and the first paragraph
    data = tmp_path / 'wiki.valid.tokens'
    data.write_text(lines, encoding='utf-8')
    record = run(family_dir, 'wikitext', data, tmp_path, '--batch_size', '3')
    ids = naive.encode(evaluate.wikitext_detokenize(lines))
    nll, n = naive_stream(naive, ids, N_CTX, N_CTX)
    # bytes and words of the tokenized file, as lm-evaluation-harness counts them
    check_perplexity(record, nll, n, len(lines.encode('utf-8')), len(lines.split()))


DETOKENIZER_CASES = [  # (tokenized, detokenized), one per rule of Megatron-LM's list
    ("the players ' union", "the players' union"),
    ('a 2 @-@ 1 win', 'a 2-1 win'),
    ('1 @,@ 000 people', '1,000 people'),
    ('3 @.@ 5 metres', '3.5 metres'),
    ('as follows : one', 'as follows: one'),
    ('first ; second', 'first; second'),
    ('the end . The start', 'the end. The start'),
    ('stop ! Go', 'stop! Go'),
    ('why ? Because', 'why? Because'),
    ('red , green', 'red, green'),
    ('the lobster ( Homarus ) lives', 'the lobster (Homarus) lives'),
    ('see [ 1 ] here', 'see [1] here'),
    ('a { b } c', 'a {b} c'),
    ('he said " hello there " and left', 'he said "hello there" and left'),
    ("the ' Hunter ' song", "the 'Hunter' song"),
    (' = = = = Deep = = = = ', ' ==== Deep ==== '),
    (' = = = Sub = = = ', ' === Sub === '),
    (' = = Section = = ', ' == Section == '),
    (' = Title = ', ' = Title = '),
    ('20 \N{DEGREE SIGN} C', '20\N{DEGREE SIGN}C'),
    ('end \nnext', 'end\nnext'),
    ('end\n next', 'end\nnext'),
    ("Ireland 's coast", "Ireland's coast"),
    ('a <unk> lobster', 'a <unk> lobster'),
]


@pytest.mark.parametrize('tokenized, detokenized', DETOKENIZER_CASES)
def test_the_wikitext_detokenizer_follows_each_rule(tokenized, detokenized):
    assert evaluate.wikitext_detokenize(tokenized) == detokenized


def test_the_wikitext_reader_reads_the_real_format():
    text, original = evaluate.read_task_data('wikitext', str(WIKI))
    assert original == WIKI.read_text(encoding='utf-8') and original.startswith(' \n = Homarus gammarus = \n')
    assert ' @-@ ' in original and ' @-@ ' not in text and ' @,@ ' not in text and ' , ' not in text
    assert '<unk>' in text and '\n= Homarus gammarus =\n' in text
    assert 'Homarus gammarus, known as the European lobster or common lobster, is a species of <unk> lobster' in text


def test_lambada_reader_reads_the_real_format():
    records = evaluate.read_task_data('lambada', str(LAMBADA))
    assert len(records) == 20 and all(set(r) == {'text'} for r in records)
    assert records[0]['text'].startswith('In my palm is a clear stone')
    assert records[1]['text'].rsplit(' ', 1)[1] == 'Shane'


def test_lambada_figures_equal_the_naive_computation(family_dir, naive, tmp_path):
    """On the real excerpt: passages longer than n_ctx keep their last tokens, as the naive computation does."""
    texts = [json.loads(line)['text'] for line in LAMBADA.read_text(encoding='utf-8').splitlines()[:6]]
    data = tmp_path / 'lambada.jsonl'
    data.write_text(''.join(json.dumps(dict(text=t)) + '\n' for t in texts), encoding='utf-8')
    record = run(family_dir, 'lambada', data, tmp_path, '--batch_size', '4')
    token_hits, word_hits, word_logps = [], [], []
    for text in texts:
        ids = naive.encode(text)
        token_hits.append(naive.continuation(ids[:-1], ids[-1:])[1])
        logp, hit = naive.continuation(*naive.pieces(*text.rsplit(' ', 1)))
        word_hits.append(hit)
        word_logps.append(logp)
    assert record['n_examples'] == len(texts) and record['n_ctx'] == N_CTX and record['stride'] is None
    assert record['task'] == 'lambada' and record['model'] == str(family_dir[1])
    assert record['acc_token'] == pytest.approx(100 * np.mean(token_hits))
    assert record['acc_word'] == pytest.approx(100 * np.mean(word_hits))
    assert record['ppl'] == pytest.approx(math.exp(-np.mean(word_logps)), rel=1e-5)


def test_a_greedy_continuation_is_a_hit(family_dir, naive):
    """The accuracies count a target the model predicts token by token (built here from its own argmaxes)."""
    from heuristics import scoring_lm
    family, path, _ = family_dir
    model = load_model(str(path), lm=True, n_head=4 if family == 'gpt1' else None)
    lm = scoring_lm(model, naive.tokenizer, batch_size=2)
    context = naive.encode('the cat sat on the mat and')
    greedy, second = [], []
    for _ in range(3):
        ranked = naive.log_probs(context + greedy).argsort(descending=True)
        greedy.append(int(ranked[0]))
        second.append(int(ranked[1]))
    targets = [greedy, [second[0]] + greedy[1:], greedy[:2] + [second[2]], greedy[:1]]
    scores = evaluate.continuation_scores(lm, [(context, t, f'target {k}') for k, t in enumerate(targets)])
    assert [hit for _, hit in scores] == [True, False, False, True]
    for (logp, _), target in zip(scores, targets):
        assert logp == pytest.approx(naive.continuation(context, target)[0], rel=1e-5)


def test_hellaswag_figures_equal_the_naive_computation(family_dir, naive, tmp_path):
    data = tmp_path / 'hellaswag_val.jsonl'
    data.write_text(''.join(json.dumps(r) + '\n' for r in HELLASWAG), encoding='utf-8')
    record = run(family_dir, 'hellaswag', data, tmp_path, '--batch_size', '3')
    hits, hits_norm = [], []
    for r in HELLASWAG:
        logps = [naive.continuation(*naive.pieces(r['ctx'], e))[0] for e in r['endings']]
        hits.append(int(np.argmax(logps)) == r['label'])
        hits_norm.append(int(np.argmax([lp / len(e) for lp, e in zip(logps, r['endings'])])) == r['label'])
    assert record['n_examples'] == 3
    assert run(family_dir, 'hellaswag', data, tmp_path, '--limit', '2')['n_examples'] == 2
    assert record['acc'] == pytest.approx(100 * np.mean(hits))
    assert record['acc_norm'] == pytest.approx(100 * np.mean(hits_norm))


def bad(family_dir, tmp_path, task, content, capsys):
    """Return the one error line of evaluate.py on a --data file holding content (bytes; None: a folder, 'fifo': a
    named pipe, 'missing': nothing there)."""
    family, path, flags = family_dir
    data = tmp_path / 'data'
    if content is None:
        data.mkdir()
    elif content == 'fifo':
        os.mkfifo(data)
    elif content != 'missing':
        data.write_bytes(content)
    assert evaluate.main(['--task', task, '--data', str(data), '--model_dir', str(path), *flags, '--device', 'cpu',
                          '--quiet']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('evaluate.py: error: ')
    return err[0], str(data)


@pytest.mark.parametrize('task, content, message', [
    ('text', None, 'is a folder: a file was expected there'),
    ('text', 'missing', 'is missing: give --data an existing file'),
    ('lambada', 'fifo', 'not a regular file (a pipe, device or socket)'),
    ('text', b'\xef\xbb\xbf \n', 'the file is empty'),
    ('text', b'', 'the file is empty'),
    ('wikitext', b' \n \n', 'the file is empty'),
    ('text', b'caf\xe9 au lait', 'not UTF-8 text'),
    ('lambada', b'{"text": "a b"}\n[1, 2]\n', 'line 2: not a JSON object'),
    ('lambada', b'{"text": "a b"}\n\n{"passage": "a b"}\n', 'line 3: no "text" string'),
    ('lambada', b'{"text": "a b"}\n{"text": "a b"\n', 'line 2: not JSON'),
    ('lambada', b'{"text": "oneword"}\n', 'line 1: "text" has no space before its last word'),
    ('hellaswag', b'{"ctx": "a", "endings": ["b", "c"], "label": 0}\n', 'line 1: "endings" is not a list of 4'),
    ('hellaswag', b'{"ctx": "a", "endings": ["b", "c", "d", "e"], "label": 4}\n', 'line 1: "label" is not an'),
    ('hellaswag', b'\n\n', 'the file is empty'),
    ('hellaswag', b'[' * 100000 + b'\n', 'line 1: JSON nested too deeply'),
])
def test_bad_input_is_one_line_naming_the_file(family_dir, tmp_path, capsys, task, content, message):
    line, path = bad(family_dir, tmp_path, task, content, capsys)
    assert path in line and message in line


def test_a_file_too_large_is_refused(family_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(evaluate, 'MAX_BYTES', 10)
    line, path = bad(family_dir, tmp_path, 'text', b'x' * 11, capsys)
    assert line == f'evaluate.py: error: --data {path}: is 11 bytes, more than any test set (10 bytes at most)'


def test_importing_does_no_work_and_help_names_both_families(capsys):
    with pytest.raises(SystemExit):
        evaluate.parse_args(['--help'])
    text = capsys.readouterr().out
    assert 'GPT-1' in text and 'GPT-2' in text
    settings = evaluate.parse_args(['--task', 'text', '--data', 'f'])
    assert settings.stride is None and settings.batch_size == 8
    with pytest.raises(Exception):
        settings.task = 'lambada'  # frozen


def test_a_stride_beyond_n_ctx_is_one_line(family_dir, tmp_path, capsys):
    data = tmp_path / 'text.txt'
    data.write_text(TEXT, encoding='utf-8')
    family, path, flags = family_dir
    assert evaluate.main(['--task', 'text', '--data', str(data), '--model_dir', str(path), *flags, '--n_ctx', '16',
                          '--stride', '17', '--device', 'cpu', '--quiet']) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        'evaluate.py: error: --stride 17: give 1 to n_ctx = 16 (a larger one would skip tokens)']


@pytest.mark.parametrize('argv, message', [
    (['--task', 'lambada', '--data', 'f', '--stride', '4'], '--stride: only the text and wikitext tasks run windows'),
    (['--task', 'text', '--data', 'f', '--batch_size', '0'], '--batch_size 0: give at least 1'),
])
def test_bad_flags_are_usage_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as stopped:
        evaluate.parse_args(argv)
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_a_perplexity_beyond_floats_is_inf():
    assert evaluate.perplexity_figures(1e6, 10, 5, 1)['word_ppl'] == math.inf
