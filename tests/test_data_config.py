"""conf/data/*.yaml mirror the code: each section holds exactly the arguments of its function."""

import inspect
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from data.corpus import build_corpus
from data.datasets import load_tokenized_dataset
from data.packing import PackedDataset
from data.tokenizer import train_tokenizer

CONF_DIR = Path(__file__).resolve().parent.parent / "conf" / "data"
FUNCTIONS = {
    "build_corpus": build_corpus,
    "train_tokenizer": train_tokenizer,
    "load_tokenized_dataset": load_tokenized_dataset,
    "packed_dataset": PackedDataset,
}
# Arguments that only exist at run time (objects, callbacks, the process's rank).
RUNTIME_ARGS = {"self", "progress", "documents", "rank", "world_size"}


@pytest.mark.parametrize("name", ["local_python", "jsonl", "hub"])
def test_sections_match_signatures(name):
    config = OmegaConf.load(CONF_DIR / f"{name}.yaml")
    assert {"load_tokenized_dataset", "packed_dataset"} <= set(config)
    for section, values in config.items():
        assert section in FUNCTIONS, f"{name}.yaml: section {section!r} names no function"
        parameters = set(inspect.signature(FUNCTIONS[section]).parameters) - RUNTIME_ARGS
        assert set(values) == parameters, f"{name}.yaml: {section} keys differ from the signature"


def test_local_python_interpolations_resolve():
    config = OmegaConf.create({"data": OmegaConf.load(CONF_DIR / "local_python.yaml")})
    resolved = OmegaConf.to_container(config, resolve=True)["data"]
    assert resolved["load_tokenized_dataset"]["source"] == resolved["build_corpus"]["out_dir"]
    assert resolved["load_tokenized_dataset"]["tokenizer"] == resolved["train_tokenizer"]["out_dir"]
