"""Run a test function on N ranks of a gloo process group on this machine.

    from ranks import run_ranks
    run_ranks(_worker, cfg_dict, str(tmp_path), store=tmp_path / "pg")   # calls _worker(rank, world, ...)

Every multi-rank test goes through here, so each gets the same start and the same end:

- Rendezvous through a FileStore in the test's own folder: no TCP port to pick (a port found free
  and released can be taken before rank 0 binds it), no TCPStore server thread, and no reverse
  lookup of a peer address (c10d's lookup would query the resolver: nothing may leave the machine;
  `RES_OPTIONS=attempts:0` stays set in case anything else looks a name up). Gloo's own pairs use
  the loopback interface (`GLOO_SOCKET_IFNAME=lo`).
- faulthandler on: a rank that dies on a signal prints every thread's Python stack.
- A clean end: a barrier (no rank tears down while another is still in a collective), a garbage
  collection (anything left holding the process group goes while the interpreter is fully
  alive), `destroy_process_group`, then `os._exit(0)`. A rank that returned normally skips
  interpreter finalization: in CI a rank sometimes died with SIGABRT ("terminate called without
  an active exception") at the very end of its life, after the test's work was done, as when
  gloo's C++ threads meet a half torn-down interpreter. A rank whose function raises is
  reported by torch.multiprocessing as usual, with its traceback.
"""

from __future__ import annotations

import faulthandler
import gc
import os
import sys
from pathlib import Path
from typing import Any, Callable


def run_ranks(fn: Callable[..., None], *args: Any, store: Path, world: int = 2) -> None:
    """fn(rank, world, *args) on `world` spawned processes joined by gloo; `store` is a path
    that does not exist yet (the rendezvous file), in the test's tmp_path."""
    import torch.multiprocessing as mp

    store = Path(store)
    if store.exists():
        raise FileExistsError(f"{store}: the rendezvous file must be new for each run")
    store.parent.mkdir(parents=True, exist_ok=True)
    mp.spawn(_rank_main, args=(fn, world, str(store), args), nprocs=world)


def _rank_main(rank: int, fn: Callable[..., None], world: int, store: str, args: tuple[Any, ...]) -> None:
    faulthandler.enable(all_threads=True)
    os.environ.update(RES_OPTIONS="attempts:0", GLOO_SOCKET_IFNAME="lo")
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    fn(rank, world, *args)
    dist.barrier()
    gc.collect()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
