"""The causal language model every LM score reads with (docs/methods.md §1, §7).

- ``models``: loading (the packaged SmolLM2-135M-Instruct, converted once from its GGUF, or
  any local Hugging Face causal-LM folder; CPU or CUDA; fp32 exact, bf16 explicit).
- ``templates``: prompt templates and the start-token and boundary rules.
- ``losses``: the batched engine, mean NLL of the last n tokens of many sequences.

The scores built on it (IFD, r-IFD, RECOST) live in ``core.scores``.
"""

from .losses import (BATCH_COST_TOKENS, DEFAULT_TOKEN_BUDGET, LOGIT_ROWS, NLL_ROWS,
                     plan_batches, sequence_losses, token_progress)
from .models import (DEFAULT_MODEL_NAME, DTYPES, LoadedLM, cache_root, default_gguf_path,
                     ensure_default_model_folder, load_causal_lm, start_token_of)
from .templates import (ALPACA_DIRECT_PREFIX, ALPACA_PROMPT_INPUT, ALPACA_PROMPT_NO_INPUT,
                        TEMPLATES, as_text, direct_prefix, encode, question_text,
                        render_prompt, require_chat_template, split_prompt_answer,
                        with_start)

__all__ = ["ALPACA_DIRECT_PREFIX", "ALPACA_PROMPT_INPUT", "ALPACA_PROMPT_NO_INPUT",
           "BATCH_COST_TOKENS", "DEFAULT_MODEL_NAME", "DEFAULT_TOKEN_BUDGET", "DTYPES",
           "LOGIT_ROWS", "LoadedLM", "NLL_ROWS", "TEMPLATES", "as_text", "cache_root",
           "default_gguf_path", "direct_prefix", "encode", "ensure_default_model_folder",
           "load_causal_lm", "plan_batches", "question_text", "render_prompt",
           "require_chat_template", "sequence_losses", "split_prompt_answer",
           "start_token_of", "token_progress", "with_start"]
