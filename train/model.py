"""The model a run trains: where its weights come from, and which of them learn.

Sources (conf/model/*.yaml):
  * `base`: a Qwen3 or merged Orthrus checkpoint, a local folder or a hub name
    (`models.checkpoint.load_orthrus`); the diffusion view starts as a copy of the AR attention;
  * `shape` and/or `config`: random weights at a named real shape (`models.shapes`) and/or
    with explicit OrthrusConfig fields (the tiny CPU model), for throughput runs and tests;
  * `diffusion`: optionally, an existing diffusion view (e.g. a finished run's) on top.
Then the base is frozen and only the `trainable` diffusion modules keep requires_grad; or, to
pretrain the base itself (objective.kind=next_token), every AR parameter learns and the
diffusion view is frozen.
"""

from dataclasses import dataclass, field

import torch
from omegaconf import OmegaConf

from models.checkpoint import load_diffusion_view, load_orthrus
from models.config import OrthrusConfig
from models.orthrus import DIFFUSION_MODULES, OrthrusForCausalLM, is_diffusion_param
from models.shapes import QWEN3_SHAPES
from train.config import CONF


@dataclass
class ModelConfig:
    base: str | None = None  # checkpoint folder or hub name (e.g. Qwen/Qwen3-8B)
    shape: str | None = None  # random weights at a real shape: qwen3_1.7b | qwen3_4b | qwen3_8b
    config: dict = field(default_factory=dict)  # OrthrusConfig fields for random weights (over `shape`)
    diffusion: str | None = None  # start from this diffusion view (folder or .safetensors)
    block_size: int | None = None  # K; None: the checkpoint's, else 32
    mask_token_id: int | None = None  # None: the checkpoint's or the data tokenizer's mask token
    trainable: list[str] = field(default_factory=lambda: list(DIFFUSION_MODULES))

    def __post_init__(self):
        if self.base is not None and (self.shape is not None or self.config):
            raise ValueError(
                f"model.base={self.base!r} loads weights but model.shape/model.config ask for random ones: "
                "set model.shape=null model.config={} to load, or model.base=null for random weights"
            )
        if self.base is None and self.shape is None and not self.config:
            raise ValueError(
                "no model: set model.base (a checkpoint folder or hub name) or model.shape (random weights)"
            )
        if self.shape is not None and self.shape not in QWEN3_SHAPES:
            raise ValueError(f"model.shape={self.shape!r} is not one of {sorted(QWEN3_SHAPES)}")
        unknown = set(self.trainable) - set(DIFFUSION_MODULES)
        if unknown or not self.trainable:
            raise ValueError(
                f"model.trainable={list(self.trainable)}: choose a non-empty subset of {list(DIFFUSION_MODULES)}"
            )


def build_model(
    cfg: ModelConfig,
    *,
    dtype: torch.dtype,
    device: torch.device,
    seed: int,
    mask_token_id: int | None,
    master_fp32: bool,
    train_base: bool = False,
) -> OrthrusForCausalLM:
    """The base + diffusion view, on `device`; trainable params in fp32 if `master_fp32`. The
    base is frozen and cfg.trainable learns, or with `train_base` the base learns and the view is frozen.

    `mask_token_id` is cfg.mask_token_id already resolved against the data tokenizer.
    """
    if cfg.base is not None:
        model = load_orthrus(
            cfg.base, cfg.diffusion, block_size=cfg.block_size, mask_token_id=mask_token_id, dtype=dtype, device=device
        )
    else:
        torch.manual_seed(seed)
        with torch.device(device):  # initialise in place: an 8B model on the CPU takes minutes
            model = OrthrusForCausalLM._from_config(
                OrthrusConfig(**random_config_fields(cfg, mask_token_id)), dtype=dtype
            )
        model.init_diffusion_from_ar()
        if cfg.diffusion is not None:
            load_diffusion_view(model, cfg.diffusion)
    if train_base:
        for name, p in model.named_parameters():
            p.requires_grad_(not is_diffusion_param(name))
    else:
        model.freeze_base(tuple(cfg.trainable))
    if master_fp32:
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    return model


def random_config_fields(cfg: ModelConfig, mask_token_id: int | None) -> dict:
    """The OrthrusConfig fields of random weights: the named `shape`, then `config`, then K and the mask token."""
    fields = {**QWEN3_SHAPES.get(cfg.shape, {}), **cfg.config}
    if cfg.block_size is not None:
        fields["block_size"] = cfg.block_size
    if mask_token_id is not None:
        fields["mask_token_id"] = mask_token_id
    return fields


def load_preset(name: str) -> ModelConfig:
    """conf/model/<name>.yaml as a ModelConfig (outside Hydra: for code that builds the preset directly)."""
    return ModelConfig(**OmegaConf.to_container(OmegaConf.load(CONF / "model" / f"{name}.yaml")))


def preset_config(name: str, **overrides) -> OrthrusConfig:
    """The OrthrusConfig of random-weight preset conf/model/<name>.yaml (e.g. `tiny`), `overrides` on top."""
    cfg = load_preset(name)
    return OrthrusConfig(**{**random_config_fields(cfg, cfg.mask_token_id), **overrides})
