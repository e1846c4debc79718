"""Language-model evaluation of GPT-1 and GPT-2 weights in any format: perplexity of a text file or of WikiText,
LAMBADA's last-word accuracy, HellaSwag's ending accuracy (docs/evaluation.md defines each protocol exactly).

TF counterpart: none (the GPT-2 paper reports the figures; the release has no code for them). Log-probabilities come
from a softmax over the vocabulary's token rows only (heuristics.py's convention), never a special or position row.

    python evaluate.py --model_dir models/124M/ --task wikitext --data wiki.test.tokens
    python evaluate.py --model_dir models/124M/ --task lambada --data lambada_test.jsonl --out lambada.json
"""
import argparse
import json
import math
import re
import sys
from dataclasses import dataclass

import torch

import untrusted
from flags import add_precision_arg, add_weights_args, weights_choice
from models import WeightsChoice

TASKS = ('text', 'wikitext', 'lambada', 'hellaswag')
MAX_BYTES = 1 << 30  # a test set is at most a few hundred MB: a larger file is not one
HELLASWAG_ENDINGS = 4

# WikiText's tokenization undone, in order (Megatron-LM's rules as lm-evaluation-harness's wikitext_detokenizer
# lists them): (tokenized, detokenized) literal replacements, then the bracket and quote rules below, then the rest.
CONTRACTIONS = (("s '", "s'"),)
NUMBER_SEPARATORS = ((' @-@ ', '-'), (' @,@ ', ','), (' @.@ ', '.'))
PUNCTUATION = tuple((f' {p} ', f'{p} ') for p in ':;.!?,')
# (open, close): the spaces just inside a pair are removed, the shortest span first
ENCLOSERS = (('(', ')'), ('[', ']'), ('{', '}'), ('"', '"'), ("'", "'"))
MISCELLANEOUS = (('= = = =', '===='), ('= = =', '==='), ('= =', '=='), (' \N{DEGREE SIGN} ', '\N{DEGREE SIGN}'),
                 (' \n', '\n'), ('\n ', '\n'), (" 's", "'s"))


def replace_all(text, pairs):
    """Return text with each (old, new) of pairs replaced, in order."""
    for old, new in pairs:
        text = text.replace(old, new)
    return text


def tighten_enclosers(text):
    """Return text with the spaces just inside each bracket or quote pair removed ("( a )" -> "(a)")."""
    for left, right in ENCLOSERS:
        inner = re.escape(right)
        # non-greedy: the span runs to the nearest closer and holds no closer itself
        text = re.sub(rf'{re.escape(left)}\s*([^{inner}]*?)\s*{inner}', lambda m, a=left, b=right: f'{a}{m[1]}{b}',
                      text)
    return text


def wikitext_detokenize(text):
    """Return WikiText's tokenized text as plain text (Megatron-LM's rules; `<unk>` is kept)."""
    text = replace_all(text, CONTRACTIONS + NUMBER_SEPARATORS + PUNCTUATION)
    return replace_all(tighten_enclosers(text), MISCELLANEOUS)


def read_text(path):
    """Return the UTF-8 text of the test set at path: a regular file of at most MAX_BYTES that holds more than
    whitespace (a leading BOM dropped)."""
    try:
        text = untrusted.read_text(path, limit=MAX_BYTES, what='test set', missing='give --data an existing file')
    except untrusted.BadFile as err:
        raise ValueError(f'--data {err}') from None
    if not text.strip():
        raise ValueError(f'--data {path}: the file is empty')
    return text


def read_jsonl(path, check):
    """Return the JSON objects of the lines of path (blank lines skipped), each checked by check(obj) (a problem
    string or None); a line that fails is one ValueError naming the file and the line number."""
    records = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f'--data {path} line {number}: not JSON ({err.msg})') from None
        except RecursionError:  # arrays nested thousands deep: no record of a data set
            raise ValueError(f'--data {path} line {number}: JSON nested too deeply to be a record') from None
        problem = 'not a JSON object' if not isinstance(obj, dict) else check(obj)
        if problem:
            raise ValueError(f'--data {path} line {number}: {problem}')
        records.append(obj)
    if not records:
        raise ValueError(f'--data {path}: the file holds no examples')
    return records


def lambada_problem(obj):
    """Return what is wrong with a LAMBADA record (a "text" string with a space before its last word), or None."""
    text = obj.get('text')
    if not isinstance(text, str):
        return 'no "text" string'
    if ' ' not in text.strip():
        return '"text" has no space before its last word'
    return None


def hellaswag_problem(obj):
    """Return what is wrong with a HellaSwag record ("ctx" string, 4 "endings" strings, "label" 0..3), or None."""
    endings, label = obj.get('endings'), obj.get('label')
    if not isinstance(obj.get('ctx'), str):
        return 'no "ctx" string'
    if not (isinstance(endings, list) and len(endings) == HELLASWAG_ENDINGS and all(isinstance(e, str) and e.strip()
                                                                                    for e in endings)):
        return f'"endings" is not a list of {HELLASWAG_ENDINGS} non-empty strings'
    if isinstance(label, str) and label.isdigit():  # the HF copy stores it as a string
        label = int(label)
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < HELLASWAG_ENDINGS:
        return f'"label" is not an integer 0 to {HELLASWAG_ENDINGS - 1}'
    return None


def count_words(text):
    """Return the number of whitespace-separated words of text."""
    return len(text.split())


def window_spans(n_inputs, n_ctx, stride):
    """Return [(begin, end, n_new)] of the windows over n_inputs positions: each at most n_ctx long, advancing by
    stride, scoring its last n_new positions (those no earlier window scored): every position is scored once."""
    spans, scored_to = [], 0
    for begin in range(0, n_inputs, stride):
        end = min(begin + n_ctx, n_inputs)
        spans.append((begin, end, end - scored_to))
        scored_to = end
        if end == n_inputs:
            break
    return spans


def stream_nll(lm, ids, stride, limit=None, progress=None):
    """Return (nll_sum in nats, n_tokens scored, windows run) of the token stream ids: position i's input is ids[i],
    its target ids[i + 1]; windows of lm.n_ctx inputs advancing by stride (window_spans); limit: the first windows."""
    from heuristics import evaluating, hidden_states, token_log_probs
    spans = window_spans(len(ids) - 1, lm.n_ctx, stride)[:limit]
    seqs = [ids[begin:end] for begin, end, _ in spans]
    if progress is not None and progress.total is None:
        progress.total = len(spans)  # known only now that the text is encoded
    total = torch.zeros((), dtype=torch.float64)
    with evaluating(lm.transformer):
        for k, h in hidden_states(lm, seqs):  # h [end - begin, n_embd]
            begin, end, n_new = spans[k]
            logp = token_log_probs(lm, h[-n_new:], ids[end - n_new + 1:end + 1])  # [n_new]
            total += -logp.double().sum().cpu()
            if progress is not None:
                progress.update(1)
    return float(total), sum(n for _, _, n in spans), len(spans)


def continuation_scores(lm, pairs, progress=None):
    """Return [(summed log p of the target, whether each target token is the argmax)] of (context ids, target ids,
    where) triples, each cut to the last n_ctx tokens (heuristics.fit_context), run lm.batch_size at a time."""
    from heuristics import evaluating, fit_context, hidden_states
    from loss import per_element_ce
    seqs, n_targets = [], []
    for context, target, where in pairs:
        context, target = fit_context(context, target, lm.n_ctx, where)
        seqs.append(context + target)
        n_targets.append(len(target))
    out = [None] * len(seqs)
    table = lm.transformer.lm_weight[:lm.n_vocab]  # the token rows only
    with evaluating(lm.transformer):
        for k, h in hidden_states(lm, seqs):  # right-padded batches; h [len(seqs[k]), n_embd], real positions only
            n, targets = n_targets[k], seqs[k][-n_targets[k]:]
            rows = h[-n - 1:-1]  # [n, n_embd]: the states that predict the target tokens
            logits = rows @ table.float().T  # [n, n_vocab]
            wanted = torch.tensor(targets, device=logits.device)  # [n]
            logp = -per_element_ce(logits, wanted)  # [n]
            hit = bool((logits.argmax(1) == wanted).all())
            out[k] = (float(logp.double().sum()), hit)
            if progress is not None:
                progress.update(1)
    return out


def safe_exp(x):
    """Return exp(x), or inf where it overflows (a text of few words and many tokens under a poor model)."""
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def perplexity_figures(nll_sum, n_tokens, n_bytes, n_words):
    """Return {n_tokens, nll_sum, token_ppl, bits_per_byte, word_ppl} (the last two None without counts)."""
    return dict(n_tokens=n_tokens, nll_sum=nll_sum, token_ppl=safe_exp(nll_sum / n_tokens),
                bits_per_byte=None if n_bytes is None else nll_sum / math.log(2) / n_bytes,
                word_ppl=None if n_words is None else safe_exp(nll_sum / n_words))


def evaluate_text(lm, text, stride, original=None, limit=None, progress=None):
    """Return the perplexity figures of text scored as one stream; bytes and words are counted on original (default:
    text), and are None when limit stops before the end (they need the whole file)."""
    original = text if original is None else original
    ids = lm.text_encoder.encode([text], verbose=False)[0]
    if len(ids) < 2:
        raise ValueError(f'the text encodes to {len(ids)} token(s): it needs 2 or more')
    nll_sum, n_tokens, n_windows = stream_nll(lm, ids, stride, limit, progress)
    whole = n_tokens == len(ids) - 1
    figures = perplexity_figures(nll_sum, n_tokens, len(original.encode('utf-8')) if whole else None,
                                 count_words(original) if whole else None)
    return dict(figures, n_examples=n_windows)


def lambada_pairs(lm, texts):
    """Return (token pairs, word pairs) of LAMBADA passages: (all but the last BPE token of the whole passage, that
    token) and (the passage up to its last space, its last word), encoded as heuristics.encode_pieces encodes two
    pieces (GPT-2: the word with its leading space; GPT-1: each piece on its own)."""
    from heuristics import encode_pieces
    whole = lm.text_encoder.encode(list(texts), verbose=False)
    token_pairs = [(ids[:-1], ids[-1:], f'passage {k}') for k, ids in enumerate(whole)]
    word_pairs = []
    for k, text in enumerate(texts):
        context, word = text.strip().rsplit(' ', 1)
        context_ids, word_ids = encode_pieces(lm, [context, word])
        word_pairs.append((context_ids, word_ids, f'passage {k}'))
    return token_pairs, word_pairs


def evaluate_lambada(lm, texts, progress=None):
    """Return {acc_token, acc_word, ppl, n_examples} of LAMBADA passages (accuracies in percent)."""
    token_pairs, word_pairs = lambada_pairs(lm, texts)
    scores = continuation_scores(lm, token_pairs + word_pairs, progress)
    token_scores, word_scores = scores[:len(texts)], scores[len(texts):]
    return dict(acc_token=100.0 * sum(hit for _, hit in token_scores) / len(texts),
                acc_word=100.0 * sum(hit for _, hit in word_scores) / len(texts),
                ppl=safe_exp(-sum(logp for logp, _ in word_scores) / len(texts)), n_examples=len(texts))


def evaluate_hellaswag(lm, records, progress=None):
    """Return {acc, acc_norm, n_examples} of HellaSwag records (percent): the ending of the highest summed
    log-likelihood given ctx, and of the highest per character of the ending."""
    from heuristics import encode_pieces
    pairs = []
    for k, record in enumerate(records):
        for c, ending in enumerate(record['endings']):
            context_ids, ending_ids = encode_pieces(lm, [record['ctx'], ending])
            pairs.append((context_ids, ending_ids, f'example {k} ending {c}'))
    scores = continuation_scores(lm, pairs, progress)
    hits, hits_norm = 0, 0
    for k, record in enumerate(records):
        logps = [logp for logp, _ in scores[k * HELLASWAG_ENDINGS:(k + 1) * HELLASWAG_ENDINGS]]
        per_char = [logp / len(ending.strip()) for logp, ending in zip(logps, record['endings'])]
        label = int(record['label'])
        hits += max(range(HELLASWAG_ENDINGS), key=logps.__getitem__) == label  # the first of equal scores
        hits_norm += max(range(HELLASWAG_ENDINGS), key=per_char.__getitem__) == label
    return dict(acc=100.0 * hits / len(records), acc_norm=100.0 * hits_norm / len(records), n_examples=len(records))


@dataclass(frozen=True)
class EvalSettings:
    """What evaluate.py's command line asks for: the task and its file, the weights, how to run them, where to write."""
    task: str
    data: str
    weights: WeightsChoice
    device: str
    stride: int = None       # text, wikitext: window advance (None: n_ctx, no overlap)
    out: str = None          # the JSON record (None: only printed)
    limit: int = None        # the first windows or examples only (None: all)
    batch_size: int = 8      # windows or sequences per forward pass
    precision: str = 'fp32'
    quiet: bool = False      # no progress bar


def parse_args(argv=None):
    """Return the EvalSettings of the command line argv (default: sys.argv)."""
    p = argparse.ArgumentParser(description='Language-model evaluation of GPT-1 and GPT-2 weights in any format: '
                                            'perplexity of a text file or WikiText, LAMBADA and HellaSwag accuracy '
                                            '(docs/evaluation.md defines each protocol).')
    p.add_argument('--task', required=True, choices=TASKS, help='text: a UTF-8 file as one stream; wikitext: a '
                   'wiki.*.tokens file, detokenized; lambada: OpenAI\'s lambada_test.jsonl; hellaswag: the official '
                   'hellaswag_val.jsonl')
    p.add_argument('--data', required=True, help='the task\'s file')
    p.add_argument('--stride', type=int, default=None, help='text, wikitext: tokens each window advances by (default: '
                   'n_ctx, no overlap; less gives each token more context)')
    p.add_argument('--out', default=None, help='write the JSON record to this file (default: none, only printed)')
    p.add_argument('--limit', type=int, default=None, help='score only the first K windows or examples, for a quick '
                   'look (default: all)')
    p.add_argument('--batch_size', type=int, default=8, help='windows or sequences per forward pass (default: 8)')
    add_precision_arg(p)
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    add_weights_args(p)
    ns = p.parse_args(argv)
    for name in ('batch_size', 'limit', 'stride', 'n_ctx'):
        if getattr(ns, name) is not None and getattr(ns, name) < 1:
            p.error(f'--{name} {getattr(ns, name)}: give at least 1')
    if ns.stride is not None and ns.task not in ('text', 'wikitext'):
        p.error(f'--stride: only the text and wikitext tasks run windows, not {ns.task}')
    return EvalSettings(ns.task, ns.data, weights_choice(ns), ns.device, ns.stride, ns.out, ns.limit, ns.batch_size,
                        ns.precision, ns.quiet)


def read_task_data(task, path):
    """Return what task scores of the file path: (text, original text) or a list of JSON records."""
    if task in ('text', 'wikitext'):
        text = read_text(path)
        return (wikitext_detokenize(text) if task == 'wikitext' else text), text
    return read_jsonl(path, lambada_problem if task == 'lambada' else hellaswag_problem)


def evaluate(lm, task, data, stride=None, limit=None, progress=None):
    """Return the figures of task on its data (read_task_data's) with the ScoringLM lm."""
    if task in ('text', 'wikitext'):
        stride = lm.n_ctx if stride is None else stride
        if not 1 <= stride <= lm.n_ctx:
            raise ValueError(f'--stride {stride}: give 1 to n_ctx = {lm.n_ctx} (a larger one would skip tokens)')
        return evaluate_text(lm, data[0], stride, data[1], limit, progress)
    examples = data[:limit]
    if task == 'lambada':
        return evaluate_lambada(lm, [r['text'] for r in examples], progress)
    return evaluate_hellaswag(lm, examples, progress)


def n_steps(task, data, limit):
    """Return how many progress steps evaluate makes for the JSON tasks (sequences run), None for the text tasks."""
    if task in ('text', 'wikitext'):
        return None  # known only once the text is encoded
    n = len(data[:limit])
    return 2 * n if task == 'lambada' else HELLASWAG_ENDINGS * n


def summary_line(record):
    """Return the one-line summary of a record."""
    shown = {k: v for k, v in record.items() if k not in ('task', 'model', 'n_ctx', 'stride') and v is not None}
    return f'{record["task"]}: ' + ', '.join(f'{k} {v:.4f}' if isinstance(v, float) else f'{k} {v}'
                                              for k, v in shown.items())


def write_json(path, record):
    """Write record to path as one JSON object on one line; return path."""
    with open(path, 'w', encoding='utf-8') as f:
        f.write(json.dumps(record) + '\n')
    return path


def run_evaluation(settings):
    """Evaluate the settings' task, print the summary line, write --out; return the record."""
    from checkpoint import atomic_write
    from distributed import check_device
    from heuristics import scoring_lm
    from models import load_with_tokenizer
    from precision import configure_precision
    from utils import progress
    device = check_device(settings.device)
    configure_precision(device, settings.precision)  # TF32 matmuls on CUDA for fp32, not for fp32-strict
    data = read_task_data(settings.task, settings.data)  # bad data fails before the model loads
    model, text_encoder = load_with_tokenizer(settings.weights, lm=True)
    lm = scoring_lm(model.to(device), text_encoder, precision=settings.precision, batch_size=settings.batch_size)
    stride = (lm.n_ctx if settings.stride is None else settings.stride) if settings.task in ('text', 'wikitext') \
        else None
    total = n_steps(settings.task, data, settings.limit)
    with progress(total=total, desc=settings.task, disable=settings.quiet) as bar:
        figures = evaluate(lm, settings.task, data, stride, settings.limit, bar)
    record = dict(task=settings.task, model=settings.weights.model_dir, n_ctx=lm.n_ctx, stride=stride, **figures)
    print(summary_line(record), flush=True)
    if settings.out:
        atomic_write(settings.out, lambda tmp: write_json(tmp, record))
    return record


def main(argv=None):
    """Run evaluate.py from the command line; return the exit code (2 with one line on stderr on an error)."""
    settings = parse_args(argv)
    try:
        run_evaluation(settings)
    except (OSError, ValueError) as err:
        from utils import close_bars
        close_bars()  # the error is the last line, after no bar's debris
        print(f'evaluate.py: error: {err}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
