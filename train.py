"""Fine-tune GPT-1 on ROCStories and write the submission (TF: train.py's `__main__`, transform_roc,
iter_apply, iter_predict, log, predict, and the multi-GPU update of mgpu_train).

Wires the data (datasets, task_datasets, tasks, text_utils, utils), the model (model_pytorch), the losses
(loss) and the optimizer (opt) together; the update itself, the devices and precisions are trainer.py's,
shared with pretrain.py.

Run as the original: python train.py --dataset rocstories --desc rocstories --submit --analysis --data_dir data/
"""
import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch

import datasets
import task_datasets
from checkpoint import atomic_write, write_json
from distributed import DistInfo, close_distributed, dist_info, gather_concat, shard, sum_over_ranks
from encode_cache import cached
from flags import (add_architecture_args, add_config_arg, add_dropout_args, add_optimizer_args, add_run_args,
                   parse_with_config)
from loss import task_losses, train_loss
from model_gpt2 import make_task_model
from model_pytorch import DoubleHeadModel, GPTConfig, MultipleChoiceHead, load_openai_pretrained_model
from models import architecture_flags, built_architecture, load_tokenizer, read_with_flags, stated_architecture
from opt import SCHEDULES, OpenAIAdam
from tasks import (FINE_TUNING_TASKS, ROCSTORIES, Task, compute_metrics, decode_predictions, get_task, label_names,
                   needed_n_ctx, predictions, transform)
from precision import autocast_context
from trainer import (RUN_ENDINGS, Evaluation, Launch, PhaseClock, Run, RunFiles, RunSettings, StateSpec,
                     check_not_unfinished, failed_run_exit, format_phases, phase_record, run_identity, save_state,
                     shard_memory_line, stop_if_requested, to_tensors, update_phase)
from text_utils import BPE_PATH, ENCODER_PATH
from untrusted import BadFile, int_field
from utils import encode_dataset, iter_data, shuffled_indices
from utils import progress as progress_bar
from weights import WEIGHTS_SOURCE, detect_family, detect_format, released_names

DATASETS = tuple(FINE_TUNING_TASKS)  # rocstories, then the paper's other tasks
SUBMISSION_FILES = {'rocstories': dict(ROCSTORIES.submissions)['test']}
LOG_AT_UPDATES = (1000, 2000, 4000, 8000, 16000, 32000)  # extra evaluations in the first epoch
GPT1_VOCABULARY = ('model/encoder_bpe_40000.json', 'model/vocab_40000.bpe')  # the original's --encoder_path, --bpe_path


def parse_args(argv=None):
    """Return the command line as FineTuneSettings: every flag of the original (names and defaults), plus this port's;
    an --n_transfer list is a sweep."""
    p = command_line()
    args = parse_with_config(p, argv)
    if args.from_scratch:
        if args.n_transfer != [12]:
            p.error(f'--from_scratch transfers nothing: leave out --n_transfer {",".join(map(str, args.n_transfer))}')
        args.n_transfer = [-1]
    # one value: an int as the original's; several: a sweep, run by main() one value at a time
    args.transfer_sweep = args.n_transfer if len(args.n_transfer) > 1 else None
    args.n_transfer = args.n_transfer[0]
    return FineTuneSettings(**vars(args))


def command_line():
    """Return train.py's argument parser."""
    p = argparse.ArgumentParser(description='Fine-tune GPT-1 (faithful to openai/finetune-transformer-lm) or GPT-2 '
                                            'weights under GPT-1\'s recipe on ROCStories or the paper\'s other tasks; '
                                            'under torchrun, data-parallel over the processes.')
    add_config_arg(p)
    p.add_argument('--desc', type=str, default='rocstories',
                   help='the run\'s name: log_dir/DESC.jsonl, save_dir/DESC/ (default: rocstories)')
    p.add_argument('--dataset', type=str, default='rocstories',
                   help=f'the task, one of {", ".join(DATASETS)} (default: rocstories)')
    p.add_argument('--log_dir', type=str, default='log/', help='folder of the run\'s logs (default: log/)')
    p.add_argument('--save_dir', type=str, default='save/',
                   help='folder of the best weights and training state (default: save/)')
    p.add_argument('--data_dir', type=str, default='data/', help='folder of the task\'s data (default: data/)')
    p.add_argument('--submission_dir', type=str, default='submission/',
                   help='folder of the test predictions --submit writes (default: submission/)')
    p.add_argument('--submit', action='store_true',
                   help='keep the best weights on validation and write their test predictions')
    p.add_argument('--analysis', action='store_true',
                   help='with --submit, report the predictions as analysis.py does (ROCStories: test accuracy)')
    p.add_argument('--n_iter', type=int, default=3, help='epochs (default: 3)')
    p.add_argument('--n_batch', type=int, default=8,
                   help='examples per tower; an update takes n_batch * n_gpu (default: 8)')
    p.add_argument('--lr_warmup', type=float, default=0.002,
                   help='share of the updates over which the learning rate rises from 0 (default: 0.002)')
    p.add_argument('--n_ctx', type=int, default=512,
                   help='most tokens per sequence: the longest example\'s, at most this (default: 512)')
    add_architecture_args(p)  # default None: the weights' (released shards: n_head 12, gelu)
    add_dropout_args(p)
    add_optimizer_args(p, lr=6.25e-5)
    p.add_argument('--vector_l2', action='store_true', help='apply --l2 to the vectors (biases, gains) too')
    p.add_argument('--n_gpu', type=int, default=4,
                   help='towers of the original; one update averages n_batch * n_gpu examples on any device count '
                        '(default: 4)')
    p.add_argument('--opt', type=str, default='adam', choices=['adam'],
                   help='the optimizer: OpenAIAdam, the original\'s only one (default: adam)')
    p.add_argument('--lr_schedule', type=str, default='warmup_linear', choices=sorted(SCHEDULES),
                   help='the learning rate\'s shape over the run (default: warmup_linear)')
    p.add_argument('--encoder_path', type=str, default=GPT1_VOCABULARY[0],
                   help=f'BPE vocabulary (default: {GPT1_VOCABULARY[0]}, the one shipped next to this code, found from any '
                        f'folder; with GPT-2 weights, left at this: theirs)')
    p.add_argument('--bpe_path', type=str, default=GPT1_VOCABULARY[1],
                   help=f'BPE merges (default: {GPT1_VOCABULARY[1]}; with GPT-2 weights, left at this: theirs)')
    p.add_argument('--encode_cache', type=str, default='auto', metavar='FOLDER',
                   help='where the encoded texts are kept, so that a run on data already seen skips tokenization: a '
                        'folder, or none (default: auto, $GPT_PYTORCH_CACHE/encoded, else ~/.cache/gpt-pytorch/encoded)')
    p.add_argument('--n_transfer', type=transfer_values, default=[12],
                   help='blocks whose pre-trained weights are copied, with the table (-1: nothing); a list K1,K2,... '
                        'runs one training per value and writes log/<desc>_transfer.json (the paper\'s Figure 2, '
                        'left: analysis.py --transfer; default: 12)')
    p.add_argument('--lm_coef', type=float, default=0.5,
                   help='weight of the auxiliary LM loss added to the task loss (default: 0.5)')
    p.add_argument('--n_valid', type=int, default=374,
                   help='ROCStories: the val CSV\'s stories held out for validation; every task: the training '
                        'examples scored at each evaluation (default: 374)')
    # additions of this port
    p.add_argument('--model_dir', type=str, default='model/',
                   help='the weights: a released GPT-1 model/ or GPT-2 folder, a convert.py folder or a transformers '
                        'openai-gpt or gpt2 folder (default: model/)')
    add_run_args(p, unit='examples', save_every=0,
                 save_help='also save the training state every N updates (it is always saved at epoch ends; '
                           'default: 0, only there)',
                 state_path='save_dir/desc/train_state.safetensors')
    p.add_argument('--verify_weights', action='store_true', help='check the shards against the released SHA-1s')
    p.add_argument('--n_runs', type=int, default=1,
                   help='run seeds seed, seed+1, ... one after another and report median/mean/std/best of valid '
                        '(default: 1)')
    p.add_argument('--from_scratch', action='store_true',
                   help='no pre-trained weights: every weight drawn as the paper initialises it (N(0, 0.02)), the '
                        'same as --n_transfer -1; --model_dir still gives the architecture and vocabulary')
    return p


@dataclass(frozen=True)
class FineTuneSettings:
    """train.py's command line, typed: every flag (parse_args gives their defaults), in the order the run's log header
    lists them; n_transfer is this run's value and transfer_sweep a --n_transfer list's values (None: one run)."""
    desc: str
    dataset: str
    log_dir: str
    save_dir: str
    data_dir: str
    submission_dir: str
    submit: bool
    analysis: bool
    n_iter: int
    n_batch: int
    lr_warmup: float
    n_ctx: int
    n_embd: Optional[int]   # the architecture flags: None means the weights'
    n_head: Optional[int]
    n_layer: Optional[int]
    afn: Optional[str]
    embd_pdrop: float
    attn_pdrop: float
    resid_pdrop: float
    clf_pdrop: float
    lr: float
    l2: float
    max_grad_norm: float
    b1: float
    b2: float
    e: float
    vector_l2: bool
    n_gpu: int
    opt: str
    lr_schedule: str
    encoder_path: str
    bpe_path: str
    encode_cache: str  # 'auto', 'none' or a folder (encode_cache.cache_folder)
    n_transfer: int
    lm_coef: float
    n_valid: int
    model_dir: str
    seed: int
    device: Optional[str]
    precision: str
    micro_batch: Optional[int]
    compile: bool
    shard: bool
    checkpoint_activations: bool
    save_every: int
    resume: Union[bool, str]  # True, False or 'auto'
    restart: bool
    quiet: bool
    verify_weights: bool
    n_runs: int
    from_scratch: bool
    transfer_sweep: Optional[list]

    def step_settings(self):
        """Return how an update cuts and weighs its batch: micro-batches of --micro_batch (default: n_batch)."""
        return StepSettings(self.micro_batch or self.n_batch, self.lm_coef)

    def evaluation(self, device):
        """Return how splits are evaluated on device: batches of n_batch * n_gpu, the run's precision."""
        return Evaluation(self.n_batch * self.n_gpu, device, self.precision, verbose=not self.quiet)


def transfer_values(text):
    """Return the --n_transfer values of '12' or '0,3,6,9,12' (each -1 or more, each once)."""
    try:
        values = [int(v) for v in text.split(',')]
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r}: give an integer or a comma-separated list (0,3,6,9,12)') from None
    if min(values) < -1 or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f'{text!r}: each value -1 or more, each once')
    return values


def check_args(settings, info=DistInfo()):
    """Raise ValueError naming the first inconsistent argument."""
    if settings.dataset not in DATASETS:
        raise ValueError(f'unknown --dataset {settings.dataset!r}: known datasets are {", ".join(DATASETS)}')
    for name in ('n_batch', 'n_gpu', 'n_iter', 'n_runs'):
        if getattr(settings, name) < 1:
            raise ValueError(f'--{name} must be at least 1, got {getattr(settings, name)}')
    micro = settings.micro_batch or settings.n_batch
    if micro < 1:
        raise ValueError(f'--micro_batch must be at least 1, got {micro}')
    if info.world_size > settings.n_batch * settings.n_gpu:
        raise ValueError(f'{info.world_size} processes for batches of n_batch * n_gpu = {settings.n_batch * settings.n_gpu}: '
                         f'use at most that many processes')


def tokenizer_paths(settings, family):
    """Return the (encoder_path, bpe_path) of the run's tokenizer: the flags'; left at their defaults, the vocabulary
    shipped in this repository's model/ (whatever the working folder), or with GPT-2 weights the weights' own (None,
    None: their folder's, else the shipped one)."""
    paths = (settings.encoder_path, settings.bpe_path)
    if paths == GPT1_VOCABULARY:
        # the original's defaults name its repository's model/ folder: the files shipped next to this code, found
        # from any working folder
        return (None, None) if family == 'gpt2' else (ENCODER_PATH, BPE_PATH)
    return paths


def required_files(settings):
    """Return [(path, where it comes from)] of every input file the run reads."""
    rocs = ('the Story Cloze Test 2016 val/test CSVs from https://cs.rochester.edu/nlp/rocstories/ '
            '(put them in --data_dir)')
    files = []
    if settings.dataset == 'rocstories':  # the other tasks' readers list their own files when one is missing
        files += [(os.path.join(settings.data_dir, datasets.VAL_FILE), rocs),
                  (os.path.join(settings.data_dir, datasets.TEST_FILE), rocs)]
    family = detect_family(settings.model_dir)
    files += [(path, WEIGHTS_SOURCE) for path in tokenizer_paths(settings, family) if path is not None]
    if detect_format(settings.model_dir) == 'released':  # a convert.py or transformers folder is checked as it is read
        files += [(os.path.join(settings.model_dir, name), WEIGHTS_SOURCE) for name in released_names()]
    return files


def check_inputs(settings):
    """Raise FileNotFoundError for the first missing input, before any work is done."""
    for path, source in required_files(settings):
        if not os.path.isfile(path):
            raise FileNotFoundError(f'{path} is missing: it comes from {source}')


def roc_n_ctx(splits, max_len, n_ctx):
    """Return the original's n_ctx: the longest story + ending over all splits, plus 3, capped by n_ctx."""
    lengths = [len(x1[:max_len]) + max(len(x2[:max_len]), len(x3[:max_len]))
               for X1, X2, X3 in splits for x1, x2, x3 in zip(X1, X2, X3)]
    return min(max(lengths) + 3, n_ctx)


@dataclass(frozen=True)
class RocLayout:
    """The original's globals that transform_roc reads: the encoder (with _start_, _delimiter_, _classify_), n_ctx,
    the longest story or ending kept (max_len), and the table's token and special rows before the positions."""
    encoder: dict
    n_ctx: int
    max_len: int
    n_vocab: int
    n_special: int


def transform_roc(X1, X2, X3, layout):
    """Return (xmb [n, 2, n_ctx, 2] int64, mmb [n, 2, n_ctx] float32) for stories and both endings (TF: transform_roc);
    layout: a RocLayout."""
    encoder, n_ctx, max_len = layout.encoder, layout.n_ctx, layout.max_len
    n_vocab, n_special = layout.n_vocab, layout.n_special
    n_batch = len(X1)
    xmb = np.zeros((n_batch, 2, n_ctx, 2), dtype=np.int64)
    mmb = np.zeros((n_batch, 2, n_ctx), dtype=np.float32)
    start, delimiter, clf_token = encoder['_start_'], encoder['_delimiter_'], encoder['_classify_']
    for i, (x1, x2, x3) in enumerate(zip(X1, X2, X3)):
        x12 = [start] + x1[:max_len] + [delimiter] + x2[:max_len] + [clf_token]
        x13 = [start] + x1[:max_len] + [delimiter] + x3[:max_len] + [clf_token]
        xmb[i, 0, :len(x12), 0] = x12
        xmb[i, 1, :len(x13), 0] = x13
        mmb[i, 0, :len(x12)] = 1
        mmb[i, 1, :len(x13)] = 1
    xmb[:, :, :, 1] = np.arange(n_vocab + n_special, n_vocab + n_special + n_ctx)
    return xmb, mmb


def trim_batch(xmb, mmb):
    """Return the batch cut to its longest sequence: exact, since padding is on the right and attention causal."""
    length = max(int(mmb.sum(-1).max()), 1)
    return xmb[..., :length, :], mmb[..., :length]


@dataclass(frozen=True)
class StepSettings:
    """How an update cuts and weighs its batch: micro examples per forward pass, the LM loss's weight lm_coef."""
    micro: int
    lm_coef: float


def micro_batches(xmb, mmb, ymb, micro, info=DistInfo()):
    """Return [(weight, (xmb, mmb, ymb))]: this rank's share of the batch cut into micro-batches of micro examples,
    each weighted by its share of the whole batch, so that the weighted losses sum to the whole batch's mean."""
    n = len(xmb)
    own = shard(n, info)
    # Intentional difference (speed only): this rank's examples are ordered by length before they are
    # cut into micro-batches, so each is trimmed with less padding. The update is the batch mean either
    # way; only which examples share a dropout draw changes.
    order = np.arange(n)
    order[own] = own.start + np.argsort(mmb[own].sum(-1).max(-1), kind='stable')
    xmb, mmb, ymb = xmb[order], mmb[order], ymb[order]
    bounds = [(s, min(s + micro, own.stop)) for s in range(own.start, own.stop, micro)]
    return [((e - s) / n, (xmb[s:e], mmb[s:e], ymb[s:e])) for s, e in bounds]


def train_step(run, xmb, mmb, ymb, step):
    """Make one update on the batch, this rank's share of it in micro-batches (TF: mgpu_train); return the share's
    mean classifier loss. run.net is the DoubleHeadModel (possibly wrapped by DDP or torch.compile); step: the
    StepSettings."""
    parts = micro_batches(xmb, mmb, ymb, step.micro, run.info)
    loss_sum = torch.zeros((), device=run.device)  # the update's loss, for the non-finite check
    clf_sum = torch.zeros((), dtype=torch.float64, device=run.device)
    with run.autocast():  # one region for every micro-batch: each weight is cast once
        for k, (weight, (x, m, y)) in enumerate(parts):
            x, m, y = to_tensors(run.device, *trim_batch(x, m), y)
            with run.sync_gradients(last=k == len(parts) - 1):  # DDP all-reduces on the last micro-batch only
                # forward: the original's task and LM losses; transform_* end every sequence with clf_token, so
                # the per-micro-batch check that one does (a read of the device) is skipped; evaluation keeps it
                _, clf, lm = run.net(x, m, y, lm_coef=step.lm_coef, check=False)
                # weight: the micro-batch's share of the whole batch; x world size: DDP averages the ranks' gradients
                loss = train_loss(clf, lm, step.lm_coef) * weight * run.info.world_size
                run.backward(loss)  # fp16: scaled
            loss_sum = loss_sum + loss.detach().float()
            clf_sum += clf.detach().sum().double()
    clf_sum = run.step(loss_sum, report=clf_sum)  # stops on a non-finite loss; OpenAIAdam clips by the global norm
    return clf_sum / max(sum(len(x) for _, (x, _, _) in parts), 1)


def shared_prefix(xmb, mmb):
    """Return, for multiple-choice xmb [B, C, T, 2], how many leading positions the C sequences of each example
    share [B], leaving each choice at least its last (classify) token; 0 where there is nothing to share."""
    same = (xmb[:, :, :, 0] == xmb[:, :1, :, 0]).all(1)  # [B, C, T] -> [B, T]
    first_diff = np.where(same.all(1), same.shape[1], same.argmin(1))
    return np.minimum(first_diff, mmb.sum(-1).min(1).astype(np.int64) - 1).clip(min=0)


def uses_shared_prefix(model, xmb):
    """Return whether evaluation scores xmb's choices from their shared prefix: a multiple-choice model and layout."""
    return isinstance(getattr(model, 'task_head', None), MultipleChoiceHead) and xmb.ndim == 4


def head_outputs(model, xmb, mmb, device, precision):
    """Return the task head's outputs [B, C] or [B] of one batch (a model in eval mode).

    Multiple-choice batches run each example's shared prefix (`_start_ story _delimiter_`) once and score
    every choice from its key/value cache: the same outputs as the plain forward, with fewer FLOPs.
    """
    x, m = trim_batch(xmb, mmb)
    prefix = shared_prefix(x, m) if uses_shared_prefix(model, x) else None
    x = to_tensors(device, x)[0]
    with autocast_context(device, precision):
        if prefix is not None and prefix.min() > 0:
            return model.choice_logits_from_shared_prefix(x, torch.from_numpy(prefix).to(device)).float()
        return model.hidden_and_task(x)[2].float()


def outputs_in_length_order(model, Xs, Ms, evaluation):
    """Return the head outputs [n, C] or [n] of a split, in its order, computed in batches of similar lengths.

    Intentional difference (speed only): the split is sorted by length before it is cut into batches, so each
    batch is trimmed with little padding; the outputs are put back in the split's order.
    """
    lengths = Ms.reshape(len(Ms), -1, Ms.shape[-1]).sum(-1).max(-1)
    if uses_shared_prefix(model, Xs):  # batches of similar prefixes, then of similar whole lengths
        order = np.lexsort((lengths, shared_prefix(Xs, Ms)))
    else:
        order = np.argsort(lengths, kind='stable')
    outputs = []
    with torch.inference_mode():
        for xmb, mmb in iter_data(Xs[order], Ms[order], n_batch=evaluation.n_batch, truncate=False,
                                  verbose=evaluation.verbose):
            outputs.append(head_outputs(model, xmb, mmb, evaluation.device, evaluation.precision).cpu().numpy())
    if not outputs:
        return np.zeros((0,), dtype=np.float32)
    sorted_outputs = np.concatenate(outputs, 0)
    result = np.empty_like(sorted_outputs)
    result[order] = sorted_outputs
    return result


def iter_apply(model, Xs, Ms, Ys, evaluation):
    """Return (head outputs [n, C] or [n], summed task loss) over a split; model in eval mode (TF: iter_apply)."""
    outputs = outputs_in_length_order(model, Xs, Ms, evaluation)
    if not len(outputs):
        return outputs, 0.0
    return outputs, task_losses(torch.from_numpy(outputs), torch.from_numpy(np.asarray(Ys))).sum().item()


def iter_predict(model, Xs, Ms, evaluation):
    """Return the head outputs [n, C] or [n] of a split; call it on a model in eval mode (TF: iter_predict)."""
    return outputs_in_length_order(model, Xs, Ms, evaluation)


@dataclass(frozen=True, eq=False)
class Split:
    """One transformed split of a task (TF: trX, trM, trY, vaX, ..., teX): inputs [n, C, n_ctx, 2] int64 (token id,
    position id), mask [n, C, n_ctx] float32, labels [n] (None: a test set without them)."""
    name: str                             # the task's name for it: 'train', 'va', 'dev', 'dev_matched', 'test', ...
    inputs: np.ndarray
    mask: np.ndarray
    labels: Optional[np.ndarray] = None
    groups: Optional[Sequence] = None     # each example's group, for the task's reported_groups (RACE: middle, high)
    ids: Optional[Sequence] = None        # a test split's submission row ids (None: 0, 1, ...)
    file: Optional[str] = None            # a test split's submission file name


@dataclass(frozen=True, eq=False)
class TaskData:
    """The data a fine-tuning run trains on, evaluates and submits: the task, its training split, its dev splits
    (evals; the first, 'va' in the log, picks the best weights) and its test splits (tests; a submission file each)."""
    task: Task
    train: Split
    evals: tuple
    tests: tuple


@dataclass(frozen=True)
class ModelSizes:
    """What the encoded data decides about the model: the vocabulary's n_vocab token rows and n_special special rows
    (the position rows follow them), the n_ctx positions, the _classify_ token and the task head's type."""
    n_vocab: int
    n_special: int
    n_ctx: int
    clf_token: int
    head_type: Union[str, tuple]


def apply_sharded(model, split, evaluation, info):
    """Return (outputs, summed task loss) of a Split, each rank doing its shard, gathered in order."""
    own = shard(len(split.labels), info)
    logits, cost = iter_apply(model, split.inputs[own], split.mask[own], split.labels[own], evaluation)
    return gather_concat(logits, info), sum_over_ranks(cost, info)


def split_metrics(task, outputs, labels, groups=None):
    """Return {metric: value} for one evaluated split (the task's metrics; RACE also by group)."""
    values = compute_metrics(task, outputs, labels)
    for group in task.reported_groups:
        keep = np.asarray(groups) == group
        if keep.any():
            values.update({f'{k}_{group}': v for k, v in compute_metrics(task, outputs[keep], labels[keep]).items()})
    return values


def evaluate(model, data, n_valid, evaluation, info=DistInfo()):
    """Return {prefix_cost, prefix_metric} for the first n_valid training examples ('tr') and each dev split (TF: log).

    ROCStories gives the original's tr_cost, va_cost, tr_acc, va_acc.
    """
    model.eval()
    tr = data.train
    sets = [('tr', Split(tr.name, tr.inputs[:n_valid], tr.mask[:n_valid], tr.labels[:n_valid]))]  # no groups
    sets += [('va' if i == 0 else split.name, split) for i, split in enumerate(data.evals)]
    scores = {}
    for prefix, split in sets:
        outputs, cost = apply_sharded(model, split, evaluation, info)
        scores[f'{prefix}_cost'] = cost / len(split.labels)
        metrics = split_metrics(data.task, outputs, split.labels, split.groups)
        scores.update({f'{prefix}_{k}': v for k, v in metrics.items()})
    model.train()
    # the original orders its log line tr_cost, va_cost, tr_acc, va_acc
    costs = {k: v for k, v in scores.items() if k.endswith('_cost')}
    return {**costs, **{k: v for k, v in scores.items() if k not in costs}}


def selection_metric(data):
    """Return the log key whose best value picks the saved weights: the task's first metric on 'va' (ROCStories:
    va_acc)."""
    return 'va_' + data.task.metrics[0]


def write_submission(path, preds, index=None, gold=None):
    """Write `index\tprediction` lines (plus `\tlabel` when gold labels are given) to path atomically; return path."""
    index = range(len(preds)) if index is None else index
    def write(tmp):
        with open(tmp, 'w') as f:
            f.write('index\tprediction' + ('\tlabel' if gold is not None else '') + '\n')
            for i, (row, prediction) in enumerate(zip(index, preds)):
                f.write(f'{row}\t{prediction}' + (f'\t{gold[i]}' if gold is not None else '') + '\n')
    return atomic_write(path, write)


def load_data(settings, text_encoder):
    """Return ROCStories' encoded, transformed splits (TaskData) and the model's ModelSizes (TF: the start of
    __main__)."""
    encoder = text_encoder.encoder
    n_vocab = len(encoder)
    (trX1, trX2, trX3, trY), (vaX1, vaX2, vaX3, vaY), (teX1, teX2, teX3, teY) = encode_dataset(
        datasets.rocstories(settings.data_dir, n_valid=settings.n_valid, return_test_labels=True), encoder=text_encoder,
        verbose=not settings.quiet)
    encoder['_start_'] = len(encoder)
    encoder['_delimiter_'] = len(encoder)
    encoder['_classify_'] = len(encoder)
    n_special = 3
    max_len = settings.n_ctx // 2 - 2
    n_ctx = roc_n_ctx([(trX1, trX2, trX3), (vaX1, vaX2, vaX3), (teX1, teX2, teX3)], max_len, settings.n_ctx)
    layout = RocLayout(encoder, n_ctx, max_len, n_vocab, n_special)
    trX, trM = transform_roc(trX1, trX2, trX3, layout)
    vaX, vaM = transform_roc(vaX1, vaX2, vaX3, layout)
    teX, teM = transform_roc(teX1, teX2, teX3, layout)
    (dev,), ((test, file),) = ROCSTORIES.dev, ROCSTORIES.submissions
    data = TaskData(ROCSTORIES, Split('train', trX, trM, np.asarray(trY)), (Split(dev, vaX, vaM, np.asarray(vaY)),),
                    (Split(test, teX, teM, teY, file=file),))
    return data, ModelSizes(n_vocab, n_special, n_ctx, encoder['_classify_'], ROCSTORIES.head_type)


def encode_fields(fields, text_encoder, verbose):
    """Return the fields with every text encoded; a field of lists of texts (RACE's options) stays nested."""
    out = []
    for field in fields:
        if field and isinstance(field[0], (list, tuple)):
            sizes = [len(f) for f in field]
            flat = text_encoder.encode([t for f in field for t in f], verbose=verbose)
            bounds = np.cumsum([0] + sizes)
            out.append([flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])])
        else:
            out.append(text_encoder.encode(list(field), verbose=verbose))
    return out


def load_task_data(settings, text_encoder, task):
    """Return the encoded, transformed splits (TaskData) of one of the paper's other tasks and the model's
    ModelSizes."""
    raw = task_datasets.read_task(task.name, settings.data_dir)
    encoder = text_encoder.encoder
    n_vocab = len(encoder)
    encoded = {name: encode_fields(split['fields'], text_encoder, not settings.quiet) for name, split in raw.items()}
    for token in ('_start_', '_delimiter_', '_classify_'):
        encoder[token] = len(encoder)
    n_special = 3
    n_ctx = min(needed_n_ctx(task, encoded.values(), encoder), settings.n_ctx)
    shaped = {}
    for name, fields in encoded.items():
        X, M, n_cut = transform(task, fields, encoder, n_ctx, n_vocab, n_special)
        if n_cut:
            print(f'{task.name} {name}: {n_cut} of {len(X)} examples truncated to n_ctx={n_ctx}', flush=True)
        shaped[name] = (X, M)

    def labels(name):
        y = raw[name]['labels']
        return None if y is None else np.asarray(y)

    evals = tuple(Split(name, *shaped[name], labels(name), groups=raw[name].get('groups')) for name in task.dev)
    tests = tuple(Split(name, *shaped[name], labels(name), ids=raw[name].get('ids'), file=file)
                  for name, file in task.submissions)
    data = TaskData(task, Split('train', *shaped['train'], labels('train')), evals, tests)
    return data, ModelSizes(n_vocab, n_special, n_ctx, encoder['_classify_'], task.head_type)


def pretrained_model(settings, sizes, device, family):
    """Return the DoubleHeadModel of the architecture --model_dir states (shapes, config.json; released shards: n_head
    and afn from the flags, default 12 and gelu) with its weights loaded as the original loads the released ones
    (GPT-1), or GPT-2's weights under GPT-1's recipe (model_gpt2.GPT2DoubleHeadModel). An architecture flag that
    contradicts the weights is refused (one line naming every mismatch)."""
    if family == 'gpt2':
        return gpt2_task_model(settings, sizes).to(device)
    ckpt = read_with_flags(settings.model_dir, architecture_flags(settings), verify=settings.verify_weights)
    cfg = GPTConfig(**stated_architecture(ckpt), **model_switches(settings), n_vocab=sizes.n_vocab,
                    n_special=sizes.n_special, n_ctx=sizes.n_ctx)
    model = DoubleHeadModel(cfg, sizes.clf_token, sizes.head_type)
    load_openai_pretrained_model(model.transformer, n_ctx=cfg.n_ctx, n_special=cfg.n_special,
                                 n_transfer=settings.n_transfer, n_embd=cfg.n_embd, path=settings.model_dir, ckpt=ckpt)
    return model.to(device)


def model_switches(settings):
    """Return the config fields the flags set whatever the weights: the dropouts and activation checkpointing."""
    names = ('embd_pdrop', 'attn_pdrop', 'resid_pdrop', 'clf_pdrop', 'checkpoint_activations')
    return {name: getattr(settings, name) for name in names}


def gpt2_task_model(settings, sizes):
    """Return GPT-1's task model on the GPT-2 weights of --model_dir: their architecture (an architecture flag must
    agree with it), GPT-1's input transforms with _start_, _delimiter_ and _classify_ as new rows of wte drawn as
    GPT-1's loader draws special rows, the flags' dropouts."""
    ckpt = read_with_flags(settings.model_dir, architecture_flags(settings))
    if ckpt.n_vocab != sizes.n_vocab:
        raise ValueError(f'{settings.model_dir} has {ckpt.n_vocab} token rows but the data was encoded with '
                         f'{sizes.n_vocab} tokens: use the vocabulary of the weights')
    n_transfer = None if settings.n_transfer >= ckpt.n_layer else settings.n_transfer
    return make_task_model(ckpt, sizes.n_ctx, sizes.n_special, sizes.clf_token, sizes.head_type,
                           model_switches(settings), n_transfer)


def log_eval(run, data, settings):
    """Evaluate (all ranks), log and print one line and save improved weights (main rank) (TF: log)."""
    progress = run.progress
    with run.clock.phase('eval'), run.whole_model() as model:  # with --shard, gathered on every rank
        scores = evaluate(model, data, settings.n_valid, settings.evaluation(run.device), info=run.info)
    record = dict(n_epochs=progress['epoch'], n_updates=progress['n_updates'], **scores)
    record['time'] = time.time()
    progress['log'].append(record)
    key = selection_metric(data)
    improved = scores[key] > progress['best']
    progress['best'] = max(progress['best'], scores[key])
    if improved and settings.submit and (run.info.is_main or run.sharded):  # --shard: every rank gathers them
        with run.clock.phase('write'):
            run.save_best(run.paths['best'])
    if not run.info.is_main:
        return
    run.logger.log(**record)
    print('%d %d %.3f %.3f %.2f %.2f' % (record['n_epochs'], record['n_updates'], scores['tr_cost'],
                                         scores['va_cost'], scores['tr' + key[2:]], scores[key]), flush=True)


def new_progress():
    """Return the counters of a run that has not started: where it is, what it logged, its best score."""
    # best starts at 0, as the original's best_score (a metric that stays <= 0 keeps the initial weights)
    return dict(epoch=0, n_updates=0, batch=0, order=None, best=0.0, seen=0, train_time=0.0, log=[])


def epoch_order(n):
    """Return the original's order of n training examples for a new epoch, drawn from numpy's global generator."""
    # the original shuffles the arrays with sklearn and np.random; shuffling their indices with the same
    # generator gives the same order. sklearn no longer accepts the np.random module: its global
    # RandomState is what older sklearn resolved it to.
    return shuffled_indices(n, np.random.mtrand._rand).tolist()


def run_epoch(run, data, settings):
    """Train the rest of the current epoch from progress['batch']; run.progress is updated in place."""
    progress, step = run.progress, settings.step_settings()
    n_batch_train = settings.n_batch * settings.n_gpu
    if progress['order'] is None:
        progress['order'] = epoch_order(len(data.train.labels))
        progress['batch'] = 0
    order = np.asarray(progress['order'])
    n_batches = len(order) // n_batch_train  # the last partial batch is dropped, as the original's truncate
    with progress_bar(total=n_batches, initial=progress['batch'], desc=f"epoch {progress['epoch'] + 1}",
                      disable=settings.quiet, leave=False) as bar:
        while progress['batch'] < n_batches:
            idx = order[progress['batch'] * n_batch_train:(progress['batch'] + 1) * n_batch_train]
            t0 = time.time()
            with update_phase(run, progress['n_updates'] + 1):
                train_step(run, data.train.inputs[idx], data.train.mask[idx], data.train.labels[idx], step)
            progress['train_time'] += time.time() - t0
            progress['n_updates'] += 1
            progress['batch'] += 1
            progress['seen'] += len(idx)
            bar.update(1)
            if progress['n_updates'] in LOG_AT_UPDATES and progress['epoch'] == 0:
                log_eval(run, data, settings)
            saved = (settings.save_every > 0 and progress['n_updates'] % settings.save_every == 0
                     and progress['batch'] < n_batches)
            if saved:
                save_state(run)
            if progress['batch'] < n_batches:  # the epoch's last update stops after the epoch's evaluation and save
                stop_if_requested(run, saved)


def train(run, data, settings):
    """Run the epochs left in run.progress, evaluating and saving the training state at each epoch end."""
    run.model.train()
    with progress_bar(range(run.progress['epoch'], settings.n_iter), desc='epochs',
                      disable=settings.quiet or not run.info.is_main) as epochs:
        for _ in epochs:
            run_epoch(run, data, settings)
            run.progress.update(epoch=run.progress['epoch'] + 1, batch=0, order=None)
            log_eval(run, data, settings)
            save_state(run)
            if run.progress['epoch'] < settings.n_iter:  # after the last epoch the run ends anyway
                stop_if_requested(run, saved=True)


def check_progress_fits(progress, n_train, n_batch_train, n_iter, path):
    """Raise a BadFile naming path when a restored progress does not fit this run's data (its epoch order another
    length than the training set, its batch or epoch past the run's end); the identity check makes that impossible
    for a state this run wrote, so only a damaged or crafted file meets it."""
    order = progress['order']
    n_batches = n_train // n_batch_train
    if order is not None and len(order) != n_train:
        raise BadFile(f'{path} orders {len(order)} training examples, this run has {n_train}: not this run\'s state', path)
    if progress['epoch'] > n_iter or progress['batch'] > n_batches or \
            (progress['epoch'] == n_iter and progress['batch']):
        raise BadFile(f"{path} stands at epoch {progress['epoch']}, batch {progress['batch']}, past this run's "
                      f"{n_iter} epochs of {n_batches} batches: not this run's state", path)


def run_paths(settings):
    """Return the files a run writes: log, best weights, training state, submission, summary."""
    return dict(log=os.path.join(settings.log_dir, f'{settings.desc}.jsonl'),
                best=os.path.join(settings.save_dir, settings.desc, 'best_params.safetensors'),
                state=os.path.join(settings.save_dir, settings.desc, 'train_state.safetensors'),
                submission=os.path.join(settings.submission_dir, SUBMISSION_FILES.get(settings.dataset, '')),
                summary=os.path.join(settings.log_dir, f'{settings.desc}_summary.json'))


def lock_paths(settings, paths):
    """Return the lock files of what a run writes and no other run may write meanwhile: its save folder, its log
    and, with --submit, the submission folder's files for the dataset."""
    locks = [os.path.join(settings.save_dir, settings.desc, 'run.lock'), paths['log'] + '.lock']
    if settings.submit:
        locks.append(os.path.join(settings.submission_dir, f'{settings.dataset}.submission.lock'))
    return locks


# the flags that decide a run's result: a training state resumes only a run with the same ones
RESUME_IDENTITY = ('dataset', 'n_valid', 'seed', 'n_iter', 'lr', 'lr_schedule', 'lr_warmup', 'l2', 'vector_l2', 'b1',
                   'b2', 'e', 'max_grad_norm', 'lm_coef', 'n_transfer', 'embd_pdrop', 'attn_pdrop', 'resid_pdrop',
                   'clf_pdrop')


def run_fine_tuning(settings):
    """Train, evaluate, and with --submit predict the test set; return a summary dict (main rank)."""
    t0 = time.time()
    info = dist_info()
    check_args(settings, info)
    check_inputs(settings)
    with Launch.begin(RunSettings.of(settings), run_files(settings), info) as launch:
        if info.is_main:  # the run's arguments, once it starts (after the checks that fail fast, which print one line)
            print(json.dumps(dataclasses.asdict(settings)), flush=True)
        return run_launched(launch, resolved(settings, launch), t0)


def run_files(settings):
    """Return the RunFiles of a run: what it writes (run_paths), the folders they go in, the files it locks."""
    paths = run_paths(settings)
    folders = tuple(sorted({os.path.dirname(paths[k]) or '.' for k in ('log', 'best', 'submission')}))
    return RunFiles(paths, folders, tuple(lock_paths(settings, paths)), standing=state_standing)


def resolved(settings, launch):
    """Return settings as the launch resolved them: the device's name, --resume auto decided, --restart."""
    done = launch.settings
    return dataclasses.replace(settings, device=done.device, resume=done.resume, restart=done.restart)


def state_standing(meta):
    """Return (finished, where it stands) of a training state's metadata: finished once its last epoch is saved."""
    epoch = int_field('epoch', meta['progress']['epoch'], 0, 2 ** 62)
    n_iter = int_field('--n_iter', meta['identity']['--n_iter'], 1, 2 ** 62)
    n_updates = int_field('n_updates', meta['progress']['n_updates'], 0, 2 ** 62)
    return epoch >= n_iter, f'{epoch} of {n_iter} epochs done, update {n_updates}'


@dataclass(frozen=True)
class FineTuning:
    """A fine-tuning run built whole: its settings (the architecture the weights gave filled in), its data, the sizes
    the data gave the model, and the Run that trains the model on it."""
    settings: FineTuneSettings
    data: TaskData
    sizes: ModelSizes
    run: Run


def build_fine_tuning(launch, settings):
    """Return the FineTuning of settings (as the launch resolved them) in a launch: the data encoded and laid out, the
    model built from the weights, its optimizer, the Run (restored with --resume)."""
    info, device, clock = launch.info, launch.device, launch.clock
    with clock.phase('encode'):
        family = detect_family(settings.model_dir)
        text_encoder = cached(load_tokenizer(settings.model_dir, *tokenizer_paths(settings, family), family=family),
                              settings.encode_cache)
        if settings.dataset == 'rocstories':
            data, sizes = load_data(settings, text_encoder)
        else:
            data, sizes = load_task_data(settings, text_encoder, get_task(settings.dataset))
    with clock.phase('load'):
        model = launch.place(pretrained_model(settings, sizes, device, family))  # --shard: before the optimizer
        settings = dataclasses.replace(settings, **built_architecture(model.cfg))  # the log header says what trains
        n_train, n_batch_train = len(data.train.labels), settings.n_batch * settings.n_gpu
        n_updates_total = (n_train // n_batch_train) * settings.n_iter
        if n_updates_total < 1:
            raise ValueError(f'{n_train} training examples make no full batch of n_batch * n_gpu = {n_batch_train}')
        opt = OpenAIAdam(model.parameters(), lr=settings.lr, schedule=settings.lr_schedule, warmup=settings.lr_warmup,
                         t_total=n_updates_total, b1=settings.b1, b2=settings.b2, e=settings.e, l2=settings.l2,
                         vector_l2=settings.vector_l2, max_grad_norm=settings.max_grad_norm)
        identity = run_identity({name: getattr(settings, name) for name in RESUME_IDENTITY}, model,
                                n_batch_train=n_batch_train)
        # the training forward is the model's (with targets, its losses); dynamic shapes: batches are trimmed to
        # their longest sequence, so every length would otherwise recompile
        run = Run(launch, model, opt, StateSpec(identity, new_progress(), rank_keys=('train_time',)), dynamic=True)
        check_progress_fits(run.progress, n_train, n_batch_train, settings.n_iter, launch.paths['state'])
        if settings.shard and info.is_main:
            per_example = int(np.prod(data.train.inputs.shape[1:-1]))  # [N, (choices,) n_ctx, 2]: tokens
            print(shard_memory_line(model, (settings.micro_batch or settings.n_batch) * per_example, run), flush=True)
        if settings.resume and info.is_main:
            print(f"resuming at epoch {run.progress['epoch']}, update {run.progress['n_updates']}", flush=True)
    return FineTuning(settings, data, sizes, run)


def fine_tune(job):
    """Train a built FineTuning (its log open throughout), then with --submit predict the test set with the best
    weights; return the summary dict."""
    settings, data, run = job.settings, job.data, job.run
    paths, info, clock, progress = run.paths, run.info, run.clock, run.progress
    try:
        with run.open_log(paths['log'], dataclasses.asdict(settings)):
            if settings.submit and not settings.resume and (info.is_main or run.sharded):
                with clock.phase('write'):
                    run.save_best(paths['best'])
            with run.stop_signals():
                train(run, data, settings)
        summary = dict(n_updates=progress['n_updates'], best_va=progress['best'], metric=selection_metric(data)[3:],
                       examples_per_s=progress['seen'] / max(progress['train_time'], 1e-9))
        if settings.submit and (info.is_main or run.sharded):
            # the best weights' host copy, while the last writes go on; a resumed run reads them back
            with clock.phase('load'):
                run.load_best(paths['best'])
            with run.whole_model(keep=info.is_main) as model:  # with --shard, gathered on the main rank
                if info.is_main:
                    model.eval()
                    summary.update(write_predictions(model, data, settings, run.device, clock))
    finally:
        with clock.phase('write'):
            run.writer.wait()  # the last state and best weights are on disk before the run ends
    return summary


def run_launched(launch, settings, t0):
    """Train, evaluate, and with --submit predict the test set, in a run that has launched; return a summary dict."""
    job = build_fine_tuning(launch, settings)
    summary = fine_tune(job)
    settings, paths, clock = job.settings, launch.paths, launch.clock
    if settings.submit and launch.info.is_main and settings.analysis:
        import analysis  # here, not at import time: it loads the plotting and data libraries it needs
        with clock.phase('eval'):
            for path in summary['dev_files']:  # the dev predictions with gold labels of a task that writes them
                analysis.task_report(job.data.task.name, path)
            if not job.data.task.dev_predictions:  # ROCStories: the original's report of the test submission and log
                analysis.rocstories(settings.data_dir, paths['submission'], paths['log'])
    summary['wall_s'] = time.time() - t0
    summary['phases'] = phase_record(clock, launch.device)
    if launch.info.is_main:  # the run's summary as a record, for scripts that drive train.py (benchmarks/bench_e2e.py)
        write_json(paths['summary'], summary)
    return summary


def write_predictions(model, data, settings, device, clock=None):
    """Write the test submissions and, for a task with dev_predictions (the paper's other tasks), each dev split's
    predictions with gold labels.

    Return {'te_<metric>': value for a test set with labels, 'dev_files': [paths]}.
    """
    task, evaluation, names = data.task, settings.evaluation(device), label_names(data.task)
    clock = PhaseClock() if clock is None else clock
    out = {'dev_files': []}

    def outputs_of(split):
        with clock.phase('eval'):
            return iter_predict(model, split.inputs, split.mask, evaluation)

    def write(path, preds, **kw):
        with clock.phase('write'):
            return write_submission(path, preds, **kw)

    for split in data.tests:  # ROCStories: the original's 0/1 ending index (no label names)
        outputs = outputs_of(split)
        write(os.path.join(settings.submission_dir, split.file),
              decode_predictions(task, predictions(task, outputs), names), index=split.ids)
        if split.labels is not None and 'te_' + task.metrics[0] not in out:
            out.update({f'te_{k}': v for k, v in compute_metrics(task, outputs, split.labels).items()})
    if task.dev_predictions:
        for split in data.evals:
            path = os.path.join(settings.submission_dir, f'{task.name}_{split.name}_predictions.tsv')
            preds = decode_predictions(task, predictions(task, outputs_of(split)), names)
            gold = decode_predictions(task, split.labels if task.n_class == 1 else np.asarray(split.labels), names)
            out['dev_files'].append(write(path, preds, gold=gold))
    return out


def format_summary(summary):
    """Return the one-line end-of-run summary."""
    parts = [f"best valid {summary['metric']} {summary['best_va']:.2f}"]
    parts += [f"test {k[3:]} {v:.2f}" for k, v in summary.items() if k.startswith('te_')]
    parts += [f"{summary['n_updates']} updates", f"wall {summary['wall_s']:.1f} s",
              f"{summary['examples_per_s']:.1f} train examples/s"]
    return 'done: ' + ', '.join(parts)


def seed_runs(settings):
    """Return the settings of each of settings.n_runs seeds' runs (desc <desc>_seed<k>)."""
    return [dataclasses.replace(settings, seed=settings.seed + k, desc=f'{settings.desc}_seed{settings.seed + k}')
            for k in range(settings.n_runs)]


def transfer_runs(settings):
    """Return [(K, the settings of its seed sweep)] for each value K of the --n_transfer list (desc
    <desc>_transfer<K>)."""
    return [(k, dataclasses.replace(settings, n_transfer=k, transfer_sweep=None, desc=f'{settings.desc}_transfer{k}'))
            for k in settings.transfer_sweep]


def check_sweep_states(settings):
    """Refuse a sweep (--n_runs, a --n_transfer list) that would start afresh over any of its runs' unfinished states,
    before its first run: each run checks its own when it begins, but only after the runs before it were trained
    again (without --resume, a finished run's outputs are replaced)."""
    if settings.resume or settings.restart:
        return
    sweeps = [sub for _, sub in transfer_runs(settings)] if settings.transfer_sweep else [settings]
    for run_settings in (run for sweep in sweeps for run in seed_runs(sweep)):
        check_not_unfinished(run_paths(run_settings)['state'], state_standing)


def run_seeds(settings):
    """Run settings.n_runs seeds in turn (desc <desc>_seed<k>); return (per-run summaries, statistics dict)."""
    summaries = []
    for run_settings in seed_runs(settings):
        summaries.append(dict(run_fine_tuning(run_settings), seed=run_settings.seed, desc=run_settings.desc))
        if dist_info().is_main:
            print(format_summary(summaries[-1]), flush=True)
    best = np.array([s['best_va'] for s in summaries])
    stats = dict(metric=summaries[0]['metric'], n_runs=len(best), median=float(np.median(best)),
                 mean=float(best.mean()), std=float(best.std()), best=float(best.max()))
    return summaries, stats


def run_transfer_sweep(settings):
    """Run settings.n_runs seeds for each value of the --n_transfer list (desc <desc>_transfer<K>_seed<k>); return the
    sweep's record: the metric and, per value, the runs' statistics and summaries."""
    points = []
    for k, sub in transfer_runs(settings):
        summaries, stats = run_seeds(sub)
        points.append(dict(stats, n_transfer=k, runs=summaries))
    return dict(metric=points[0]['metric'], dataset=settings.dataset, desc=settings.desc, n_runs=settings.n_runs, points=points)


def format_runs(summaries, stats):
    """Return the table of a multi-seed sweep: one row per run, then median, mean, std and best."""
    lines = [f"{'seed':>6}  {'valid ' + stats['metric']:>12}  desc"]
    lines += [f"{s['seed']:>6}  {s['best_va']:>12.2f}  {s['desc']}" for s in summaries]
    lines.append(f"{stats['n_runs']} runs: median {stats['median']:.2f}, mean {stats['mean']:.2f}, "
                 f"std {stats['std']:.2f}, best {stats['best']:.2f}")
    return '\n'.join(lines)


def main(argv=None):
    """Run train.py from the command line; return the exit code."""
    settings = parse_args(argv)
    try:
        if settings.transfer_sweep or settings.n_runs > 1:
            check_sweep_states(settings)
        if settings.transfer_sweep:
            record = run_transfer_sweep(settings)
            if dist_info().is_main:
                import analysis  # here, not at import time: it loads the plotting and data libraries it needs
                path = write_json(os.path.join(settings.log_dir, f'{settings.desc}_transfer.json'), record)
                analysis.transfer_report(path)
                print(f'transfer sweep written to {path} (its figure: analysis.py --transfer {path} --plot FILE)',
                      flush=True)
            close_distributed(synchronize=True)
            return 0
        if settings.n_runs > 1:
            summaries, stats = run_seeds(settings)
            if dist_info().is_main:
                path = write_json(os.path.join(settings.log_dir, f'{settings.desc}_runs.json'), dict(stats, runs=summaries))
                print(format_runs(summaries, stats), flush=True)
                print(f'sweep summary written to {path}', flush=True)
            close_distributed(synchronize=True)
            return 0
        summary = run_fine_tuning(settings)
        close_distributed(synchronize=True)
    except RUN_ENDINGS as err:
        return failed_run_exit('train.py', argv, err)
    finally:
        close_distributed()
    if dist_info().is_main:
        print(format_summary(summary), flush=True)
        print(format_phases(summary['phases']), flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
