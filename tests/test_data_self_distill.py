"""Self-distillation data: batched left-padded generation equals unbatched greedy, output trains."""

import inspect
import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

from data.corpus import build_corpus
from data.datasets import load_tokenized_dataset
from data.packing import PackedDataset
from data.self_distill import MANIFEST, eos_token_ids, generate_responses, load_base, serve_batch
from data.tokenizer import train_tokenizer
from models.engine import OrthrusEngine
from models.sampling import SamplingParams
from tests.tiny import TINY_QWEN3

CONF = Path(__file__).resolve().parent.parent / "conf"
PROMPTS = ["def add(a, b):", "import os", "Write a loop", "x", "class Point:\n    def __init__(self, x, y):"]
MAX_NEW = 8


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("self_distill")
    build_corpus(root / "corpus", max_bytes=60_000)
    tokenizer = train_tokenizer(root / "corpus", root / "base", vocab_size=300, min_frequency=1)
    torch.manual_seed(0)
    config = Qwen3Config(  # the tiny model's shape, on this tokenizer
        **{
            **TINY_QWEN3,
            "vocab_size": len(tokenizer),
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    model = Qwen3ForCausalLM(config)
    with torch.no_grad():  # sharper logits: greedy choices far from ties
        model.model.embed_tokens.weight.normal_(0, 1.0)
    model.save_pretrained(root / "base")
    return root / "base"


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return path


def reference(base_dir, text: str) -> str:
    """The model's unbatched greedy response to one rendered prompt."""
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    eos = eos_token_ids(model, tokenizer)
    out = model.generate(
        ids, max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id
    )[0, ids.shape[1] :].tolist()
    return tokenizer.decode(out, skip_special_tokens=True)


@pytest.mark.parametrize("chat", [True, False])
def test_batched_greedy_equals_unbatched(base_dir, prompts_file, tmp_path, chat):
    out = tmp_path / "sd"
    manifest = generate_responses(
        base_dir,
        prompts_file,
        out,
        chat_template=chat,
        max_new_tokens=MAX_NEW,
        temperature=0.0,
        batch_size=2,
        shard_size=3,
        device="cpu",
    )
    records = [json.loads(line) for line in _records(out)]
    assert len(records) == 5 and manifest["records"] == 5 and len(manifest["shards"]) == 2
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    for prompt, record in zip(PROMPTS, records):
        if chat:
            user, assistant = record["messages"]
            assert user == {"role": "user", "content": prompt} and assistant["role"] == "assistant"
            rendered = tokenizer.apply_chat_template([user], tokenize=False, add_generation_prompt=True)
            assert assistant["content"] == reference(base_dir, rendered)
        else:
            assert record["text"] == prompt + reference(base_dir, prompt)
    on_disk = json.loads((out / MANIFEST).read_text())
    assert on_disk["tokens_generated"] == manifest["tokens_generated"] > 0
    assert on_disk["sampling"]["greedy"] and on_disk["model"] == str(base_dir) and on_disk["seed"] == 0

    docs = load_tokenized_dataset(out, base_dir)  # the training side reads the folder
    assert len(docs) == 5 and all(row[-1] == tokenizer.eos_token_id for row in docs["input_ids"])
    rows = PackedDataset(docs["input_ids"], seq_len=32, infinite=False)
    assert next(iter(rows))["input_ids"].shape == (32,)


def test_rerun_is_noop_unless_overwrite(base_dir, prompts_file, tmp_path):
    out = tmp_path / "sd"
    kwargs = dict(max_new_tokens=2, batch_size=4, limit=3, device="cpu")
    first = generate_responses(base_dir, prompts_file, out, **kwargs)
    stamp = (out / "train-00000.jsonl").stat().st_mtime_ns
    assert generate_responses(base_dir, prompts_file, out, **kwargs) == first
    assert (out / "train-00000.jsonl").stat().st_mtime_ns == stamp
    again = generate_responses(base_dir, prompts_file, out, **kwargs, overwrite=True)
    assert again["records"] == 3 and (out / "train-00000.jsonl").stat().st_mtime_ns != stamp


def test_messages_prompts_and_sampling(base_dir, tmp_path):
    source = tmp_path / "chat.jsonl"
    chats = [
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "old answer"},
        ],
        [{"role": "assistant", "content": "no prompt"}],
    ]
    source.write_text("".join(json.dumps({"messages": m}) + "\n" for m in chats))
    manifest = generate_responses(
        base_dir, source, tmp_path / "sd", max_new_tokens=4, temperature=0.8, top_k=20, device="cpu"
    )
    assert manifest["records"] == 1 and manifest["skipped_without_prompt"] == 1
    (record,) = [json.loads(line) for line in (tmp_path / "sd" / "train-00000.jsonl").read_text().splitlines()]
    assert [m["role"] for m in record["messages"]] == ["system", "user", "assistant"]
    assert record["messages"][-1]["content"] != "old answer"


def test_missing_model_path_errors_clearly(prompts_file, tmp_path):
    with pytest.raises(FileNotFoundError, match="base model folder .* does not exist"):
        generate_responses(tmp_path / "no_such_model", prompts_file, tmp_path / "sd")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        generate_responses("./no_such_model", prompts_file, tmp_path / "sd")


def test_configs_match_signatures():
    data = OmegaConf.load(CONF / "data" / "self_distill.yaml")
    functions = {"load_tokenized_dataset": load_tokenized_dataset, "packed_dataset": PackedDataset}
    assert set(data) == set(functions)
    for section, values in data.items():
        parameters = set(inspect.signature(functions[section]).parameters) - {"self", "documents", "rank", "world_size"}
        assert set(values) == parameters, section
    script = OmegaConf.load(CONF / "self_distill.yaml")
    assert set(script) == set(inspect.signature(generate_responses).parameters)


def test_train_composes_with_self_distill_data():
    import train.config  # noqa: F401  (registers the resolvers the presets use)

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "config", overrides=["+exp=qwen3_8b", "data=self_distill", "data.load_tokenized_dataset.source=/tmp/sd"]
        )
        script = compose(
            "self_distill",
            overrides=[
                "model_name_or_path=Qwen/Qwen3-8B",
                "prompts_source=HuggingFaceH4/ultrachat_200k",
                "out_dir=/tmp/sd",
            ],
        )
    data = OmegaConf.to_container(cfg.data, resolve=True)
    assert data["load_tokenized_dataset"]["source"] == "/tmp/sd"
    assert data["load_tokenized_dataset"]["tokenizer"] == cfg.model.base == "Qwen/Qwen3-8B"
    assert data["load_tokenized_dataset"]["messages_field"] == "messages"
    assert data["packed_dataset"]["seq_len"] == 2048
    assert set(script) == set(inspect.signature(generate_responses).parameters)


def test_sharded_over_ranks_and_resumable(base_dir, tmp_path, monkeypatch):
    """Two ranks split the shards (i % world_size) and together write what one process writes; a run
    killed mid-way resumes with the shards it had not finished; a list of splits mixes them 1:1:1."""
    import data.self_distill as sd

    source = tmp_path / "nemotron"  # hub layout of Nemotron-Post-Training-Dataset-v2: one split per subset
    source.mkdir()
    for name in ("chat", "math", "code"):
        (source / f"{name}.jsonl").write_text(
            "".join(json.dumps({"messages": [{"role": "user", "content": f"{name} {i}"}]}) + "\n" for i in range(3))
        )
    kwargs = dict(
        split=["chat", "math", "code"],
        limit=2,
        max_new_tokens=3,
        batch_size=2,
        shard_size=2,
        device="cpu",
        decoder="hf",
    )
    single = generate_responses(base_dir, source, tmp_path / "one", **kwargs)
    assert single["records"] == 6 and len(single["shards"]) == 3  # 2 of each split

    calls = []
    real = sd.generate_batch
    monkeypatch.setattr(sd, "generate_batch", lambda *a, **k: calls.append(len(a[2])) or real(*a, **k))
    first = generate_responses(base_dir, source, tmp_path / "two", **kwargs, rank=1, world_size=2)
    assert first == {"complete": False, "rank": 1, "world_size": 2, "shards_done": 1, "shards": 3}
    assert sorted(p.name for p in (tmp_path / "two").glob("train-*")) == ["train-00001.jsonl"]
    second = generate_responses(base_dir, source, tmp_path / "two", **kwargs, rank=0, world_size=2)
    assert second["complete"] and calls == [2, 2, 2]  # each shard generated once
    for name in single["shards"]:
        assert (tmp_path / "two" / name).read_text() == (tmp_path / "one" / name).read_text()
    assert {k: v for k, v in second.items() if k != "device"} == {k: v for k, v in single.items() if k != "device"}

    # Interrupted after one shard: the rerun (a different world size) generates only the missing ones.
    def dies_after_first(*a, **k):
        if calls:
            raise KeyboardInterrupt
        calls.append(len(a[2]))
        return real(*a, **k)

    calls.clear()
    monkeypatch.setattr(sd, "generate_batch", dies_after_first)
    with pytest.raises(KeyboardInterrupt):
        generate_responses(base_dir, source, tmp_path / "three", **kwargs, rank=0, world_size=1)
    assert [p.name for p in (tmp_path / "three").glob("train-*")] == ["train-00000.jsonl"]
    calls.clear()
    monkeypatch.setattr(sd, "generate_batch", lambda *a, **k: calls.append(len(a[2])) or real(*a, **k))
    for rank in (0, 1):
        done = generate_responses(base_dir, source, tmp_path / "three", **kwargs, rank=rank, world_size=2)
    assert calls == [2, 2] and done["complete"]
    for name in single["shards"]:
        assert (tmp_path / "three" / name).read_text() == (tmp_path / "one" / name).read_text()


def _records(out: Path) -> list[str]:
    return [line for f in sorted(out.glob("train-*.jsonl")) for line in f.read_text().splitlines()]


@pytest.fixture(scope="module")
def eos_base_dir(base_dir, tmp_path_factory):
    """The tiny base with extra eos ids, tokens its greedy answers emit at different steps: prompts stop at
    different iterations, some at max_new_tokens."""
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    answers = []
    for prompt in PROMPTS:
        chat = [{"role": "user", "content": prompt}]
        for text in (prompt, tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)):
            ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
            out = model.generate(ids, max_new_tokens=MAX_NEW, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            answers.append(out[0, ids.shape[1] :].tolist())
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, answers[0][3], answers[4][1]]  # text prompts
    folder = tmp_path_factory.mktemp("eos_base")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("chat", [False, True])
def test_fast_decoder_writes_what_hf_writes(eos_base_dir, prompts_file, tmp_path, monkeypatch, chat):
    """fp32 greedy: the engine's request queue (2 slots for 5 ragged prompts, eos at different steps) writes
    the records transformers' generate writes; a slot mix-up (answers handed to the wrong request) would not."""
    from models.serving import Server

    kwargs = dict(chat_template=chat, max_new_tokens=MAX_NEW, batch_size=2, shard_size=3, device="cpu")
    hf = generate_responses(eos_base_dir, prompts_file, tmp_path / "hf", decoder="hf", **kwargs)
    fast = generate_responses(eos_base_dir, prompts_file, tmp_path / "fast", decoder="fast", **kwargs)
    assert hf["decoder"] == "hf" and fast["decoder"] == "fast"
    if not chat:  # the text prompts' answers end at eos after 2 and 4 tokens, the others at max_new_tokens
        assert 0 < hf["stopped_at_eos"] < hf["records"]
        assert len({len(json.loads(r)["text"]) - len(p) for r, p in zip(_records(tmp_path / "hf"), PROMPTS)}) > 1
    assert _records(tmp_path / "fast") == _records(tmp_path / "hf")
    same = ("records", "tokens_generated", "stopped_at_eos", "prompt_tokens", "shards", "sampling")
    assert {k: fast[k] for k in same} == {k: hf[k] for k in same}

    if chat:  # the tiny model answers every chat prompt alike: a mix-up shows on the text prompts only
        return
    real = Server.__iter__

    def mixed_up(self):
        done = list(real(self))
        yield from zip([rid for rid, _ in done][::-1], [result for _, result in done])

    monkeypatch.setattr(Server, "__iter__", mixed_up)
    generate_responses(eos_base_dir, prompts_file, tmp_path / "broken", decoder="fast", **kwargs)
    assert _records(tmp_path / "broken") != _records(tmp_path / "hf")


def test_fast_base_shares_the_ar_view_without_allocating_a_copy(base_dir):
    """load_base(decoder="fast"): every diffusion-view module is the AR module, loading allocates what the
    plain Qwen3 does (torch.profiler's count of allocated bytes), not the view's copy as well, and the engine
    at K = 1 decodes, greedy and sampled, token for token what it decodes over the view copied from the AR
    view and then replaced by it (the construction this one saves)."""
    from models.checkpoint import load_orthrus
    from models.orthrus import DIFFUSION_MODULES, is_diffusion_param

    def allocated_bytes(load):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
            model = load()
        return model, sum(e.self_cpu_memory_usage for e in prof.events() if e.self_cpu_memory_usage > 0)

    def copied_then_replaced():
        model = load_orthrus(str(base_dir), block_size=2, mask_token_id=0, device="cpu")
        view = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if is_diffusion_param(n))
        model.share_ar_view()
        return model, view

    (model, tokenizer), fast_bytes = allocated_bytes(lambda: load_base(base_dir, decoder="fast", device="cpu"))
    _, plain_bytes = allocated_bytes(lambda: AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32))
    (reference, view_bytes), copy_bytes = allocated_bytes(copied_then_replaced)
    assert fast_bytes - plain_bytes < 0.1 * view_bytes  # no copy of the view
    assert copy_bytes - plain_bytes > 0.9 * view_bytes  # the count sees one where it is made
    attn = model.model.layers[0].self_attn
    assert all(getattr(attn, m) is getattr(attn, m.removesuffix("_diff")) for m in DIFFUSION_MODULES)
    assert reference.config.to_dict() == model.config.to_dict()

    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    for sampling, seeds in (
        (SamplingParams(), [None] * len(prompts)),
        (SamplingParams(1.0), list(range(len(prompts)))),
    ):
        answers = [
            serve_batch(
                OrthrusEngine(m, 64, max_batch_size=2, block_sizes=(1,)),
                prompts,
                seeds,
                batch_size=2,
                max_new_tokens=MAX_NEW,
                sampling=sampling,
                eos_ids=eos_token_ids(m, tokenizer),
            )
            for m in (model, reference)
        ]
        assert answers[0] == answers[1] and all(len(a) == MAX_NEW for a in answers[0])


def test_fast_sampling_reproducible_across_resume(base_dir, tmp_path, monkeypatch):
    """Sampled answers depend on the run seed and the prompt's index only: a run interrupted after one shard
    and resumed by two ranks with another batch size writes what one uninterrupted run writes, and the same
    prompt twice gets two draws. All prompts on one seed would answer the duplicates alike."""
    import data.self_distill as sd

    source = tmp_path / "prompts.jsonl"
    source.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS * 2))
    kwargs = dict(chat_template=False, max_new_tokens=4, temperature=1.5, shard_size=4, device="cpu")

    def answers(out):
        return [json.loads(r)["text"] for r in _records(out)]

    one = generate_responses(base_dir, source, tmp_path / "one", batch_size=3, **kwargs)
    assert one["records"] == 10 and len(one["shards"]) == 3
    first = answers(tmp_path / "one")
    assert first[:5] != first[5:]  # duplicates drew differently

    real, calls = sd.serve_batch, []

    def dies_after_first(*a, **k):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(sd, "serve_batch", dies_after_first)
    with pytest.raises(KeyboardInterrupt):
        generate_responses(base_dir, source, tmp_path / "two", batch_size=3, **kwargs)
    monkeypatch.setattr(sd, "serve_batch", real)
    for rank in (0, 1):
        done = generate_responses(base_dir, source, tmp_path / "two", batch_size=2, rank=rank, world_size=2, **kwargs)
    assert done["complete"] and answers(tmp_path / "two") == first

    monkeypatch.setattr(sd, "prompt_seed", lambda seed, index: seed)  # broken: one seed for every prompt
    generate_responses(base_dir, source, tmp_path / "shared", batch_size=3, **kwargs)
    shared = answers(tmp_path / "shared")
    assert shared[:5] == shared[5:]  # the check above fails on it


def test_decoder_is_a_run_parameter(base_dir, prompts_file, tmp_path, monkeypatch):
    """A partial run resumes only with its own decoder (the two sample differently); a bad name fails first."""
    import data.self_distill as sd

    with pytest.raises(ValueError, match="decoder='vllm'"):
        generate_responses(base_dir, prompts_file, tmp_path / "sd", decoder="vllm")
    assert not (tmp_path / "sd").exists()
    monkeypatch.setattr(sd, "serve_batch", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        generate_responses(base_dir, prompts_file, tmp_path / "sd", max_new_tokens=2, device="cpu")
    with pytest.raises(ValueError, match=r"different parameters \['decoder'\]"):
        generate_responses(base_dir, prompts_file, tmp_path / "sd", max_new_tokens=2, device="cpu", decoder="hf")
