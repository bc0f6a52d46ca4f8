"""Which process am I: the one launch check shared by labelling, generation and training."""
from __future__ import annotations

import os
from typing import Any, Optional

__all__ = ["DistributedSetupError", "world_size", "check_launch", "process_state", "SingleProcess", "end_processes"]


class DistributedSetupError(RuntimeError):
    """Raised when the launcher started several processes but accelerate sees only one."""


def world_size() -> int:
    """Returns the number of processes the launcher started (``WORLD_SIZE``, 1 when unset)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))
    except ValueError:
        return 1


def check_launch(state: Any) -> Any:
    """Returns ``state`` unless ``WORLD_SIZE > 1`` while accelerate set up a single process.

    That happens on CPU-only machines launched with ``torchrun`` / ``accelerate launch --multi_gpu`` without
    ``ACCELERATE_USE_CPU``: every process would do all the work alone and overwrite the others' files.

    Raises:
        DistributedSetupError: with the command that fixes it.
    """
    n = world_size()
    if n > 1 and int(state.num_processes) == 1:
        raise DistributedSetupError(
            f"WORLD_SIZE={n} but accelerate set up a single process (distributed type "
            f"{getattr(state, 'distributed_type', '?')}), so every process would do all the work alone. "
            f"On CPU-only machines launch with `ACCELERATE_USE_CPU=true accelerate launch --multi_gpu "
            f"--num_processes {n} ...` (or pass --cpu / Accelerator(cpu=True))."
        )
    return state


class SingleProcess:
    """The process state of a plain single-process run (same attributes as accelerate's ``PartialState``)."""

    num_processes = 1
    process_index = 0
    is_main_process = True
    device = None

    @staticmethod
    def wait_for_everyone() -> None:
        return None


def process_state(accelerator: Optional[Any] = None) -> Any:
    """Returns the object with ``num_processes`` / ``process_index`` / ``wait_for_everyone`` for this job.

    ``accelerator`` (an ``Accelerator`` or ``PartialState``) when given; else an initialised accelerate
    ``PartialState`` (or one set up now when ``WORLD_SIZE > 1``); else :class:`SingleProcess`.

    Raises:
        DistributedSetupError: see :func:`check_launch`.
    """
    if accelerator is not None:
        return check_launch(accelerator)
    from accelerate.state import PartialState
    from accelerate.utils import parse_flag_from_env

    if PartialState._shared_state or world_size() > 1:
        # PartialState reads no ACCELERATE_USE_CPU itself (only Accelerator does), so forward it.
        return check_launch(PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU")))
    return SingleProcess()


def end_processes() -> None:
    """Destroys the torch process group when one is up: its gloo threads abort the interpreter at exit otherwise."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
