"""How the multi-process test scripts end (imported when a script runs as `__main__`, from its own folder)."""

import gc


def leave_together() -> None:
    """Free what the run left, then leave the process group together.

    A finished trainer caught in a reference cycle (a callback or a patched method that refers back to it) keeps
    its DDP wrapper, and with it the gloo group, alive until the interpreter shuts down; gloo torn down then can
    abort the process ("terminate called without an active exception", exit -6) after a run that succeeded. A
    rank exiting while another still holds the group can do the same, hence the barrier.
    """
    import torch.distributed as dist

    gc.collect()
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
