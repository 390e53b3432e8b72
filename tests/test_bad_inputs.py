"""Each bad input a new user can give fails at once with an error that names it and the fix
(decode requests themselves: tests/test_stopping.py)."""

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import train.config  # noqa: F401  (registers data=synthetic)
from models.checkpoint import load_orthrus, save_diffusion_view
from tests.tiny import TINY_RUN
from train.config import typed_section
from train.loop import Trainer
from train.optim import OptimConfig

REPO = Path(__file__).resolve().parent.parent


def compose_cfg(config: str, *overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config, overrides=list(overrides))


def test_load_orthrus_block_size_zero(qwen3_dir):
    with pytest.raises(ValueError, match=r"block_size=0 must be >= 1 \(None: the checkpoint's K\)"):
        load_orthrus(str(qwen3_dir), block_size=0, mask_token_id=3, device="cpu")


@pytest.mark.parametrize("name", ["./missing", "runs/x/missing", "/nowhere/at/all"])
def test_missing_local_folder_is_not_a_hub_error(name):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_orthrus(name, mask_token_id=1, device="cpu")


def test_hub_like_name_that_is_not_a_folder_says_both(monkeypatch):
    """ "org/name" could be either: the error says it is no local folder and the hub failed."""
    with pytest.raises(OSError, match="is not a local folder .* could not be loaded from the hub"):
        load_orthrus("no-such-org-xyz/no-such-model", mask_token_id=1, device="cpu")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_unreadable_diffusion_view_names_the_file(qwen3_dir, tmp_path, damage):
    folder = save_diffusion_view(
        load_orthrus(str(qwen3_dir), block_size=4, mask_token_id=3, device="cpu"), tmp_path / "view"
    )
    file = folder / "diffusion_view.safetensors"
    data = file.read_bytes()
    file.write_bytes(b"not a safetensors file at all" if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"diffusion view {file} is not a readable safetensors file"):
        load_orthrus(str(qwen3_dir), str(folder), device="cpu")


def test_garbage_view_metadata_names_the_file(qwen3_dir, tmp_path):
    folder = save_diffusion_view(
        load_orthrus(str(qwen3_dir), block_size=4, mask_token_id=3, device="cpu"), tmp_path / "view"
    )
    (folder / "diffusion_view.json").write_text("{not json")
    with pytest.raises(ValueError, match="diffusion_view.json is not valid JSON"):
        load_orthrus(str(qwen3_dir), str(folder), device="cpu")


def test_typed_config_names_the_key():
    with pytest.raises(ValueError, match=r"optim.lr='abc' is not a number: set optim.lr=<a number>"):
        typed_section(OptimConfig, "optim", {"lr": "abc"})
    with pytest.raises(ValueError, match=r"optim.lr_typo"):
        typed_section(OptimConfig, "optim", {"lr_typo": 1.0})
    assert typed_section(OptimConfig, "optim", {"lr": 3, "betas": [0.9, 0.99]}).lr == 3  # ints are numbers


def test_trainer_rejects_a_string_lr_before_building(tmp_path):
    with pytest.raises(ValueError, match=r"optim.lr='abc'"):
        Trainer(compose_cfg("config", *TINY_RUN, "optim.lr=abc"), tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written


def test_missing_data_path_is_named_before_the_tokenizer(tmp_path):
    """data=jsonl's default tokenizer is a hub name: the missing file must be reported first."""
    missing = tmp_path / "sft.jsonl"
    fast = [o for o in TINY_RUN if not o.startswith(("data=", "data.synthetic_documents"))]
    cfg = compose_cfg("config", *fast, "data=jsonl", f"data.load_tokenized_dataset.source={missing}")
    with pytest.raises(FileNotFoundError, match=rf"data.load_tokenized_dataset.source={missing}: no such file"):
        Trainer(cfg, tmp_path / "run")


def test_resume_refuses_a_config_group_switch(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_entry", REPO / "train.py")
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("train: {steps: 2}\n")
    with pytest.raises(SystemExit, match=r"config-group switches \['model=tiny'\] cannot apply"):
        entry.launcher_argv([f"resume={tmp_path}", "model=tiny"], rank=0)
    assert entry.launcher_argv([f"resume={tmp_path}", "model.block_size=8"], rank=0)[-1] == "model.block_size=8"


@pytest.fixture
def eval_run(monkeypatch):
    """eval.evaluate.run with model loading replaced by a failure: checks must come first."""
    import eval.evaluate as evaluate

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad setting was found")

    monkeypatch.setattr(evaluate, "load_orthrus", no_load)
    return evaluate.run


def test_eval_block_size_zero(eval_run, tmp_path):
    with pytest.raises(ValueError, match=r"decode.block_sizes has 0"):
        eval_run(compose_cfg("eval", "name=x", "model.base=b", f"out_dir={tmp_path}", "decode.block_sizes=[1,0]"))
    with pytest.raises(ValueError, match=r"model.block_size=0 must be >= 1"):
        eval_run(compose_cfg("eval", "name=x", "model.base=b", f"out_dir={tmp_path}", "model.block_size=0"))


def test_eval_unwritable_out_dir_fails_before_decoding(eval_run, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(PermissionError, match=r"out_dir=.* is not a writable folder.*choose another out_dir"):
        eval_run(compose_cfg("eval", "name=x", "model.base=b", f"out_dir={blocker / 'results'}"))


def test_eval_unknown_benchmark(eval_run, tmp_path):
    with pytest.raises(KeyError, match=r"benchmarks \['nope'\] are not in prompt_sets"):
        eval_run(compose_cfg("eval", "name=x", "model.base=b", f"out_dir={tmp_path}", "benchmarks=[nope]"))


def test_chat_template_auto_only_for_models_trained_with_it():
    from data.tokenizer import load_tokenizer
    from eval.prompts import resolve_chat_template

    tok = load_tokenizer(REPO / "artifacts/orthrus-small/tokenizer")
    base_eos = {json.loads((REPO / "artifacts/orthrus-small/base/generation_config.json").read_text())["eos_token_id"]}
    assert tok.chat_template is not None and not resolve_chat_template("auto", tok, base_eos)  # the shipped base
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert resolve_chat_template("auto", tok, {im_end})  # a chat model ends its turn with its EOS
    assert resolve_chat_template(True, tok, base_eos) and not resolve_chat_template(False, tok, {im_end})


def test_near_silent_run_warns_with_the_fix(caplog):
    import eval.evaluate as evaluate
    from eval.runner import DecodeRun
    from models.generate import GenerationResult

    def result(new: int) -> GenerationResult:
        return GenerationResult(sequences=torch.zeros(1, 3 + new, dtype=torch.long), prompt_len=3, block_size=4)

    with caplog.at_level("WARNING", logger=evaluate.log.name):
        evaluate.warn_if_silent("humaneval", DecodeRun(4, [result(1), result(2)], []), chat_template=True)
        assert "prompt.chat_template=false" in caplog.text
        caplog.clear()
        evaluate.warn_if_silent("humaneval", DecodeRun(4, [result(30), result(20)], []), chat_template=True)
        assert caplog.text == ""
