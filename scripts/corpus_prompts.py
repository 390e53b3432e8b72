"""Write prompts drawn from a corpus split as JSONL (data.corpus.corpus_prompts).

    python -m scripts.corpus_prompts CORPUS_DIR OUT.jsonl --count 2000 --num-lines 12 --split train \
        --anchor "def " --max-chars 1500 [--per-file 4]
"""

import argparse

from data.corpus import HELDOUT, corpus_prompts


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus_dir")
    ap.add_argument("out_file")
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--num-lines", type=int, required=True, help="lines per prompt")
    ap.add_argument("--split", default=HELDOUT)
    ap.add_argument("--anchor", default=None, help='start each window at a random line starting with this, e.g. "def "')
    ap.add_argument("--max-chars", type=int, default=None)
    ap.add_argument("--per-file", type=int, default=1, help="windows per file (with --anchor)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    n = corpus_prompts(**vars(args))  # the options are named as corpus_prompts' parameters
    print(f"{n} prompts from split {args.split!r} of {args.corpus_dir} -> {args.out_file}")


if __name__ == "__main__":
    main()
