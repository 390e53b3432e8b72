"""Building, loading and saving Orthrus models.

Three sources are accepted, each a hub name or a local folder:
  * a plain Qwen3 checkpoint: the diffusion view starts as a copy of the AR view;
  * a Qwen3 checkpoint plus a diffusion-view file (what our training saves: small);
  * a merged Orthrus checkpoint (`model_type: orthrus`), e.g. the released
    `chiennv/Orthrus-Qwen3-{1.7B,4B,8B}` or our `save_merged` output.
Writes are atomic: a folder is written under a temporary name and renamed into place, so an
interrupted save never leaves a half-written checkpoint under the final name.
"""

import contextlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import AutoConfig
from transformers.utils import logging as hf_logging

from data._io import atomic_directory, looks_local
from models.config import OrthrusConfig
from models.orthrus import OrthrusForCausalLM, is_diffusion_param

DIFFUSION_FILE = "diffusion_view.safetensors"
DIFFUSION_META = "diffusion_view.json"
_SUPPORTED_TYPES = ("qwen3", "orthrus")


def load_orthrus(
    base: str,
    diffusion: str | None = None,
    *,
    block_size: int | None = None,
    mask_token_id: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "auto",
    attn_implementation: str = "sdpa",
) -> OrthrusForCausalLM:
    """Build an Orthrus model from `base` (Qwen3 or merged Orthrus) and optional diffusion weights.

    block_size / mask_token_id override what the checkpoint says (a plain Qwen3 checkpoint says
    nothing, so mask_token_id is then required unless the diffusion file records it); None keeps
    the checkpoint's. device "auto" is CUDA when present, else the CPU.
    """
    if block_size is not None and block_size < 1:
        raise ValueError(f"block_size={block_size} must be >= 1 (None: the checkpoint's K)")
    device = resolve_device(device)
    source_config = _load_config(base)
    meta = _read_diffusion_meta(diffusion) if diffusion else {}
    if block_size is None:
        block_size = meta.get("block_size") or getattr(source_config, "block_size", None)
    overrides = {
        "block_size": block_size,
        "mask_token_id": mask_token_id
        if mask_token_id is not None
        else meta.get("mask_token_id", getattr(source_config, "mask_token_id", None)),
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    config = OrthrusConfig(**{**_config_fields(source_config), **overrides})
    # A plain Qwen3 checkpoint has no diffusion tensors; transformers reports them as missing,
    # which is expected here: they are set from the AR view right after.
    with _hf_errors_only(source_config.model_type == "qwen3"):
        model = OrthrusForCausalLM.from_pretrained(
            base, config=config, dtype=dtype, attn_implementation=attn_implementation
        )
    if source_config.model_type == "qwen3":
        model.init_diffusion_from_ar()
    if diffusion:
        load_diffusion_view(model, diffusion)
    model.requires_grad_(False)
    return model.to(device).eval()


@contextlib.contextmanager
def _hf_errors_only(quiet: bool = True):
    """transformers logs errors only inside (when `quiet`): loading reports tensors it expected but did not
    find, or found but did not expect, which some loads here mean to leave out."""
    verbosity = hf_logging.get_verbosity()
    if quiet:
        hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def load_ar_view(
    base: str,
    *,
    block_size: int,
    mask_token_id: int,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "auto",
    attn_implementation: str = "sdpa",
) -> OrthrusForCausalLM:
    """`base` (Qwen3 or merged Orthrus) as an Orthrus model whose diffusion view IS its AR view
    (`OrthrusForCausalLM.share_ar_view`): only the AR weights are read and allocated, a merged
    checkpoint's trained view is skipped. For decoding at K = 1, which never runs the view (the
    self-distillation data's fast decoder); block_size / mask_token_id then only fill the config."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    device = resolve_device(device)
    fields = _config_fields(_load_config(base))
    with _hf_errors_only():  # a merged checkpoint's diffusion tensors are unexpected here: skipped
        ar = Qwen3ForCausalLM.from_pretrained(
            base, config=Qwen3Config(**fields), dtype=dtype, attn_implementation=attn_implementation
        )
    config = OrthrusConfig(**{**_config_fields(ar.config), "block_size": block_size, "mask_token_id": mask_token_id})
    config._attn_implementation = ar.config._attn_implementation
    with torch.device("meta"):  # the Orthrus wrapper only: its modules are replaced by the loaded ones
        model = OrthrusForCausalLM(config)
    model.model, model.lm_head, model.generation_config = ar.model, ar.lm_head, ar.generation_config
    model.share_ar_view()
    model.requires_grad_(False)
    return model.to(device).eval()


def _config_fields(config) -> dict:
    """A checkpoint config's model fields, without what names its class."""
    drop = ("model_type", "transformers_version", "architectures", "auto_map")
    return {k: v for k, v in config.to_dict().items() if k not in drop}


def resolve_device(device: str | torch.device) -> torch.device:
    """ "auto": the first CUDA device when there is one, else the CPU; anything else as given."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _load_config(base: str):
    path = Path(base).expanduser()
    local = looks_local(base)
    if local and not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"no checkpoint at '{base}' ({'no config.json in it' if path.is_dir() else 'no such folder'}): "
            "pass a folder with config.json (a local Qwen3/Orthrus checkpoint) or a hub name like 'Qwen/Qwen3-8B'."
        )
    try:
        config = AutoConfig.from_pretrained(str(path) if local else base)
    except OSError as err:
        raise OSError(
            f"'{base}' is not a local folder (none under {Path.cwd()}) and could not be loaded from the hub ({err}). "
            "Pass the path of a local checkpoint folder (e.g. ./runs/x), or without network access download the "
            "checkpoint elsewhere and pass its folder."
        ) from err
    if config.model_type not in _SUPPORTED_TYPES:
        raise ValueError(
            f"'{base}' is a {config.model_type!r} model; Orthrus here is built on Qwen3: pass a "
            f"checkpoint whose config.json has model_type in {_SUPPORTED_TYPES}."
        )
    return config


def diffusion_state_dict(model: OrthrusForCausalLM) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if is_diffusion_param(n)}


def save_diffusion_view(model: OrthrusForCausalLM, folder: str | os.PathLike, extra_meta: dict | None = None) -> Path:
    """Write the diffusion view alone (safetensors, ~16% of the model) plus what loading needs."""
    meta = {
        "block_size": model.config.block_size,
        "mask_token_id": model.config.mask_token_id,
        "num_hidden_layers": model.config.num_hidden_layers,
        "hidden_size": model.config.hidden_size,
        **(extra_meta or {}),
    }

    def write(tmp: Path):
        save_file(diffusion_state_dict(model), tmp / DIFFUSION_FILE)
        (tmp / DIFFUSION_META).write_text(json.dumps(meta, indent=2))

    return atomic_folder(folder, write)


def load_diffusion_view(model: OrthrusForCausalLM, path: str | os.PathLike) -> None:
    """Load diffusion weights from a folder written by `save_diffusion_view` or a .safetensors file."""
    file = _diffusion_file(path)
    try:
        state = load_file(str(file))
    except (SafetensorError, OSError) as err:
        raise ValueError(
            f"diffusion view {file} is not a readable safetensors file ({err}): it is truncated or "
            "not a diffusion view; re-export it (save_diffusion_view) or pass the right file"
        ) from None
    expected = diffusion_state_dict(model)
    missing, unexpected = expected.keys() - state.keys(), state.keys() - expected.keys()
    if missing or unexpected:
        raise ValueError(
            f"{file} does not fit this model: {len(missing)} diffusion tensors missing "
            f"(e.g. {sorted(missing)[:2]}), {len(unexpected)} unexpected (e.g. {sorted(unexpected)[:2]}). "
            "Was it trained on a base model with a different number of layers?"
        )
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise ValueError(
                f"{file}: {name} has shape {tuple(tensor.shape)}, model expects {tuple(expected[name].shape)}"
            )
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)


def _diffusion_file(path) -> Path:
    path = Path(path)
    file = path / DIFFUSION_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no diffusion view at '{path}': expected {DIFFUSION_FILE} or a .safetensors file")
    return file


def _read_diffusion_meta(path) -> dict:
    meta = _diffusion_file(path).parent / DIFFUSION_META
    if not meta.is_file():
        return {}
    try:
        return json.loads(meta.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{meta} is not valid JSON ({err}): re-export the diffusion view or delete the file") from None


def save_merged(model: OrthrusForCausalLM, folder: str | os.PathLike, tokenizer=None) -> Path:
    """Base + diffusion view in the released-checkpoint format (model_type "orthrus")."""

    def write(tmp: Path):
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)

    return atomic_folder(folder, write)


def save_base(model: OrthrusForCausalLM, folder: str | os.PathLike, tokenizer=None) -> Path:
    """The AR view alone as a plain Qwen3 checkpoint (model_type "qwen3"), e.g. a pretrained base."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    fields = {
        k: v
        for k, v in model.config.to_dict().items()
        if k not in ("model_type", "block_size", "mask_token_id", "architectures", "transformers_version")
    }
    with torch.device("meta"):
        base = Qwen3ForCausalLM(Qwen3Config(**fields))
    state = {k: v for k, v in model.state_dict().items() if not is_diffusion_param(k)}
    base.load_state_dict(state, strict=True, assign=True)

    def write(tmp: Path):
        base.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)

    return atomic_folder(folder, write)


def atomic_folder(folder: str | os.PathLike, write) -> Path:
    """Call write(tmp_dir) on a temporary folder that then replaces `folder` (data._io.atomic_directory)."""
    with atomic_directory(folder) as tmp:
        write(tmp)
    return Path(folder)


def parameter_report(config: OrthrusConfig) -> dict:
    """Parameter counts of an Orthrus model at `config`'s shape, built on the meta device."""
    with torch.device("meta"):
        model = OrthrusForCausalLM(config)
    diffusion = sum(p.numel() for n, p in model.named_parameters() if is_diffusion_param(n))
    total = sum(p.numel() for p in model.parameters())  # tied weights counted once
    return {"total": total, "base": total - diffusion, "diffusion": diffusion, "trainable_fraction": diffusion / total}
