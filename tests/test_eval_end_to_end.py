"""End to end, offline: the lm-eval adapter on a local task, the evaluation (eval/evaluate.py and its
entry point `python -m scripts.evaluate`) on a tiny checkpoint saved to disk, and the tables from metrics files."""

import json
import re
import shlex
from collections import Counter
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from transformers import AutoTokenizer, GenerationConfig, Qwen3Config, Qwen3ForCausalLM

from data.corpus import build_corpus
from data.tokenizer import train_tokenizer
from eval.evaluate import evaluate_checkpoints, run, write_tables
from eval.fidelity import base_generate
from eval.lm_eval_adapter import OrthrusLM, compare, sampling_params
from eval.prompts import encode_prompt
from eval.provenance import training_overrides
from eval.report import run_markdown
from models.checkpoint import save_merged
from models.orthrus import is_diffusion_param
from models.sampling import SamplingParams
from tests.tiny import REPO, run_python

PROMPTS = ["def add(a, b):", "class Point:", "    return a", "x = 1", "import os", "self.y = y"]
MAX_GEN = 12


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """The project's byte-level BPE (data/tokenizer.py), trained on a few lines of Python."""
    root = tmp_path_factory.mktemp("tok")
    (root / "src" / "pkg").mkdir(parents=True)
    for i in range(3):
        (root / "src" / "pkg" / f"m{i}.py").write_text(
            f"def add(a, b):\n    return a + b\n\n\nclass Point:\n    def __init__(self, x, y):\n"
            f"        self.x = x\n        self.y = y\n# {i}\n"
        )
    build_corpus(root / "corpus", roots=[root / "src"], heldout_fraction=0.0, min_file_bytes=1)
    train_tokenizer(root / "corpus", root / "tokenizer", vocab_size=300, min_frequency=1)
    return root / "tokenizer"


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture
def tiny(make_model, tokenizer):
    """A tiny Orthrus whose vocabulary is the tokenizer's, EOS and mask included."""
    return make_model(
        seed=0, vocab_size=len(tokenizer), mask_token_id=tokenizer.mask_token_id, eos_token_id=tokenizer.eos_token_id
    )


@pytest.fixture
def checkpoint(tiny, tokenizer, tmp_path):
    return save_merged(tiny, tmp_path / "ckpt", tokenizer=tokenizer)


def plain_qwen3(orthrus) -> Qwen3ForCausalLM:
    """The frozen base as a stock transformers Qwen3 (diffusion view dropped)."""
    fields = {
        k: v
        for k, v in orthrus.config.to_dict().items()
        if k in Qwen3Config().to_dict() and k not in ("model_type", "transformers_version", "architectures")
    }
    qwen = Qwen3ForCausalLM(Qwen3Config(**fields)).eval()
    qwen.load_state_dict({k: v for k, v in orthrus.state_dict().items() if not is_diffusion_param(k)})
    return qwen


# --- lm-eval ---------------------------------------------------------------------------------


def write_task(folder: Path, tokenizer, base) -> str:
    """A generate_until task with exact match: half the targets are the base model's own greedy
    answers (cut at the stop string, as lm-eval cuts them), half are wrong, so a faithful model
    scores exactly 0.5. The stop string is a character the base model actually produces."""
    answers = [
        tokenizer.decode(
            base_generate(base, tokenizer(p, return_tensors="pt").input_ids, MAX_GEN), skip_special_tokens=True
        )
        for p in PROMPTS
    ]
    counts = Counter(c for a in answers for c in a if c.isascii() and c.isalnum())
    stop = counts.most_common(1)[0][0]
    assert any(stop in a[1:] for a in answers), "the stop string must cut some answer short"
    rows = [
        {"prompt": p, "target": a.split(stop)[0] if i % 2 == 0 else "no"}
        for i, (p, a) in enumerate(zip(PROMPTS, answers))
    ]
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "tiny_exact.yaml").write_text(
        f"task: tiny_exact\ndataset_path: json\ndataset_kwargs:\n"
        f"  data_files:\n    test: {json.dumps(str(folder / 'data.jsonl'))}\n"
        "test_split: test\noutput_type: generate_until\ndoc_to_text: '{{prompt}}'\ndoc_to_target: '{{target}}'\n"
        f"generation_kwargs:\n  until: [{json.dumps(stop)}]\n  max_gen_toks: {MAX_GEN}\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
    )
    return stop


def test_lm_eval_base_and_orthrus_agree(tiny, tokenizer, tmp_path):
    base = plain_qwen3(tiny)
    write_task(tmp_path, tokenizer, base)
    base_lm = HFLM(pretrained=base, tokenizer=tokenizer, batch_size=1)
    orthrus_lm = OrthrusLM(pretrained=tiny, tokenizer=tokenizer, batch_size=1, block_size=4)
    report = compare(
        base_lm, orthrus_lm, ["tiny_exact"], TaskManager(include_path=str(tmp_path), include_defaults=False)
    )
    task = report["tasks"]["tiny_exact"]
    assert task["hf"] == task["orthrus"] == {"exact_match,none": 0.5}
    assert task["num_samples"] == len(PROMPTS) and task["differing_doc_ids"] == [] and report["identical"]
    assert report["orthrus_tokens_per_iteration"] >= 1


def test_adapter_stops_at_stop_strings(tiny, tokenizer):
    ids = tokenizer("def add(a, b):", return_tensors="pt").input_ids
    full = base_generate(tiny, ids, MAX_GEN)
    text, head = tokenizer.decode(full), len(tokenizer.decode(full[:3]))
    stop = next(c for c in text[head:] if c.isascii() and c.isalnum())  # a character produced after token 3
    lm = OrthrusLM(pretrained=tiny, tokenizer=tokenizer, batch_size=1, block_size=4)
    padded = torch.cat([torch.zeros(1, 2, dtype=torch.long), ids], 1)  # lm-eval left-pads batches
    mask = torch.cat([torch.zeros(1, 2, dtype=torch.long), torch.ones_like(ids)], 1)
    out = lm._model_generate(padded, padded.shape[1] + MAX_GEN, [stop], attention_mask=mask, do_sample=False)
    new = out[0, padded.shape[1] :].tolist()
    n = 1 + sum(lm.iteration_tokens)  # tokens decoded: the prefill's plus every iteration's
    assert n < MAX_GEN, "decoding stopped early"
    assert new[:n] == full[:n] and stop in tokenizer.decode(new[:n])
    assert new[n:] == [tokenizer.pad_token_id] * (MAX_GEN - n)


def test_sampling_params_follow_hf_rules():
    plain, qwen_like = GenerationConfig(), GenerationConfig(do_sample=True, temperature=0.6, top_k=20, top_p=0.95)
    assert sampling_params(plain, {}) == SamplingParams()
    assert sampling_params(plain, {"temperature": 0.7}) == SamplingParams()  # HF: do_sample defaults to False
    assert sampling_params(qwen_like, {"temperature": 0.7}) == SamplingParams(0.7, 20, 0.95)
    assert sampling_params(plain, {"do_sample": True, "temperature": 0.5}) == SamplingParams(
        0.5, 50, 1.0
    )  # HF's top_k=50
    assert sampling_params(qwen_like, {"do_sample": False}) == SamplingParams()
    with pytest.raises(ValueError, match="repetition_penalty"):
        sampling_params(plain, {"repetition_penalty": 1.2})
    with pytest.raises(ValueError, match="repetition_penalty"):
        sampling_params(GenerationConfig(repetition_penalty=1.3), {})
    with pytest.raises(ValueError, match="temperature > 0"):
        sampling_params(plain, {"do_sample": True})


def test_chat_template_encoding(tokenizer):
    ids = encode_prompt(tokenizer, "hi", chat_template=True, enable_thinking=False)
    assert tokenizer.decode(ids) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert encode_prompt(tokenizer, "hi", chat_template=False) == tokenizer.encode("hi")
    with pytest.raises(ValueError, match="zero tokens"):
        encode_prompt(tokenizer, "", chat_template=False)


# --- eval/evaluate.py and its entry points --------------------------------------------------


def eval_config(overrides: list[str]):
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        return compose("eval", overrides=overrides)


def tiny_run_overrides(checkpoint: Path, tmp_path: Path, name: str) -> list[str]:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return [
        f"name={name}",
        f"out_dir={tmp_path / 'results'}",
        f"model.base={checkpoint}",
        "model.device=cpu",
        "model.dtype=float32",
        "benchmarks=[local_jsonl]",
        f"prompt_sets.local_jsonl.path={prompts}",
        "limit=3",
        "decode.max_new_tokens=12",
        "fidelity.num_prompts=2",
        "progress=false",
    ]


def test_evaluate_cli_end_to_end(checkpoint, tmp_path):
    overrides = tiny_run_overrides(checkpoint, tmp_path, "tiny") + [
        "context_sweep.lengths=[8,24]",
        "context_sweep.max_new_tokens=6",
        f"hydra.run.dir={tmp_path / 'hydra'}",
    ]
    proc = run_python("-m", "scripts.evaluate", *overrides, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "results" / "tiny"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["provenance"]["command"].endswith(shlex.join(["-m", "scripts.evaluate", *overrides]))
    assert re.fullmatch(r"[0-9a-f]{40}", metrics["provenance"]["git"]["commit"])
    assert re.fullmatch(r"[0-9a-f]{64}", metrics["provenance"]["source_hash"]["sha256"])
    assert metrics["decode"]["decode_fn"] == "OrthrusEngine.generate" and "warm-up" in metrics["timing_protocol"]
    assert metrics["provenance"]["device"].startswith("cpu") and metrics["provenance"]["torch"] == torch.__version__
    assert [(r["benchmark"], r["block_size"]) for r in metrics["runs"]] == [("local_jsonl", 1), ("local_jsonl", 4)]
    assert metrics["runs"][0]["speedup"] == 1.0 and metrics["runs"][1]["num_prompts"] == 3
    assert metrics["fidelity"][0]["exact_match"]["token_rate"] == 1.0
    assert [(r["context_len"], r["block_size"]) for r in metrics["context_sweep"]] == [(8, 1), (8, 4), (24, 1), (24, 4)]
    md = (out / "metrics.md").read_text()
    assert (
        "| benchmark | K | prompts | TPF | TPF pooled |" in md
        and "all forward passes" in md
        and "## Fidelity" in md
        and "## Throughput vs context length" in md
    )
    assert not list(out.glob(".*")), "no temporary files left behind"
    # the tables script reads what evaluate writes
    written = write_tables([out / "metrics.json"], REPO / "eval" / "paper_numbers.json", tmp_path / "tables")
    assert (tmp_path / "tables" / "throughput_vs_context.png") in written


def test_evaluate_sampling_fidelity(checkpoint, tmp_path):
    cfg = eval_config(
        tiny_run_overrides(checkpoint, tmp_path, "tiny_sampled")
        + [
            "decode.temperature=0.8",
            "decode.top_k=20",
            "decode.block_sizes=[null]",
            "fidelity.two_sample_samples=10",
            "fidelity.two_sample_tokens=3",
            "decode.max_new_tokens=40",
            "decode.engine=reference",
            "limit=6",
        ]
    )
    metrics = json.loads(run(cfg).read_text())
    f = metrics["fidelity"][0]
    assert metrics["decode"]["decode_fn"] == "generate"
    assert f["dtype"] == "float32" and f["exact_match"]["sequence_rate"] == 1.0
    s = f["sampling"]  # every sampled token of the run, tested against the base sampler
    assert s["passed"] and s["num_tokens"] >= 5 * s["bins"] and s["zero_probability_tokens"] == 0
    assert s["alpha"] == 1e-3 and s["false_alarm_rate_simulated"] < 3e-3
    assert len(f["two_sample"]["pvalues"]) == 3
    assert metrics["runs"][0]["speedup"] is None  # no K=1 run to compare against


def fake_report(name: str, label: str, tpf: dict[str, float], context_sweep: bool) -> dict:
    """A metrics.json as eval.evaluate.run writes it, with made-up numbers."""
    runs = []
    for bench, t in tpf.items():
        for K, tps, speedup in ((1, 30.0, 1.0), (32, 30.0 * t * 0.8, t * 0.8)):
            runs.append(
                {
                    "benchmark": bench,
                    "block_size": K,
                    "num_prompts": 10,
                    "tpf": t if K > 1 else 1.0,
                    "tpf_token_weighted": t if K > 1 else 1.0,
                    "acceptance_length": 2 * t if K > 1 else 1.0,
                    "tokens_per_iteration": 2 * t if K > 1 else 1.0,
                    "acceptance_histogram": [5, 3, 2] + [1] * 29 if K > 1 else [100],
                    "per_position_acceptance": [],
                    "tokens_per_second": tps,
                    "speedup": speedup,
                    "mean_ttft_seconds": 0.05,
                    "peak_memory_bytes": 2**30,
                    "peak_memory_kind": "cuda_max_memory_allocated",
                }
            )
    sweep = (
        [
            {
                "context_len": n,
                "block_size": K,
                "tpf": 2.5,
                "tokens_per_second": 100.0 / K**0.1 - n / 1e4,
                "speedup": None,
            }
            for n in (1024, 8192)
            for K in (1, 32)
        ]
        if context_sweep
        else []
    )
    return {
        "name": name,
        "label": label,
        "config": {"decode": {"temperature": 0.0}},
        "provenance": {
            "command": "python -m scripts.evaluate",
            "git": {"commit": "0" * 40, "dirty": False},
            "device": "NVIDIA H100",
            "torch": "x",
            "transformers": "y",
            "timestamp": "t",
        },
        "model": {
            "base": name,
            "dtype": "bfloat16",
            "block_size": 32,
            "kv_overhead": {"persistent_bytes": 0, "diffusion_block_bytes": 4.5 * 2**20, "kv_bytes_per_token": 147456},
        },
        "runs": runs,
        "fidelity": [
            {
                "benchmark": b,
                "dtype": "bfloat16",
                "block_size": 32,
                "exact_match": {"token_rate": 1.0, "sequence_rate": 1.0},
                "sampling": None,
                "two_sample": None,
            }
            for b in tpf
        ],
        "context_sweep": sweep,
    }


def test_a_view_trained_by_train_py_reports_the_overrides_it_ran_with(tmp_path, monkeypatch):
    """An arm of a sweep (<run>/diffusion_view beside <run>/.hydra/overrides.yaml) is named in its
    metrics.md by its train.py overrides; a view from elsewhere has none to report, a hub name included when
    the working directory is a run folder (org/name would otherwise lead to ./.hydra)."""
    run = tmp_path / "ablate_speed" / "arm_1"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- speed=fast\n- +exp=[ablate_speed,small]\n")
    (run / "diffusion_view").mkdir()
    (run / "diffusion_view" / "diffusion_view.safetensors").write_bytes(b"")
    (run / "checkpoints" / "step_2" / "diffusion_view").mkdir(parents=True)
    arm = ["speed=fast", "+exp=[ablate_speed,small]"]
    assert training_overrides(str(run / "diffusion_view")) == arm
    assert training_overrides(str(run / "diffusion_view" / "diffusion_view.safetensors")) == arm
    monkeypatch.chdir(run)
    for elsewhere in (None, "chiennv/Orthrus-Qwen3-8B", str(run / "checkpoints" / "step_2" / "diffusion_view")):
        assert training_overrides(elsewhere) is None

    report = fake_report("eval", None, {}, False) | {
        "decode": {"max_new_tokens": 8, "sampling": "greedy", "decode_fn": "OrthrusEngine.generate"},
        "timing_protocol": "none",
        "fidelity": [],
    }
    assert "trained by train.py" not in run_markdown(report)
    report["model"] |= {"diffusion": str(run / "diffusion_view"), "trained_with": arm}
    assert (
        f"- diffusion view {run / 'diffusion_view'}: trained by train.py with `speed=fast +exp=[ablate_speed,small]`"
        in (run_markdown(report))
    )


def test_reproduce_tables_from_two_metrics_files(tmp_path):
    paths = []
    for name, label, tpf, sweep in (
        ("o8", "qwen3_8b", {"math500": 5.0, "gsm8k": 4.5}, True),
        ("o1.7", "qwen3_1.7b", {"math500": 4.0, "gsm8k": 3.5}, False),
    ):
        path = tmp_path / name / "metrics.json"
        path.parent.mkdir()
        path.write_text(json.dumps(fake_report(name, label, tpf, sweep)))
        paths.append(path)
    cfg = eval_config(["reproduce.run=[]", f"reproduce.metrics=[{paths[0]},{paths[1]}]", f"out_dir={tmp_path}"])
    assert evaluate_checkpoints(cfg) == []
    out = Path(cfg.reproduce.out_dir)
    written = write_tables([Path(p) for p in cfg.reproduce.metrics], REPO / cfg.reproduce.paper_numbers, out)
    names = {p.name for p in written}
    assert names == {
        "tables.md",
        "table1.csv",
        "speed.csv",
        "fidelity.csv",
        "memory.csv",
        "paper_sources.csv",
        "tpf_by_benchmark.png",
        "acceptance_histograms.png",
        "throughput_vs_context.png",
    }
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "tables.md").read_text()
    assert re.search(r"\| qwen3_8b \| average \|.*\| 5\.36 \[\d+\] \|", md), (
        "the 8B average row carries the paper's 5.36x"
    )
    # Like with like: our TPF (tokens / all passes) beside the paper's Table 1 TPF at the same temperature.
    assert re.search(r"\| qwen3_1\.7b \| math500 \| 0\.00 \| 4\.00 \| 4\.71 \[\d+\] \|", md)
    assert re.search(r"\| qwen3_1\.7b \| average of the paper's cells \|.*Σ4\.56", md)
    assert "7.8" not in md, "the ambiguous headline is never put beside a measured number"
    assert "github.com/chiennv2000/orthrus" in md and "all forward passes" in md
    speed = (out / "speed.csv").read_text().splitlines()
    assert (
        speed[0].startswith("model,benchmark,T,K,TPF,paper TPF") and len(speed) == 1 + 2 * 3
    )  # 2 benchmarks + average, 2 models
    sources = (out / "paper_sources.csv").read_text()
    assert "paper-facts" not in sources and "4.5" in sources


def test_reproduce_skips_checkpoints_already_evaluated(tmp_path):
    done = tmp_path / "results" / "orthrus_qwen3_8b" / "metrics.json"
    done.parent.mkdir(parents=True)
    done.write_text("{}")
    cfg = eval_config([f"out_dir={tmp_path / 'results'}", "reproduce.run=[orthrus_qwen3_8b]"])
    assert evaluate_checkpoints(cfg) == [done]  # the released model is not downloaded: its result exists
    with pytest.raises(KeyError, match="not in reproduce.checkpoints"):
        evaluate_checkpoints(eval_config(["reproduce.run=[nope]"]))


def test_reproduce_times_one_request_at_a_time(tmp_path, monkeypatch):
    """Table 1's speedups are per request: every checkpoint of reproduce runs at decode.batch_size =
    reproduce.batch_size (1), whatever the evaluation default."""
    import eval.evaluate

    seen = []
    monkeypatch.setattr(eval.evaluate, "evaluate_suite", lambda c: seen.append(c.decode.batch_size) or tmp_path)
    cfg = eval_config([f"out_dir={tmp_path}", "reproduce.run=[orthrus_qwen3_8b]", "decode.batch_size=16"])
    evaluate_checkpoints(cfg)
    assert seen == [1]


def test_reproduce_runs_each_benchmark_at_its_suite_length(checkpoint, tmp_path):
    """reproduce.suite_lengths: one evaluate call per benchmark at its conf/eval/suite.yaml max_new_tokens,
    merged into one metrics.json whose suite benchmarks carry accuracy for the base (K=1) and Orthrus."""
    from eval.evaluate import evaluate_suite

    gsm8k = REPO / "tests" / "fixtures" / "eval" / "gsm8k.jsonl"
    cfg = eval_config(
        tiny_run_overrides(checkpoint, tmp_path, "suite")
        + [
            "benchmarks=[local_jsonl,gsm8k]",
            "prompt_sets.gsm8k.source=jsonl",
            f"prompt_sets.gsm8k.path={gsm8k}",
            "suite.gsm8k.max_new_tokens=6",
            "decode.warmup=none",
        ]
    )
    metrics = json.loads(evaluate_suite(cfg).read_text())
    assert metrics["name"] == "suite" and metrics["max_new_tokens_by_benchmark"] == {"local_jsonl": 12, "gsm8k": 6}
    assert [(r["benchmark"], r["block_size"]) for r in metrics["runs"]] == [
        ("local_jsonl", 1),
        ("local_jsonl", 4),
        ("gsm8k", 1),
        ("gsm8k", 4),
    ]
    base, orthrus = (r["accuracy"] for r in metrics["runs"] if r["benchmark"] == "gsm8k")
    assert base == orthrus and base["metric"] == "accuracy" and base["n"] == 2
    assert (tmp_path / "results" / "suite" / "gsm8k" / "metrics.json").is_file()
