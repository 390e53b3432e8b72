"""eval/paper_numbers.json is complete, every entry has a unit and a public source, and the
ambiguous items say so."""

import re

import pytest

from eval.paper_tables import PaperNumbers

BENCHMARKS = ["gsm8k", "math500", "aime24", "aime25", "humaneval", "mbpp", "pseudo2code", "livecodebench_v5"]
FIELDS = {"metric", "method", "model", "benchmark", "temperature", "value", "qualifier", "unit", "sources", "where"}


@pytest.fixture(scope="module")
def paper():
    return PaperNumbers.load()


def test_every_entry_has_unit_and_public_source(paper):
    assert all(re.match(r"https://", s["url"]) for s in paper.sources.values())
    for n in paper.numbers:
        assert FIELDS <= set(n), n
        assert n["unit"] and n["sources"] and set(n["sources"]) <= set(paper.sources), n
        assert n["qualifier"] in ("=", "up to", "about", "derived")
    assert not any("paper-facts" in str(v) for v in paper.sources.values()), "cite the public source, not notes"


def test_table1_for_1_7b_is_complete(paper):
    for T in (0, 1):
        for metric in ("tpf", "speedup"):
            for b in BENCHMARKS + ["average"]:
                n = paper.lookup(metric, "qwen3_1.7b", b, temperature=T)
                assert n is not None and n["temperature"] == T, (metric, b, T)
    assert paper.lookup("tpf", "qwen3_1.7b", "humaneval", temperature=0)["value"] == 2.75
    assert paper.lookup("speedup", "qwen3_1.7b", "livecodebench_v5", temperature=1)["value"] == 5.44
    # The printed T=0 average speedup (4.25) is not the mean of its cells (4.56): both are there.
    cells = [paper.lookup("speedup", "qwen3_1.7b", b, temperature=0)["value"] for b in BENCHMARKS]
    assert paper.lookup("speedup", "qwen3_1.7b", "average", temperature=0)["value"] == 4.25
    derived = paper.lookup("speedup", "qwen3_1.7b", "average_of_cells", temperature=0)
    assert derived["value"] == pytest.approx(sum(cells) / 8, abs=0.005) == 4.56 and derived["qualifier"] == "derived"


def test_figures_peers_and_studies(paper):
    for b, values in {
        "gsm8k": (9.6, 6.5, 3.7),
        "math500": (11.7, 7.9, 3.5),
        "aime25": (9.5, 7.1, 3.4),
        "mbpp": (6.9, 5.9, 3.2),
    }.items():
        got = [paper.lookup("acceptance_length", None, b, method=m)["value"] for m in ("orthrus", "dflash", "eagle3")]
        assert got == list(values)
    long_ctx = [n for n in paper.numbers if n["benchmark"] == "long_context"]
    assert len(long_ctx) == 12 and {n["context_len"] for n in long_ctx} == {16384, 20480, 24576, 28672, 32768, 40960}
    assert paper.lookup("acceptance_length", "qwen3_8b", "average", method="dflash", temperature=0)["value"] == 6.49
    assert paper.lookup("speedup", "qwen3_8b", "mt_bench", method="eagle3", temperature=0)["value"] == 1.63
    study = [n for n in paper.numbers if n["metric"] == "exact_greedy_trajectory_fraction"]
    assert {(n["dtype"], n["value"]) for n in study} == {("bfloat16", 0.45), ("float32", 1.0)}
    for m, v in (("qwen3_1.7b", 4.25), ("qwen3_4b", 5.20), ("qwen3_8b", 5.36)):
        assert paper.lookup("speedup", m, "average")["value"] == v


def test_ambiguous_headline_carries_its_ambiguity(paper):
    (n,) = [n for n in paper.numbers if n["value"] == 7.8]
    assert n["ambiguous"] and "speedup" in n["note"] and "TPF" in n["note"] and n["metric"] not in ("tpf", "speedup")


def test_recipe(paper):
    r = paper.recipe
    assert r["data"] == "nvidia/Nemotron-Post-Training-Dataset-v2" and r["mix"] == {"chat": 1, "math": 1, "code": 1}
    assert (
        r["seq_len"],
        r["anchors_per_row"],
        r["block_size"],
        r["lr"],
        r["warmup_fraction"],
        r["grad_clip"],
        r["global_batch_rows"],
        r["epochs"],
        r["loss"],
    ) == (2048, 256, 32, 2e-4, 0.05, 1.0, 128, 2, "kl")
    assert set(r["sources"]) <= set(paper.sources)
