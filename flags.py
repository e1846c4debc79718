"""The command-line flags that several scripts share, each group declared once.

No TF counterpart (the original's train.py declares its flags inline; train.py keeps their names and defaults,
declared here in groups that pretrain.py, generate.py and extract_features.py share). This is the command line's
module: what turns parsed flags into the typed settings library code takes (weights_choice) lives here too, so that
library code never sees argparse.
"""
import argparse

import torch

from model_pytorch import ACT_FNS
from models import WeightsChoice
from precision import PRECISIONS


def add_weights_args(parser):
    """Add the flags that choose a model to load (generate.py, extract_features.py) to parser; return it."""
    parser.add_argument('--model_dir', default='model/',
                        help='any weights folder: GPT-1 released shards, a GPT-2 released checkpoint, a convert.py '
                             'safetensors folder, a transformers openai-gpt or gpt2 folder')
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


def add_architecture_args(parser):
    """Add --n_embd, --n_head, --n_layer and --afn to parser; return it. Each defaults to None: the architecture of the
    weights (models.read_with_flags: their shapes and config; GPT-1's released shards state neither heads nor
    activation, the original's 12 and gelu unless given), which a given flag must agree with; without weights
    (pretrain.py from scratch), the paper's (768, 12, 12, gelu) or a GPT-2 preset's."""
    default_help = ("default: the weights' (released GPT-1 shards: n_head 12, gelu), else the paper's (768, 12, 12, "
                    "gelu); a flag that contradicts the weights is refused")
    for name in ('n_embd', 'n_head', 'n_layer'):
        parser.add_argument(f'--{name}', type=int, default=None, help=default_help)
    parser.add_argument('--afn', type=str, default=None, choices=sorted(ACT_FNS), help=default_help)
    return parser


def add_dropout_args(parser, clf=True):
    """Add the dropout rates (0.1 each, the paper's) to parser, the classifier's with clf; return it."""
    for name in ('embd_pdrop', 'attn_pdrop', 'resid_pdrop') + (('clf_pdrop',) if clf else ()):
        parser.add_argument(f'--{name}', type=float, default=0.1)
    return parser


def add_optimizer_args(parser, lr):
    """Add OpenAIAdam's flags to parser with lr as the default learning rate (the others: the original's); return it."""
    parser.add_argument('--lr', type=float, default=lr)
    parser.add_argument('--l2', type=float, default=0.01)
    # the original declares max_grad_norm with type=int; a float flag accepts both 1 and 0.5
    parser.add_argument('--max_grad_norm', type=float, default=1)
    parser.add_argument('--b1', type=float, default=0.9)
    parser.add_argument('--b2', type=float, default=0.999)
    parser.add_argument('--e', type=float, default=1e-8)
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
    parser.add_argument('--seed', type=int, default=42)
    parser.add_argument('--device', type=str, default=None, help='default: cuda when available, else cpu')
    parser.add_argument('--precision', type=str, default='fp32', choices=PRECISIONS,
                        help='fp32 (TF32 matmuls on CUDA), fp32-strict, bf16 or fp16 (with loss scaling)')
    parser.add_argument('--micro_batch', type=int, default=None,
                        help=f'{unit} per forward pass (default: all of this process\'s share of the batch); the '
                             f'gradients accumulate to the whole batch')
    parser.add_argument('--compile', action='store_true', help='torch.compile the model')
    parser.add_argument('--checkpoint_activations', action='store_true',
                        help='recompute block activations in backward: less memory, same gradients')
    parser.add_argument('--save_every', type=int, default=save_every, help=save_help)
    parser.add_argument('--resume', nargs='?', const=True, default=False, type=resume_mode, metavar='auto',
                        help=f'continue from {state_path} (it must exist); --resume auto: continue when it exists, '
                             f'else start afresh (for restarts by torchrun --max-restarts or a requeued job)')
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
