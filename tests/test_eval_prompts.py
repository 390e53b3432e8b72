"""Prompt loading (HumanEval offline, hub field mapping, local files) and eval config shape."""

import dataclasses
import inspect
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import eval.prompts as prompts_module
from eval.prompts import PromptSpec, load_prompts
from models.checkpoint import load_orthrus

CONF = Path(__file__).resolve().parent.parent / "conf"


def test_humaneval_from_the_package():
    prompts = load_prompts(PromptSpec("humaneval", field="prompt", id_field="task_id"))
    assert len(prompts) == 164
    assert prompts[0].id == "HumanEval/0" and prompts[0].text.startswith("from typing import List")
    assert len(load_prompts(PromptSpec("humaneval", id_field="task_id"), limit=5)) == 5


def test_jsonl(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a", "id": 7}\n\n{"prompt": "b", "id": 8}\n{"prompt": "c", "id": 9}\n')
    prompts = load_prompts(PromptSpec("jsonl", str(path), id_field="id"), limit=2)
    assert [(p.id, p.text) for p in prompts] == [("7", "a"), ("8", "b")]


def test_py_folder_first_lines(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "b.py").write_text("import os\n\ndef f():\n    return 1\n")
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "notes.txt").write_text("not code")
    prompts = load_prompts(PromptSpec("py_folder", str(tmp_path), num_lines=2))
    assert [(p.id, p.text) for p in prompts] == [("a.py", "x = 1\n"), ("pkg/b.py", "import os\n\n")]


def test_missing_files_error_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="prompt file .* does not exist"):
        load_prompts(PromptSpec("jsonl", str(tmp_path / "nope.jsonl")))
    with pytest.raises(FileNotFoundError, match="prompt folder"):
        load_prompts(PromptSpec("py_folder", str(tmp_path / "nope"), num_lines=3))
    with pytest.raises(FileNotFoundError, match="no .py files"):
        load_prompts(PromptSpec("py_folder", str(tmp_path), num_lines=3))


def test_bad_specs_and_records(tmp_path):
    with pytest.raises(ValueError, match="unknown prompt source"):
        PromptSpec("csv", "x")
    with pytest.raises(ValueError, match="needs `path`"):
        PromptSpec("jsonl")
    with pytest.raises(ValueError, match="num_lines"):
        PromptSpec("py_folder", str(tmp_path))
    path = tmp_path / "p.jsonl"
    path.write_text('{"question": "a"}\n')
    with pytest.raises(KeyError, match="'prompt' not found in a record with fields \\['question'\\]"):
        load_prompts(PromptSpec("jsonl", str(path)))
    path.write_text('{"prompt": "a"}\nnot json\n')
    with pytest.raises(ValueError, match="p.jsonl:2 is not valid JSON"):
        load_prompts(PromptSpec("jsonl", str(path)))


def test_hub_sets_use_their_field_names(monkeypatch):
    """The configured hub sets read the right fields (the hub itself is faked: no network)."""
    records = {
        "HuggingFaceH4/MATH-500": [{"problem": "1+1?", "unique_id": "test/a.json", "answer": "2"}],
        "openai/gsm8k": [{"question": "How many?", "answer": "#### 3"}],
        "google-research-datasets/mbpp": [
            {"task_id": 11, "text": "Sum a list.", "test_list": ["assert f([1]) == 1", "assert f([]) == 0"]}
        ],
        "HuggingFaceH4/mt_bench_prompts": [{"prompt": ["Turn one?", "Turn two?"], "prompt_id": 81}],
    }
    calls = []

    def fake_load_dataset(path, subset, split):
        calls.append((path, subset, split))
        return records[path]

    monkeypatch.setattr("datasets.load_dataset", fake_load_dataset)
    sets = OmegaConf.to_container(OmegaConf.load(CONF / "eval" / "prompt_sets.yaml"))
    got = {
        name: load_prompts(PromptSpec(**sets[name]), limit=3)[0] for name in ("math500", "gsm8k", "mbpp", "mt_bench")
    }
    boxed = "\nPlease reason step by step, and put your final answer within \\boxed{}."
    assert got["math500"] == prompts_module.Prompt("test/a.json", "1+1?" + boxed, records["HuggingFaceH4/MATH-500"][0])
    assert got["gsm8k"].text == "How many?" + boxed
    assert (
        got["mbpp"].id == "11"
        and "Sum a list. Your code should pass these tests:\n\nassert f([1]) == 1\nassert f([]) == 0"
        in got["mbpp"].text
    )
    assert got["mt_bench"] == prompts_module.Prompt("81", "Turn one?", records["HuggingFaceH4/mt_bench_prompts"][0])
    assert ("openai/gsm8k", "main", "test[:3]") in calls


def test_hub_failure_says_what_to_do(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr("datasets.load_dataset", offline)
    with pytest.raises(RuntimeError, match="source=jsonl"):
        load_prompts(PromptSpec("hub", "openai/gsm8k", "main", "test", field="question"))


def test_prompt_sets_mirror_prompt_spec():
    fields = {f.name for f in dataclasses.fields(PromptSpec)}
    sets = OmegaConf.load(CONF / "eval" / "prompt_sets.yaml")
    for name, entry in sets.items():
        assert set(entry) == fields, f"prompt_sets.{name}: keys differ from PromptSpec"


def test_model_section_mirrors_load_orthrus():
    config = OmegaConf.load(CONF / "eval.yaml")
    assert set(config.model) == set(inspect.signature(load_orthrus).parameters)


def test_jsonl_unicode_round_trip(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "héllo 世界"}) + "\n", encoding="utf-8")
    assert load_prompts(PromptSpec("jsonl", str(path)))[0].text == "héllo 世界"
