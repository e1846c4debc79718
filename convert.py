"""Convert GPT-1 and GPT-2 weights between their released formats, this project's safetensors folder and
transformers' layouts: the command line over weights.py, which reads and writes each format (its docstring
describes them). Only safetensors and `torch.load(weights_only=True)` are read: no pickle. Converted GPT-1 shards
keep their .npy headers (each checked to be a float32 shard's of its size before it is written: a crafted one is
refused, naming the file), and GPT-2 checkpoints are written as tf.train.Saver writes them, so converting back gives
byte-identical files. A damaged or hostile input folder is refused in one line naming the file (untrusted.BadFile).

    python convert.py shards-to-safetensors --model_dir model/ --out gpt1/
    python convert.py safetensors-to-shards --model_dir gpt1/ --out model_again/
    python convert.py to-transformers --model_dir model/ --out gpt1-hf/
    python convert.py from-transformers --model_dir gpt1-hf/ --out gpt1/
    python convert.py to-safetensors --model_dir gpt2-124M/ --out gpt2/       # GPT-2's released checkpoint
    python convert.py to-tf-checkpoint --model_dir gpt2/ --out gpt2-tf/       # and back to its layout
"""
import argparse
import sys
from dataclasses import dataclass

from encoder_gpt2 import DEFAULT_MODEL_DIR
from models import complete_checkpoint
from weights import (HF_VOCAB_FILES, copy_vocab, family_name, read_checkpoint, read_released, read_safetensors,
                     read_transformers, vocab_names, write_released, write_safetensors, write_tf_gpt2,
                     write_transformers)


@dataclass(frozen=True)
class ConvertSettings:
    """What convert.py's command line asks for: the conversion (its subcommand), the folder (or transformers weights
    file) read and the folder written, and the conversion's flags (their defaults where its subcommand has none)."""
    command: str
    model_dir: str
    out: str
    n_head: int = None          # attention heads of GPT-1 released shards (None: 12, or what the files state)
    afn: str = None             # activation of GPT-1 released shards (None: gelu, or what the files state)
    verify: bool = False        # shards-to-safetensors: check the released files' SHA-1 first
    drop_special: bool = False  # write without the special-token rows
    n_vocab: int = None         # from-transformers: BPE tokens among the token table's rows


def parse_args(argv=None):
    """Return the ConvertSettings of the command line."""
    parser = argparse.ArgumentParser(description='Convert GPT-1 and GPT-2 weights between the released formats, a '
                                                 'safetensors folder and transformers\' layouts.')
    sub = parser.add_subparsers(dest='command', required=True)
    specs = {'shards-to-safetensors': 'released GPT-1 model/ folder -> model.safetensors + config.json',
             'safetensors-to-shards': 'GPT-1 convert.py folder -> released params_shapes.json + params_0..9.npy',
             'to-safetensors': 'any model folder (GPT-1 or GPT-2) -> model.safetensors + config.json',
             'to-transformers': 'any model folder -> transformers OpenAIGPTLMHeadModel or GPT2LMHeadModel folder',
             'from-transformers': 'transformers openai-gpt or gpt2 folder or weights file -> convert.py folder',
             'to-tf-checkpoint': 'any GPT-2 folder -> the released layout: hparams.json + a TensorFlow checkpoint'}
    for name, help_text in specs.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument('--model_dir', required=True, help='the folder (or transformers weights file) to read')
        p.add_argument('--out', required=True, help='the folder to write (created if missing)')
        if name not in ('safetensors-to-shards', 'to-tf-checkpoint'):
            p.add_argument('--n_head', type=int, help='attention heads (GPT-1 released shards: default 12)')
            p.add_argument('--afn', help='activation (GPT-1 released shards: default gelu)')
        if name == 'shards-to-safetensors':
            p.add_argument('--verify', action='store_true', help='check the released files\' SHA-1 first')
        if name in ('safetensors-to-shards', 'to-transformers', 'to-tf-checkpoint'):
            p.add_argument('--drop_special', action='store_true',
                           help='write without the special-token rows (the released formats have none)')
        if name == 'from-transformers':
            p.add_argument('--n_vocab', type=int, help='BPE tokens among the token table\'s rows; the rest are special '
                                                       'tokens (default: config.json\'s n_special, else all rows)')
    return ConvertSettings(**vars(parser.parse_args(argv)))  # a subcommand's namespace holds only its own flags


def read_for(settings):
    """Return the Checkpoint the ConvertSettings' command reads (with their n_head, afn, n_vocab)."""
    if settings.command == 'shards-to-safetensors':
        ckpt = read_released(settings.model_dir, n_head=settings.n_head, afn=settings.afn, verify=settings.verify)
    elif settings.command == 'safetensors-to-shards':
        ckpt = read_safetensors(settings.model_dir)
    elif settings.command == 'from-transformers':
        ckpt = read_transformers(settings.model_dir, n_vocab=settings.n_vocab, n_head=settings.n_head,
                                 afn=settings.afn)
        if ckpt.ignored:
            print(f'convert.py: ignored {len(ckpt.ignored)} non-transformer keys ({", ".join(ckpt.ignored[:4])})',
                  file=sys.stderr)
    else:
        ckpt = read_checkpoint(settings.model_dir, n_head=settings.n_head, afn=settings.afn)
    return ckpt


def convert(settings):
    """Run the conversion of the ConvertSettings; return the written folder."""
    ckpt = read_for(settings)
    wanted = {'safetensors-to-shards': 'gpt1', 'shards-to-safetensors': 'gpt1', 'to-tf-checkpoint': 'gpt2'}
    if wanted.get(settings.command, ckpt.family) != ckpt.family:
        raise ValueError(f'{settings.model_dir} holds a {family_name(ckpt.family)}: {settings.command} writes '
                         f'{family_name(wanted[settings.command])} weights only')
    ckpt = complete_checkpoint(ckpt)  # the config's defaults for what the files do not state, checked
    if settings.command == 'safetensors-to-shards':
        out = write_released(ckpt, settings.out, settings.drop_special)
    elif settings.command == 'to-tf-checkpoint':
        out = write_tf_gpt2(ckpt, settings.out, settings.drop_special)
    elif settings.command == 'to-transformers':
        if settings.drop_special:
            ckpt.special = ckpt.special[:0]
        out = write_transformers(ckpt, settings.out)
    else:
        out = write_safetensors(ckpt, settings.out)
    copy_vocabulary(settings.model_dir, out, ckpt.family, transformers=settings.command == 'to-transformers')
    return out


def copy_vocabulary(src, out, family, transformers=False):
    """Copy the vocabulary files beside the weights read into the folder written, under the names of its format:
    transformers' (vocab.json, merges.txt) or the family's released ones; a GPT-2 folder without them gets the
    vocabulary this repository ships (every GPT-2 shares it)."""
    names = HF_VOCAB_FILES if transformers else vocab_names(family)[0]
    if not copy_vocab(src, out, names, family) and family == 'gpt2':
        copy_vocab(DEFAULT_MODEL_DIR, out, names, family)


def main(argv=None):
    """Run the conversion the command line asks for; return 0, or 1 with one line on stderr."""
    settings = parse_args(argv)
    try:
        out = convert(settings)
    except (OSError, ValueError) as err:  # FileNotFoundError is an OSError
        print(f'convert.py: error: {err}', file=sys.stderr)
        return 1
    print(f'wrote {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
