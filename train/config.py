"""The resolver conf/ relies on; import this module before composing the config (train.py and
the tests do).

* `${floor_div:a,b}`: integer division, used by conf/exp/ablate_block_size.yaml to keep the
  diffusion tokens per row fixed while K varies.
* `${pid:}`: this process's id, which makes the default run folder unique per run.
* `typed_section`: a config section as its dataclass, every value type-checked with its key named.
* `compose`, `shape_overrides`, `synthetic_data_overrides`: conf/config.yaml composed from Python
  (the benchmark, the parity check), with a model shape and synthetic data chosen by overrides.
"""

import dataclasses
import os
import types
import typing
from pathlib import Path

from omegaconf import OmegaConf

OmegaConf.register_new_resolver("floor_div", lambda a, b: int(a) // int(b), replace=True)
OmegaConf.register_new_resolver("pid", os.getpid, replace=True)

CONF = Path(__file__).resolve().parent.parent / "conf"
SHAPES = ("tiny", "qwen3_1.7b", "qwen3_4b", "qwen3_8b")


def compose(overrides: list[str]):
    """conf/config.yaml composed with `overrides` (Hydra's compose API, as the tests use it)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def shape_overrides(shape: str) -> list[str]:
    """Hydra overrides for a model shape: `tiny` (conf/model/tiny) or a Qwen3 shape with random
    weights and the paper recipe (+exp=qwen3_*: K=32, KL, chunked loss, bf16 on GPU); synthetic
    documents either way (named explicitly: the config's defaults may change)."""
    if shape == "tiny":
        return ["model=tiny", "data=synthetic"]
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}: choose from {SHAPES}")
    return [
        f"+exp={shape}",
        "model.base=null",
        f"model.shape={shape}",
        "data=synthetic",
        "~data.load_tokenized_dataset",
    ]


def synthetic_data_overrides(seq_len: int, rows: int, seed: int = 0) -> list[str]:
    """Overrides for synthetic documents packed into `rows` rows of `seq_len` tokens."""
    from train.data import synthetic_data

    data = synthetic_data(seq_len, rows, seed)
    return [f"data.{section}.{k}={v}" for section, values in data.items() for k, v in values.items()]


def typed_section(cls, key: str, values: dict):
    """`cls(**values)` for config section `key`, after checking each value against its field's
    annotation, so `optim.lr=abc` fails naming `optim.lr` and the expected type rather than as a
    TypeError deep inside the run."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in names]
    if unknown:
        raise ValueError(f"unknown key(s) {[f'{key}.{k}' for k in unknown]}; {key} takes {names}")
    for name, value in values.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            values = {**values, name: typed_section(tp, f"{key}.{name}", value)}
        elif not _matches(value, tp):
            raise ValueError(f"{key}.{name}={value!r} is not {_describe(tp)}: set {key}.{name}=<{_describe(tp)}>")
    return cls(**values)


def _matches(value, tp) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp in (bool, str):
        return isinstance(value, tp)
    if origin in (list, tuple) or tp in (list, tuple):
        items = [a for a in args if a is not Ellipsis]
        return isinstance(value, (list, tuple)) and all(any(_matches(v, a) for a in items) for v in value if items)
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    if dataclasses.is_dataclass(tp):
        return isinstance(value, tp)
    return True  # an annotation this check does not model is left to the dataclass


def _describe(tp) -> str:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) in (list, tuple):
        return f"a list of {_describe(args[0])}" if args else "a list"
    return {float: "a number", int: "an integer", bool: "true/false", str: "a string", dict: "a mapping"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )
