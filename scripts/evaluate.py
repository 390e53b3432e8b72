"""Evaluate one Orthrus checkpoint over prompt sets and block sizes (Hydra: conf/eval.yaml).

    python -m scripts.evaluate name=orthrus_qwen3_8b label=qwen3_8b model.base=chiennv/Orthrus-Qwen3-8B \\
        benchmarks=[humaneval,math500] limit=100
    python -m scripts.evaluate name=tiny model.base=/path/to/ckpt model.device=cpu model.dtype=float32 \\
        decode.max_new_tokens=64 decode.temperature=0.6 decode.top_k=20 decode.top_p=0.95 decode.engine=reference

decode.engine picks the decoder: `fast` (the engine) or `reference` (the reference loop); the
orchestration and what metrics.json holds: eval/evaluate.py.
"""

import hydra
from omegaconf import DictConfig

from eval.evaluate import run


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    path = run(cfg)
    print(f"wrote {path} and {path.with_name('metrics.md')}")


if __name__ == "__main__":
    main()
