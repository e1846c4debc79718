"""Convert GPT-1 weights between the released shards, one safetensors file and transformers' layout: the
command line over weights.py, which reads and writes each format.

Three formats hold the same numbers (weights.py describes each):
- released: `params_shapes.json` + `params_0.npy` ... `params_9.npy` (openai/finetune-transformer-lm's model/
  folder): positions [n_pos, n_embd], tokens [n_vocab, n_embd], then 12 arrays per block in TF_BLOCK order with
  conv weights [1, nx, nf]; the whole flat concatenation split in ten.
- ours: `model.safetensors` holding this port's `TransformerModel` state_dict (`embed.weight` is the original's
  `we` = [tokens; special; positions], `h.3.attn.c_attn.w` [nx, nf], ...) + `config.json` (n_vocab, n_special,
  n_ctx and the GPTConfig fields). Converted shards keep their .npy headers and params_shapes.json text in the
  safetensors metadata, so safetensors -> shards writes byte-identical files.
- transformers: `OpenAIGPTModel` / `OpenAIGPTLMHeadModel` (`tokens_embed.weight` [vocab_size, n_embd] =
  [tokens; special], `positions_embed.weight` [n_positions, n_embd], `h.3.attn.c_attn.weight` [nx, nf], ...)
  in `model.safetensors` or a `pytorch_model.bin` state dict, with its `config.json`.

Every format is read into a `Checkpoint` (numpy arrays named as the model names them) and written from one. Only
safetensors and `torch.load(weights_only=True)` are read: no pickle.

    python convert.py shards-to-safetensors --model_dir model/ --out gpt1/
    python convert.py safetensors-to-shards --model_dir gpt1/ --out model_again/
    python convert.py to-transformers --model_dir model/ --out gpt1-hf/
    python convert.py from-transformers --model_dir gpt1-hf/ --out gpt1/
"""
import argparse
import sys

from model_pytorch import complete_checkpoint
from weights import (HF_VOCAB_FILES, VOCAB_FILES, copy_vocab, read_checkpoint, read_released, read_safetensors,
                     read_transformers, write_released, write_safetensors, write_transformers)


def parse_args(argv=None):
    """Return the parsed command line."""
    parser = argparse.ArgumentParser(description='Convert GPT-1 weights between the released shards, a '
                                                 'safetensors folder and transformers\' OpenAI GPT layout.')
    sub = parser.add_subparsers(dest='command', required=True)
    specs = {'shards-to-safetensors': 'released model/ folder -> model.safetensors + config.json',
             'safetensors-to-shards': 'convert.py folder -> released params_shapes.json + params_0..9.npy',
             'to-transformers': 'any model folder -> transformers OpenAIGPTLMHeadModel folder',
             'from-transformers': 'transformers openai-gpt folder or weights file -> convert.py folder'}
    for name, help_text in specs.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument('--model_dir', required=True, help='the folder (or transformers weights file) to read')
        p.add_argument('--out', required=True, help='the folder to write (created if missing)')
        if name in ('shards-to-safetensors', 'to-transformers', 'from-transformers'):
            p.add_argument('--n_head', type=int, help='attention heads (released shards: default 12)')
            p.add_argument('--afn', help='activation (released shards: default gelu)')
        if name == 'shards-to-safetensors':
            p.add_argument('--verify', action='store_true', help='check the released files\' SHA-1 first')
        if name in ('safetensors-to-shards', 'to-transformers'):
            p.add_argument('--drop_special', action='store_true',
                           help='write without the special-token rows (the released format has none)')
        if name == 'from-transformers':
            p.add_argument('--n_vocab', type=int, help='BPE tokens among tokens_embed\'s rows; the rest are special '
                                                       'tokens (default: config.json\'s n_special, else all rows)')
    return parser.parse_args(argv)


def convert(args):
    """Run one conversion of the parsed command line; return the written folder."""
    if args.command == 'shards-to-safetensors':
        ckpt = read_released(args.model_dir, n_head=args.n_head, afn=args.afn, verify=args.verify)
        out, vocab_names = write_safetensors(complete_checkpoint(ckpt), args.out), VOCAB_FILES
    elif args.command == 'safetensors-to-shards':
        out, vocab_names = write_released(read_safetensors(args.model_dir), args.out, args.drop_special), VOCAB_FILES
    elif args.command == 'to-transformers':
        ckpt = complete_checkpoint(read_checkpoint(args.model_dir, n_head=args.n_head, afn=args.afn))
        if args.drop_special:
            ckpt.special = ckpt.special[:0]
        out, vocab_names = write_transformers(ckpt, args.out), HF_VOCAB_FILES
    else:
        ckpt = read_transformers(args.model_dir, n_vocab=args.n_vocab, n_head=args.n_head, afn=args.afn)
        if ckpt.ignored:
            print(f'convert.py: ignored {len(ckpt.ignored)} non-transformer keys ({", ".join(ckpt.ignored[:4])})',
                  file=sys.stderr)
        out, vocab_names = write_safetensors(complete_checkpoint(ckpt), args.out), VOCAB_FILES
    copy_vocab(args.model_dir, out, vocab_names)
    return out


def main(argv=None):
    """Run the conversion the command line asks for; return 0, or 1 with one line on stderr."""
    args = parse_args(argv)
    try:
        out = convert(args)
    except (OSError, ValueError) as err:  # FileNotFoundError is an OSError
        print(f'convert.py: error: {err}', file=sys.stderr)
        return 1
    print(f'wrote {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
