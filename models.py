"""Every model family behind one call: `load_model(path)` returns the model a weights folder holds, GPT-1 or GPT-2,
and `load_tokenizer(path)` its tokenizer.

No TF counterpart. weights.py reads each format into a Checkpoint; the family's model module builds the model
from it (model_pytorch.model_from_checkpoint for GPT-1, model_gpt2.model_from_checkpoint for GPT-2). This module
sits above both, so that neither the formats nor the models import each other in a circle.
"""
from dataclasses import asdict, dataclass

import model_gpt2
import model_pytorch
from weights import SIZE_KEYS, detect_family, detect_format, hf_config, hf_weights_file, read_checkpoint, vocab_paths

FAMILY_MODULES = {'gpt1': model_pytorch, 'gpt2': model_gpt2}
ARCHITECTURE_FLAGS = ('n_embd', 'n_head', 'n_layer', 'afn')  # the flags a weights folder's architecture answers
UNSTORED = ('n_head', 'afn')  # what GPT-1's released shards (and a bare transformers file) may not state


def complete_checkpoint(ckpt):
    """Return ckpt with its config completed to every field of its family's config (the defaults for what its files
    do not state) and checked, as a writer of another format needs it."""
    cfg = asdict(FAMILY_MODULES[ckpt.family].checkpoint_config(ckpt))
    ckpt.config = {k: v for k, v in cfg.items() if k not in SIZE_KEYS}
    return ckpt


def read_with_flags(path, flags=None, n_vocab=None, verify=False):
    """Return the Checkpoint a folder (or transformers weights file) holds, the architecture its files state: the
    shapes give n_embd and n_layer, config.json or hparams.json n_head (and GPT-1's afn). flags: {name: value, None
    when not given} of ARCHITECTURE_FLAGS; they only fill what the files do not state (GPT-1's released shards: n_head
    and afn, else the config's defaults, 12 and gelu; a transformers file without a config.json: n_head). A flag that
    contradicts what the files state is refused with one ValueError line naming every mismatch (a bad field of the
    files' config first, as a BadFile naming the file). n_vocab and verify as weights.read_checkpoint's."""
    flags = {name: value for name, value in (flags or {}).items() if value is not None}
    unknown = sorted(set(flags) - set(ARCHITECTURE_FLAGS))
    if unknown:
        raise ValueError(f'{unknown[0]!r} is no architecture flag: use {", ".join(ARCHITECTURE_FLAGS)}')
    kind = detect_format(path)
    fill = {}
    if kind == 'released':
        fill = {name: flags[name] for name in UNSTORED if name in flags}
    elif kind == 'transformers':  # its config.json, when there is one, states them: a flag then only compares
        config = hf_config(path, hf_weights_file(path))
        unstated = [name for name in UNSTORED if name not in config]
        if config.get('model_type') == 'gpt2':
            unstated = [name for name in unstated if name != 'afn']  # GPT-2 computes gelu: nothing to fill
        fill = {name: flags[name] for name in unstated if name in flags}
    ckpt = read_checkpoint(path, n_vocab=n_vocab, verify=verify, **fill)
    check_flags(ckpt, flags, path)
    return ckpt


def check_flags(ckpt, flags, path):
    """Raise a ValueError naming, in one line, every architecture flag (a dict of the given ones) that contradicts the
    model ckpt holds (stated_architecture); its config is checked first (a BadFile naming the file)."""
    stated = stated_architecture(ckpt)
    wrong = [f'--{name} {flags[name]} contradicts {name}={stated[name]}' for name in ARCHITECTURE_FLAGS
             if name in flags and flags[name] != stated[name]]
    if wrong:
        raise ValueError(f'{", ".join(wrong)} in {path}: leave {"them" if len(wrong) > 1 else "it"} out (the '
                         f'architecture is the weights\')')


def stated_architecture(ckpt):
    """Return {name: value} of ARCHITECTURE_FLAGS for the model ckpt holds: what its files state, its family's
    defaults for the rest (GPT-1: 12 heads and gelu; GPT-2 computes gelu); a bad field of its config is a BadFile
    naming the file."""
    cfg = FAMILY_MODULES[ckpt.family].checkpoint_config(ckpt)
    return {name: getattr(cfg, name, 'gelu') for name in ARCHITECTURE_FLAGS}


def architecture_flags(settings):
    """Return {name: value, None when not given (the weights')} of the architecture flags a script's settings hold."""
    return {name: getattr(settings, name) for name in ARCHITECTURE_FLAGS}


def built_architecture(cfg):
    """Return {name: value} of the architecture flags for the model built from cfg (GPT-2 computes gelu), so that a
    run's log header and saved settings say what was trained (the flags default to None: the weights')."""
    return {name: getattr(cfg, name, 'gelu') for name in ARCHITECTURE_FLAGS}


@dataclass(frozen=True)
class TableRows:
    """How the rows of a stored embedding table are read: n_vocab token rows (None: a transformers config.json's
    n_special tells, else every row is a token), then n_special special rows (None: as stored)."""
    n_vocab: int = None
    n_special: int = None


def load_model(path, lm=False, n_head=None, afn=None, n_ctx=None, rows=TableRows(), verify=False):
    """Return the model in eval mode that a folder (or transformers weights file) holds, of its family: with lm an
    LMModel or GPT2LMHeadModel, else a TransformerModel or GPT2Model; its config (`model.cfg`) gives n_vocab,
    n_special and n_ctx.

    GPT-1's released shards state neither n_head nor afn (default: the released 12 heads and gelu); n_ctx (default:
    every stored position) crops the positions; rows (TableRows): n_special sets the special rows (default: as
    stored, none for released weights; new rows are drawn as the original does), n_vocab splits a transformers table
    into tokens and special rows (default: its config.json's n_special, else every row a token). verify checks
    GPT-1's released shards against their SHA-1s. n_head and afn fill what the files do not state; one that
    contradicts them is refused (read_with_flags).
    """
    ckpt = read_with_flags(path, dict(n_head=n_head, afn=afn), n_vocab=rows.n_vocab, verify=verify)
    return FAMILY_MODULES[ckpt.family].model_from_checkpoint(ckpt, n_ctx=n_ctx, n_special=rows.n_special, lm=lm)


@dataclass(frozen=True)
class WeightsChoice:
    """Which weights to load and with which vocabulary (flags.add_weights_args; flags.weights_choice makes one)."""
    model_dir: str = 'model/'  # any weights folder (or transformers weights file)
    n_head: int = None         # what GPT-1's released shards do not state (None: the files', else 12)
    afn: str = None            # likewise (None: the files', else gelu)
    n_ctx: int = None          # positions to keep (None: every stored one)
    encoder_path: str = None   # the BPE vocabulary (None: the folder's, GPT-2: else the shipped one)
    bpe_path: str = None       # the BPE merges (None: likewise)


def load_with_tokenizer(choice, lm=False):
    """Return (model in eval mode, its tokenizer checked against it) of a WeightsChoice; lm as load_model's."""
    model = load_model(choice.model_dir, n_head=choice.n_head, afn=choice.afn, n_ctx=choice.n_ctx, lm=lm)
    text_encoder = load_tokenizer(choice.model_dir, choice.encoder_path, choice.bpe_path)
    check_tokenizer(text_encoder, model, choice.model_dir)
    return model, text_encoder


def check_tokenizer(text_encoder, model, path):
    """Raise a ValueError when a tokenizer's vocabulary is not the token rows of the model read from path."""
    n_vocab = getattr(model, 'transformer', model).cfg.n_vocab
    if len(text_encoder.decoder) != n_vocab:
        raise ValueError(f'the tokenizer has {len(text_encoder.decoder)} tokens but {path} holds {n_vocab} token rows: '
                         f'give the vocabulary the weights were trained with (--encoder_path, --bpe_path)')


def load_tokenizer(path, encoder_path=None, bpe_path=None, family=None):
    """Return the tokenizer of the model a folder holds, with text_utils.TextEncoder's interface: GPT-1's BPE from the
    folder's vocabulary files (or the paths given), GPT-2's from them or else the vocabulary this repository ships
    (the same for every GPT-2)."""
    family = detect_family(path) if family is None else family
    return tokenizer_from_files(family, *vocab_paths(path, encoder_path, bpe_path, family))


def tokenizer_from_files(family, encoder_path=None, bpe_path=None):
    """Return a family's tokenizer from its two vocabulary files (GPT-2: None, the ones this repository ships), with
    text_utils.TextEncoder's interface: encode(a list of texts) -> a list of id lists, decode, `encoder`."""
    if family == 'gpt1':
        from text_utils import TextEncoder  # here, not at import time: spaCy loads slowly
        return TextEncoder(encoder_path, bpe_path)
    import encoder_gpt2
    base = encoder_gpt2.get_encoder() if encoder_path is None else encoder_gpt2.encoder_from_files(encoder_path,
                                                                                                   bpe_path)
    return encoder_gpt2.BatchEncoder(base)
