"""The command-line flags that several scripts share, each group declared once.

No TF counterpart (the original's train.py declares its flags inline; train.py keeps their names and defaults,
declared here in groups that pretrain.py, generate.py and extract_features.py share). This is the command line's
module: what turns parsed flags into the typed settings library code takes (weights_choice) lives here too, so that
library code never sees argparse.
"""
import argparse
import difflib
import os
import sys

import torch

from model_pytorch import ACT_FNS
from models import WeightsChoice
from precision import PRECISIONS


def add_weights_args(parser):
    """Add the flags that choose a model to load (generate.py, extract_features.py) to parser; return it."""
    parser.add_argument('--model_dir', default='model/',
                        help='any weights folder: GPT-1 released shards, a GPT-2 released checkpoint, a convert.py '
                             'safetensors folder, a transformers openai-gpt or gpt2 folder (default: model/)')
    parser.add_argument('--n_head', type=int, help='attention heads (released shards: default 12; others: read '
                                                   'from config.json)')
    parser.add_argument('--afn', choices=sorted(ACT_FNS), help='activation for released shards (default gelu)')
    parser.add_argument('--n_ctx', type=int, help='positions to keep (default: every stored position)')
    parser.add_argument('--encoder_path', help='BPE vocabulary (default: encoder_bpe_40000.json, GPT-2\'s encoder.json '
                                               'or vocab.json in --model_dir; GPT-2: else the shipped model/gpt2/)')
    parser.add_argument('--bpe_path', help='BPE merges (default: vocab_40000.bpe, GPT-2\'s vocab.bpe or merges.txt in '
                                           '--model_dir)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                        help='torch device (default: cuda when available)')
    return parser


def add_precision_arg(parser):
    """Add --precision (PRECISIONS, default fp32) for a script that runs a model without training it; return parser."""
    parser.add_argument('--precision', default='fp32', choices=PRECISIONS,
                        help='fp32 (TF32 matmuls on CUDA), fp32-strict, or a bf16 or fp16 autocast over the forward, '
                             'the weights kept in fp32 (default: fp32)')
    return parser


def add_architecture_args(parser):
    """Add --n_embd, --n_head, --n_layer and --afn to parser; return it. Each defaults to None: the architecture of the
    weights (models.read_with_flags: their shapes and config; GPT-1's released shards state neither heads nor
    activation, the original's 12 and gelu unless given), which a given flag must agree with; without weights
    (pretrain.py from scratch), the paper's (768, 12, 12, gelu) or a GPT-2 preset's."""
    helps = {'n_embd': "hidden states per token (default: the weights', else 768, the paper's / the preset's)",
             'n_head': "attention heads (default: the weights'; GPT-1 released shards: 12; else 12, the paper's / "
                       "the preset's)",
             'n_layer': "transformer blocks (default: the weights', else 12, the paper's / the preset's)"}
    for name in ('n_embd', 'n_head', 'n_layer'):
        parser.add_argument(f'--{name}', type=int, default=None, help=helps[name])
    parser.add_argument('--afn', type=str, default=None, choices=sorted(ACT_FNS),
                        help="MLP activation (default: the weights'; GPT-1 released shards: gelu; GPT-2 computes "
                             "gelu; else gelu, the paper's); a flag that contradicts the weights is refused")
    return parser


def add_dropout_args(parser, clf=True):
    """Add the dropout rates (0.1 each, the paper's) to parser, the classifier's with clf; return it."""
    helps = {'embd_pdrop': 'dropout of the embeddings', 'attn_pdrop': 'dropout of the attention weights',
             'resid_pdrop': 'dropout of each residual branch (attention and MLP outputs)',
             'clf_pdrop': "dropout of the task head's input"}
    for name in ('embd_pdrop', 'attn_pdrop', 'resid_pdrop') + (('clf_pdrop',) if clf else ()):
        parser.add_argument(f'--{name}', type=float, default=0.1, help=f"{helps[name]} (default: 0.1, the paper's)")
    return parser


def add_optimizer_args(parser, lr):
    """Add OpenAIAdam's flags to parser with lr as the default learning rate (the others: the original's); return it."""
    parser.add_argument('--lr', type=float, default=lr, help=f'peak learning rate of the schedule (default: {lr:g})')
    parser.add_argument('--l2', type=float, default=0.01,
                        help='L2 weight decay of the weight matrices, added to the Adam update as the original\'s '
                             '(default: 0.01)')
    # the original declares max_grad_norm with type=int; a float flag accepts both 1 and 0.5
    parser.add_argument('--max_grad_norm', type=float, default=1,
                        help='clip the global gradient norm to this; 0 or less: no clipping (default: 1)')
    parser.add_argument('--b1', type=float, default=0.9, help="Adam's beta1 (default: 0.9)")
    parser.add_argument('--b2', type=float, default=0.999, help="Adam's beta2 (default: 0.999)")
    parser.add_argument('--e', type=float, default=1e-8, help="Adam's epsilon (default: 1e-8)")
    return parser


def resume_mode(value):
    """Return 'auto' for --resume auto; anything else is an argparse error."""
    if value != 'auto':
        raise argparse.ArgumentTypeError(f"give no value or 'auto', not {value!r}")
    return value


def add_run_args(parser, unit, save_every, save_help, state_path):
    """Add the flags of how a training run runs (seed, device, precision, micro-batches, compile, activation
    checkpointing, saving and resuming, progress bars) to parser; return it. unit names what a batch holds
    ('examples', 'windows'); save_every and save_help give --save_every; state_path where --resume reads."""
    parser.add_argument('--seed', type=int, default=42, help='random seed of the run (default: 42)')
    parser.add_argument('--device', type=str, default=None, help='torch device (default: cuda when available, else cpu)')
    parser.add_argument('--precision', type=str, default='fp32', choices=PRECISIONS,
                        help='fp32 (TF32 matmuls on CUDA), fp32-strict, bf16 or fp16 (with loss scaling); default fp32')
    parser.add_argument('--micro_batch', type=int, default=None,
                        help=f'{unit} per forward pass (default: all of this process\'s share of the batch); the '
                             f'gradients accumulate to the whole batch')
    parser.add_argument('--compile', action='store_true', help='torch.compile the model')
    parser.add_argument('--shard', action='store_true',
                        help='under torchrun, shard the parameters, gradients and optimizer state over the processes '
                             '(PyTorch FSDP2) instead of a whole copy on each (DDP): for models larger than one '
                             'device; default: off')
    parser.add_argument('--checkpoint_activations', action='store_true',
                        help='recompute block activations in backward: less memory, same gradients')
    parser.add_argument('--save_every', type=int, default=save_every, help=save_help)
    parser.add_argument('--resume', nargs='?', const=True, default=False, type=resume_mode, metavar='auto',
                        help=f'continue from {state_path} (it must exist); --resume auto: continue when it exists, '
                             f'else start afresh (for restarts by torchrun --max-restarts or a requeued job); default: '
                             f'start afresh')
    parser.add_argument('--restart', action='store_true',
                        help=f'start over where an unfinished run stopped, deleting its {state_path} (without '
                             f'--restart or --resume such a run is refused, so that it is never overwritten)')
    parser.add_argument('--quiet', action='store_true', help='no progress bars')
    return parser


def weights_choice(namespace):
    """Return the models.WeightsChoice of the weights flags (add_weights_args) of a parsed command line."""
    return WeightsChoice(model_dir=namespace.model_dir, n_head=namespace.n_head, afn=namespace.afn,
                         n_ctx=namespace.n_ctx, encoder_path=namespace.encoder_path, bpe_path=namespace.bpe_path)


def task_dirs(specs, flag, choices=None):
    """Return [(task, data_dir)] of TASK=DATA_DIR command-line values of flag, each task once (and one of choices,
    when given), or raise a one-line ValueError naming the value."""
    tasks = []
    for spec in specs:
        task, sep, data_dir = spec.partition('=')
        if not sep or not task or not data_dir or (choices is not None and task not in choices):
            one_of = '' if choices is None else f' with TASK one of {", ".join(choices)}'
            raise ValueError(f'{flag} {spec!r}: give TASK=DATA_DIR{one_of}')
        if task in dict(tasks):
            raise ValueError(f'{flag} {task} is given twice')
        tasks.append((task, data_dir))
    return tasks


CONFIG_MAX_BYTES = 1 << 20  # a --config file is a few hundred bytes of flags: a larger one is not a config


def add_config_arg(parser):
    """Add --config FILE (a TOML file of flag values, read by parse_with_config) to parser; return it."""
    parser.add_argument('--config', metavar='FILE',
                        help='a TOML file of flag values (keys as the flags\' names without --, e.g. n_batch = 8); '
                             'flags given on the command line override it, --no_NAME turns off a switch NAME it turns on '
                             '(default: none, configs/ holds examples)')
    return parser


def parse_with_config(parser, argv=None):
    """Return parser's namespace of argv with the values of its --config FILE underneath (the command line's flags win;
    --no_NAME turns off a switch NAME the file turns on), without a config attribute; a bad file, key or value is
    parser.error naming the file."""
    argv = sys.argv[1:] if argv is None else list(argv)
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument('--config', action='append', default=[])
    known, _ = pre.parse_known_args(argv)
    if len(known.config) > 1:
        parser.error(f'--config is given {len(known.config)} times: give one file (flags after it override it)')
    switches = {f'--no_{a.dest}': a.dest for a in parser._actions if a.option_strings and a.nargs == 0}
    turned_off = {switches[token] for token in argv if token in switches}
    argv = [token for token in argv if token not in switches]
    tokens = config_tokens(parser, known.config[0], argv, turned_off) if known.config else []
    if turned_off and not known.config:
        parser.error(f'--no_{sorted(turned_off)[0]} turns off a switch a --config file turns on: give --config')
    namespace = parser.parse_args(tokens + argv)
    del namespace.config
    return namespace


def given_dests(parser, argv):
    """Return the dests of the flags argv gives, an abbreviation (argparse takes a unique prefix) as its flag."""
    options = {option: action.dest for action in parser._actions for option in action.option_strings}
    dests = set()
    for token in argv:
        if not token.startswith('--'):
            continue
        name = token.split('=', 1)[0]
        matches = {options[name]} if name in options else {dest for option, dest in options.items()
                                                           if option.startswith(name)}
        if len(matches) == 1:
            dests |= matches
    return dests


def config_tokens(parser, path, argv, turned_off=frozenset()):
    """Return the command-line tokens that the TOML file path's keys stand for, leaving out the flags argv gives and
    the switches turned_off; parser.error names the file and the key when the file cannot be read or a key or value
    does not fit a flag."""
    table = read_config_file(parser, path)
    actions = {action.dest: action for action in parser._actions
               if action.option_strings and action.dest not in ('config', 'help')}
    given = given_dests(parser, argv) | set(turned_off)
    tokens = []
    for key, value in table.items():
        action = actions.get(key)
        if key in ('config', 'help'):
            parser.error(f'--config {path}: {key!r} is not a key a config holds (a config names flag values only)')
        if action is None:
            nearest = difflib.get_close_matches(key, list(actions), n=1, cutoff=0.5)
            hint = f'the nearest flag is --{nearest[0]}' if nearest else 'see --help for the flags'
            parser.error(f'--config {path}: unknown key {key!r} ({hint})')
        if key in given:
            continue  # the command line overrides the file
        tokens += flag_tokens(parser, path, key, value, action)
    return tokens


def read_config_file(parser, path):
    """Return the table (a dict of flag name -> value) of the TOML file path; parser.error when it is unreadable."""
    try:
        import tomllib
    except ImportError:  # Python 3.10: tomllib arrived in 3.11
        parser.error(f'--config {path}: reading TOML needs Python 3.11 or later; give the flags on the command line')
    if not os.path.exists(path):
        parser.error(f'--config {path}: no such file (give a TOML file, e.g. one of configs/)')
    if not os.path.isfile(path):
        parser.error(f'--config {path}: not a regular file (give a TOML file, e.g. one of configs/)')
    if os.path.getsize(path) > CONFIG_MAX_BYTES:
        parser.error(f'--config {path}: {os.path.getsize(path)} bytes, more than a config holds '
                     f'({CONFIG_MAX_BYTES}); give a TOML file of flag values')
    try:
        with open(path, 'rb') as f:
            table = tomllib.load(f)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        parser.error(f'--config {path}: not a TOML file ({err})')
    nested = [key for key, value in table.items() if isinstance(value, dict)]
    if nested:
        parser.error(f'--config {path}: [{nested[0]}] is a table; give every key at the top level, as flags are')
    return table


def flag_tokens(parser, path, key, value, action):
    """Return the tokens of flag action (dest key) set to the TOML value, checked against what the flag takes."""
    flag = action.option_strings[-1]
    where = f'--config {path}: {key} = {value!r}'
    if action.nargs == 0:  # a switch (store_true): the file can only turn it on, as the command line can
        if not isinstance(value, bool):
            parser.error(f'{where}: {key} is a switch, give true or false')
        return [flag] if value != action.default else []
    if isinstance(value, bool):
        if action.nargs == '?' and value == action.default:  # e.g. --resume: false is its default
            return []
        if action.nargs == '?' and value:  # e.g. --resume: true is the bare flag
            return [flag]
        parser.error(f'{where}: --{key} takes a value, not true or false')
    if isinstance(value, (dict, list)) and not isinstance(action, argparse._AppendAction):
        parser.error(f'{where}: --{key} takes one value')
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, (str, int, float)) for v in values):
        parser.error(f'{where}: give a string or a number')
    for v in values:  # checked here, so that the error names the file
        try:
            typed = str(v) if action.type is None else action.type(str(v))
        except (TypeError, ValueError, argparse.ArgumentTypeError) as err:
            parser.error(f'{where}: not a value --{key} takes ({err})')
        if action.choices is not None and typed not in action.choices:
            parser.error(f'{where}: give one of {", ".join(map(str, action.choices))}')
    # FLAG=VALUE: a value that starts with '-' stays a value
    return [f'{flag}={v}' for v in values]
