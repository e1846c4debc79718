"""Save GPT-1's or GPT-2's hidden states for each line of a text file (the representations the paper transfers).

One line of the input is one example. Each is encoded with the model's own BPE (GPT-1's TextEncoder or GPT-2's
encoder), given the position ids n_vocab + n_special + i, and run through the transformer's `all_hidden_states`.
The .npz holds:
- `layer_<n>` float32 [n_examples, max_len, n_embd] for each requested layer n: 0 is the embeddings (token +
  position), k the output of block k, negative counts from the end (-1 is the last block, for GPT-2 after its
  final ln_f); rows past an example's length are 0.
- `lengths` int64 [n_examples]: tokens per example (after --truncate);
- `ids` int64 [n_examples, max_len]: the BPE ids, -1 past the length;
- `truncated` bool [n_examples]: which examples --truncate cut to n_ctx tokens;
- `layers` int64: the layer numbers as given; `texts`: the input lines (unicode strings, no pickle needed).
Examples longer than n_ctx are an error naming the line, unless --truncate keeps their first n_ctx tokens.

    python extract_features.py --input sentences.txt --output feats.npz --model_dir model/ --layers -1,-2
"""
import argparse
import sys
from dataclasses import dataclass

import numpy as np
import torch

from distributed import check_device
from flags import add_precision_arg, add_weights_args, weights_choice
from model_inputs import check_token_ids, pack_right_padded
from models import WeightsChoice, load_with_tokenizer
from precision import autocast_context, configure_precision
from utils import close_bars


@dataclass(frozen=True)
class FeatureSettings:
    """What extract_features.py's command line asks for: the input and output files, the weights, how to run them."""
    input: str               # UTF-8 text, one example per line
    output: str              # the .npz to write
    weights: WeightsChoice
    device: str
    layers: str = '-1'       # comma-separated layer numbers (parse_layers)
    batch_size: int = 8      # examples per forward pass
    truncate: bool = False   # keep the first n_ctx tokens of longer lines instead of refusing them
    precision: str = 'fp32'  # the forward's precision (precision.PRECISIONS); the features are saved in fp32


def settings_of(namespace):
    """Return the FeatureSettings of the parsed command line."""
    return FeatureSettings(namespace.input, namespace.output, weights_choice(namespace), namespace.device,
                           namespace.layers, namespace.batch_size, namespace.truncate, namespace.precision)


def parse_layers(spec, n_layer):
    """Return the layer numbers in a comma-separated spec ('-1,-2' or '0,12'), checked against n_layer."""
    try:
        layers = [int(part) for part in spec.split(',')]
    except ValueError:
        raise ValueError(f'--layers {spec!r}: give comma-separated integers such as -1,-2') from None
    for layer in layers:
        if not -(n_layer + 1) <= layer <= n_layer:
            raise ValueError(f'--layers {spec!r}: layer {layer} does not exist; the model has layers 0 (embeddings) '
                             f'to {n_layer} (or -{n_layer + 1} to -1)')
    return layers


def fit_to_context(ids, n_ctx, truncate=False, source='the texts'):
    """Return (ids cut to n_ctx tokens, truncated flags); without truncate, raise naming the first long line."""
    flags = [len(seq) > n_ctx for seq in ids]
    if any(flags) and not truncate:
        i = flags.index(True)
        raise ValueError(f'line {i + 1} of {source} is {len(ids[i])} tokens, longer than n_ctx={n_ctx}: shorten or '
                         f'split it, or pass --truncate (truncate=True) to keep its first {n_ctx} tokens')
    return [seq[:n_ctx] for seq in ids], flags


def hidden_states_batch(model, ids, layers):
    """Return {layer: float32 [B, max_len, n_embd]} for a batch of id lists, padded at the end with token 0.

    The attention is causal, so padding after a sequence cannot change its states; padded rows are zeroed.
    """
    transformer = getattr(model, 'transformer', model)
    device = transformer.lm_weight.device
    x = pack_right_padded(ids, transformer.pos_offset)  # [B, T, 2]
    valid = torch.arange(x.shape[1]) < torch.tensor([len(seq) for seq in ids])[:, None]  # [B, T]
    with torch.no_grad():
        hidden = transformer.all_hidden_states(x.to(device))  # n_layer + 1 x [B, T, n_embd]
    mask = valid.unsqueeze(-1).to(device)  # [B, T] -> [B, T, 1]
    return {layer: (hidden[layer] * mask).float().cpu().numpy() for layer in layers}


def features_from_ids(model, ids, layers=(-1,), batch_size=8):
    """Return {'layer_<n>': [N, max_len, n_embd], 'lengths', 'ids'} for lists of BPE ids (each <= n_ctx)."""
    transformer = getattr(model, 'transformer', model)
    n_layer = len(transformer.h)
    for layer in layers:
        if not -(n_layer + 1) <= layer <= n_layer:
            raise ValueError(f'layer {layer} does not exist: use 0..{n_layer} or -{n_layer + 1}..-1')
    check_token_ids(ids, transformer.pos_offset, (f'sequence {i}' for i in range(len(ids))))
    too_long = [i for i, seq in enumerate(ids) if len(seq) > transformer.n_ctx]
    if too_long:
        raise ValueError(f'sequence {too_long[0]} has {len(ids[too_long[0]])} ids, more than n_ctx={transformer.n_ctx}')
    if batch_size < 1:
        raise ValueError(f'batch_size={batch_size}: give 1 or more')
    lengths = np.array([len(seq) for seq in ids], dtype=np.int64)
    max_len = int(lengths.max()) if len(ids) else 0
    out = {f'layer_{layer}': np.zeros((len(ids), max_len, transformer.n_embd), np.float32) for layer in layers}
    id_array = np.full((len(ids), max_len), -1, dtype=np.int64)
    # Batches of similar lengths waste less compute on padding; results go back in input order.
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        states = hidden_states_batch(model, [ids[i] for i in batch], layers)
        for b, i in enumerate(batch):
            n = len(ids[i])
            id_array[i, :n] = ids[i]
            for layer in layers:
                out[f'layer_{layer}'][i, :n] = states[layer][b, :n]
    out['lengths'] = lengths
    out['ids'] = id_array
    return out


def extract_features(model, text_encoder, texts, layers=(-1,), batch_size=8, truncate=False, source='the texts'):
    """Return the .npz arrays (see the module docstring) of the hidden states of each text."""
    transformer = getattr(model, 'transformer', model)
    ids = text_encoder.encode(list(texts), verbose=False)
    ids, truncated = fit_to_context(ids, transformer.n_ctx, truncate, source)
    out = features_from_ids(model, ids, layers, batch_size)
    out['truncated'] = np.array(truncated, dtype=bool)
    out['layers'] = np.array(layers, dtype=np.int64)
    out['texts'] = np.array(list(texts), dtype=str)
    return out


def read_lines(path):
    """Return the lines of a UTF-8 text file without their line ends (one example each)."""
    try:
        with open(path, encoding='utf-8') as f:
            return f.read().splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f'--input {path} does not exist: give a text file with one example per line') from None
    except UnicodeDecodeError as err:
        raise ValueError(f'--input {path} is not UTF-8 text ({err})') from None


def parse_args(argv=None):
    """Return the parsed command line."""
    parser = argparse.ArgumentParser(description='Save GPT-1 or GPT-2 hidden states of each line of a text file to .npz.')
    parser.add_argument('--input', required=True, help='UTF-8 text file, one example per line')
    parser.add_argument('--output', required=True, help='the .npz file to write')
    add_weights_args(parser)
    parser.add_argument('--layers', default='-1', help='comma-separated layers: 0 embeddings, k block k, -1 the '
                                                       'last (default -1)')
    parser.add_argument('--batch_size', type=int, default=8, help='examples per forward pass (default 8)')
    parser.add_argument('--truncate', action='store_true', help='keep the first n_ctx tokens of longer lines '
                                                                'instead of stopping with an error')
    add_precision_arg(parser)
    # argparse would take the '-1,-2' of '--layers -1,-2' for an option; glue it on as '--layers=-1,-2'.
    words = iter(sys.argv[1:] if argv is None else argv)
    glued = [f'--layers={next(words, "")}' if word == '--layers' else word for word in words]
    return parser.parse_args(glued)


def run_extraction(settings):
    """Extract the features the settings ask for and write them; return (n_examples, n truncated, n tokens)."""
    if settings.batch_size < 1:
        raise ValueError(f'--batch_size {settings.batch_size}: give 1 or more')
    device = check_device(settings.device)
    texts = read_lines(settings.input)
    model, text_encoder = load_with_tokenizer(settings.weights)
    model.to(device)
    layers = parse_layers(settings.layers, len(model.h))
    configure_precision(device, settings.precision)  # TF32 matmuls on CUDA for fp32, not for fp32-strict
    with autocast_context(device, settings.precision):  # hidden_states_batch returns them as float32
        out = extract_features(model, text_encoder, texts, layers, settings.batch_size, settings.truncate,
                               source=settings.input)
    with open(settings.output, 'wb') as f:
        np.savez(f, **out)
    return len(texts), int(out['truncated'].sum()), int(out['lengths'].sum())


def main(argv=None):
    """Run the command line; return 0 (warning on stderr of an input without text), or 1 with one line on stderr."""
    settings = settings_of(parse_args(argv))
    try:
        n, n_truncated, n_tokens = run_extraction(settings)
    except (OSError, ValueError) as err:
        close_bars()  # the error is the last line, after no bar's debris
        print(f'extract_features.py: error: {err}', file=sys.stderr)
        return 1
    if not n_tokens:  # an empty file, or blank lines only: almost surely the wrong file
        held = 'no lines' if not n else f'{n} line{"s" * (n > 1)} and no text'
        print(f'extract_features.py: warning: --input {settings.input} holds {held}: wrote {n} empty examples to '
              f'{settings.output}; give a text file with one example per line', file=sys.stderr)
    note = f' ({n_truncated} truncated to n_ctx tokens)' if n_truncated else ''
    print(f'wrote the features of {n} examples to {settings.output}{note}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
