"""Train the byte-level BPE tokenizer on a corpus built by scripts/build_corpus.py (see data/tokenizer.py).

python -m scripts.train_tokenizer --corpus-dir corpora/python --out-dir tokenizers/python-8k --vocab-size 8192
"""

from __future__ import annotations

import argparse

from data.tokenizer import train_tokenizer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus-dir", required=True, help="folder with the corpus manifest.json")
    parser.add_argument("--out-dir", required=True, help="where save_pretrained writes the tokenizer")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--min-frequency", type=int, default=2)
    parser.add_argument("--split", default="train", help="corpus split to train on")
    args = parser.parse_args(argv)

    tokenizer = train_tokenizer(**vars(args))
    print(f"saved {len(tokenizer)}-token tokenizer to {args.out_dir} (mask_token_id={tokenizer.mask_token_id})")


if __name__ == "__main__":
    main()
