"""Sample text from GPT-1's or GPT-2's language model: the command line over sample.py (which never samples a
special-token or position row and decodes with a key/value cache). The model's family, and so its tokenizer, come
from --model_dir's files.

    python generate.py --model_dir model/ --prompt "the weather today is" --gen_len 40 --top_k 40 --seed 0
    python generate.py --model_dir model/ --interactive --greedy      # one prompt per line of stdin
    python generate.py --model_dir models/124M/ --unconditional --nsamples 4 --batch_size 2 --seed 0 --out s.jsonl
    python generate.py --model_dir model/ --input prompts.txt --batch_size 8 --greedy --out s.jsonl  # 8 prompts a forward

--nsamples, --batch_size, --length (--gen_len), --temperature, --top_k, --top_p, --seed and --unconditional as
openai/gpt-2's generate_unconditional_samples.py and interactive_conditional_samples.py take them, but --length
defaults to 40, not n_ctx // 2. --input samples one continuation of each line of a file, --batch_size prompts of
different lengths together (sample.generate_prompts: each row's padding is masked, each row's positions start at 0,
so a greedy row is the prompt's own greedy run).
"""
import argparse
import json
import sys
from dataclasses import dataclass

import torch

from distributed import check_device
from flags import add_precision_arg, add_weights_args, weights_choice
from models import WeightsChoice, load_with_tokenizer
from precision import autocast_context, configure_precision
from sample import SamplingSettings, check_prompt, generate, generate_batch, generate_prompts
from untrusted import write_atomically
from utils import close_bars

ENDOFTEXT = '<|endoftext|>'  # GPT-2's document separator, where an unconditional sample starts (encoder_gpt2's)


class UsageError(ValueError):
    """Flags that cannot go together, or --unconditional on weights without <|endoftext|>: one line, exit 2."""


@dataclass(frozen=True)
class GenerateSettings:
    """What generate.py's command line asks for: the weights, where to run them, how to sample, what to continue."""
    weights: WeightsChoice
    device: str
    sampling: SamplingSettings
    seed: int = None           # of the sampler's generator: reproducible samples (None: torch's default generator)
    prompt: str = None         # the text to continue
    interactive: bool = False  # continue each line of stdin too
    unconditional: bool = False  # sample from <|endoftext|> alone (GPT-2)
    nsamples: int = 1          # samples per prompt
    batch_size: int = 1        # samples drawn together (divides nsamples); with input, prompts drawn together
    out: str = None            # a JSON-lines file to write every sample to
    precision: str = 'fp32'    # the forward's precision (precision.PRECISIONS)
    input: str = None          # a file of prompts, one a line (blank lines skipped), batch_size of them together


def settings_of(namespace):
    """Return the GenerateSettings of the parsed command line (a bad sampling value raises a ValueError)."""
    sampling = SamplingSettings(gen_len=namespace.gen_len, top_k=namespace.top_k, top_p=namespace.top_p,
                                temperature=namespace.temperature, greedy=namespace.greedy)
    return GenerateSettings(weights_choice(namespace), namespace.device, sampling, namespace.seed, namespace.prompt,
                            namespace.interactive, namespace.unconditional, namespace.nsamples, namespace.batch_size,
                            namespace.out, namespace.precision, namespace.input)


def usage_problem(args):
    """Return why the parsed flags cannot go together (None when they can)."""
    if args.input is not None and (args.prompt is not None or args.interactive or args.unconditional):
        return '--input reads the prompts from its file: drop --prompt, --interactive and --unconditional'
    if args.unconditional and (args.prompt is not None or args.interactive):
        return '--unconditional samples from <|endoftext|> alone: drop --prompt and --interactive'
    if args.nsamples < 1 or args.batch_size < 1:
        return f'--nsamples {args.nsamples} --batch_size {args.batch_size}: give 1 or more for each'
    if args.input is not None:
        if args.nsamples != 1:
            return f'--input draws one sample per prompt: drop --nsamples {args.nsamples}'
        return None  # --batch_size counts prompts drawn together
    if args.nsamples % args.batch_size:
        return f'--nsamples {args.nsamples} is not a multiple of --batch_size {args.batch_size}'
    return None


def parse_args(argv=None):
    """Return the parsed command line; raise a UsageError when its flags cannot go together."""
    parser = argparse.ArgumentParser(description='Sample text from GPT-1 or GPT-2 (any weights folder: released, '
                                                 'converted or transformers).')
    add_weights_args(parser)
    parser.add_argument('--prompt', help='the text to continue (default: none; give it, --interactive or '
                                                 '--unconditional)')
    parser.add_argument('--interactive', action='store_true', help='read one prompt per line of stdin until EOF')
    parser.add_argument('--unconditional', action='store_true',
                        help="GPT-2: sample from <|endoftext|> alone, as the original's "
                             'generate_unconditional_samples.py (default: off; not with --prompt or --interactive)')
    parser.add_argument('--input', help='a UTF-8 file of prompts, one a line (blank lines skipped), each continued '
                                        'once, --batch_size of them drawn together; not with --prompt, --interactive, '
                                        '--unconditional or --nsamples above 1 (default: none)')
    parser.add_argument('--nsamples', type=int, default=1, help='samples per prompt (default 1; 1 with --input)')
    parser.add_argument('--batch_size', type=int, default=1,
                        help='samples drawn together, in one forward; must divide --nsamples; with --input, prompts '
                             'drawn together (default 1)')
    parser.add_argument('--gen_len', '--length', type=int, default=40,
                        help="tokens to generate (default 40; the original's --length defaults to n_ctx // 2)")
    parser.add_argument('--top_k', type=int, default=40, help='sample among the k most likely tokens (0: all; '
                                                              'default 40)')
    parser.add_argument('--top_p', type=float, default=1.0, help='nucleus sampling probability (1: off; default 1)')
    parser.add_argument('--temperature', type=float, default=1.0, help='divide the logits by this (default 1)')
    parser.add_argument('--greedy', action='store_true', help='take the most likely token at each step')
    parser.add_argument('--seed', type=int, help='seed of the sampler, for reproducible samples (default: none, '
                                                 "torch's default generator)")
    parser.add_argument('--out', help='also write every sample to this JSON-lines file, one {"prompt", "text", "ids"} '
                                      'object a line, replaced whole at the end (default: none)')
    add_precision_arg(parser)
    args = parser.parse_args(argv)
    if args.prompt is None and not args.interactive and not args.unconditional and args.input is None:
        parser.error('give --prompt "...", --interactive, --unconditional or --input FILE')
    problem = usage_problem(args)
    if problem:
        raise UsageError(problem)
    return args


def draw_samples(model, text_encoder, prompt, settings, generator):
    """Return settings.nsamples Generations continuing prompt (a str; None: from <|endoftext|>), drawn
    settings.batch_size at a time with generator."""
    if prompt is None:
        prompt_ids = [text_encoder.encoder[ENDOFTEXT]]
    elif settings.nsamples == 1:
        return [generate(model, text_encoder, prompt, settings.sampling, generator)]
    else:
        prompt_ids = text_encoder.encode([prompt], verbose=False)[0]
    results = []
    for _ in range(settings.nsamples // settings.batch_size):
        results += generate_batch(model, text_encoder, prompt_ids, settings.batch_size, settings.sampling, generator)
    return results


def read_prompts(path):
    """Return [(line number, prompt)] of the file at path: its lines without their line ends, blank ones skipped."""
    with open(path, encoding='utf-8') as f:
        lines = f.read().split('\n')
    prompts = [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
    if not prompts:
        raise ValueError(f'--input {path} holds no prompt: give one a line')
    return prompts


def encode_prompts(model, text_encoder, prompts, path):
    """Return the BPE ids of each (line number, prompt) of prompts; one the model cannot continue (empty once
    tokenized, longer than n_ctx) raises naming its line of path."""
    transformer = getattr(model, 'transformer', model)
    encoded = []
    for number, prompt in prompts:
        ids = text_encoder.encode([prompt], verbose=False)[0]
        try:
            check_prompt(ids, transformer.pos_offset, transformer.n_ctx)
        except ValueError as err:
            raise ValueError(f'--input {path} line {number}: {err}') from None
        encoded.append(ids)
    return encoded


def print_samples(texts, headers, message, stdout, stderr):
    """Print each text (after a SAMPLE header when headers, as the original), then the note message (None: none)."""
    for number, text in enumerate(texts, 1):
        if headers:
            print('=' * 40 + f' SAMPLE {number} ' + '=' * 40, file=stdout)
        print(text, file=stdout, flush=True)
    if message:
        print(f'generate.py: note: {message}', file=stderr, flush=True)


def jsonl_bytes(records):
    """Return the UTF-8 JSON-lines bytes of records (dicts), one a line."""
    return ''.join(json.dumps(record, ensure_ascii=False) + '\n' for record in records).encode('utf-8')


def run_generation(settings, stdin, stdout, stderr):
    """Generate for each line of the --input file, the prompt and/or each stdin line, writing to stdout; raise on bad
    arguments or files."""
    device = check_device(settings.device)
    prompts = None if settings.input is None else read_prompts(settings.input)  # before the model: fail fast
    model, text_encoder = load_with_tokenizer(settings.weights, lm=True)
    if settings.unconditional and ENDOFTEXT not in text_encoder.encoder:
        raise UsageError(f'--unconditional starts from {ENDOFTEXT}, which the vocabulary of {settings.weights.model_dir} '
                         f'(GPT-1) lacks: give --prompt')
    model.to(device)
    generator = None if settings.seed is None else torch.Generator().manual_seed(settings.seed)
    headers = settings.nsamples > 1 or settings.unconditional
    records = []

    configure_precision(device, settings.precision)  # TF32 matmuls on CUDA for fp32, not for fp32-strict

    def one(prompt):
        with autocast_context(device, settings.precision):  # the logits are taken in fp32 (NextTokenLogits)
            results = draw_samples(model, text_encoder, prompt, settings, generator)
        # an unconditional sample is shown without the <|endoftext|> it starts from, as the original prints it
        texts = [r.text if prompt is None else r.full_text for r in results]
        print_samples(texts, headers, results[0].message, stdout, stderr)
        shown = ENDOFTEXT if prompt is None else prompt
        records.extend({'prompt': shown, 'text': r.text, 'ids': r.ids} for r in results)

    if prompts is not None:
        prompt_ids = encode_prompts(model, text_encoder, prompts, settings.input)
        with autocast_context(device, settings.precision):  # the logits are taken in fp32 (RaggedNextTokenLogits)
            results = generate_prompts(model, text_encoder, prompt_ids, settings.sampling, generator,
                                       settings.batch_size)
        for (_, prompt), result in zip(prompts, results):
            print_samples([result.full_text], False, result.message, stdout, stderr)
            records.append({'prompt': prompt, 'text': result.text, 'ids': result.ids})
    if settings.unconditional:
        one(None)
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
    if settings.out is not None:
        write_atomically(settings.out, jsonl_bytes(records))


def main(argv=None):
    """Run the command line; return 0, 1 with one line on stderr, or 2 (flags that cannot go together) with one."""
    try:
        args = parse_args(argv)
        run_generation(settings_of(args), sys.stdin, sys.stdout, sys.stderr)
    except UsageError as err:
        close_bars()
        print(f'generate.py: error: {err}', file=sys.stderr)
        return 2
    except (OSError, ValueError) as err:
        close_bars()  # the error is the last line, after no bar's debris
        print(f'generate.py: error: {err}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
