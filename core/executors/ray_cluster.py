"""The Ray Data executor: a chunked step's chunks computed by a pool of actors on a cluster.

``RayExecutor.run`` builds a Ray Dataset with one block per chunk still to do (the sample
ids ``run_chunked`` has not finished), and ``map_batches`` sends each block to an actor of
``ChunkActor``. The actor unpickles the step's ``compute`` once, which loads its models
there once (``shipping.py``), and returns each computed chunk as Parquet bytes; the driver
hands every chunk to the workspace as it comes back, which writes it as a chunk file
(in the folder of its unfinished run) and moves the progress bar. A killed driver
leaves those chunks, so the rerun resumes; the merged result is sorted by ``sample_id``,
so it does not depend on which actor finished first.

Where: ``address`` (``--ray-address``), else ``$RAY_ADDRESS``, else Ray starts a local
cluster on this machine. Actors: one per GPU (``num_gpus=1``) when the cluster has GPUs,
else one per node (alike nodes) with its cores as torch threads (``_pool``); ``actors``
(the CLI's ``--ray-actors``) overrides the count.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from . import Store, Within


def connect(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join the cluster at ``address`` (``$RAY_ADDRESS`` when None) or start a local one
    (``num_cpus``: its size; default all cores); nothing when Ray is already initialised.

    Workers get this Cherrypick's ``core`` package through the runtime environment
    (``py_modules``), so a cluster whose nodes only have the dependencies installed runs
    it; a job submitted with ``ray job submit --working-dir .`` already has it."""
    import ray

    if ray.is_initialized():
        return
    runtime_env = None
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ:  # not inside `ray job submit`
        runtime_env = {"py_modules": [str(Path(__file__).resolve().parents[1])],
                       # as core/lm/models.py; and no model-loading bars in the driver's log
                       "env_vars": {"OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1",
                                    "TRANSFORMERS_OFFLINE": "1",
                                    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                                    "TOKENIZERS_PARALLELISM": "false"}}
    kwargs = {"address": address, "runtime_env": runtime_env, "logging_level": logging.WARNING,
              "configure_logging": True}
    if not (address or os.environ.get("RAY_ADDRESS")):
        kwargs.update(num_cpus=num_cpus, include_dashboard=False)
    ray.init(**kwargs)


class ChunkActor:
    """One model replica: ``compute`` is unpickled (its models loaded) once per actor, then
    called on every block of sample ids this actor receives."""

    def __init__(self, compute, threads: int):
        import torch

        torch.set_num_threads(max(1, threads))
        self.compute = compute

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        ids = batch["sample_id"].to_numpy(np.int64)
        frame = self.compute(ids, lambda *a, **k: None)
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        return pd.DataFrame({"chunk": [int(batch["chunk"].iloc[0])],
                             "payload": [buffer.getvalue()]})


class RayExecutor:
    """Compute chunks with Ray Data ``map_batches`` over an actor pool (module docstring)."""

    name = "ray"

    def __init__(self, address: str | None = None, actors: int | None = None):
        self.address = address
        self.actors = actors
        self._shape: dict = {}

    def _pool(self, chunks: int) -> tuple[int, float, int]:
        """(actors, GPUs per actor, CPUs per actor) for ``chunks`` chunks on this cluster.

        GPUs: one actor per GPU, with its node's cores shared out among them. CPUs only:
        actors as wide as the smallest node (its core count as torch threads), as many as
        fit, so one model copy per node when the nodes are alike; with ``actors`` the cores
        are shared out among that many. Never more actors than chunks."""
        import ray

        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        gpus = int(sum(n.get("GPU", 0) for n in nodes))
        cpus = [int(n.get("CPU", 0)) for n in nodes if n.get("CPU", 0) >= 1] or [1]
        if gpus:  # each GPU actor gets its share of its node's cores (tokenising, prompts)
            per_cpu = max(1, min(int(n.get("CPU", 1) // n["GPU"]) for n in nodes
                                 if n.get("GPU", 0) >= 1))
            size, per_gpu = self.actors or gpus, 1.0
        else:
            per_cpu = min(cpus)
            size = self.actors or sum(c // per_cpu for c in cpus)
            if self.actors:
                per_cpu = max(1, min(per_cpu, sum(cpus) // self.actors))
            per_gpu = 0.0
        return max(1, min(size, chunks)), per_gpu, per_cpu

    def run(self, chunks: Sequence[np.ndarray], compute, store: Store, within: Within) -> None:
        if not chunks:
            return
        import pyarrow as pa
        import ray
        import ray.data

        from . import shipping

        connect(self.address)
        shipping.register()
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the step's own tqdm bar / st.progress shows it
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        size, per_gpu, per_cpu = self._pool(len(chunks))
        self._shape = {"executor": "ray", "ray_actors": size,
                       "ray_actor_resources": {"GPU": per_gpu, "CPU": per_cpu}}
        # one block per chunk, its metadata computed here (from_pandas would run a task per
        # block for it, and may merge or split blocks)
        blocks = [pa.table({"sample_id": np.asarray(ids, dtype=np.int64),
                            "chunk": np.full(len(ids), i, dtype=np.int64)})
                  for i, ids in enumerate(chunks)]
        results = ray.data.from_blocks(blocks).map_batches(
            ChunkActor, fn_constructor_args=(compute, per_cpu), batch_size=None,
            batch_format="pandas", compute=ray.data.ActorPoolStrategy(size=size),
            num_gpus=per_gpu, num_cpus=per_cpu)
        rows = results.iter_rows()
        try:
            for row in rows:
                frame = pd.read_parquet(io.BytesIO(row["payload"]))
                store(chunks[int(row["chunk"])], frame)
        finally:
            close = getattr(rows, "close", None)
            if close is not None:  # a cancel or an error stops the actors too
                close()

    def describe(self) -> dict:
        return dict(self._shape)
