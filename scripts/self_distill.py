"""Self-distillation: the frozen base model answers a prompt set; the answers become training data.

Config: conf/self_distill.yaml (keys = the arguments of data.self_distill.generate_responses).

    python -m scripts.self_distill model_name_or_path=Qwen/Qwen3-8B \
        prompts_source=HuggingFaceH4/ultrachat_200k split=train_sft out_dir=data_out/self_distill/qwen3-8b
    python train.py +exp=qwen3_8b data=self_distill data.load_tokenized_dataset.source=data_out/self_distill/qwen3-8b
"""

from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig, OmegaConf

from data.self_distill import generate_responses


@hydra.main(config_path="../conf", config_name="self_distill", version_base="1.3")
def main(cfg: DictConfig) -> None:
    kwargs = OmegaConf.to_container(cfg, resolve=True)
    manifest = generate_responses(**kwargs)
    summary = {k: manifest[k] for k in ("records", "tokens_generated", "truncated_at_max_new_tokens")}
    print(f"self-distillation data in {cfg.out_dir}: {json.dumps(summary)}")


if __name__ == "__main__":
    main()
