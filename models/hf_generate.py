"""`OrthrusForCausalLM.generate` with `transformers`' generation arguments, decoded by Orthrus.

Users call `model.generate(ids, max_new_tokens=..., do_sample=..., streamer=...)` out of habit;
this maps those arguments onto the reference loop (models/generate.py), which emits exactly the
base model's tokens (greedy) or samples from exactly its distribution (sampling). Arguments that
would make `transformers` decode differently (beams, penalties, extra processors, outputs Orthrus
does not compute) raise instead of being ignored. With `return_dict_in_generate=True` the output
also carries the decoding statistics.

The plain base decoding stays reachable as `GenerationMixin.generate(model, ...)` (eval/fidelity.py
compares against it).
"""

import copy
import logging
from dataclasses import dataclass

import torch
from transformers import GenerationConfig
from transformers.utils import ModelOutput

from models.generate import generate
from models.sampling import SamplingParams

logger = logging.getLogger(__name__)

# Call arguments that are not generation-config fields.
_CALL_ARGS = ("attention_mask", "tokenizer", "block_size", "generator", "streamer", "generation_config")
# Generation-config fields Orthrus decoding honours (the rest must keep transformers' defaults).
_CONFIG_ARGS = (
    "max_new_tokens",
    "max_length",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "eos_token_id",
    "pad_token_id",
    "bos_token_id",
    "stop_strings",
    "return_dict_in_generate",
    "use_cache",
)
# Defaults that change nothing when Orthrus cannot honour them (beam-search-only or assistant settings).
_INERT = (
    "early_stopping",
    "length_penalty",
    "num_assistant_tokens",
    "num_assistant_tokens_schedule",
    "assistant_confidence_threshold",
    "assistant_lookbehind",
    "target_lookbehind",
)


@dataclass
class OrthrusGenerateOutput(ModelOutput):
    """`sequences` as transformers returns them, plus Orthrus's decoding statistics."""

    sequences: torch.LongTensor | None = None
    tpf: float | None = None  # the paper's TPF: new tokens / all forward passes (prefill, drafts, verifies)
    acceptance_length: float | None = None  # tokens per verify pass (accepted drafts + 1)
    tokens_per_iteration: float | None = None  # diagnostic: tokens per draft+verify iteration (~2 x TPF)
    accepted: list[int] | None = None  # drafts accepted per iteration
    emitted: list[int] | None = None  # tokens emitted per iteration


def orthrus_generate(model, inputs: torch.LongTensor | None = None, **kwargs):
    """Decode `inputs` (1, L) with Orthrus under transformers-style arguments (module docstring)."""
    if inputs is None:
        inputs = kwargs.pop("input_ids", None)
    if inputs is None:
        raise ValueError("generate() needs the prompt ids: model.generate(input_ids, max_new_tokens=...)")
    fields = GenerationConfig().to_dict()
    unknown = sorted(k for k in kwargs if k not in _CALL_ARGS and k not in fields)
    if unknown:
        raise ValueError(
            f"OrthrusForCausalLM.generate does not support {unknown}: Orthrus decoding takes "
            f"{sorted(_CONFIG_ARGS + _CALL_ARGS)}. For the plain base model's generate with every "
            "transformers option, call transformers.GenerationMixin.generate(model, ...)."
        )
    call = {k: kwargs.pop(k) for k in _CALL_ARGS if k in kwargs}
    config = copy.deepcopy(call.pop("generation_config", None) or model.generation_config)
    config.update(**kwargs)
    _check_config(config)
    mask = call.pop("attention_mask", None)
    if inputs.dim() != 2 or inputs.shape[0] != 1 or (mask is not None and not bool(mask.all())):
        raise ValueError(
            f"Orthrus decoding takes one unpadded sequence (input_ids of shape (1, L)); got shape "
            f"{tuple(inputs.shape)}{' with padding' if mask is not None and not mask.all() else ''}: "
            "decode the rows one at a time."
        )
    defaults = GenerationConfig._get_default_generation_params()
    if config.max_new_tokens is not None:
        max_new = config.max_new_tokens
    else:
        max_new = (config.max_length or defaults["max_length"]) - inputs.shape[1]
    _announce(model)
    result = generate(
        model,
        inputs,
        max_new,
        block_size=call.get("block_size"),
        sampling=_sampling(config, defaults),
        eos_token_id=config.eos_token_id,
        generator=call.get("generator"),
        streamer=call.get("streamer"),
        stop_strings=config.stop_strings,
        tokenizer=call.get("tokenizer"),
    )
    if not config.return_dict_in_generate:
        return result.sequences
    return OrthrusGenerateOutput(
        sequences=result.sequences,
        tpf=result.tpf,
        acceptance_length=result.acceptance_length,
        tokens_per_iteration=result.tokens_per_iteration,
        accepted=result.accepted,
        emitted=result.emitted,
    )


def _check_config(config: GenerationConfig) -> None:
    """Every setting that would change transformers' decoding must be one Orthrus honours."""
    for key, default in GenerationConfig._get_default_generation_params().items():
        value = getattr(config, key, None)
        if key in _CONFIG_ARGS or key in _INERT or value is None or value == default:
            continue
        raise ValueError(
            f"generation setting {key}={value!r} is not supported by Orthrus decoding (it would "
            f"change the output); use {key}={default!r}, or transformers.GenerationMixin.generate(model, "
            "...) for the plain base model"
        )
    for key in (
        "min_p",
        "min_new_tokens",
        "output_scores",
        "output_logits",
        "output_attentions",
        "output_hidden_states",
        "watermarking_config",
        "cache_implementation",
    ):
        if getattr(config, key, None) not in (None, False):
            raise ValueError(
                f"generation setting {key}={getattr(config, key)!r} is not supported by Orthrus "
                "decoding; unset it, or use transformers.GenerationMixin.generate(model, ...)"
            )


def _sampling(config: GenerationConfig, defaults: dict) -> SamplingParams:
    """transformers' rule: greedy unless do_sample; then temperature, top_k, top_p (unset: its defaults)."""
    if not config.do_sample:
        return SamplingParams()

    def value(key):
        return getattr(config, key) if getattr(config, key) is not None else defaults[key]

    return SamplingParams(temperature=value("temperature"), top_k=value("top_k"), top_p=value("top_p"))


def _announce(model) -> None:
    if not getattr(model, "_orthrus_announced", False):
        model._orthrus_announced = True
        logger.info(
            "OrthrusForCausalLM.generate: Orthrus decoding (diffusion-view drafts of K=%d tokens verified "
            "by the AR view): the output is the base model's, losslessly",
            model.config.block_size,
        )
