"""Benchmark of TextEncoder.encode on a ROCStories-sized synthetic corpus (TF counterpart: none).

Compares the batched, cached encoder (nlp.pipe + per-instance BPE cache) with one text at a time
(nlp(text) per text, as the original's encode loop does), with and without the BPE cache. The corpus is
generated deterministically: n_stories stories of four sentences plus two endings each, i.e. 3 fields x
n_stories texts, with words drawn from a Zipf-weighted word list (common English words plus pseudo-words),
so that the number of distinct tokens is of the order of real ROCStories. No data is downloaded.

    python benchmarks/bench_text.py [--encoder_path model/encoder_bpe_40000.json] [--bpe_path model/vocab_40000.bpe]
                         [--n_stories 3742] [--repeats 3] [--json bench_results/text.json]
"""
import argparse
import itertools
import json
import platform
import random
import time
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the library at the repository root

from text_utils import UNKNOWN_ID, TextEncoder
from utils import make_path

COMMON_WORDS = tuple('''the a an and but so then because when after before while he she they it his her their
was were had did got went came saw made took gave found told wanted decided tried felt knew thought said
asked started finished loved hated needed bought sold cooked baked played watched walked ran drove called
home school work store park beach house car dog cat friend mother father sister brother teacher boss
day night morning week year summer winter party game dinner lunch breakfast cake pizza money job test
new old big small happy sad angry tired excited nervous late early very really too not never always
to of in on at for with from into about over up down out again back all some every one two three
'''.split())
NAMES = ('Jim', 'Anna', 'Tom', 'Kelly', 'Sam', 'Maria', 'Joe', 'Lisa', 'Ben', 'Gina', 'Tim', 'Amy')
SYLLABLES = ('ka', 'lo', 'mi', 'ne', 'ru', 'sa', 'ti', 'ver', 'bel', 'dor', 'gan', 'pre', 'con', 'ish',
             'ment', 'ing', 'er', 'ly', 'ous', 'tion', 'ble', 'str', 'qua', 'fro', 'zen')
CONTRACTIONS = ("didn't", "couldn't", "wasn't", "it's", "she's", "he'd", "they're", "I'm", "won't")


def synthetic_rocstories(n_stories=3742, n_types=12000, seed=0):
    """Return (stories, endings1, endings2): n_stories deterministic ROCStories-like texts per field."""
    rng = random.Random(seed)
    pseudo = set()
    while len(pseudo) < n_types - len(COMMON_WORDS):
        pseudo.add(''.join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))))
    pseudo = sorted(pseudo)  # set order varies between runs; sort, then shuffle with the seeded rng
    rng.shuffle(pseudo)
    # Zipf weights within each list: a few words carry most tokens; pseudo-words (rare, several BPE pieces
    # each) make up a fifth of the words, as names and rarer words do in real stories.
    common_cum = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(len(COMMON_WORDS))))
    pseudo_cum = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(len(pseudo))))

    def word():
        if rng.random() < 0.2:
            return rng.choices(pseudo, cum_weights=pseudo_cum)[0]
        return rng.choices(COMMON_WORDS, cum_weights=common_cum)[0]

    def sentence():
        n = rng.randint(5, 11)
        body = [word() for _ in range(n)]
        if rng.random() < 0.3:
            body[rng.randrange(n)] = rng.choice(CONTRACTIONS)
        if rng.random() < 0.3:
            body[rng.randrange(n)] += ','
        text = ' '.join([rng.choice(NAMES)] + body)
        return text + rng.choice(['.', '.', '.', '!', '?'])

    stories = [' '.join(sentence() for _ in range(4)) for _ in range(n_stories)]
    endings1 = [sentence() for _ in range(n_stories)]
    endings2 = [sentence() for _ in range(n_stories)]
    return stories, endings1, endings2


def encode_one_at_a_time(text_encoder, texts, cache=True):
    """Return the ids of texts encoded one by one with nlp(text), as the original's encode loop does."""
    encoder = text_encoder.encoder
    out = []
    for text in texts:
        ids = []
        for token in text_encoder.nlp(text_encoder.standardize(text)):
            token = token.text.lower()
            # _merge is bpe() without the cache
            word = text_encoder.bpe(token) if cache else text_encoder._merge(token)
            ids.extend(encoder.get(piece, UNKNOWN_ID) for piece in word.split(' '))
        out.append(ids)
    return out


def time_method(make_encoder, encode, fields, repeats):
    """Return (best seconds over repeats, ids per field), each repeat on a fresh encoder (cold cache)."""
    best, result = float('inf'), None
    for _ in range(repeats):
        text_encoder = make_encoder()
        t0 = time.perf_counter()
        result = [encode(text_encoder, field) for field in fields]
        best = min(best, time.perf_counter() - t0)
    return best, result


def parse_args(argv=None):
    """Return the parsed command line."""
    parser = argparse.ArgumentParser(description='Measure TextEncoder.encode speed on synthetic ROCStories.')
    parser.add_argument('--encoder_path', default='model/encoder_bpe_40000.json',
                        help="GPT-1's BPE vocabulary (default: %(default)s)")
    parser.add_argument('--bpe_path', default='model/vocab_40000.bpe', help="GPT-1's BPE merges (default: %(default)s)")
    parser.add_argument('--n_stories', type=int, default=3742,
                        help='stories per field (default: 3742, ROCStories val+test)')
    parser.add_argument('--repeats', type=int, default=3, help='runs per method; the best is reported (default: 3)')
    parser.add_argument('--batch_size', type=int, default=256,
                        help='nlp.pipe batch size of the batched encoder (default: 256)')
    parser.add_argument('--json', help='also write the results to this JSON file (default: none)')
    return parser.parse_args(argv)


def main(argv=None):
    """Run the benchmark, print a table and optionally write JSON; return the results dict."""
    args = parse_args(argv)
    if args.repeats < 1 or args.n_stories < 1:
        raise SystemExit('bench_text.py: error: --repeats and --n_stories must be >= 1')
    try:
        TextEncoder(args.encoder_path, args.bpe_path)  # fail fast with the loader's one-line message
    except (OSError, ValueError) as e:
        raise SystemExit(f'bench_text.py: error: {e}') from None

    def make_encoder():
        return TextEncoder(args.encoder_path, args.bpe_path)

    fields = synthetic_rocstories(args.n_stories)
    n_texts = sum(len(field) for field in fields)
    methods = {
        'batched + cache (encode)': lambda te, texts: te.encode(texts, verbose=False, batch_size=args.batch_size),
        'one at a time + cache (original)': lambda te, texts: encode_one_at_a_time(te, texts, cache=True),
        'one at a time, no cache': lambda te, texts: encode_one_at_a_time(te, texts, cache=False),
    }
    rows, reference = [], None
    for name, encode in methods.items():
        seconds, ids = time_method(make_encoder, encode, fields, args.repeats)
        if reference is None:
            reference = ids
        elif ids != reference:
            raise SystemExit(f'bench_text.py: error: {name} gives different ids from the batched encoder')
        n_tokens = sum(len(x) for field in ids for x in field)
        rows.append({'method': name, 'seconds': seconds, 'texts_per_s': n_texts / seconds,
                     'tokens_per_s': n_tokens / seconds, 'n_texts': n_texts, 'n_tokens': n_tokens})
    base = rows[0]['seconds']
    print(f'{n_texts} texts (3 fields x {args.n_stories}), {rows[0]["n_tokens"]} BPE tokens, '
          f'best of {args.repeats}, cold cache each run')
    print(f'{"method":34s} {"seconds":>8s} {"texts/s":>9s} {"tokens/s":>10s} {"vs batched":>10s}')
    for row in rows:
        print(f'{row["method"]:34s} {row["seconds"]:8.2f} {row["texts_per_s"]:9.0f} {row["tokens_per_s"]:10.0f} '
              f'{row["seconds"] / base:9.2f}x')
    results = {'command': 'python benchmarks/bench_text.py', 'args': vars(args), 'python': platform.python_version(),
               'machine': platform.machine(), 'processor': platform.processor(), 'results': rows}
    if args.json:
        with open(make_path(args.json), 'w', encoding='utf-8') as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == '__main__':
    main()
