"""How a step's loaded models travel to Ray actors: as a recipe to load them again there.

A chunked step's ``compute`` is a closure over what it needs, the loaded causal LM or
sentence embedder among them. Pickling the weights into every actor would copy gigabytes
through the object store and put them on the driver's device; instead each model pickles as
the recipe it was loaded from (folder, dtype or precision), and the actor loads it once, on
its own device (``device="auto"``: its GPU when Ray gave it one). The actor then checks that
what it loaded is what the driver keyed the step on (model identity, dtype, start token;
for embedders the precision), so a worker with another model folder or precision fails
loudly instead of writing scores under the wrong cache key.

``register()`` installs the recipes into Ray's pickler (``ray.util.register_serializer``,
which reaches objects nested inside closures); it is called by the Ray executor on the
driver before the step's ``compute`` is shipped.
"""

from __future__ import annotations

from typing import Any

_REGISTERED = False
# per actor process: models already loaded from a recipe
_LOADED: dict[tuple, Any] = {}


def lm_recipe(lm) -> dict:
    """What loads ``lm`` (a ``core.lm.LoadedLM``) again elsewhere, and what it must match."""
    return lm.recipe()


def load_lm(recipe: dict):
    """The causal LM of ``recipe``, loaded once per process on this worker's device."""
    key = ("lm", recipe["model"], recipe["dtype"])
    if key not in _LOADED:
        from ..lm.models import load_recipe

        _LOADED[key] = load_recipe(recipe)
    return _LOADED[key]


def embedder_recipe(embedder) -> dict:
    """What loads a sentence embedder of ``core.embed.load_embedder`` again elsewhere."""
    from .. import embed

    for (path, _device, precision), model in embed._MODELS.items():
        if model is embedder:
            return {"model": path, "precision": precision}
    raise ValueError("only embedders loaded from a model folder (core.embed.load_embedder) "
                     "can run on Ray; pass the folder instead of a loaded model")


def load_embedder(recipe: dict):
    """The sentence embedder of ``recipe``, on this worker's device, in its precision."""
    from ..embed import load_embedder as load, precision_of

    model = load(recipe["model"], device="auto", precision=recipe["precision"])
    if precision_of(model) != recipe["precision"]:
        raise RuntimeError(f"this Ray worker computes embeddings in {precision_of(model)}, "
                           f"the driver keyed the step on {recipe['precision']}")
    return model


def register() -> None:
    """Teach Ray's pickler to send models as recipes (once per driver process)."""
    global _REGISTERED
    if _REGISTERED:
        return
    import ray.util
    from sentence_transformers import SentenceTransformer

    from ..lm import LoadedLM

    ray.util.register_serializer(LoadedLM, serializer=lm_recipe, deserializer=load_lm)
    ray.util.register_serializer(SentenceTransformer, serializer=embedder_recipe,
                                 deserializer=load_embedder)
    _REGISTERED = True
