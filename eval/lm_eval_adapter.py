"""lm-eval model `orthrus`: HF's `hf` model with generation swapped for Orthrus decoding.

Subclassing lm-eval's HFLM keeps everything but generation identical to the `hf` model:
log-likelihoods run through the frozen base forward (Orthrus's AR view *is* the base model),
tokenisation, chat templates, truncation and answer post-processing are HFLM's own. Only
`_model_generate` changes: each request is decoded by Orthrus (one sequence at a time, the
left padding of lm-eval's batch removed), and stop sequences end decoding early (the decoders'
own stop strings, models/stopping.py).

    python -m eval.lm_eval_cli --model orthrus --model_args pretrained=... --tasks ...  # the lm-eval CLI
    import eval.lm_eval_adapter  # registers "orthrus" with lm-eval
    lm_eval.simple_evaluate(model="orthrus", model_args="pretrained=chiennv/Orthrus-Qwen3-8B,dtype=bfloat16",
                            tasks=["gsm8k"])
    OrthrusLM(pretrained=model_object, tokenizer=tokenizer, decode_fn=engine_decode)  # an engine, a built model
`compare` runs tasks with both models and checks they agree (`python -m scripts.lm_eval_compare`).
"""

import torch
from lm_eval import simple_evaluate
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from transformers import GenerationConfig

from eval.runner import DecodeFn
from models.checkpoint import load_orthrus
from models.generate import generate
from models.sampling import SamplingParams

# HF generation options that map onto Orthrus's sampler; anything else would make HF sample
# from a different distribution than Orthrus does, so it is refused rather than ignored.
_SAMPLING_KEYS = ("do_sample", "temperature", "top_k", "top_p")
# Logits processors HF would take from the model's generation config, at their "off" values.
_NEUTRAL = {"repetition_penalty": 1.0, "min_p": None, "typical_p": 1.0, "no_repeat_ngram_size": 0}


class _Collector:
    """Streamer that collects the new tokens and how many each put carried (per iteration)."""

    def __init__(self):
        self.tokens: list[int] = []
        self.chunks: list[int] = []  # tokens emitted per put (the first is the prefill token)
        self.seen_prompt = False

    def put(self, tokens: torch.Tensor):
        if not self.seen_prompt:  # the first put is the prompt
            self.seen_prompt = True
            return
        new = tokens.flatten().tolist()
        self.tokens += new
        self.chunks.append(len(new))

    def end(self):
        pass


@register_model("orthrus")
class OrthrusLM(HFLM):
    def __init__(
        self,
        pretrained,
        diffusion: str | None = None,
        block_size: int | None = None,
        mask_token_id: int | None = None,
        decode_fn: DecodeFn = generate,
        tokenizer=None,
        dtype: str | torch.dtype = "bfloat16",
        device: str = "auto",
        **kwargs,
    ):
        """pretrained: a hub name / folder (Qwen3 or merged Orthrus, loaded with `load_orthrus`)
        or an already-built OrthrusForCausalLM (then `tokenizer` is required)."""
        if isinstance(pretrained, str):
            dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
            tokenizer = tokenizer or pretrained
            pretrained = load_orthrus(
                pretrained, diffusion, block_size=block_size, mask_token_id=mask_token_id, dtype=dtype, device=device
            )
        elif tokenizer is None:
            raise ValueError("OrthrusLM got a model object: pass its tokenizer too (tokenizer=...)")
        super().__init__(pretrained=pretrained, tokenizer=tokenizer, **kwargs)
        self.block_size = block_size
        self.decode_fn = decode_fn
        self.iteration_tokens: list[int] = []  # tokens emitted per draft+verify iteration, all requests

    @property
    def tokens_per_iteration(self) -> float:
        """Diagnostic (not the paper's TPF): tokens per draft+verify iteration over every request so far."""
        return sum(self.iteration_tokens) / max(len(self.iteration_tokens), 1)

    def _model_generate(self, context, max_length: int, stop: list[str], **generation_kwargs) -> torch.Tensor:
        """Same contract as HFLM's: (B, ctx) left-padded context in, (B, max_length) out with the
        context kept in front and each continuation right-padded with the pad id."""
        attention_mask = generation_kwargs.pop("attention_mask", None)
        sampling = sampling_params(self.model.generation_config, generation_kwargs)
        max_new = max_length - context.shape[1]
        out = torch.full(
            (context.shape[0], max_length), self.tokenizer.pad_token_id, dtype=torch.long, device=context.device
        )
        out[:, : context.shape[1]] = context
        for row in range(context.shape[0]):
            ids = context[row] if attention_mask is None else context[row][attention_mask[row].bool()]
            new = self._decode_one(ids[None], max_new, stop, sampling)
            out[row, context.shape[1] : context.shape[1] + len(new)] = torch.tensor(new, device=context.device)
        return out

    def _decode_one(self, input_ids, max_new: int, stop: list[str], sampling: SamplingParams) -> list[int]:
        collector = _Collector()
        self.decode_fn(
            self.model,
            input_ids,
            max_new,
            block_size=self.block_size,
            sampling=sampling,
            streamer=collector,
            stop_strings=stop,
            tokenizer=self.tokenizer,
        )
        self.iteration_tokens += collector.chunks[1:]  # chunks[0] is the prefill token
        return collector.tokens


def sampling_params(generation_config: GenerationConfig, kwargs: dict) -> SamplingParams:
    """The SamplingParams under which HF's generate would sample with these kwargs: unset
    values come from the model's generation config, then HF's global defaults (top_k=50!)."""
    unknown = set(kwargs) - set(_SAMPLING_KEYS)
    if unknown:
        raise ValueError(
            f"generation options {sorted(unknown)} are not supported by Orthrus decoding; it supports {_SAMPLING_KEYS}"
        )
    defaults = GenerationConfig._get_default_generation_params()

    def value(key):
        if kwargs.get(key) is not None:
            return kwargs[key]
        configured = getattr(generation_config, key, None)
        return configured if configured is not None else defaults[key]

    for key, neutral in _NEUTRAL.items():
        if getattr(generation_config, key, None) not in (None, neutral):
            raise ValueError(
                f"the model's generation config sets {key}={getattr(generation_config, key)}, which HF "
                "would apply and Orthrus decoding does not: reset it to compare like with like"
            )
    # lm-eval's own rule (HFLM._model_generate): temperature defaults to 0, which means greedy
    # unless do_sample says otherwise.
    temperature = kwargs.get("temperature", 0.0)
    do_sample = kwargs.get("do_sample")
    if do_sample is None:
        do_sample = temperature != 0.0 and bool(value("do_sample"))
    if not do_sample:
        return SamplingParams()
    if temperature == 0.0:
        raise ValueError("do_sample=True needs a temperature > 0 (lm-eval defaults it to 0)")
    return SamplingParams(temperature=temperature, top_k=value("top_k"), top_p=value("top_p"))


def run_tasks(lm, tasks: list[str], task_manager: TaskManager, **kwargs) -> dict:
    """lm-eval results for one model, with per-sample responses kept."""
    return simple_evaluate(
        model=lm, tasks=tasks, task_manager=task_manager, log_samples=True, bootstrap_iters=0, **kwargs
    )


def compare(base_lm, orthrus_lm, tasks: list[str], task_manager: TaskManager, **kwargs) -> dict:
    """Metrics of both models per task, and which samples' generations differ."""
    out = {"identical": True, "tasks": {}}
    base, ours = run_tasks(base_lm, tasks, task_manager, **kwargs), run_tasks(orthrus_lm, tasks, task_manager, **kwargs)
    for task in base["results"]:
        metrics = {"hf": _metrics(base["results"][task]), "orthrus": _metrics(ours["results"][task])}
        base_resps = {s["doc_id"]: s["resps"] for s in base["samples"].get(task, [])}
        our_resps = {s["doc_id"]: s["resps"] for s in ours["samples"].get(task, [])}
        differ = sorted(d for d in base_resps if base_resps[d] != our_resps.get(d))
        same = metrics["hf"] == metrics["orthrus"] and not differ and base_resps.keys() == our_resps.keys()
        out["tasks"][task] = {**metrics, "num_samples": len(base_resps), "differing_doc_ids": differ, "identical": same}
        out["identical"] &= same
    out["orthrus_tokens_per_iteration"] = getattr(orthrus_lm, "tokens_per_iteration", None)
    return out


def _metrics(task_results: dict) -> dict:
    return {k: float(v) for k, v in task_results.items() if "," in k and "_stderr" not in k}
