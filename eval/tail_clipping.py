"""How much the engine's always-K tail changes the diagnostic tokens per iteration.

The reference loop clips the last blocks as the official decoder does (`models.generate.block_length`:
min(K, max_new_tokens - emitted + 1)); the engine always proposes K and clips what it emits (one
captured step per K). Emitted tokens are identical either way; only the blocks that run into
max_new_tokens differ, so the effect shrinks as 1 / max_new_tokens and vanishes for answers that end
at EOS first. `compare` measures it on real prompts, both decoders greedy on the same model.
"""

import torch

from eval.metrics import tokens_per_iteration, tpf
from models.engine import OrthrusEngine
from models.generate import generate


def compare(model, prompts: list[list[int]], lengths: list[int], block_size: int) -> list[dict]:
    """One row per max_new_tokens: tokens per iteration and TPF of both decoders, over all prompts."""
    rows = []
    for max_new in lengths:
        engine = OrthrusEngine(model, max(len(p) for p in prompts) + max_new + block_size)
        ref, eng = [], []
        for ids in prompts:
            input_ids = torch.tensor([ids], device=engine.device)
            ref.append(generate(model, input_ids, max_new, block_size=block_size))
            eng.append(engine.generate(input_ids, max_new, block_size=block_size))
            if not torch.equal(ref[-1].sequences, eng[-1].sequences):
                raise AssertionError("engine and reference loop emitted different tokens")
        rows.append(
            {
                "max_new_tokens": max_new,
                "prompts": len(prompts),
                "block_size": block_size,
                "finished_by_eos": sum(r.finished_by_eos for r in ref),
                "tokens_per_iteration_official_clip": tokens_per_iteration(ref),
                "tokens_per_iteration_engine_always_k": tokens_per_iteration(eng),
                "tpf_official_clip": tpf(ref),
                "tpf_engine_always_k": tpf(eng),
                "iterations_official_clip": sum(len(r.emitted) for r in ref),
                "iterations_engine_always_k": sum(len(r.emitted) for r in eng),
            }
        )
    return rows
