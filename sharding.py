"""Fully sharded data parallelism (PyTorch FSDP2) for GPT-1 and GPT-2: each rank keeps 1/world of the parameters,
gradients and optimizer state, the blocks' parameters gathered just in time for their forward and backward; plain
copies of the whole model gathered for what is not training (evaluation, samples, the weights and training state
written); the memory a rank needs.

The optimizer runs unchanged on the sharded parameters (DTensors): OpenAIAdam's global norm is the norm of the whole
model (the per-shard norms it stacks are partial norms that torch reduces across the ranks), and FSDP2 averages the
gradients over the ranks as DDP does. Build the optimizer after shard_model, from the sharded parameters.
"""
import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor


def skeleton(model):
    """Return a copy of model whose parameters and buffers lie on the meta device (no memory; tied ones still tied):
    what replica fills with the whole weights. Take it before shard_model."""
    memo = {}
    for t in list(model.parameters()) + list(model.buffers()):
        empty = torch.empty_like(t, device='meta')
        memo[id(t)] = nn.Parameter(empty, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else empty
    return copy.deepcopy(model, memo)


def shard_model(model, param_dtype=None):
    """Return model with its parameters sharded over the process group (in place): each transformer block, then the
    transformer, whose forward (what a training step calls; it returns the table the tied LM decoder uses) gathers
    the embeddings and keeps them until the backward; then the model itself when it holds parameters of its own (a
    task head). A parameter of the model tied to one of the transformer's (the LM decoder) is tied to its sharded
    replacement. param_dtype (e.g. torch.bfloat16): the dtype the gathered parameters compute in, the gradients
    reduced in fp32 and the shards kept in fp32."""
    transformer = model.transformer
    policy = MixedPrecisionPolicy() if param_dtype is None else MixedPrecisionPolicy(param_dtype=param_dtype,
                                                                                      reduce_dtype=torch.float32)
    inner = {id(p): name for name, p in transformer.named_parameters()}
    ties = [(module, name, inner[id(p)]) for path, module in model.named_modules()
            if path != 'transformer' and not path.startswith('transformer.')
            for name, p in module.named_parameters(recurse=False) if id(p) in inner]
    for block in transformer.h:
        fully_shard(block, mp_policy=policy)
    fully_shard(transformer, mp_policy=policy, reshard_after_forward=False)
    for module, name, tied_to in ties:
        setattr(module, name, transformer.get_parameter(tied_to))
    sharded = set(transformer.parameters())
    if any(p not in sharded for p in model.parameters()):
        fully_shard(model, mp_policy=policy, ignored_params=sharded)  # the tied decoder is the transformer's
    return model


def is_sharded(model):
    """Return whether any of model's parameters is sharded (a DTensor)."""
    return any(isinstance(p, DTensor) for p in model.parameters())


def set_gradient_sync(model, sync):
    """Make the backward passes of a sharded model reduce-scatter the gradients (sync True: the last micro-batch of an
    update) or accumulate them unsharded (False: the others)."""
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_requires_gradient_sync(sync, recurse=False)


def whole(t):
    """Return the whole of t: a DTensor all-gathered from its shards (every rank calls it), a tensor as it is."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def wholes(tensors, keep=True, host=False):
    """Return {name: the whole tensor} of {name: tensor}, gathered one at a time (every rank calls it, the tensors in
    the same order): on their device, or with host=True host copies; {} where keep is False (each gathered tensor
    dropped at once)."""
    out = {}
    for name, t in tensors.items():
        full = whole(t).detach()
        if keep:  # a gathered tensor is already a copy of its own; a whole one is copied to the host
            out[name] = full if not host else full.cpu() if isinstance(t, DTensor) else full.to('cpu', copy=True)
    return out


def replica(model, frame, host=False, keep=True):
    """Return a plain copy of the sharded model holding its whole weights (wholes), made from frame (skeleton(model),
    taken before sharding): on the model's device, or with host=True on the host; None where keep is False. Every
    rank calls it."""
    state = model.state_dict(keep_vars=True)
    first = {}  # each tensor's first name: a tied one is gathered once
    for name, t in state.items():
        first.setdefault(id(t), name)
    gathered = wholes({name: state[name] for name in first.values()}, keep, host)
    if not keep:
        return None
    copied = copy.deepcopy(frame)
    copied.load_state_dict({name: gathered[first[id(t)]] for name, t in state.items()}, assign=True)
    return copied.train(model.training)


def placed_like(p, full):
    """Return the whole tensor full placed as p is: on p's device, or for a DTensor p, this rank's shard of it sharded
    as p is (each rank takes its own rows; no communication)."""
    if not isinstance(p, DTensor):
        return full.to(p.device, copy=True)
    return distribute_tensor(full.to(p.device_mesh.device_type), p.device_mesh, p.placements, src_data_rank=None)


def copy_whole(t, full):
    """Copy the whole tensor full into t (for a DTensor t, into this rank's shard)."""
    if isinstance(t, DTensor):
        t.to_local().copy_(placed_like(t, full).to_local())
    else:
        t.copy_(full)


def local_numel(tensors):
    """Return the number of elements this rank holds of tensors (a DTensor's local shard, a tensor whole)."""
    return sum(t.to_local().numel() if isinstance(t, DTensor) else t.numel() for t in tensors)


def held_memory(model, tokens_per_rank, activation_bytes=4):
    """Return the RankMemory this rank holds to train model (sharded or not): its share of the parameters, as many
    gradients, OpenAIAdam's two moments of each, and the activation estimate of rank_memory for a micro-batch of
    tokens_per_rank tokens."""
    params = sum((p.to_local() if isinstance(p, DTensor) else p).nbytes for p in model.parameters())
    activations = rank_memory(0, 1, False, model.cfg, tokens_per_rank, activation_bytes=activation_bytes).activations
    return RankMemory(params, params, 2 * params, activations)


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

    def line(self):
        """Return the one-line account of the four (GiB, or MiB below one GiB)."""
        sizes = [f'{v / 2 ** 30:.2f} GiB' if v >= 2 ** 30 else f'{v / 2 ** 20:.1f} MiB'
                 for v in (self.params, self.grads, self.optimizer, self.activations, self.total)]
        return (f'memory per rank: parameters {sizes[0]}, gradients {sizes[1]}, optimizer state {sizes[2]}, '
                f'activations about {sizes[3]}; {sizes[4]} in all')


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
