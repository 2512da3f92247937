"""Where the chunks of a chunked step are computed: in this process, or on a Ray cluster.

``run_chunked`` (core/workspace/steps.py) decides which sample ids are still to do, cuts them
into chunks and hands the chunks to an executor; the executor calls the step's
``compute(ids, progress)`` on each chunk and gives every finished frame back to the
workspace, which writes it as a chunk file, reports progress and, at the end, merges the
result. So caching, resuming after a kill and the final file do not depend on where a chunk
ran, and no scorer knows about executors beyond passing one on.

- ``LocalExecutor`` (the default): one chunk after another in this process, with progress
  inside each chunk.
- ``RayExecutor`` (``--executor ray``, ``core/executors/ray_cluster.py``): a Ray Dataset of
  the chunks still to do, ``map_batches`` over a pool of actors (one GPU each when the
  cluster has GPUs, CPU actors with a node's cores otherwise); the step's ``compute`` is
  shipped to each actor once, and the models it holds load themselves again there
  (``shipping.py``), once per actor. Progress moves as chunks come back.

An executor is any object with ``run(chunks, compute, store, within)`` and
``describe() -> dict`` (fields for the sidecar; empty for the local one, so local sidecars
are as before).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd

from ..errors import InputError

EXECUTORS = ("local", "ray")

# store(ids, frame): the workspace writes a finished chunk; within(rows): a chunk's own
# progress callback (its done/total in any unit, shown as rows of the whole run).
Store = Callable[[np.ndarray, pd.DataFrame], None]
Within = Callable[[int], Callable[..., None]]


class LocalExecutor:
    """Compute the chunks one after another in this process."""

    name = "local"

    def run(self, chunks: Sequence[np.ndarray], compute, store: Store, within: Within) -> None:
        for ids in chunks:
            store(ids, compute(ids, within(len(ids))))

    def describe(self) -> dict:
        return {}


LOCAL = LocalExecutor()


def make_executor(name: str = "local", address: str | None = None, actors: int | None = None):
    """The executor called ``name``. ``address``: a Ray cluster to join (default: the
    ``RAY_ADDRESS`` environment variable, else a local cluster is started); only with ray."""
    if name not in EXECUTORS:
        raise InputError(f"unknown executor {name!r}; use one of {', '.join(EXECUTORS)}",
                         field="executor")
    if name == "local":
        if address:
            raise InputError("--ray-address needs --executor ray", field="ray_address")
        return LOCAL
    from .ray_cluster import RayExecutor

    return RayExecutor(address=address, actors=actors)


def add_executor_arguments(parser) -> None:
    """``--executor local|ray``, ``--ray-address`` and ``--ray-actors`` for a CLI command."""
    from ..args import positive_int

    parser.add_argument("--executor", choices=EXECUTORS, default="local",
                        help="where chunks are computed: local (this process, default) or "
                             "ray (a Ray cluster: --ray-address, else $RAY_ADDRESS, else a "
                             "local one)")
    parser.add_argument("--ray-address", default=None, metavar="ADDRESS",
                        help="Ray cluster to join, e.g. 10.0.0.1:6379 (default: $RAY_ADDRESS; "
                             "without it a local cluster is started)")
    parser.add_argument("--ray-actors", type=positive_int, default=None, metavar="N",
                        help="model replicas on the cluster (default: one per GPU, else one "
                             "per node)")


def executor_from_args(args):
    """The executor a parsed command line asks for (``add_executor_arguments``)."""
    return make_executor(getattr(args, "executor", "local"), getattr(args, "ray_address", None),
                         getattr(args, "ray_actors", None))
