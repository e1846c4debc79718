"""Fully sharded data parallelism (PyTorch FSDP2) for GPT-1 and GPT-2: each rank keeps 1/world of the parameters,
gradients and optimizer state, the blocks' parameters gathered just in time; training states written and read with
distributed checkpointing (each rank its own shards, resharded when the number of processes changes); the whole
weights gathered on the main rank; the memory a rank needs.

The optimizer runs unchanged on the sharded parameters (DTensors): OpenAIAdam's global norm is the norm of the whole
model (the per-shard norms it stacks are partial norms that torch reduces across the ranks), and FSDP2 averages the
gradients over the ranks as DDP does. Build the optimizer after shard_model, from the sharded parameters.
"""
from dataclasses import dataclass

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_state_dict)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor


def shard_model(model, param_dtype=None):
    """Return model with each transformer block and then the whole model sharded over the process group (in place):
    the root holds the embeddings, so the LM decoder tied to them stays tied. param_dtype (e.g. torch.bfloat16):
    the dtype the gathered parameters compute in, gradients reduced in fp32 and the shards kept in fp32."""
    transformer = getattr(model, 'transformer', model)
    policy = MixedPrecisionPolicy() if param_dtype is None else MixedPrecisionPolicy(param_dtype=param_dtype,
                                                                                      reduce_dtype=torch.float32)
    for block in transformer.h:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def local_numel(tensors):
    """Return the number of elements this rank holds of tensors (a DTensor's local shard, a tensor whole)."""
    return sum(t.to_local().numel() if isinstance(t, DTensor) else t.numel() for t in tensors)


@dataclass(frozen=True)
class RankMemory:
    """Bytes one rank holds for the parameters, their gradients and the optimizer state, and an activation estimate."""
    params: int
    grads: int
    optimizer: int
    activations: int

    @property
    def total(self):
        """Return the sum of the four."""
        return self.params + self.grads + self.optimizer + self.activations


def rank_memory(n_params, world_size, sharded, cfg=None, tokens_per_rank=0, param_bytes=4, moment_bytes=4,
                activation_bytes=4):
    """Return the RankMemory of training n_params parameters on world_size ranks: DDP keeps everything whole on every
    rank, sharding 1/world of it (rounded up); OpenAIAdam keeps two moments. The activation estimate, given the
    model's cfg and the tokens of one rank's micro-batch, is what a transformer block keeps for the backward pass:
    about 34 n_embd bytes a token a block at 16 bits (Korthikanti et al. 2022, without the attention scores, which
    the fused attention kernels do not keep), scaled to activation_bytes a value."""
    share = n_params if not sharded else -(-n_params // world_size)
    activations = 0
    if cfg is not None:
        activations = tokens_per_rank * cfg.n_layer * 34 * cfg.n_embd * activation_bytes // 2
    return RankMemory(share * param_bytes, share * param_bytes, 2 * share * moment_bytes, activations)


def save_sharded_state(path, model, opt, extra):
    """Write the sharded model and optimizer state and extra (a dict of plain values) to the folder path with
    distributed checkpointing, every rank its own shards (every rank calls it). The optimizer's state is created
    first where no update made it yet (OpenAIAdam.init_state), so a state saved before any update holds step 0."""
    opt.init_state()
    model_state, optim_state = get_state_dict(model, opt)
    dcp.save({'model': model_state, 'optim': optim_state, 'extra': extra}, checkpoint_id=str(path))


def load_sharded_state(path, model, opt, extra):
    """Load into the sharded model and optimizer the state save_sharded_state wrote to the folder path, on this
    run's number of ranks whatever the number that wrote it (resharded); return extra (a dict of the keys to read,
    their values replaced). The optimizer's hyperparameters are the saved ones: set any new ones after."""
    opt.init_state()
    model_state, optim_state = get_state_dict(model, opt)
    state = {'model': model_state, 'optim': optim_state, 'extra': dict(extra)}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, opt, model_state_dict=state['model'], optim_state_dict=state['optim'])
    return state['extra']


def gathered_weights(model):
    """Return the whole model's state dict on the main rank (host tensors, gathered one tensor at a time, so no
    rank holds the model twice) and {} on the others (every rank calls it)."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
