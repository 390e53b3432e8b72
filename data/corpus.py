"""A local, offline corpus of Python source code, split by package.

Machines used for this project may have no access to a dataset hub, but every
Python install carries tens of megabytes of real, diverse source code: the
standard library and the installed packages. This module turns that into a
reproducible text corpus.

The split into train and held-out sets is by *package*, not by file: files of
one package share identifiers, idioms and copied snippets, so a file-level
split would leak near-duplicates into the held-out set and overstate how well a
model generalises. Exact duplicates (same bytes) are kept only once across the
whole corpus for the same reason.

Output layout (all files written atomically)::

    out_dir/
      train-00000.jsonl      {"text": ..., "package": ..., "path": ...} per line
      heldout-00000.jsonl
      manifest.json          counts, package lists, parameters, seed, skip counts
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import sysconfig
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from data._io import atomic_write_text

TRAIN = "train"
HELDOUT = "heldout"
SPLITS = (TRAIN, HELDOUT)
MANIFEST = "manifest.json"
FORMAT = "orthrus-python-corpus/1"

# The repository itself is never corpus material: a model must not be trained
# on the code that evaluates it, and an editable install could expose it.
REPO_ROOT = Path(__file__).resolve().parent.parent

# Folders that hold other roots (site-packages lives inside the stdlib folder),
# bytecode, or installer metadata rather than importable source.
_SKIP_DIRS = {"__pycache__", "site-packages", "dist-packages"}
_SKIP_DIR_SUFFIXES = (".dist-info", ".egg-info")
# Test suites are mostly boilerplate and fixtures (the stdlib's `test` package
# alone is a large share of the stdlib, with deliberately broken encodings).
_TEST_DIRS = {"test", "tests", "idle_test"}
_TEST_FILES = {"conftest.py", "test.py", "tests.py"}


@dataclass(frozen=True)
class SourceFile:
    """One candidate file: where it is and what the corpus records about it."""

    package: str
    path: Path  # absolute path, for reading
    relpath: str  # path relative to its root with "/" separators, as recorded


def default_roots() -> list[Path]:
    """The stdlib folder and the site-packages folders of this interpreter."""
    paths = sysconfig.get_paths()
    roots: list[Path] = []
    for key in ("stdlib", "purelib", "platlib"):
        root = Path(paths[key]).resolve()
        if root.is_dir() and root not in roots:
            roots.append(root)
    return roots


def _unit_hash(text: str) -> float:
    """A stable hash of `text` mapped to [0, 1) (Python's hash() is salted per process)."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(package: str, heldout_fraction: float, seed: int, heldout_packages: Sequence[str] = ()) -> str:
    """The split a package belongs to: explicit list first, then a seeded hash of its name.

    Hashing the name (rather than drawing at random over a list of packages)
    keeps a package in the same split when other packages are installed or
    removed, so corpora built on different machines agree where they overlap.
    """
    if package in heldout_packages:
        return HELDOUT
    return HELDOUT if _unit_hash(f"split:{seed}:{package}") < heldout_fraction else TRAIN


def _is_test_path(parts: Sequence[str]) -> bool:
    """True for files inside a test folder, and for test_*.py / *_test.py / conftest.py / test.py."""
    *dirs, name = parts
    if any(d in _TEST_DIRS for d in dirs):
        return True
    return name.startswith("test_") or name.endswith("_test.py") or name in _TEST_FILES


def _is_under(path: Path, folders: Sequence[Path]) -> bool:
    resolved = path.resolve()
    return any(resolved.is_relative_to(folder) for folder in folders)


def discover_packages(roots: Sequence[Path], exclude_paths: Sequence[Path] = ()) -> dict[str, list[tuple[Path, Path]]]:
    """Map each top-level package name to its (root, entry) pairs.

    An entry is a package folder or a single-module file (`json/`, `six.py`);
    stdlib modules count as packages by their top-level name. A name found in
    several roots (a backport shadowing a stdlib module) is one package, so it
    cannot end up in both splits.
    """
    packages: dict[str, list[tuple[Path, Path]]] = defaultdict(list)
    for root in roots:
        for entry in sorted(os.scandir(root), key=lambda e: e.name):
            name = entry.name
            if entry.is_dir(follow_symlinks=False):
                if name in _SKIP_DIRS or name.endswith(_SKIP_DIR_SUFFIXES):
                    continue
                package = name
            elif entry.is_file() and name.endswith(".py"):
                package = name[: -len(".py")]
            else:
                continue
            # Non-identifiers are not importable (data folders, versioned dirs);
            # __editable__ finders are installer shims that point at source trees.
            if not package.isidentifier() or package.startswith("__editable__"):
                continue
            if _is_under(Path(entry.path), exclude_paths):
                continue
            packages[package].append((root, Path(entry.path)))
    return dict(packages)


def package_files(
    package: str, entries: Sequence[tuple[Path, Path]], include_tests: bool, exclude_paths: Sequence[Path] = ()
) -> Iterator[SourceFile]:
    """The .py files of one package, in a deterministic (sorted) order."""
    for root, entry in entries:
        if entry.is_file():
            candidates = [entry]
        else:
            candidates = []
            for folder, dirnames, filenames in os.walk(entry):
                dirnames[:] = sorted(
                    d
                    for d in dirnames
                    if d not in _SKIP_DIRS
                    and not d.endswith(_SKIP_DIR_SUFFIXES)
                    and (include_tests or d not in _TEST_DIRS)
                    and not _is_under(Path(folder, d), exclude_paths)
                )
                candidates.extend(Path(folder, f) for f in sorted(filenames) if f.endswith(".py"))
        for path in candidates:
            parts = path.relative_to(root).parts
            if not include_tests and _is_test_path(parts):
                continue
            yield SourceFile(package=package, path=path, relpath="/".join(parts))


class _ShardWriter:
    """Writes one split's records to size-capped JSONL shards `{split}-00000.jsonl`, ...

    Each shard is written under a temporary name and renamed into place only
    once it is complete, so a reader never sees a truncated shard.
    """

    def __init__(self, out_dir: Path, split: str, shard_bytes: int):
        self.out_dir, self.split, self.shard_bytes = out_dir, split, shard_bytes
        self.shards: list[str] = []
        self._file = None
        self._tmp: Path | None = None
        self._bytes = 0

    def write(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        size = len(line.encode("utf-8"))
        if self._file is None or self._bytes + size > self.shard_bytes:
            self.close()
            self.shards.append(f"{self.split}-{len(self.shards):05d}.jsonl")
            fd, tmp = tempfile.mkstemp(dir=self.out_dir, prefix=f".{self.shards[-1]}.", suffix=".tmp")
            self._file, self._tmp, self._bytes = os.fdopen(fd, "w", encoding="utf-8"), Path(tmp), 0
        self._file.write(line)
        self._bytes += size

    def close(self) -> None:
        """Finish the open shard: flush it and rename it into place."""
        if self._file is not None:
            self._file.close()
            os.replace(self._tmp, self.out_dir / self.shards[-1])
            self._file = self._tmp = None

    def abort(self) -> None:
        """Drop the open shard (its temporary file is removed)."""
        if self._file is not None:
            self._file.close()
            self._tmp.unlink(missing_ok=True)
            self._file = self._tmp = None


def build_corpus(
    out_dir: str | os.PathLike,
    *,
    heldout_fraction: float = 0.05,
    heldout_packages: Sequence[str] = (),
    seed: int = 0,
    max_bytes: int | None = None,
    min_file_bytes: int = 64,
    max_file_bytes: int = 512_000,
    include_tests: bool = False,
    roots: Sequence[str | os.PathLike] | None = None,
    exclude_paths: Sequence[str | os.PathLike] | None = None,
    shard_bytes: int = 64 * 2**20,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Build the corpus into `out_dir` and return its manifest.

    Args:
        out_dir: output folder (created if needed; old shards are replaced).
        heldout_fraction: expected fraction of packages sent to the held-out split.
        heldout_packages: packages that are always held out (e.g. ones used in evals).
        seed: salts the package split and the package visiting order.
        max_bytes: cap on the text bytes of *each* split (None: no cap). The cap
            is per split so that a small build still has a non-empty held-out
            set; packages are visited in seeded-hash order, so a capped corpus
            is a uniform sample of packages rather than the alphabetical head.
        min_file_bytes, max_file_bytes: files outside this size range are
            skipped (empty `__init__.py` files; generated tables).
        include_tests: keep test folders and test_*.py files.
        roots: folders to scan (default: stdlib and site-packages).
        exclude_paths: folders never read (default: this repository).
        shard_bytes: approximate size of each JSONL shard.
        progress: called with the byte size of every file added.
    """
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    if not 0 <= min_file_bytes <= max_file_bytes:
        raise ValueError(f"need 0 <= min_file_bytes <= max_file_bytes, got {min_file_bytes} and {max_file_bytes}")
    out_dir = Path(out_dir)
    root_paths = [Path(r).expanduser().resolve() for r in roots] if roots is not None else default_roots()
    for root in root_paths:
        if not root.is_dir():
            raise FileNotFoundError(f"corpus root {root} is not a folder; pass existing folders in `roots`")
    excluded = [Path(p).expanduser().resolve() for p in (exclude_paths if exclude_paths is not None else [REPO_ROOT])]
    heldout_packages = sorted(set(heldout_packages))

    packages = discover_packages(root_paths, excluded)
    order = sorted(packages, key=lambda name: (_unit_hash(f"order:{seed}:{name}"), name))

    stats = {split: {"files": 0, "bytes": 0, "packages": set()} for split in SPLITS}
    skipped: Counter[str] = Counter()
    seen: set[bytes] = set()

    def full(split: str) -> bool:
        return max_bytes is not None and stats[split]["bytes"] >= max_bytes

    out_dir.mkdir(parents=True, exist_ok=True)
    writers = {split: _ShardWriter(out_dir, split, shard_bytes) for split in SPLITS}
    try:
        for package in order:
            if all(full(s) for s in SPLITS):
                break
            split = split_of(package, heldout_fraction, seed, heldout_packages)
            if full(split):
                continue
            for source in package_files(package, packages[package], include_tests, excluded):
                if full(split):
                    break
                try:
                    size = source.path.stat().st_size
                    if size < min_file_bytes or size > max_file_bytes:
                        skipped["too_small" if size < min_file_bytes else "too_large"] += 1
                        continue
                    raw = source.path.read_bytes()
                except OSError:
                    skipped["unreadable"] += 1
                    continue
                digest = hashlib.sha256(raw).digest()
                if digest in seen:
                    skipped["duplicate"] += 1
                    continue
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    skipped["not_utf8"] += 1
                    continue
                seen.add(digest)
                writers[split].write({"text": text, "package": package, "path": source.relpath})
                stats[split]["files"] += 1
                stats[split]["bytes"] += len(raw)
                stats[split]["packages"].add(package)
                if progress is not None:
                    progress(len(raw))
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    for writer in writers.values():
        writer.close()

    manifest = {
        "format": FORMAT,
        "seed": seed,
        "params": {
            "heldout_fraction": heldout_fraction,
            "heldout_packages": heldout_packages,
            "seed": seed,
            "max_bytes": max_bytes,
            "min_file_bytes": min_file_bytes,
            "max_file_bytes": max_file_bytes,
            "include_tests": include_tests,
            "roots": [str(r) for r in root_paths],
            "exclude_paths": [str(p) for p in excluded],
            "shard_bytes": shard_bytes,
        },
        "python": sys.version,
        "splits": {
            split: {
                "files": stats[split]["files"],
                "bytes": stats[split]["bytes"],
                "packages": sorted(stats[split]["packages"]),
                "shards": writers[split].shards,
            }
            for split in SPLITS
        },
        "skipped": dict(sorted(skipped.items())),
    }
    atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    # Shards of an earlier, larger build would otherwise linger next to the new ones.
    for split in SPLITS:
        for stale in out_dir.glob(f"{split}-*.jsonl"):
            if stale.name not in writers[split].shards:
                stale.unlink()
    return manifest


def load_manifest(corpus_dir: str | os.PathLike) -> dict:
    """Read `corpus_dir/manifest.json`, with a clear error if the corpus was never built."""
    path = Path(corpus_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"no corpus manifest at {path}; build the corpus first: "
            f"python -m scripts.build_corpus --out-dir {corpus_dir}"
        )
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path} has format {manifest.get('format')!r}, expected {FORMAT!r}; rebuild the corpus")
    return manifest


def read_corpus(corpus_dir: str | os.PathLike, split: str = TRAIN) -> Iterator[dict]:
    """Yield the records ({"text", "package", "path"}) of one split, in build order."""
    if split not in SPLITS:
        raise ValueError(f"unknown corpus split {split!r}; expected one of {SPLITS}")
    manifest = load_manifest(corpus_dir)
    for shard in manifest["splits"][split]["shards"]:
        with open(Path(corpus_dir) / shard, encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)


def corpus_prompts(
    corpus_dir: str | os.PathLike,
    out_file: str | os.PathLike,
    count: int,
    *,
    num_lines: int,
    split: str = HELDOUT,
    anchor: str | None = None,
    max_chars: int | None = None,
    per_file: int = 1,
    seed: int = 0,
) -> int:
    """Write `count` prompts from one split of a corpus as JSONL ({"id", "package", "prompt"});
    return how many were written.

    A prompt is `num_lines` lines of a file, files drawn round-robin over packages (so one large
    package cannot fill the set), seeded. The window starts at the file's head, or with `anchor`
    at a random line starting with it (e.g. "def ", for HumanEval-like prompts; up to `per_file`
    distinct such windows per file, for a corpus of few files). Windows under
    200 characters, or over `max_chars` (minified or data files, whose one line can be thousands
    of tokens), are passed over. The corpus depends on the installed packages, so prompt files
    that a result depends on are shipped, not rebuilt (artifacts/orthrus-small/).
    """
    rng = random.Random(seed)
    by_package: dict[str, list[dict]] = {}
    for record in read_corpus(corpus_dir, split):
        lines = record["text"].splitlines(keepends=True)
        starts = [i for i, line in enumerate(lines) if anchor and line.lstrip().startswith(anchor)] or [0]
        for start in sorted(rng.sample(starts, min(per_file, len(starts)))) if anchor else [0]:
            head = "".join(lines[start : start + num_lines])
            if 200 <= len(head) <= (max_chars or len(head)):
                item = {"path": record["path"] + (f":{start + 1}" if per_file > 1 else ""), "prompt": head}
                by_package.setdefault(record["package"], []).append(item)
    if not by_package:
        raise ValueError(f"no usable files in split {split!r} of {corpus_dir}; rebuild the corpus with more data")
    for files in by_package.values():
        rng.shuffle(files)
    chosen, packages = [], sorted(by_package)
    while len(chosen) < count and any(by_package.values()):
        for package in packages:
            if by_package[package] and len(chosen) < count:
                item = by_package[package].pop()
                chosen.append({"id": f"{package}/{item['path']}", "package": package, "prompt": item["prompt"]})
    atomic_write_text(Path(out_file), "".join(json.dumps(c) + "\n" for c in chosen))
    return len(chosen)
