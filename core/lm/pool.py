"""One single-thread LM worker process per core: how the batched engine uses a CPU's cores.

Why not one process with a thread per core: eager PyTorch runs a forward as hundreds of
small ops, and each one wakes the other OpenMP threads. Waiting threads must sleep
(``OMP_WAIT_POLICY=PASSIVE``, core/lm/models.py), because a spinning thread beside a busy
core makes a forward 2-10x slower; but waking them costs about a third of bf16 IFD's time on
a 2-core VM. A model per core on one thread each has nothing to wake, and a loaded core
slows only its own worker: 200 real Alpaca rows, bf16, 2 cores: 14.7 rows/s with two
threads, 22 with two workers (bench/README.md).

``sequence_losses`` plans the batches as before and ``LossPool.imap`` hands each batch to
whichever worker is free (so a slow core takes fewer). With workers every batch runs on one
thread, in a worker or, for a call too small to be worth starting them, in this process:
a score never depends on where its batch ran. Workers load the model from the recipe it was
loaded from (``LoadedLM.recipe``) and check its identity, read token ids from a private pipe
and exit when it closes, so a killed parent leaves none behind.

    python -m core.lm.pool READ_FD WRITE_FD     # a worker (started by LossPool only)
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import tempfile
import weakref
from multiprocessing.connection import Connection, wait
from pathlib import Path

WORKERS_ENV = "CHERRYPICK_LM_WORKERS"  # "1" keeps every batch in this process
POOL_MIN_BATCHES = 8         # a call with fewer batches runs in this process (start ≈ 5 s)
MEMORY_SHARE = 0.5           # of MemAvailable that the workers' models may take
WORKER_OVERHEAD = 768 << 20  # bytes per worker beside its weights: torch, activations
_LIVE: "weakref.WeakSet[LossPool]" = weakref.WeakSet()


def auto_workers(device: str, model) -> int:
    """How many worker processes ``load_causal_lm(workers="auto")`` gives: on CPU, one per
    torch thread this process has (its cores, or a Ray actor's share), as many as fit in
    MEMORY_SHARE of the available memory; 1 on GPU or without POSIX pipes."""
    env = os.environ.get(WORKERS_ENV, "").strip()
    if env:
        return max(1, int(env))
    if device != "cpu" or os.name != "posix" or model is None:
        return 1
    import torch

    cores = torch.get_num_threads()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    available = _mem_available()
    fit = int(MEMORY_SHARE * available // (weights + WORKER_OVERHEAD)) if available else cores
    return max(1, min(cores, fit))


def _mem_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def pool_for(lm, n_batches: int) -> "LossPool | None":
    """The worker pool to run ``n_batches`` batches of ``lm`` on, started on the first call
    with at least POOL_MIN_BATCHES; None when they should run in this process."""
    if getattr(lm, "workers", 1) < 2 or n_batches < 2:
        return None
    if lm.pool is None or lm.pool.closed:
        if n_batches < POOL_MIN_BATCHES:
            return None
        lm.pool = LossPool(lm.recipe(), lm.workers)
        weakref.finalize(lm, lm.pool.close)
    return lm.pool


class LossPool:
    """``workers`` processes that each load the LM of ``recipe`` on one thread and compute
    ``core.lm.losses.batch_losses`` for the batches they are sent."""

    def __init__(self, recipe: dict, workers: int):
        self.recipe, self.workers = recipe, int(workers)
        self.closed = False
        self._procs: list[tuple[subprocess.Popen, Connection, Connection, object]] = []
        self._ready: set[Connection] = set()
        root = str(Path(__file__).resolve().parents[2])  # the folder holding ``core``
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", WORKERS_ENV: "1",
               "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH"))
                                             if p)}
        for _ in range(self.workers):
            to_child, from_parent = os.pipe()
            to_parent, from_child = os.pipe()
            log = tempfile.TemporaryFile()
            proc = subprocess.Popen(
                [sys.executable, "-m", "core.lm.pool", str(to_child), str(from_child)],
                pass_fds=(to_child, from_child), env=env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=log, start_new_session=True)  # Ctrl-C reaches us only
            os.close(to_child)
            os.close(from_child)
            inbox = Connection(to_parent, writable=False)
            outbox = Connection(from_parent, readable=False)
            outbox.send(recipe)
            self._procs.append((proc, inbox, outbox, log))
        _LIVE.add(self)

    def imap(self, batches: list, here=None):
        """Yield ``(index, losses)`` for every batch, in the order they finish; each worker
        is sent the next batch as soon as it is free (once it has loaded the model). Until
        one is ready, ``here(batch)`` (if given) computes batches in this process."""
        if self.closed:
            raise RuntimeError("this LM worker pool is closed")
        todo = iter(enumerate(batches))
        busy: dict[Connection, int] = {}
        by_inbox = {inbox: (proc, outbox, log) for proc, inbox, outbox, log in self._procs}

        def feed(inbox) -> None:
            item = next(todo, None)
            if item is not None:
                try:
                    by_inbox[inbox][1].send(item[1])
                except OSError:  # BrokenPipeError: the worker is gone
                    raise self._died(*by_inbox[inbox]) from None
                busy[inbox] = item[0]

        left = len(batches)
        try:
            for inbox in self._ready:
                feed(inbox)
            while left:
                waiting = [c for c in by_inbox if c in busy or c not in self._ready]
                if here is not None and not self._ready:
                    arrived = wait(waiting, timeout=0)
                    if not arrived:  # the workers are still loading: use this process
                        item = next(todo, None)
                        if item is not None:
                            left -= 1
                            yield item[0], here(item[1])
                            continue
                        here = None
                else:
                    arrived = wait(waiting)
                for inbox in arrived:
                    try:
                        status, payload = inbox.recv()
                    except EOFError:
                        raise self._died(*by_inbox[inbox]) from None
                    if status == "error":
                        raise RuntimeError(f"LM worker process failed: {payload}")
                    if status == "ready":
                        self._ready.add(inbox)
                    else:
                        left -= 1
                        yield busy.pop(inbox), payload
                    feed(inbox)
        except BaseException:
            self.close(kill=True)  # results still in flight would answer the next call
            raise

    def _died(self, proc, outbox, log) -> RuntimeError:
        code = proc.wait()
        log.seek(0)
        tail = log.read().decode("utf-8", "replace").strip().splitlines()[-3:]
        why = " (killed: out of memory?)" if code == -9 else ""
        return RuntimeError(f"LM worker process {proc.pid} stopped with exit code {code}{why}; "
                            f"set {WORKERS_ENV}=1 to score in this process"
                            + (": " + " | ".join(tail) if tail else ""))

    def close(self, kill: bool = False) -> None:
        """Stop the workers: each finishes its batch and exits (``kill``: at once)."""
        if self.closed:
            return
        self.closed = True
        for proc, inbox, outbox, log in self._procs:
            try:
                if kill:
                    proc.kill()
                else:
                    outbox.send(None)
            except (OSError, ValueError):
                pass
            outbox.close()
        for proc, inbox, outbox, log in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            inbox.close()
            log.close()


@atexit.register
def _close_all() -> None:
    for pool in list(_LIVE):
        pool.close(kill=True)


def _serve(read_fd: int, write_fd: int) -> int:
    """A worker: load the recipe's LM on one thread, then answer batches until told to stop."""
    inbox = Connection(read_fd, writable=False)
    outbox = Connection(write_fd, readable=False)
    try:
        from core.lm.losses import batch_losses
        from core.lm.models import load_recipe

        lm = load_recipe(inbox.recv(), device="cpu", threads=1, workers=1)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
        outbox.send(("error", f"{type(exc).__name__}: {exc}"))
        return 1
    outbox.send(("ready", os.getpid()))
    while True:
        try:
            batch = inbox.recv()
        except EOFError:  # the parent is gone
            return 0
        if batch is None:
            return 0
        try:
            result = ("done", batch_losses(lm, batch))
        except Exception as exc:  # noqa: BLE001
            result = ("error", f"{type(exc).__name__}: {exc}")
        try:
            outbox.send(result)
        except (BrokenPipeError, OSError):
            return 0


if __name__ == "__main__":
    sys.exit(_serve(int(sys.argv[1]), int(sys.argv[2])))
