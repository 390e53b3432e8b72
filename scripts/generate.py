"""Generate text with Orthrus, streamed as it is decoded, then TPF and tokens/s.

    python -m scripts.generate --prompt "def fibonacci(n):"                     # orthrus-small, greedy
    python -m scripts.generate --base chiennv/Orthrus-Qwen3-8B --dtype bfloat16 --engine \\
        --prompt "Write a quicksort in Python." --temperature 0.6 --top-k 20 --top-p 0.95

TPF is the paper's unit: new tokens / all forward passes (prefill, drafts, verifies). --block-size 1
is plain AR decoding on the same loop, the baseline to compare tokens/s against.
"""

import argparse
import sys
import time

import torch
from transformers import TextStreamer

from data.tokenizer import load_tokenizer
from eval.prompts import encode_prompt, resolve_chat_template
from models.checkpoint import load_orthrus
from models.engine import OrthrusEngine
from models.generate import _eos_ids, generate
from models.sampling import SamplingParams

SMALL = "artifacts/orthrus-small"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--base", default=f"{SMALL}/base", help="Qwen3 or merged Orthrus checkpoint (folder or hub name)")
    ap.add_argument("--diffusion", default=None, help=f"diffusion view (with the small base: {SMALL}/diffusion)")
    ap.add_argument("--tokenizer", default=None, help="default: the base's")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--block-size", type=int, default=None, help="K (default: the checkpoint's; 1: plain AR)")
    ap.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    ap.add_argument("--chat-template", choices=["auto", "true", "false"], default="auto")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--device", default="auto", help="auto: CUDA when present")
    ap.add_argument("--engine", action="store_true", help="the fast engine (static cache, CUDA graphs on a GPU)")
    args = ap.parse_args(argv)
    if args.diffusion is None and args.base == f"{SMALL}/base":
        args.diffusion = f"{SMALL}/diffusion"
    if args.tokenizer is None:
        args.tokenizer = f"{SMALL}/tokenizer" if args.base == f"{SMALL}/base" else args.base
    return args


def main(argv: list[str] | None = None):
    args = parse_args(argv)
    sampling = SamplingParams(args.temperature, args.top_k, args.top_p)  # bad values fail before loading
    model = load_orthrus(
        args.base, args.diffusion, block_size=args.block_size, dtype=getattr(torch, args.dtype), device=args.device
    )
    tokenizer = load_tokenizer(args.tokenizer)
    chat = resolve_chat_template(
        {"true": True, "false": False}.get(args.chat_template, "auto"), tokenizer, _eos_ids(model, None)
    )
    ids = torch.tensor([encode_prompt(tokenizer, args.prompt, chat_template=chat)], device=model.device)
    K = args.block_size or model.config.block_size
    decode = (
        OrthrusEngine(model, ids.shape[1] + args.max_new_tokens + K).generate
        if args.engine
        else lambda *a, **kw: generate(model, *a, **kw)
    )
    generator = torch.Generator(device=model.device).manual_seed(args.seed)
    streamer = TextStreamer(tokenizer, skip_prompt=chat)  # a raw completion shows its prompt
    start = time.perf_counter()
    result = decode(
        ids,
        args.max_new_tokens,
        block_size=K,
        sampling=sampling,
        generator=generator,
        streamer=streamer,
        stop_strings=args.stop,
        tokenizer=tokenizer,
    )
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
    seconds = time.perf_counter() - start
    forwards = result.ar_forwards + result.diffusion_forwards
    print(
        f"\n[{result.num_new_tokens} tokens, K={K}, TPF {result.num_new_tokens / forwards:.2f} "
        f"({forwards} forward passes: {result.ar_forwards} AR, {result.diffusion_forwards} diffusion), "
        f"{result.num_new_tokens / seconds:.1f} tokens/s incl. prefill, {model.device.type}]",
        file=sys.stderr,
    )
    return result


if __name__ == "__main__":
    main()
