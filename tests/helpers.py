"""Shared test helpers: the TF ground truth and tiny models built from it."""
import json
from pathlib import Path

import numpy as np

from model_pytorch import DEFAULT_CONFIG, DoubleHeadModel, clone_config, load_openai_pretrained_model

FIXTURES = Path(__file__).resolve().parent / 'fixtures'
TF_REF = FIXTURES / 'tf_reference'
SMALL_MODEL = TF_REF / 'small_model'
VOCAB_DIR = Path(__file__).resolve().parents[1] / 'model'  # the released vocabulary, shipped in the repository


def load_tf_reference():
    """Return (arrays of small.npz as a dict, its config dict)."""
    with np.load(TF_REF / 'small.npz', allow_pickle=False) as d:
        ref = {k: d[k] for k in d.files}
    return ref, json.loads(str(ref['config']))


def small_cfg(pdrop=0.0, **changes):
    """Return the fixture's model config with every dropout set to pdrop."""
    fields = dict(n_embd=32, n_head=4, n_layer=2, embd_pdrop=pdrop, attn_pdrop=pdrop, resid_pdrop=pdrop,
                  clf_pdrop=pdrop)
    fields.update(changes)
    return clone_config(DEFAULT_CONFIG, **fields)


def tf_model(ref, config, pdrop=0.0):
    """Return the DoubleHeadModel the original builds for the fixture, loaded like its train.py."""
    import torch
    n_vocab, n_special, n_ctx = config['n_vocab'], config['n_special'], config['n_ctx']
    model = DoubleHeadModel(small_cfg(pdrop), clf_token=n_vocab + n_special - 1, task_head_type='multiple_choice',
                            vocab=n_vocab + n_special + n_ctx, n_ctx=n_ctx)
    np.random.seed(config['seed'])
    load_openai_pretrained_model(model, n_ctx=n_ctx, n_special=n_special, n_embd=config['n_embd'],
                                 path=str(SMALL_MODEL))
    with torch.no_grad():
        model.task_head.clf.w.copy_(torch.from_numpy(ref['clf_w']))
        model.task_head.clf.b.copy_(torch.from_numpy(ref['clf_b']))
    return model
