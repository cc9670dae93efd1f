"""The distributed work split: which process computes which work unit, and on which device.

Under ``torchrun`` (``WORLD_SIZE`` > 1) unit ``k`` goes to rank ``k mod WORLD_SIZE``; rank 0
plans the set and merges the unit journals. Without torchrun everything here is a no-op,
so the single-process path needs no process group.
"""
from __future__ import annotations

import datetime as _dt
import os
from typing import Any

from advbias.errors import InputError


class Dist:
    """The torchrun process group, when there is one (``WORLD_SIZE`` > 1)."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        self.rank = int(os.environ.get("RANK", "0") or 0)
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
        self.owned = False
        self.backend: str | None = None

    @property
    def active(self) -> bool:
        return self.world > 1

    def start(self, device: str) -> None:
        if not self.active:
            return
        import torch.distributed as dist

        self.backend = "nccl" if device.startswith("cuda") else "gloo"
        if self.backend == "nccl":
            import torch

            torch.cuda.set_device(torch.device(device))  # NCCL collectives use the current device
        if not dist.is_initialized():
            # Ranks wait for each other at the end of generation; allow for long, uneven runs.
            dist.init_process_group(backend=self.backend, timeout=_dt.timedelta(hours=48))
            self.owned = True
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            if self.backend == "nccl":
                dist.barrier(device_ids=[self.local_rank])
            else:
                dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        import torch.distributed as dist

        box = [obj if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.owned:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.owned = False

    def sum(self, value: int) -> int:
        """``value`` summed over the ranks."""
        if not self.active:
            return value
        import torch
        import torch.distributed as tdist

        t = torch.tensor([value], dtype=torch.long, device="cuda" if self.backend == "nccl" else "cpu")
        tdist.all_reduce(t)
        return int(t.item())


def resolve_device(device: str, local_rank: int) -> str:
    """``auto``/``cuda`` resolved to this rank's device; a one-line error for a device that is not here."""
    import torch

    device = (device or "auto").strip().lower()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = f"cuda:{local_rank}"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"--device {device}: no CUDA device is available here")
    elif device != "cpu" and not device.startswith("mps"):
        raise InputError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
    return device
