"""Router data: which prompts belong to which expert.

A router data file is JSONL, one object per line:

    {"prompt": "12+7=", "expert": 0}                  # a positive prompt of expert 0
    {"prompt": "abc->", "expert": "a_rev"}            # experts may be named (directory name)
    {"prompt": "12+7=", "expert": 1, "negative": true}  # a prompt expert 1 should NOT get
    {"prompt": "12+7=", "completion": "19"}           # no label: the expert that gives the
                                                      # completion the highest log-likelihood owns it
    {"prompt": "...", "expert": 0, "split": "test"}   # held out: used only to report accuracy

Lines without "split" are split deterministically: every fourth labelled prompt of an
expert is held out for the accuracy report (when the expert has at least four), and
the router that is saved is then refitted on every line.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from modelglue.errors import ModelGlueError


@dataclass
class RouterExample:
    prompt: str
    expert: int | None = None  # None until labelled from `completion`
    negative: bool = False
    completion: str | None = None
    split: str = "train"  # "train" | "test"


def _resolve_expert(value, names: list[str], where: str) -> int:
    if isinstance(value, bool):
        raise ModelGlueError(f"{where}: 'expert' must be an index or a name, not a boolean")
    if isinstance(value, int):
        if not 0 <= value < len(names):
            raise ModelGlueError(f"{where}: expert index {value} out of range (there are {len(names)} experts)")
        return value
    if isinstance(value, str):
        if value in names:
            return names.index(value)
        if value.isdigit() and int(value) < len(names):
            return int(value)
        raise ModelGlueError(f"{where}: unknown expert {value!r} (known: {', '.join(names)})")
    raise ModelGlueError(f"{where}: 'expert' must be an index or a name")


def parse_router_examples(rows: list[dict], expert_names: list[str], source: str = "router data") -> list[RouterExample]:
    """Validate dict rows (the JSONL objects) into RouterExamples and assign held-out splits."""
    out: list[RouterExample] = []
    explicit_split = False
    for i, row in enumerate(rows, 1):
        where = f"{source}:{i}"
        if not isinstance(row, dict):
            raise ModelGlueError(f"{where}: expected a JSON object")
        prompt = row.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise ModelGlueError(f"{where}: 'prompt' must be a non-empty string")
        completion = row.get("completion")
        if completion is not None and not isinstance(completion, str):
            raise ModelGlueError(f"{where}: 'completion' must be a string")
        expert = row.get("expert")
        if expert is None and completion is None:
            raise ModelGlueError(f"{where}: give 'expert' (index or name) or a 'completion' to label it by")
        split = row.get("split", None)
        if split is not None:
            if split not in ("train", "test"):
                raise ModelGlueError(f"{where}: 'split' must be 'train' or 'test'")
            explicit_split = True
        out.append(RouterExample(
            prompt=prompt,
            expert=None if expert is None else _resolve_expert(expert, expert_names, where),
            negative=bool(row.get("negative", False)),
            completion=completion,
            split=split or "train",
        ))
    if not out:
        raise ModelGlueError(f"{source}: no router examples")
    if not explicit_split:
        assign_holdout(out)
    return out


def assign_holdout(examples: list[RouterExample], every: int = 4) -> None:
    """Hold out every `every`-th positive prompt of each expert (deterministic, so runs
    are reproducible); experts with fewer than `every` prompts keep all for training."""
    by_expert: dict[int | None, list[RouterExample]] = {}
    for ex in examples:
        if not ex.negative:
            by_expert.setdefault(ex.expert, []).append(ex)
    for group in by_expert.values():
        if len(group) >= every:
            for j, ex in enumerate(group):
                ex.split = "test" if j % every == every - 1 else "train"


def load_router_data(path: str | Path, expert_names: list[str]) -> list[RouterExample]:
    path = Path(path)
    if not path.is_file():
        raise ModelGlueError(f"router data file not found: {path}")
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ModelGlueError(f"{path}:{i}: invalid JSON ({exc.msg})") from None
    return parse_router_examples(rows, expert_names, str(path))
