"""Every model family behind one call: `load_model(path)` returns the model a weights folder holds.

No TF counterpart. weights.py reads each format into a Checkpoint; the family's model module builds the model
from it (model_pytorch.model_from_checkpoint for GPT-1). This module sits above both, so that neither the
formats nor the models import each other in a circle.
"""
from model_pytorch import model_from_checkpoint
from weights import detect_format, read_checkpoint, read_released


def load_model(path, lm=False, n_head=None, afn=None, n_ctx=None, n_special=None, n_vocab=None, verify=False):
    """Return the model in eval mode that a folder (or transformers weights file) holds: an LMModel with lm, else a
    TransformerModel; its config (`model.cfg`) gives n_vocab, n_special and n_ctx.

    Released shards state neither n_head nor afn (default: the released 12 heads and gelu); n_ctx (default: every
    stored position) crops the positions; n_special sets the special rows (default: as stored, none for released
    shards; new rows are drawn as the original does); n_vocab splits a transformers table into tokens and special
    rows (default: its config.json's n_special, else every row a token). verify checks released shards against
    their SHA-1s.
    """
    if detect_format(path) == 'released':
        ckpt = read_released(path, n_head=n_head, afn=afn, verify=verify)
    elif verify:
        raise ValueError(f'{path} is not a released model/ folder: verification checks the released shards only')
    else:
        ckpt = read_checkpoint(path, n_head=n_head, afn=afn, n_vocab=n_vocab)
    return model_from_checkpoint(ckpt, n_ctx=n_ctx, n_special=n_special, lm=lm)
