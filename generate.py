"""Sample text from GPT-1's or GPT-2's language model: the command line over sample.py (which never samples a
special-token or position row and decodes with a key/value cache). The model's family, and so its tokenizer, come
from --model_dir's files.

    python generate.py --model_dir model/ --prompt "the weather today is" --gen_len 40 --top_k 40 --seed 0
    python generate.py --model_dir model/ --interactive --greedy      # one prompt per line of stdin
"""
import argparse
import sys

import torch

from distributed import check_device
from flags import add_weights_args
from models import load_from_args
from sample import check_sampling_args, generate
from utils import close_bars


def parse_args(argv=None):
    """Return the parsed command line."""
    parser = argparse.ArgumentParser(description='Sample text from GPT-1 or GPT-2 (any weights folder: released, '
                                                 'converted or transformers).')
    add_weights_args(parser)
    parser.add_argument('--prompt', help='the text to continue')
    parser.add_argument('--interactive', action='store_true', help='read one prompt per line of stdin until EOF')
    parser.add_argument('--gen_len', type=int, default=40, help='tokens to generate (default 40)')
    parser.add_argument('--top_k', type=int, default=40, help='sample among the k most likely tokens (0: all; '
                                                              'default 40)')
    parser.add_argument('--top_p', type=float, default=1.0, help='nucleus sampling probability (1: off)')
    parser.add_argument('--temperature', type=float, default=1.0, help='divide the logits by this (default 1)')
    parser.add_argument('--greedy', action='store_true', help='take the most likely token at each step')
    parser.add_argument('--seed', type=int, help='seed of the sampler, for reproducible samples')
    args = parser.parse_args(argv)
    if args.prompt is None and not args.interactive:
        parser.error('give --prompt "..." or --interactive')
    return args


def run(args, stdin, stdout, stderr):
    """Generate for --prompt and/or each stdin line, writing to stdout; raise on bad arguments or files."""
    check_sampling_args(args.gen_len, args.top_k, args.top_p, args.temperature, args.greedy)
    device = check_device(args.device)
    model, text_encoder = load_from_args(args, lm=True)
    model.to(device)
    generator = None if args.seed is None else torch.Generator().manual_seed(args.seed)
    sampling = dict(gen_len=args.gen_len, top_k=args.top_k, top_p=args.top_p, temperature=args.temperature,
                    greedy=args.greedy, generator=generator)

    def one(prompt):
        result = generate(model, text_encoder, prompt, **sampling)
        print(result.full_text, file=stdout, flush=True)
        if result.message:
            print(f'generate.py: note: {result.message}', file=stderr, flush=True)

    if args.prompt is not None:
        one(args.prompt)
    if args.interactive:
        for line in stdin:
            if not line.strip():
                continue
            try:
                one(line.rstrip('\n'))
            except ValueError as err:  # a bad prompt does not end the session
                print(f'generate.py: error: {err}', file=stderr, flush=True)


def main(argv=None):
    """Run the command line; return 0, or 1 with one line on stderr."""
    args = parse_args(argv)
    try:
        run(args, sys.stdin, sys.stdout, sys.stderr)
    except (OSError, ValueError) as err:
        close_bars()  # the error is the last line, after no bar's debris
        print(f'generate.py: error: {err}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
