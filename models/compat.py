"""Differences between the `transformers` releases this project supports (>= 5.17 and the newest).

Newer releases rename the forward's `past_key_values` argument to `cache` and warn on every call
that uses the old name; 5.17 knows only the old one. `cache_kwargs` gives whichever name the
installed release takes, so every forward is warning-free on both.
"""

import inspect

from transformers import Qwen3ForCausalLM

CACHE_ARG = "cache" if "cache" in inspect.signature(Qwen3ForCausalLM.forward).parameters else "past_key_values"


def cache_kwargs(cache) -> dict:
    """Forward keyword arguments that read and extend `cache` (a transformers Cache)."""
    return {CACHE_ARG: cache, "use_cache": True}
