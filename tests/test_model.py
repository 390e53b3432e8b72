"""The Orthrus model: construction, parameter budget, checkpoints (ours and the released format)."""

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import Qwen3Config, Qwen3ForCausalLM

from models.checkpoint import load_orthrus, parameter_report, save_diffusion_view, save_merged
from models.config import OrthrusConfig
from models.generate import generate
from models.orthrus import DIFFUSION_MODULES, OrthrusForCausalLM
from models.shapes import QWEN3_SHAPES, shape_config
from tests.tiny import TINY_QWEN3


@pytest.mark.parametrize("name", sorted(QWEN3_SHAPES))
def test_trainable_fraction_near_paper(name):
    """The paper trains ~16% of the parameters (Qwen3-8B); built on meta, no weights needed."""
    report = parameter_report(shape_config(name))
    assert 0.14 < report["trainable_fraction"] < 0.20, report
    if name == "qwen3_8b":
        assert report["trainable_fraction"] == pytest.approx(0.16, abs=0.01)
        assert report["base"] == pytest.approx(8.19e9, rel=0.01)  # Qwen3-8B's published size


def test_diffusion_view_starts_as_copy_of_ar(qwen3_dir):
    model = load_orthrus(str(qwen3_dir), block_size=4, mask_token_id=95, device="cpu")
    for layer in model.model.layers:
        for name in DIFFUSION_MODULES:
            ar = getattr(layer.self_attn, name.removesuffix("_diff"))
            assert torch.equal(getattr(layer.self_attn, name).weight, ar.weight)


def test_ar_view_is_the_unchanged_base(qwen3_dir):
    base = Qwen3ForCausalLM.from_pretrained(qwen3_dir).eval()
    model = load_orthrus(str(qwen3_dir), block_size=4, mask_token_id=95, device="cpu")
    ids = torch.randint(1, 95, (1, 11))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, base(ids).logits)


def test_freeze_base_leaves_only_diffusion_trainable(make_model):
    model = make_model()
    model.freeze_base()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.diffusion_named_parameters()}
    model.freeze_base(trainable=("q_proj_diff", "k_proj_diff"))
    assert all(".q_proj_diff." in n or ".k_proj_diff." in n for n, p in model.named_parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="unknown diffusion modules"):
        model.freeze_base(trainable=("mlp",))


def official_checkpoint(folder, seed=0):
    """A checkpoint laid out as the released chiennv/Orthrus-Qwen3-* ones: one Qwen3 config with
    model_type "orthrus", block_size and mask_token_id, and every tensor (base and *_diff) by name."""
    folder.mkdir()
    g = torch.Generator().manual_seed(seed)
    base = Qwen3ForCausalLM(Qwen3Config(**TINY_QWEN3)).state_dict()
    tensors = {k: v.clone() for k, v in base.items()}
    for i in range(TINY_QWEN3["num_hidden_layers"]):
        for name in ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm"):
            w = base[f"model.layers.{i}.self_attn.{name}.weight"]
            tensors[f"model.layers.{i}.self_attn.{name}_diff.weight"] = torch.randn(w.shape, generator=g) * 0.1
    save_file(tensors, folder / "model.safetensors")
    config = {
        **Qwen3Config(**TINY_QWEN3).to_dict(),
        "model_type": "orthrus",
        "architectures": ["OrthrusLM"],
        "auto_map": {"AutoConfig": "configuration.OrthrusConfig", "AutoModelForCausalLM": "model.OrthrusLM"},
        "block_size": 8,
        "mask_token_id": 94,
    }
    (folder / "config.json").write_text(json.dumps(config))
    return tensors


def test_loads_released_checkpoint_format(tmp_path):
    tensors = official_checkpoint(tmp_path / "official")
    model = load_orthrus(str(tmp_path / "official"), device="cpu")
    assert (model.config.block_size, model.config.mask_token_id) == (8, 94)
    state = model.state_dict()
    for name, tensor in tensors.items():
        assert torch.equal(state[name], tensor), name
    # ...and it round-trips through our merged save, and decodes.
    save_merged(model, tmp_path / "merged")
    again = load_orthrus(str(tmp_path / "merged"), device="cpu")
    for name, tensor in tensors.items():
        assert torch.equal(again.state_dict()[name], tensor), name
    ids = torch.randint(1, 90, (1, 5))
    assert torch.equal(generate(model, ids, 9).sequences, generate(again, ids, 9).sequences)


def test_diffusion_view_round_trip(qwen3_dir, tmp_path):
    model = load_orthrus(str(qwen3_dir), block_size=4, mask_token_id=95, device="cpu")
    with torch.no_grad():
        for _, p in model.diffusion_named_parameters():
            p.add_(torch.randn_like(p))
    folder = save_diffusion_view(model, tmp_path / "view")
    size = sum(f.stat().st_size for f in folder.iterdir())
    assert size < 0.5 * sum(p.numel() * 4 for p in model.parameters())  # the view alone is small
    again = load_orthrus(str(qwen3_dir), str(folder), device="cpu")  # block size and mask id come from the view
    assert (again.config.block_size, again.config.mask_token_id) == (4, 95)
    assert torch.equal(
        again.state_dict()["model.layers.1.self_attn.o_proj_diff.weight"],
        model.state_dict()["model.layers.1.self_attn.o_proj_diff.weight"],
    )
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp folders left


def test_clear_errors(qwen3_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_orthrus(str(tmp_path / "missing"), mask_token_id=1)
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="'llama' model"):
        load_orthrus(str(llama), mask_token_id=1)
    with pytest.raises(ValueError, match="mask_token_id=96 is outside the vocabulary"):
        load_orthrus(str(qwen3_dir), mask_token_id=96)
    with pytest.raises(ValueError, match="mask_token_id is not set"):
        load_orthrus(str(qwen3_dir))
    with pytest.raises(ValueError, match="block_size=1"):
        load_orthrus(str(qwen3_dir), block_size=1, mask_token_id=3)
    with pytest.raises(FileNotFoundError, match="no diffusion view"):
        load_orthrus(str(qwen3_dir), str(tmp_path / "nope"), mask_token_id=3)


def test_config_is_qwen3_plus_two_fields():
    config = OrthrusConfig(**TINY_QWEN3, block_size=32, mask_token_id=5)
    assert config.model_type == "orthrus" and isinstance(config, Qwen3Config)
    model = OrthrusForCausalLM(config)
    assert len(model.diffusion_named_parameters()) == 6 * TINY_QWEN3["num_hidden_layers"]
