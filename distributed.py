"""Where a process runs: its device, and data parallelism over processes with torch.distributed (launched by
torchrun), replacing the original's towers on several GPUs (TF: mgpu_train, mgpu_predict, average_grads).

One update still averages n_batch * n_gpu examples whatever the number of processes: each rank takes
its contiguous share of every shuffled batch and DistributedDataParallel averages the gradients.
"""
import gc
import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank, the number of processes and its local GPU index."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self):
        """Return whether this process writes logs, checkpoints and submissions."""
        return self.rank == 0


def dist_info(environ=None):
    """Return the DistInfo that torchrun's environment variables describe (a single process without them)."""
    env = os.environ if environ is None else environ
    return DistInfo(int(env.get('RANK', 0)), int(env.get('WORLD_SIZE', 1)), int(env.get('LOCAL_RANK', 0)))


def init_distributed(info, device, timeout_s=600):
    """Join the process group (NCCL on CUDA, gloo on the CPU) when there are several processes."""
    if info.world_size > 1 and not dist.is_initialized():
        # Importing torch._dynamo (DistributedDataParallel does) keeps a reference to every process group alive at
        # that moment, and such a group outlives destroy_process_group: its gloo threads run on into the interpreter's
        # shutdown, where one that frees a tensor aborts the process ("terminate called without an active exception")
        # now and then. Imported before the group exists, it keeps none, and close_distributed ends the group's threads.
        import torch._dynamo  # noqa: F401
        backend = 'nccl' if device.type == 'cuda' else 'gloo'
        # the timeout turns a rank that died or hangs into an error on the others instead of a hang
        timeout = timedelta(seconds=timeout_s)
        store, _, _ = next(dist.rendezvous('env://', timeout=timeout))
        # torchrun --max-restarts: its agent's store outlives a failed attempt, whose keys (the dead ranks'
        # addresses) the next attempt would read and fail on; each attempt keeps its keys under its own prefix
        store = dist.PrefixStore(f"attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
        dist.init_process_group(backend, store=store, rank=info.rank, world_size=info.world_size, timeout=timeout)


def close_distributed(synchronize=False):
    """Leave the process group if this process joined one; with synchronize, after every rank got here.

    Synchronize on success only: a rank that leaves early on an error must not wait for the others.
    """
    if dist.is_initialized():
        gc.collect()  # a model wrapper left in a reference cycle lets go of the group: destroying it ends its threads
        if synchronize:
            # no rank tears its connections down while a peer still uses them (gloo aborts on that)
            dist.barrier()
        dist.destroy_process_group()


def shard(n, info):
    """Return the slice of range(n) that this rank takes: contiguous, sizes differing by at most one."""
    bounds = np.linspace(0, n, info.world_size + 1).round().astype(int)
    return slice(int(bounds[info.rank]), int(bounds[info.rank + 1]))


def gather_objects(obj, info):
    """Return [every rank's obj] in rank order (every rank calls it; [obj] when alone)."""
    if info.world_size == 1:
        return [obj]
    parts = [None] * info.world_size
    dist.all_gather_object(parts, obj)
    return parts


def gather_concat(array, info):
    """Return the rank-ordered concatenation of every rank's array (this rank's own when alone)."""
    return array if info.world_size == 1 else np.concatenate(gather_objects(array, info), 0)


def sum_over_ranks(value, info):
    """Return the sum of a float over all ranks."""
    return value if info.world_size == 1 else float(sum(gather_objects(value, info)))


def all_reduce_sum(tensor, info):
    """Sum tensor over all ranks in place, on its device and without reading it on the host; return it."""
    if info.world_size > 1:
        dist.all_reduce(tensor)
    return tensor


def barrier(info):
    """Return once every rank has reached it (at once in one process)."""
    if info.world_size > 1:
        dist.barrier()


def wrap_ddp(module, device, info):
    """Return module wrapped in DistributedDataParallel when there are several processes, else module."""
    if info.world_size == 1:
        return module
    device_ids = [device.index] if device.type == 'cuda' else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


def check_device(name):
    """Return torch.device(name), or raise a ValueError naming --device when it is malformed or absent here."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f'--device {name!r} is not a torch device: give cpu, cuda or cuda:N') from None
    n_gpus = torch.cuda.device_count()
    if device.type == 'cuda' and (device.index or 0) >= n_gpus:
        raise ValueError(f'--device {name}: this machine has {n_gpus} CUDA device(s); use --device cpu')
    return device



def resolve_device(name, info=DistInfo()):
    """Return the torch device: the named one (checked to exist), else CUDA when present (this rank's GPU), else the CPU."""
    device = check_device(name) if name is not None else torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if device.type == 'cuda' and device.index is None:
        device = torch.device('cuda', info.local_rank)
    return device

