"""scripts/pretrain_base.py at toy scale on the CPU: the whole path from source files to a saved,
loadable Qwen3 checkpoint with its card, plus the pieces whose mistakes would not crash."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors import safe_open
from transformers import AutoTokenizer, Qwen3ForCausalLM

from data.packing import PackedRows
from models.checkpoint import load_orthrus

REPO = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("pretrain_base", REPO / "scripts" / "pretrain_base.py")
pretrain_base = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pretrain_base)


def _write_sources(root: Path) -> None:
    """Six tiny 'packages' of repetitive Python, enough for a tokenizer and a few packed rows."""
    for p in range(6):
        pkg = root / f"pkg{p}"
        pkg.mkdir(parents=True)
        for f in range(4):
            body = "".join(
                f"def func_{p}_{f}_{i}(x, y={i}):\n    \"\"\"Return x plus {i}.\"\"\"\n    return x + y * {i}\n\n\n"
                for i in range(30)
            )
            (pkg / f"mod{f}.py").write_text(body)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pretrain")
    _write_sources(tmp / "src")
    overrides = [
        "+pretrain=toy",
        f"out_dir={tmp / 'base'}",
        f"log_dir={tmp / 'logs'}",
        f"data.build_corpus.out_dir={tmp / 'corpus'}",
        f"data.build_corpus.roots=[{tmp / 'src'}]",
        "data.build_corpus.heldout_packages=[pkg5]",
        "data.build_corpus.max_bytes=null",
        f"data.train_tokenizer.out_dir={tmp / 'tokenizer'}",
        "data.train_tokenizer.vocab_size=320",
        "data.packed_dataset.seq_len=64",
        "train.micro_batch_size=4",
        "train.max_tokens=5120",  # 20 steps
        "train.eval_every=10",
    ]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="pretrain", overrides=overrides)
    summary = pretrain_base.pretrain(cfg)
    return tmp, summary


def test_checkpoint_loads_and_card_says_how(toy_run):
    tmp, summary = toy_run
    out = tmp / "base"
    assert summary["steps"] == 20 and summary["tokens_seen"] == 20 * 4 * 64
    assert summary["stopped_by"] == "max_tokens"
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    model = Qwen3ForCausalLM.from_pretrained(out)
    assert model.config.vocab_size == 320 and model.config.tie_word_embeddings
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.mask_token_id == 3 and model.config.eos_token_id == tokenizer.eos_token_id
    # The Orthrus loader accepts it as a plain Qwen3 base (diffusion view copied from the AR view).
    orthrus = load_orthrus(str(out), block_size=4, mask_token_id=tokenizer.mask_token_id, device="cpu")
    assert orthrus.config.block_size == 4
    card = (out / "README.md").read_text()
    for needle in ("command", "commit", "device", "tokens seen", "training time", "held-out loss"):
        assert needle in card
    assert summary["command"].startswith("python ")  # in-process here: pytest's argv, not the script's
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert any("heldout_loss" in r for r in log) and log[-1].get("final")


def test_training_reduces_loss(toy_run):
    _, summary = toy_run
    # From-scratch loss starts near ln(vocab); 20 steps on very repetitive code must beat it well.
    assert summary["final_train_loss"] < math.log(320) - 1.0
    assert summary["heldout_loss"] < math.log(320) - 1.0


def test_gather_rows_matches_row_by_row():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(2, 150, (200,), generator=g).tolist() + [400]
    docs = [list(range(1, n)) + [0] for n in lengths]
    rows = PackedRows(docs, 32)
    idx = torch.randperm(len(rows), generator=g)[:50]
    batch = pretrain_base.gather_rows(rows, idx)
    for j, i in enumerate(idx.tolist()):
        assert torch.equal(batch["input_ids"][j], rows[i]["input_ids"])
        assert torch.equal(batch["position_ids"][j], rows[i]["position_ids"])


def test_labels_skip_document_starts():
    ids = torch.tensor([[5, 6, 0, 7, 8, 0]])
    pos = torch.tensor([[3, 4, 5, 0, 1, 2]])
    labels = pretrain_base.batch_labels(ids, pos)
    assert labels.tolist() == [[5, 6, 0, -100, 8, 0]]


def test_lr_schedule_warmup_then_cosine_to_floor():
    f = pretrain_base.lr_factor
    assert f(0, 0.0, 10, 0.1) == pytest.approx(0.1)
    assert f(9, 0.0, 10, 0.1) == pytest.approx(1.0)
    assert f(50, 0.5, 10, 0.1) == pytest.approx(0.55)
    assert f(99, 1.0, 10, 0.1) == pytest.approx(0.1)
    assert f(99, 3.0, 10, 0.1) == pytest.approx(0.1)  # clamped past the end
