"""Multi-process training with torchrun: process group, rank-aware helpers, fault tolerance.

Launch with ``torchrun --nproc_per_node=K -m adautomix_fast.train ...`` (one process per GPU, or
K CPU processes with gloo). Every rank trains on its shard of the data and mixes within its own
local batch, as the released implementation does; the student's and the generator's gradients are
averaged across ranks, so their parameters, and therefore the EMA teacher's, stay identical on
every rank. Only rank 0 writes logs and checkpoints.

Two ways of synchronising gradients, one per implementation:

* reference: the AdAutoMix module is wrapped in DistributedDataParallel (its forward is one whole
  ``step_losses``), ``broadcast_buffers=False`` because several BatchNorm forwards run before the
  one backward (docs/compile.md, fact 9);
* fused: DDP's gradient hooks never fire inside a graph built on ``torch.autograd.grad``, so the
  gradients (flattened into one buffer, with the loss appended) are averaged inside the compiled
  graph with a functional all-reduce, which Inductor traces.

BatchNorm running statistics are each rank's own during an epoch (as with DDP's
``broadcast_buffers=False``); they are averaged across ranks before every evaluation and every
checkpoint, so evaluation and checkpoints see one consistent model.
"""

from __future__ import annotations

import datetime
import inspect
import os
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch.nn.parallel import DistributedDataParallel as DDP

from ..errors import UsageError


@dataclass
class DistContext:
    """Where this process stands in the job (a single process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def primary(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


def primary_process() -> bool:
    """Whether this process speaks for the job: rank 0 of a torchrun job, or a process of its own.
    Read from torchrun's environment, so that it also answers before the process group is joined
    and after it is gone: e.g. for the one line that says where every rank stopped."""
    return not launched_by_torchrun() or os.environ.get("RANK", "0") == "0"


def restart_count() -> int:
    """How many times torchrun has restarted this worker group (0 on the first attempt)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def max_restarts() -> int:
    return int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0)


def run_id() -> Optional[str]:
    """torchrun's rendezvous id: the same on every node and across restarts of one launch
    (``--standalone`` generates one; multi-node launches pass ``--rdzv-id``)."""
    rid = os.environ.get("TORCHELASTIC_RUN_ID", "")
    return None if rid in ("", "none") else rid


def init(device_choice: str) -> tuple[DistContext, Optional[torch.device]]:
    """Join the process group when launched by torchrun with more than one process.

    Returns the context and, when distributed, this rank's device (cuda:LOCAL_RANK, or the CPU
    with gloo); None means "pick the device as a single process would".
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not launched_by_torchrun():
        return DistContext(), None
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = device_choice in ("auto",) and torch.cuda.is_available() or device_choice.startswith("cuda")
    if want_cuda:
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device_choice} asked for, but torch sees no CUDA GPU; use --device cpu")
        if local_rank >= torch.cuda.device_count():
            raise UsageError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs: "
                             "lower --nproc_per_node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        timeout = datetime.timedelta(minutes=30)
        dist.init_process_group(backend, store=_attempt_store(rank, world, timeout), rank=rank,
                                world_size=world, timeout=timeout)
    return DistContext(rank, world, local_rank, backend), device


def _attempt_store(rank: int, world: int, timeout: datetime.timedelta) -> dist.Store:
    """torchrun's rendezvous store, with keys private to this restart attempt.

    torchrun keeps serving the same store when it restarts a worker group, so the default
    process group of a restarted group could read the gloo/NCCL addresses that the killed
    workers published (seen here: "Gloo connectFullMesh failed ... Connection refused" in about
    one restart out of three). Prefixing the keys with the attempt number makes every rank wait
    for the new addresses.
    """
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        store = dist.TCPStore(host, port, world, is_master=False, timeout=timeout)
    else:
        store = dist.TCPStore(host, port, world, is_master=rank == 0, timeout=timeout, multi_tenant=True)
    return dist.PrefixStore(f"adautomix_fast/attempt_{restart_count()}", store)


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every rank (any picklable object, tensors included)."""
    if not ctx.enabled:
        return obj
    box = [obj if ctx.primary else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any, ctx: DistContext) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not ctx.enabled:
        return [obj]
    out: list = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum_(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


@torch.no_grad()
def broadcast_module_(module: torch.nn.Module, ctx: DistContext) -> None:
    """Rank 0's parameters and buffers on every rank (DistributedDataParallel does this for the
    reference step; the fused step, which has no DDP wrapper, calls it once at start)."""
    if ctx.enabled:
        for t in module.state_dict().values():
            dist.broadcast(t, src=0)


@torch.no_grad()
def average_buffers_(module: torch.nn.Module, ctx: DistContext) -> None:
    """Average the floating-point buffers (BatchNorm running statistics) across ranks."""
    if not ctx.enabled:
        return
    bufs = [b for b in module.buffers() if b.is_floating_point()]
    if not bufs:
        return
    flat = torch.cat([b.reshape(-1).float() for b in bufs])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= ctx.world_size
    offset = 0
    for b in bufs:
        b.copy_(flat[offset:offset + b.numel()].view_as(b))
        offset += b.numel()


def make_graph_grad_sync(ctx: DistContext):
    """For the fused step: average gradients (and the loss, so that every rank takes the same
    skip decision for a non-finite step) across ranks inside the compiled graph."""
    if not ctx.enabled:
        return None
    group = dist.group.WORLD

    def sync(grads: list[torch.Tensor], loss: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        flat = torch.cat([g.reshape(-1).float() for g in grads] + [loss.detach().float().reshape(1)])
        flat = funcol.all_reduce(flat, "avg", group)
        out, offset = [], 0
        for g in grads:
            out.append(flat[offset:offset + g.numel()].view_as(g).to(g.dtype))
            offset += g.numel()
        return out, flat[-1]

    return sync


def wrap_reference_model(model: torch.nn.Module, ctx: DistContext, device: torch.device):
    """DistributedDataParallel over the whole AdAutoMix module (its forward is one step's
    losses); the teacher's parameters need no gradient, so DDP leaves them alone."""
    # No buffer broadcast at every forward (several BatchNorm forwards precede the backward):
    # `forward_sync_buffers=False` since torch 2.14, `broadcast_buffers=False` before it.
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
               else {"broadcast_buffers": False})
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
               find_unused_parameters=False, gradient_as_bucket_view=True, **no_sync)


def fault_injection_step() -> Optional[tuple[int, int]]:
    """(global step, rank) at which a test asks a worker to die, on the first attempt only
    (``ADAUTOMIX_FAIL_AT_STEP`` / ``ADAUTOMIX_FAIL_RANK``): how the fault-tolerance test kills a
    worker mid-epoch so that torchrun restarts the group."""
    step = os.environ.get("ADAUTOMIX_FAIL_AT_STEP")
    if not step or restart_count() > 0:
        return None
    return int(step), int(os.environ.get("ADAUTOMIX_FAIL_RANK", "0"))
