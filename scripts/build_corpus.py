"""Build the offline Python-source corpus (see data/corpus.py).

python -m scripts.build_corpus --out-dir corpora/python --heldout-fraction 0.05
python -m scripts.build_corpus --out-dir /tmp/tiny --max-bytes 1000000   # seconds
"""

from __future__ import annotations

import argparse

from tqdm import tqdm

from data.corpus import build_corpus


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", required=True, help="output folder for shards and manifest.json")
    parser.add_argument("--heldout-fraction", type=float, default=0.05, help="expected fraction of held-out packages")
    parser.add_argument("--heldout-packages", nargs="*", default=[], help="packages always held out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-bytes", type=int, default=None, help="cap on the text bytes of each split")
    parser.add_argument("--min-file-bytes", type=int, default=64)
    parser.add_argument("--max-file-bytes", type=int, default=512_000)
    parser.add_argument("--include-tests", action="store_true", help="keep test folders and test_*.py files")
    parser.add_argument("--roots", nargs="*", default=None, help="folders to scan (default: stdlib + site-packages)")
    parser.add_argument("--exclude-paths", nargs="*", default=None, help="folders never read (default: this repo)")
    parser.add_argument("--shard-bytes", type=int, default=64 * 2**20)
    args = parser.parse_args(argv)

    total = 2 * args.max_bytes if args.max_bytes is not None else None
    with tqdm(total=total, unit="B", unit_scale=True, desc="corpus") as bar:
        manifest = build_corpus(**vars(args), progress=bar.update)
    for split, info in manifest["splits"].items():
        print(f"{split}: {info['files']} files, {info['bytes'] / 1e6:.1f} MB, {len(info['packages'])} packages")
    print(f"skipped: {manifest['skipped']}")


if __name__ == "__main__":
    main()
