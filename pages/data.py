"""Data: import a file into a workspace, then run each step (embeddings → neighbours → map,
IFD / r-IFD, RECOST, DS2), each with a progress bar and a Cancel button.

Every step is resumable: the engine keeps finished chunks, so after a reload or a cancel,
running the step again continues where it stopped. A finished step shows the parameters it
ran with (from its sidecar) and can be rerun.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from components import state
from components.next_steps import ds2_next_step
from components.import_feedback import (form_expanded, forget_result_of_other_files,
                                        show_import_error)
from components.messages import plain, show_caption, show_error, show_info, show_success
from core.errors import InputError
from core.paths import MAX_NAME, NAME_RULE, child_path, is_valid_name, show_name, suggest_name

IMPORT_TYPES = ["json", "jsonl", "gz", "csv", "tsv", "parquet", "pq", "arrow", "feather"]
CPU_IFD_ROWS_PER_S = 3.0  # SmolLM2-135M on 2 CPU cores, max_length 512 (measured)
LAST_IMPORT = "data_last_import"
LM_CHUNK = 64  # rows per resumable chunk for the LM steps
UPLOADS = "_uploads"  # under the workspaces folder; never a valid workspace name
UPLOAD_HASH_CHARS = 16  # 64 bits of sha256: collisions between uploads are not a concern


# ----- import -------------------------------------------------------------------------------
def import_section() -> None:
    from core.demo import workspaces_dir
    from core.io import FORMATS, import_to_workspace, parse_mapping, read_datasets

    st.subheader("Import a file")
    how = st.radio("Source", ["Upload", "Path on this machine"], horizontal=True,
                   key="data_source", label_visibility="collapsed")
    path: Path | None = None
    uploaded_name = None
    if how == "Upload":
        upload = st.file_uploader("Alpaca JSON/JSONL, ShareGPT, OpenAI messages, CSV, "
                                  "Parquet (optionally .gz) or an Arrow file (Hugging Face "
                                  "datasets; a save_to_disk folder: give its path)",
                                  type=IMPORT_TYPES,
                                  key="data_upload")
        if upload is not None:
            path = store_upload(workspaces_dir(), upload.name, upload.getbuffer())
            uploaded_name = f"{upload.name} (uploaded)"
    else:
        text = st.text_input("File or folder path", key="data_path",
                             placeholder="/data/my_dataset.jsonl.gz")
        path = Path(text).expanduser() if text.strip() else None

    c1, c2, c3 = st.columns(3)
    fmt = c1.selectbox("Format", ["auto", *FORMATS], key="data_format")
    mapping_text = c2.text_input("Column mapping", key="data_mapping",
                                 placeholder="instruction=prompt,output=completion",
                                 help="For CSV/Parquet or other field names")
    limit = c3.number_input("Only the first N rows (0 = all)", min_value=0, value=0, step=100,
                            key="data_limit")
    c4, c5, c6 = st.columns(3)
    skip_invalid = c4.checkbox("Skip invalid rows", key="data_skip_invalid",
                               help="Import the valid rows and list the skipped ones")
    default_name = _workspace_name(path) if path else ""
    name = c5.text_input("Workspace name", value=default_name, key=f"data_ws_{default_name}")
    overwrite = c6.checkbox("Replace an existing workspace", key="data_overwrite")

    forget_result_of_other_files(path, LAST_IMPORT)
    if path is None:
        return
    try:
        options = {"format": None if fmt == "auto" else fmt,
                   "mapping": parse_mapping(mapping_text), "skip_invalid": skip_invalid,
                   "limit": int(limit) or None}
    except InputError as err:
        show_error(err)
        return
    b1, b2, _ = st.columns([1, 1, 4])
    if b1.button("Check", key="data_check"):
        try:
            result = read_datasets([path], **options)
        except InputError as err:
            show_import_error(err, path, LAST_IMPORT, uploaded_name)
        else:
            st.session_state[LAST_IMPORT] = _summary(result, None)
    if b2.button("Import", type="primary", key="data_import", disabled=not name):
        if not is_valid_name(name):
            show_error(f"Not a valid workspace name: {NAME_RULE}. Nothing was imported.")
            st.code(show_name(name), language=None)
            return
        try:
            root = child_path(workspaces_dir(), name, what="workspace name")
            with st.spinner("Reading and normalising…"):
                ws, result = import_to_workspace([path], root, overwrite=overwrite, **options)
        except InputError as err:
            show_import_error(err, path, LAST_IMPORT, uploaded_name)
        else:
            state.set_workspace(ws.root)
            st.session_state[LAST_IMPORT] = _summary(result, str(ws.root))
            st.rerun()


def _split_suffix(name: str) -> tuple[str, str]:
    """``my data.jsonl.gz`` → (``my data``, ``.jsonl.gz``): the dataset suffixes, kept
    apart so a shortened or cleaned name still reads as the same format."""
    stem = name
    for suffix in (".gz", ".jsonl", ".json", ".csv", ".tsv", ".parquet", ".pq", ".arrow",
                   ".feather"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    return stem, name[len(stem):].lower()


def _workspace_name(path: Path) -> str:
    """The default workspace name for a file: its cleaned stem (the person may change it)."""
    return suggest_name(_split_suffix(path.name)[0])


def store_upload(workspaces: Path, original_name: str, data) -> Path:
    """Keep an uploaded file as ``_uploads/<sha256 prefix>/<cleaned name>``: the same
    content is stored once and reused, two different files with one name never collide, and
    nothing here is ever deleted (``_uploads`` is not a valid workspace name, so no import
    can replace it)."""
    import hashlib

    from core.atomic import write_bytes

    digest = hashlib.sha256(data).hexdigest()[:UPLOAD_HASH_CHARS]
    stem, suffix = _split_suffix(Path(original_name).name)
    name = suggest_name(stem, "upload")[: MAX_NAME - len(suffix)].rstrip("-._") + suffix
    path = child_path(workspaces / UPLOADS / digest, name, what="upload name")
    if not path.is_file():
        write_bytes(path, bytes(data))
    return path


def _summary(result, root: str | None) -> dict:
    return {"root": root, "imported": len(result.samples), "format": result.format,
            "skipped": result.skipped, "warnings": result.warnings, "notes": result.notes}


def show_import_result(summary: dict | None) -> None:
    """What the last check/import found: counts, skipped rows (row, field, reason),
    warnings and notes; all shown as data, never as markdown."""
    if not summary:
        return
    where = f" into {Path(summary['root']).name}" if summary["root"] else " (checked only)"
    show_success(f"{summary['imported']:,} rows ({summary['format']}){where}; "
                 f"{len(summary['skipped']):,} skipped, {len(summary['warnings']):,} warnings")
    if summary["skipped"]:
        st.text("Skipped rows")
        st.dataframe(pd.DataFrame(summary["skipped"]), hide_index=True, height=200)
    if summary["warnings"]:
        st.text("Warnings")
        st.dataframe(pd.DataFrame(summary["warnings"]), hide_index=True, height=200)
    for note in summary["notes"]:
        st.text(note)


# ----- steps --------------------------------------------------------------------------------
def _force() -> bool:
    """Recompute even when the sidecar says the result is up to date."""
    return bool(st.session_state.get("data_force"))


def step_box(title: str, meta: dict | None, ready: bool = True, why: str = "",
             status: bool = True):
    """A bordered box with the step's status line (what it ran with, or why it cannot run
    yet); returns the container."""
    box = st.container(border=True)
    box.markdown(f"**{title}**")
    if not ready:
        box.caption(why)
    elif status:
        show_caption(state.step_done_message("", meta), box)
    return box


def base_steps(ws) -> None:
    from core.workspace import EMBEDDINGS, KNN, MAP

    c1, c2, c3 = st.columns(3)
    with c1:
        box = step_box("Embeddings", ws.meta(EMBEDDINGS) if ws.exists(EMBEDDINGS) else None)
        recipe = box.selectbox("Text", ["full", "instruction"], key="embed_recipe",
                               help="full = instruction + input + output (DS2); "
                                    "instruction = instruction + input (RECOST retrieval)")
        if box.button("Run embeddings", key="run_embed"):
            from core.embed import run_embed

            with box:
                if state.run_step("Embeddings", "embed", run_embed, ws=ws, recipe=recipe,
                                  force=_force()):
                    st.rerun()
    with c2:
        box = step_box("Neighbours", ws.meta(KNN) if ws.exists(KNN) else None,
                       ws.exists(EMBEDDINGS), "needs embeddings")
        k = box.number_input("k", 2, 100, 10, key="knn_k")
        if box.button("Run neighbours", key="run_knn", disabled=not ws.exists(EMBEDDINGS)):
            from core.knn import run_neighbors

            with box:
                if state.run_step("Neighbours", "knn", run_neighbors, ws=ws, k=int(k),
                                  force=_force()):
                    st.rerun()
    with c3:
        box = step_box("Map", ws.meta(MAP) if ws.exists(MAP) else None, ws.exists(KNN),
                       "needs neighbours")
        seed = box.number_input("Seed", 0, 2**31 - 1, 0, key="map_seed")
        if box.button("Run map", key="run_map", disabled=not ws.exists(KNN)):
            from core.maps import run_map

            with box:
                if state.run_step("Map", "map", run_map, ws=ws, seed=int(seed),
                                  force=_force()):
                    st.rerun()


def ifd_step(ws) -> None:
    from core.lm import TEMPLATES

    box = step_box("IFD / r-IFD (SmolLM2-135M)", ws.score_meta("ifd"))
    if ws.score_meta("rifd"):
        show_caption(state.step_done_message("r-IFD", ws.score_meta("rifd")), box)
    precomputed_notice(ws, box)
    n = len(ws)
    c1, c2, c3, c4 = box.columns(4)
    size = c1.number_input("Samples to score", 1, n, min(n, 300), step=50, key="ifd_size",
                           help="A random sample (seed 0); a larger size later extends it")
    max_length = c2.number_input("Max tokens", 32, 4096, 512, step=64, key="ifd_max_length")
    template = c3.selectbox("Prompt template", TEMPLATES, key="ifd_template",
                            help="none = plain text (default, Superfiltering); alpaca = the "
                                 "Alpaca prompt (Cherry); wiz = WizardLM's (Cherry, "
                                 "Reflection-Tuning); vicuna = Vicuna's (Reflection-Tuning); "
                                 "chat = the model's chat template. r-IFD uses it too.")
    reverse = c4.checkbox("Also r-IFD", key="ifd_reverse",
                          help="Reverse IFD (Selective Reflection-Tuning): about twice the time")
    dtype = c4.selectbox("Precision", ["auto", "bfloat16"], key="ifd_dtype",
                         format_func=lambda d: {"auto": "exact (fp32 on CPU)",
                                                "bfloat16": "fast (bf16)"}[d],
                         help="bf16 is about 2-3x faster on CPUs with AMX/AVX-512 bf16; IFD "
                              "changes by 0.3 % (median) and ranks agree to 0.999 (bench/ifd.py)")
    rate, where = next((r, w) for r, w in (
        (st.session_state.get("ifd_rate"), "measured just now"),
        (_measured_ifd_rate(ws), "from the last run"),
        (CPU_IFD_ROWS_PER_S, "typical on 2 CPU cores")) if r)
    seconds = int(size) / rate * (2 if reverse else 1)
    box.caption(f"Estimated time: about {state.format_seconds(seconds)} at {rate:.1f} rows/s "
                f"({where}). Already scored rows are skipped.")
    ids = ws.pick_sample_ids(sample=int(size)).tolist()
    # small chunks: a cancel or a reload loses at most one chunk (~20 s on CPU)
    kwargs = dict(ws=ws, template=template, max_length=int(max_length), dtype=dtype,
                  chunk_size=LM_CHUNK, model=_scoring_model_choice(ws, box))
    b1, b2 = box.columns(2)
    if b1.button("Measure speed on 4 rows", key="ifd_measure"):
        from core.scores.ifd import run_ifd
        import time

        start = time.perf_counter()
        with box:
            done = state.run_step("IFD speed", "ifd_measure", run_ifd,
                                  sample_ids=ids[:4], **kwargs)
        if done is not None:
            st.session_state["ifd_rate"] = 4 / max(time.perf_counter() - start, 1e-3)
            st.rerun()
    if b2.button("Run IFD", key="run_ifd", type="primary"):
        from core.scores.ifd import run_ifd

        with box:
            if state.run_step("IFD", "ifd", run_ifd, sample_ids=ids, with_reverse=reverse,
                              force=_force(), **kwargs) is not None:
                st.rerun()


def _scoring_model_choice(ws, box):
    """None (the default SmolLM2) or "brief" when the workspace has Cherry's brief model
    (`python -m core brief-model`); the choice is offered only then."""
    from core.lm.models import BRIEF_MODEL_DIR, BRIEF_MODEL_NAME

    if not ws.path(BRIEF_MODEL_DIR, "config.json").is_file():
        return None
    return box.radio("Scoring model", [None, BRIEF_MODEL_NAME], horizontal=True,
                     key="ifd_model", format_func=lambda m: "SmolLM2-135M (default)"
                     if m is None else "Cherry's brief model (models/brief)",
                     help="The brief model is the scoring LM fine-tuned on ~1,000 picked "
                          "samples of this workspace (Cherry v1); its scores record it")


def precomputed_notice(ws, box) -> None:
    """Say where shipped demo scores came from, and offer to compute them again here."""
    from core.demo import precomputed_note

    meta = ws.score_meta("ifd")
    note = precomputed_note(meta)
    if note is None:
        return
    show_info(note, box, icon=":material/inventory_2:")
    rows = int(meta.get("rows") or 0)
    reverse = precomputed_note(ws.score_meta("rifd")) is not None
    rate = _measured_ifd_rate(ws) or CPU_IFD_ROWS_PER_S
    seconds = rows / rate * (2 if reverse else 1)  # the IFD file's rate; r-IFD costs as much
    box.caption(f"Recomputing all {rows:,} rows on this machine takes about "
                f"{state.format_seconds(seconds)}; a cancelled run keeps its finished chunks.")
    if box.button("Recompute these scores here", key="ifd_recompute"):
        from core.scores.ifd import run_ifd

        params = meta.get("params", {})
        ids = ws.read_score("ifd")["sample_id"].tolist()
        with box:
            if state.run_step("IFD", "ifd", run_ifd, ws=ws, sample_ids=ids,
                              template=params.get("template", "none"),
                              max_length=int(params.get("max_length", 512)),
                              with_reverse=reverse, force=True,
                              chunk_size=LM_CHUNK) is not None:
                st.rerun()


def _measured_ifd_rate(ws) -> float | None:
    meta = ws.score_meta("ifd") or {}
    rows, took = meta.get("rows"), meta.get("duration_s")
    return rows / took if rows and took and took > 0 else None


def recost_step(ws) -> None:
    from core.select import list_selections

    box = step_box("RECOST (relative entropy against a reference)", ws.score_meta("recost"))
    choices = ["a file"] + [f"selection: {s}" for s in list_selections(ws)]
    c1, c2, c3 = box.columns([1, 2, 1])
    pick = c1.selectbox("Reference", choices, key="recost_ref",
                        help="Trusted high-quality samples; a saved selection counts too")
    path = c2.text_input("Reference file", key="recost_path",
                         disabled=pick != "a file")
    k = c3.number_input("k", 1, 50, 5, key="recost_k")
    if box.button("Run RECOST", key="run_recost"):
        if pick == "a file":
            if not path.strip():
                box.error("Give the reference file's path (any import format).")
                return
            reference = str(Path(path).expanduser())
        else:
            reference = pick.split(": ", 1)[1]
        from core.scores.recost import run_recost

        with box:
            if state.run_step("RECOST", "recost", run_recost, ws=ws, reference=reference,
                              k=int(k), chunk_size=LM_CHUNK, force=_force()) is not None:
                st.rerun()


def ds2_variant(box) -> dict:
    """The DS2 reference variants, as ``curate --self-vote --detector --min-confidence``."""
    from core.scores.simifeat import DETECTORS

    with box.expander("Reference variants (DS2 repository options)"):
        v1, v2, v3 = st.columns(3)
        detector = v1.selectbox(
            "Detector", DETECTORS, key="ds2_detector",
            help="rank: the paper's SimiFeat-rank, flags each class's expected noisy share "
                 "(from the estimated transition matrix). mv: flags a rating whenever its "
                 "neighbours' majority disagrees.")
        self_vote = v2.checkbox(
            "Self-vote", key="ds2_self_vote",
            help="The reference's variant: each sample votes for its own rating too, with a "
                 "weight from its two nearest neighbours, beside k − 1 neighbours.")
        min_confidence = v3.number_input(
            "Min confidence", 0.0, 1.0, 0.5, 0.05, key="ds2_min_confidence",
            help="A flagged rating is replaced by its suggestion only when the confidence "
                 "(vote share of the suggestion × how often it was flagged) reaches this.")
    return {"detector": detector, "self_vote": bool(self_vote),
            "min_confidence": float(min_confidence)}


def ds2_step(ws) -> None:
    from core.names import ds2_score_name, ds2_scores
    from core.scores.ratings import SCALES

    samples = state.load_samples(ws)
    columns = state.numeric_sample_columns(samples)
    box = step_box("DS2 curation", None, status=False)
    done = list(ds2_scores(ws))
    for name in done:
        show_caption(state.step_done_message(name, ws.score_meta(name)), box)
    if not done:
        box.caption("DS2 curation: not run yet")
    c1, c2, c3 = box.columns(3)
    source = c1.radio("Ratings", ["a column", "a rater"], key="ds2_source", horizontal=True)
    variant = ds2_variant(box)
    if source == "a column":
        if not columns:
            box.caption("No numeric column in the samples: rate them with a rater.")
            return
        column = c2.selectbox("Rating column", columns, key="ds2_column")
        scale = c3.selectbox("Scale", ["auto", *SCALES], key="ds2_scale")
        if box.button("Run DS2", key="run_ds2"):
            from core.scores.ds2 import run_curate

            with box:
                if state.run_step("DS2", "ds2", run_curate, ws=ws, rating_column=column,
                                  scale=None if scale == "auto" else scale,
                                  force=_force(), **variant) is not None:
                    st.rerun()
        show_caption(f"writes scores/{ds2_score_name(column)}.parquet", box)
        return
    backend = c2.selectbox("Backend", ["local", "openai"], key="ds2_backend")
    rater = c3.text_input("Rater name", value=backend, key="ds2_rater")
    size = box.number_input("Samples to rate", 1, len(ws), min(len(ws), 200), key="ds2_n")
    if backend == "openai":
        o1, o2, o3 = box.columns(3)
        base_url = o1.text_input("Base URL", "https://api.openai.com/v1", key="ds2_url")
        model = o2.text_input("Model", "gpt-4o-mini", key="ds2_model")
        key_env = o3.text_input("API key variable", "OPENAI_API_KEY", key="ds2_key_env")
    if box.button("Rate, then run DS2", key="run_rate"):
        from core.raters.backends import LocalRater, OpenAIRater
        from core.raters.run import run_rate
        from core.scores.ds2 import run_curate

        try:
            backend_obj = (LocalRater() if backend == "local" else
                           OpenAIRater(base_url, model, api_key_env=key_env or None))
        except InputError as err:
            show_error(err, box)
            return
        with box:
            # the CLI's `rate --sample N --seed 0` then `curate --rater NAME`, same arguments
            done = state.run_step("Rating", "rate", run_rate, ws=ws, backend=backend_obj,
                                  rater_name=rater,
                                  sample_ids=ws.pick_sample_ids(sample=int(size)))
            if done is None:
                return
            if state.run_step("DS2", "ds2", run_curate, ws=ws, rater=rater,
                              force=_force(), **variant) is not None:
                st.rerun()


# ----- page ---------------------------------------------------------------------------------
state.ensure_shell()
st.title("Data")
ws = state.current_workspace()
with st.expander("Import a file", expanded=form_expanded(ws is None)):
    import_section()
show_import_result(st.session_state.get(LAST_IMPORT))  # outside: seen after the import
if ws is None:
    st.info("Import a file to start (or build the demo from the sidebar).")
    st.stop()

st.subheader(f"Steps for {plain(ws.name)}")
show_caption(f"{len(ws):,} samples · {ws.root}")
st.checkbox("Recompute even when up to date", key="data_force",
            help="A step whose inputs and parameters did not change is normally read back "
                 "from its file; tick this to compute it again from scratch.")
base_steps(ws)
ifd_step(ws)
recost_step(ws)
ds2_step(ws)
ds2_next_step(ws)
