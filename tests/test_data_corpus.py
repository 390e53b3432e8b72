"""The Python-source corpus: package-level split, deduplication, filters, determinism."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from data.corpus import HELDOUT, REPO_ROOT, SPLITS, TRAIN, build_corpus, load_manifest, read_corpus, split_of


@pytest.fixture(scope="module")
def real_corpus(tmp_path_factory):
    """A tiny corpus from this interpreter's stdlib and site-packages."""
    out = tmp_path_factory.mktemp("corpus")
    manifest = build_corpus(out, heldout_fraction=0.2, max_bytes=300_000, shard_bytes=100_000)
    return out, manifest


def _write(path: Path, content: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)


def test_no_package_in_both_splits_and_no_duplicate_content(real_corpus):
    out, manifest = real_corpus
    records = {split: list(read_corpus(out, split)) for split in SPLITS}
    assert records[TRAIN] and records[HELDOUT], "a capped build should still fill both splits"
    packages = {split: {r["package"] for r in records[split]} for split in SPLITS}
    assert not packages[TRAIN] & packages[HELDOUT]
    digests = [hashlib.sha256(r["text"].encode()).hexdigest() for split in SPLITS for r in records[split]]
    assert len(digests) == len(set(digests))
    for split in SPLITS:
        info = manifest["splits"][split]
        assert info["files"] == len(records[split])
        assert info["bytes"] == sum(len(r["text"].encode()) for r in records[split])
        assert info["packages"] == sorted(packages[split])
        assert info["bytes"] >= 300_000  # the cap is per split and was reached
        assert len(info["shards"]) > 1  # shard_bytes rotated the shards
    assert set(records[TRAIN][0]) == {"text", "package", "path"}
    assert manifest["seed"] == 0 and manifest["params"]["max_bytes"] == 300_000
    assert str(REPO_ROOT) in manifest["params"]["exclude_paths"]


def test_filters_dedup_tests_and_excluded_paths(tmp_path):
    root = tmp_path / "root"
    body = "def f():\n    return 'same content in two packages'\n"
    _write(root / "alpha" / "__init__.py", "")  # too small
    _write(root / "alpha" / "core.py", body)
    _write(root / "beta" / "copy.py", body)  # exact duplicate of alpha/core.py
    _write(root / "gamma" / "latin.py", "# caf\xe9\n".encode("latin-1") * 20)  # not UTF-8
    _write(root / "gamma" / "big.py", "x = 1\n" * 1000)  # too large
    _write(root / "gamma" / "ok.py", "y = 2\n" * 20)
    _write(root / "delta" / "tests" / "helpers.py", "z = 3\n" * 20)
    _write(root / "delta" / "test_delta.py", "w = 4\n" * 20)
    _write(root / "delta" / "api.py", "v = 5\n" * 20)
    _write(root / "single.py", "import os\n" * 20)
    _write(root / "site-packages" / "nested" / "mod.py", "u = 6\n" * 20)  # another root, skipped
    _write(root / "secret" / "mod.py", "t = 7\n" * 20)  # excluded
    _write(root / "not-a-package" / "mod.py", "s = 8\n" * 20)  # not importable

    kwargs = dict(roots=[root], exclude_paths=[root / "secret"], min_file_bytes=10, max_file_bytes=2000)
    manifest = build_corpus(tmp_path / "out", heldout_fraction=0.0, heldout_packages=["gamma"], **kwargs)
    paths = {r["path"]: r["package"] for split in SPLITS for r in read_corpus(tmp_path / "out", split)}
    copies = {"alpha/core.py", "beta/copy.py"} & set(paths)
    assert len(copies) == 1  # which copy is kept depends on the (seeded) package order
    kept = copies | {"gamma/ok.py", "delta/api.py", "single.py"}
    assert set(paths) == kept, paths
    assert paths["single.py"] == "single"
    assert manifest["splits"][HELDOUT]["packages"] == ["gamma"]
    assert manifest["skipped"] == {"duplicate": 1, "not_utf8": 1, "too_large": 1, "too_small": 1}

    with_tests = build_corpus(tmp_path / "out_tests", heldout_fraction=0.0, include_tests=True, **kwargs)
    paths = {r["path"] for r in read_corpus(tmp_path / "out_tests", TRAIN)}
    assert {"delta/tests/helpers.py", "delta/test_delta.py"} <= paths
    assert with_tests["splits"][TRAIN]["files"] == len(kept) + 2


def test_split_is_deterministic_and_respects_fraction():
    names = [f"package_{i}" for i in range(2000)]
    splits = [split_of(n, 0.2, seed=0) for n in names]
    assert splits == [split_of(n, 0.2, seed=0) for n in names]
    assert 0.15 < splits.count(HELDOUT) / len(names) < 0.25
    assert splits != [split_of(n, 0.2, seed=1) for n in names]
    assert split_of("json", 0.0, seed=0) == TRAIN
    assert split_of("json", 0.0, seed=0, heldout_packages=["json"]) == HELDOUT


def test_rebuild_is_identical_and_drops_stale_shards(tmp_path, real_corpus):
    first, _ = real_corpus
    manifest = build_corpus(tmp_path, heldout_fraction=0.2, max_bytes=300_000, shard_bytes=100_000)
    for split in SPLITS:
        assert list(read_corpus(tmp_path, split)) == list(read_corpus(first, split))
    small = build_corpus(tmp_path, heldout_fraction=0.2, max_bytes=50_000, shard_bytes=100_000)
    assert len(small["splits"][TRAIN]["shards"]) < len(manifest["splits"][TRAIN]["shards"])
    on_disk = sorted(p.name for p in tmp_path.glob("*.jsonl"))
    assert on_disk == sorted(small["splits"][TRAIN]["shards"] + small["splits"][HELDOUT]["shards"])
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_bad_arguments_and_missing_corpus(tmp_path):
    with pytest.raises(ValueError, match="heldout_fraction"):
        build_corpus(tmp_path, heldout_fraction=1.0)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_corpus(tmp_path, roots=[tmp_path / "nowhere"])
    with pytest.raises(FileNotFoundError, match="python -m scripts.build_corpus"):
        load_manifest(tmp_path / "missing")


def test_cli(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "scripts.build_corpus",
        "--out-dir",
        str(tmp_path),
        "--max-bytes",
        "20000",
        "--seed",
        "3",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["seed"] == 3 and manifest["splits"][TRAIN]["files"] > 0
