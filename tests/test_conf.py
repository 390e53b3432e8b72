"""conf/ composes for every preset, mirrors the code key for key, and rejects typos by name."""

import inspect
import re
from dataclasses import fields
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

import train.config  # noqa: F401  (registers ${floor_div:...})
from data.packing import PackedDataset
from train.backend import DeepSpeedConfig, deepspeed_config
from train.data import synthetic_documents
from train.loop import TrainConfig
from train.model import ModelConfig
from train.objective import ObjectiveConfig
from train.optim import OptimConfig
from train.tracking import LoggingConfig, WandbConfig

CONF = Path(__file__).resolve().parent.parent / "conf"
EXPS = sorted(p.stem for p in (CONF / "exp").glob("*.yaml"))
SECTIONS = {
    "model": ModelConfig,
    "objective": ObjectiveConfig,
    "optim": OptimConfig,
    "logging": LoggingConfig,
    "train": TrainConfig,
}


def compose_cfg(*overrides, hydra=False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


def section(cfg, key) -> dict:
    return OmegaConf.to_container(cfg[key], resolve=True)


def build_sections(cfg) -> dict:
    """Every section through its dataclass (validation included), as the Trainer does."""
    built = {key: cls(**section(cfg, key)) for key, cls in SECTIONS.items()}
    built["deepspeed"] = DeepSpeedConfig(**section(cfg, "deepspeed"))
    return built


def test_presets_exist():
    assert {
        "qwen3_1.7b",
        "qwen3_4b",
        "qwen3_8b",
        "ablate_block_size",
        "ablate_ce_loss",
        "ablate_denoise_steps",
        "ablate_trainable",
        "ablate_tokens",
        "ablate_speed",
    } <= set(EXPS)


@pytest.mark.parametrize("exp", EXPS)
def test_every_exp_composes(exp):
    cfg = compose_cfg(f"+exp={exp}", hydra=True)
    build_sections(cfg)
    for key, arms in (OmegaConf.select(cfg, "hydra.sweeper.params") or {}).items():  # existing keys or groups
        if key in cfg.hydra.runtime.choices:  # a config group: every arm is one of its entries and composes
            for arm in str(arms).split(","):
                assert (CONF / key / f"{arm}.yaml").is_file(), f"exp/{exp}.yaml sweeps {key}={arm}: no such entry"
                build_sections(compose_cfg(f"+exp={exp}", f"{key}={arm}"))
        else:
            assert OmegaConf.select(cfg, key, default="missing") != "missing", (
                f"exp/{exp}.yaml sweeps unknown key {key}"
            )


def test_qwen3_8b_is_the_paper_recipe():
    """eval/paper_numbers.json "recipe": self-distilled Nemotron-v2 data, 2,048-token rows, 256 anchors of K=32,
    lr 2e-4 cosine (to 0), 5% warmup, clip 1.0, global batch 128 on 8 GPUs, 2 epochs, bf16, KL."""
    cfg = compose_cfg("+exp=qwen3_8b")
    s = build_sections(cfg)
    assert s["model"].base == "Qwen/Qwen3-8B" and s["model"].block_size == 32
    assert len(s["model"].trainable) == 6
    assert s["deepspeed"].enabled and s["deepspeed"].zero_stage == 2
    assert s["train"].precision == "bf16" and s["objective"].loss == "kl" and s["objective"].num_denoise_steps == 1
    assert cfg.data.packed_dataset.seq_len == 2048 and s["objective"].blocks_per_row == 256
    assert (s["optim"].lr, s["optim"].min_lr_ratio, s["optim"].grad_clip) == (pytest.approx(2e-4), 0.0, 1.0)
    assert s["train"].micro_batch_size * s["train"].grad_accum * 8 == 128
    assert s["train"].steps == 2 * 471_952 // 128 and s["optim"].warmup_steps == round(0.05 * s["train"].steps)
    assert cfg.data.load_tokenized_dataset.source == "data_out/self_distill/qwen3-8b"
    assert cfg.data.load_tokenized_dataset.tokenizer == "Qwen/Qwen3-8B"  # follows model.base
    assert compose_cfg("+exp=qwen3_8b", "model.base=/models/q8").data.load_tokenized_dataset.tokenizer == "/models/q8"
    for size in ("1.7b", "4b"):
        small = compose_cfg(f"+exp=qwen3_{size}")
        assert small.data.load_tokenized_dataset.source == f"data_out/self_distill/qwen3-{size}"
        assert small.optim == cfg.optim and small.objective == cfg.objective
        batch = ("micro_batch_size", "grad_accum", "fp8")  # 1.7B: speed=fast (float8 gains nothing there)
        assert {k: v for k, v in small.train.items() if k not in batch} == {
            k: v for k, v in cfg.train.items() if k not in batch
        }
        assert small.train.micro_batch_size * small.train.grad_accum * 8 == 128
    alt = build_sections(compose_cfg("+exp=qwen3_8b_sft4k"))
    assert alt["optim"].lr == pytest.approx(1e-4) and alt["objective"].blocks_per_row == 64


SPEED_KNOBS = ("train.compile_frozen", "train.compile_diffusion", "objective.compile_loss", "objective.fused_loss")


@pytest.mark.parametrize(
    "speed,on,fp8", [("plain", False, "none"), ("fast", True, "none"), ("fast_fp8", True, "frozen")]
)
def test_speed_groups_set_their_knobs(speed, on, fp8):
    """conf/speed/: plain turns every knob off, fast the five bf16 ones on, fast_fp8 adds float8; the
    group wins over what a recipe picks, under the orthrus-small ablation too."""
    for base in ([], ["+exp=qwen3_8b"], ["+exp=[ablate_speed,small]"]):
        cfg = compose_cfg(*base, f"speed={speed}")
        knobs = [OmegaConf.select(cfg, k) for k in (*SPEED_KNOBS, "optim.fused")]
        assert knobs == [on] * 5 and cfg.train.fp8 == fp8, (base, speed)
        build_sections(cfg)


def test_speed_defaults_and_one_place_for_the_knobs():
    """Plain by default and on orthrus-small; fast_fp8 on the 8B and 4B recipes, fast on 1.7B and the
    ablations built on it (micro-batch 2 at 8B and 4B, 4 at 1.7B, no gradient checkpointing); the knobs
    are set in conf/speed/ only, so a group choice is never undone by a recipe."""
    expected = {None: "plain", "small": "plain", "pretrain_small": "plain", "qwen3_8b_sft4k": "plain"}
    expected |= {e: "fast_fp8" for e in ("qwen3_8b", "qwen3_4b")}
    expected |= {e: "fast" for e in ("qwen3_1.7b", "ablate_tokens", "ablate_speed")}
    for exp, speed in expected.items():
        cfg = compose_cfg(*([f"+exp={exp}"] if exp else []), hydra=True)
        assert cfg.hydra.runtime.choices.speed == speed, exp
        assert all(OmegaConf.select(cfg, k) == (speed != "plain") for k in SPEED_KNOBS), exp
        assert cfg.train.fp8 == ("frozen" if speed == "fast_fp8" else "none"), exp
    for exp, micro in (("qwen3_8b", 2), ("qwen3_4b", 2), ("qwen3_1.7b", 4)):
        train = compose_cfg(f"+exp={exp}").train
        assert (train.micro_batch_size, train.gradient_checkpointing) == (micro, False), exp
    knob = re.compile(r"^\s*(compile_frozen|compile_diffusion|compile_loss|fused_loss|fused|fp8):", re.M)
    setters = [p for p in CONF.rglob("*.yaml") if p.parent.name != "speed" and knob.search(p.read_text())]
    assert not setters, f"speed knobs set outside conf/speed/: {setters}"


def test_ablation_block_size_keeps_diffusion_tokens_fixed():
    for k in (8, 16, 32, 64):
        cfg = compose_cfg("+exp=ablate_block_size", f"model.block_size={k}")
        assert section(cfg, "objective")["blocks_per_row"] * k == 2048


def test_gpu_smoke_overrides_compose():
    """The overrides of scripts/gpu_train_smoke.sh: real 8B shapes, random weights, synthetic data."""
    cfg = compose_cfg(
        "+exp=qwen3_8b",
        "model.shape=qwen3_8b",
        "model.base=null",
        "data=synthetic",
        "~data.load_tokenized_dataset",
        "train.steps=200",
    )
    s = build_sections(cfg)
    assert s["model"].shape == "qwen3_8b" and s["model"].base is None
    assert set(cfg.data) == {"synthetic_documents", "packed_dataset"} and cfg.data.packed_dataset.seq_len == 2048


def test_slurm_launcher_composes():
    cfg = compose_cfg("hydra/launcher=slurm", "+exp=qwen3_8b", hydra=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.gpus_per_node == launcher.tasks_per_node == 8 and launcher.nodes == 1


@pytest.mark.parametrize(
    "override,key", [("optim.lr_typo=1", "lr_typo"), ("train.precison=bf16", "precison"), ("+exp=qwen3_9b", "qwen3_9b")]
)
def test_bad_override_names_the_key(override, key):
    with pytest.raises(ConfigCompositionException, match=key):
        compose_cfg(override)


@pytest.mark.parametrize(
    "override,match",
    [
        ("model.shape=qwen3_9b", "model.shape"),
        ("model.trainable=[q_proj]", "model.trainable"),
        ("objective.loss=mse", "objective.loss"),
        ("train.precision=fp16", "train.precision"),
        ("logging.wandb.mode=cloud", "logging.wandb.mode"),
    ],
)
def test_bad_values_name_the_key(override, match):
    with pytest.raises(ValueError, match=match):
        build_sections(compose_cfg(override))


@pytest.mark.parametrize("ds", ["none", "zero2", "zero3"])
def test_sections_mirror_the_code(ds):
    cfg = compose_cfg(f"deepspeed={ds}", "data=synthetic")
    for key, cls in SECTIONS.items():
        assert set(cfg[key]) == {f.name for f in fields(cls)}, f"conf section {key} differs from {cls.__name__}"
    assert set(cfg.logging.wandb) == {f.name for f in fields(WandbConfig)}
    assert set(cfg.deepspeed) <= {f.name for f in fields(DeepSpeedConfig)}
    runtime = {"self", "documents", "rank", "world_size", "vocab_size", "exclude"}
    assert set(cfg.data.synthetic_documents) == set(inspect.signature(synthetic_documents).parameters) - runtime
    assert set(cfg.data.packed_dataset) == set(inspect.signature(PackedDataset).parameters) - runtime


def test_model_configs_mirror_the_code():
    for name in sorted(p.stem for p in (CONF / "model").glob("*.yaml")):
        cfg = compose_cfg(f"model={name}")
        assert set(cfg.model) == {f.name for f in fields(ModelConfig)}, name
        ModelConfig(**section(cfg, "model"))


def test_deepspeed_config_dict():
    cfg = compose_cfg("+exp=qwen3_8b")
    s = build_sections(cfg)
    ds = deepspeed_config(
        s["deepspeed"], s["optim"], s["train"].micro_batch_size, s["train"].grad_accum, world_size=8, bf16=True
    )
    assert ds["zero_optimization"]["stage"] == 2 and ds["bf16"]["enabled"]
    assert ds["train_batch_size"] == 2 * 8 * 8 == 128 and ds["gradient_accumulation_steps"] == 8
    assert ds["optimizer"]["params"]["torch_adam"] is True and ds["optimizer"]["params"]["lr"] == pytest.approx(2e-4)
    assert ds["gradient_clipping"] == 1.0
    z3 = deepspeed_config(
        DeepSpeedConfig(**section(compose_cfg("deepspeed=zero3"), "deepspeed")), s["optim"], 1, 1, 1, True
    )
    assert z3["zero_optimization"]["stage"] == 3 and "stage3_prefetch_bucket_size" in z3["zero_optimization"]


def test_default_is_orthrus_small_on_local_code():
    """`python train.py` with no arguments: the shipped small model on the offline corpus, CPU-sized."""
    cfg = compose_cfg()
    s = build_sections(cfg)
    assert s["model"].base == "artifacts/orthrus-small/base" and s["deepspeed"].enabled is False
    assert cfg.data.load_tokenized_dataset.tokenizer == "artifacts/orthrus-small/tokenizer"
    assert cfg.data.build_corpus.max_bytes <= 2_000_000 and s["train"].steps <= 100
