"""The command-line flags that several scripts share, each group declared once.

No TF counterpart (the original's train.py declares its flags inline; train.py keeps those names and defaults).
"""
import torch

from model_pytorch import ACT_FNS


def add_weights_args(parser):
    """Add the flags that choose a model to load (generate.py, extract_features.py) to parser; return it."""
    parser.add_argument('--model_dir', default='model/',
                        help='released shards, a convert.py safetensors folder or a transformers openai-gpt folder')
    parser.add_argument('--n_head', type=int, help='attention heads (released shards: default 12; others: read '
                                                   'from config.json)')
    parser.add_argument('--afn', choices=sorted(ACT_FNS), help='activation for released shards (default gelu)')
    parser.add_argument('--n_ctx', type=int, help='positions to keep (default: every stored position)')
    parser.add_argument('--encoder_path', help='BPE vocabulary (default: encoder_bpe_40000.json or vocab.json in '
                                               '--model_dir)')
    parser.add_argument('--bpe_path', help='BPE merges (default: vocab_40000.bpe or merges.txt in --model_dir)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                        help='torch device (default: cuda when available)')
    return parser
