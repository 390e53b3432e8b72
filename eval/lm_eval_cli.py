"""The lm-eval command line with the `orthrus` model registered and the repository's offline tasks
(eval/lm_eval_tasks/) on the include path, and --device defaulting to CUDA when present, else the
CPU; every other argument is lm-eval's own.

    python -m eval.lm_eval_cli --model orthrus \\
        --model_args pretrained=artifacts/orthrus-small/base,diffusion=artifacts/orthrus-small/diffusion \\
        --tasks orthrus_python_local --limit 4
    python -m eval.lm_eval_cli --model orthrus --model_args pretrained=chiennv/Orthrus-Qwen3-8B --tasks gsm8k

`lm_eval --model orthrus` alone cannot work: lm-eval only knows models whose module was imported.
"""

import sys
from pathlib import Path

from lm_eval.__main__ import cli_evaluate

import eval.lm_eval_adapter  # noqa: F401  (registers the "orthrus" model)
from models.checkpoint import resolve_device

TASKS_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--tasks" in args and not any(a.startswith("--include_path") for a in args):
        args += ["--include_path", str(TASKS_DIR)]
    if "--tasks" in args and not any(a.startswith("--device") for a in args):  # lm-eval's default is cuda
        args += ["--device", str(resolve_device("auto"))]
    sys.argv = ["lm-eval", *args]
    cli_evaluate()


if __name__ == "__main__":
    main()
