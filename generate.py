"""Sample text from GPT-1's or GPT-2's language model: the command line over sample.py (which never samples a
special-token or position row and decodes with a key/value cache). The model's family, and so its tokenizer, come
from --model_dir's files.

    python generate.py --model_dir model/ --prompt "the weather today is" --gen_len 40 --top_k 40 --seed 0
    python generate.py --model_dir model/ --interactive --greedy      # one prompt per line of stdin
"""
import argparse
import sys
from dataclasses import dataclass

import torch

from distributed import check_device
from flags import add_weights_args, weights_choice
from models import WeightsChoice, load_with_tokenizer
from sample import SamplingSettings, generate
from utils import close_bars


@dataclass(frozen=True)
class GenerateSettings:
    """What generate.py's command line asks for: the weights, where to run them, how to sample, what to continue."""
    weights: WeightsChoice
    device: str
    sampling: SamplingSettings
    seed: int = None           # of the sampler's generator: reproducible samples (None: torch's default generator)
    prompt: str = None         # the text to continue
    interactive: bool = False  # continue each line of stdin too


def settings_of(namespace):
    """Return the GenerateSettings of the parsed command line (a bad sampling value raises a ValueError)."""
    sampling = SamplingSettings(gen_len=namespace.gen_len, top_k=namespace.top_k, top_p=namespace.top_p,
                                temperature=namespace.temperature, greedy=namespace.greedy)
    return GenerateSettings(weights_choice(namespace), namespace.device, sampling, namespace.seed, namespace.prompt,
                            namespace.interactive)


def parse_args(argv=None):
    """Return the parsed command line."""
    parser = argparse.ArgumentParser(description='Sample text from GPT-1 or GPT-2 (any weights folder: released, '
                                                 'converted or transformers).')
    add_weights_args(parser)
    parser.add_argument('--prompt', help='the text to continue (default: none; give it or --interactive)')
    parser.add_argument('--interactive', action='store_true', help='read one prompt per line of stdin until EOF')
    parser.add_argument('--gen_len', type=int, default=40, help='tokens to generate (default 40)')
    parser.add_argument('--top_k', type=int, default=40, help='sample among the k most likely tokens (0: all; '
                                                              'default 40)')
    parser.add_argument('--top_p', type=float, default=1.0, help='nucleus sampling probability (1: off; default 1)')
    parser.add_argument('--temperature', type=float, default=1.0, help='divide the logits by this (default 1)')
    parser.add_argument('--greedy', action='store_true', help='take the most likely token at each step')
    parser.add_argument('--seed', type=int, help='seed of the sampler, for reproducible samples (default: none, '
                                                 "torch's default generator)")
    args = parser.parse_args(argv)
    if args.prompt is None and not args.interactive:
        parser.error('give --prompt "..." or --interactive')
    return args


def run_generation(settings, stdin, stdout, stderr):
    """Generate for the prompt and/or each stdin line, writing to stdout; raise on bad arguments or files."""
    device = check_device(settings.device)
    model, text_encoder = load_with_tokenizer(settings.weights, lm=True)
    model.to(device)
    generator = None if settings.seed is None else torch.Generator().manual_seed(settings.seed)

    def one(prompt):
        result = generate(model, text_encoder, prompt, settings.sampling, generator)
        print(result.full_text, file=stdout, flush=True)
        if result.message:
            print(f'generate.py: note: {result.message}', file=stderr, flush=True)

    if settings.prompt is not None:
        one(settings.prompt)
    if settings.interactive:
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
        run_generation(settings_of(args), sys.stdin, sys.stdout, sys.stderr)
    except (OSError, ValueError) as err:
        close_bars()  # the error is the last line, after no bar's debris
        print(f'generate.py: error: {err}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
