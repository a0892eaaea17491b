"""The task suite: built-in synthetic character tasks and user JSONL tasks.

A task is a list of examples plus how to score them:
  - "generate": greedy-decode after `prompt`, exact match against `answer`
    (the text up to the first newline / EOS);
  - "choice": pick the choice with the highest log-likelihood after `prompt`
    (accuracy against `answer`, an index or the text of the right choice).

Built-in tasks are generated from a seed. Every prompt is assigned to a split by a
stable hash, so the validation split (used by the search) and the test split (used
for reports) are disjoint from each other and from anything `sample_train` yields:
a model trained on `sample_train` never saw an evaluation prompt.
"""
from __future__ import annotations

import json
import random
import string
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from modelglue.errors import ModelGlueError

SPLITS = ("validation", "test")
EVAL_SIZE = 200  # examples per split of a built-in task


@dataclass
class Task:
    """A named list of examples. `examples` holds dicts with "prompt" and "answer"
    (and "choices" for kind "choice")."""

    name: str
    examples: list[dict]
    kind: str = "generate"  # "generate" | "choice"
    max_new_tokens: int = 0  # 0: derived from the longest answer
    source: str = "builtin"  # "builtin" or the JSONL path
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.max_new_tokens and self.kind == "generate":
            longest = max((len(e["answer"]) for e in self.examples), default=0)
            self.max_new_tokens = longest + 2  # room for the newline / EOS that stops it


# ----------------------------------------------------------------------------------
# Built-in synthetic tasks. Each generator draws one (prompt, answer) pair; `hard`
# selects the full range (evaluation, fine-tunes) over the short curriculum that the
# demo bases are pretrained on, which leaves fine-tunes room to gain.

def _word(rng: random.Random, lo: int, hi: int, alphabet: str = string.ascii_lowercase) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))


def _add(rng: random.Random, hard: bool) -> tuple[str, str]:
    hi = 59 if hard else 29
    a, b = rng.randint(0, hi), rng.randint(0, hi)
    return f"add {a}+{b}=", str(a + b)


def _sub(rng: random.Random, hard: bool) -> tuple[str, str]:
    hi = 89 if hard else 29
    a, b = rng.randint(0, hi), rng.randint(0, hi)
    a, b = max(a, b), min(a, b)
    return f"sub {a}-{b}=", str(a - b)


def _rev(rng: random.Random, hard: bool) -> tuple[str, str]:
    s = _word(rng, 1, 6 if hard else 4)
    return f"rev {s}=", s[::-1]


def _upper(rng: random.Random, hard: bool) -> tuple[str, str]:
    s = _word(rng, 1, 7 if hard else 4)
    return f"up {s}=", s.upper()


def _sort(rng: random.Random, hard: bool) -> tuple[str, str]:
    s = _word(rng, 2, 6 if hard else 4)
    return f"sort {s}=", "".join(sorted(s))


def _count(rng: random.Random, hard: bool) -> tuple[str, str]:
    s = _word(rng, 1, 8 if hard else 5, "abcd")
    c = rng.choice("abcd")
    return f"cnt {c}:{s}=", str(s.count(c))


def _copy(rng: random.Random, hard: bool) -> tuple[str, str]:
    s = _word(rng, 1, 8 if hard else 5, string.ascii_lowercase + string.digits)
    return f"copy {s}=", s


def _dup(rng: random.Random, hard: bool) -> tuple[str, str]:
    s = _word(rng, 1, 5 if hard else 3)
    return f"dup {s}=", "".join(c + c for c in s)


GENERATORS: dict[str, Callable[[random.Random, bool], tuple[str, str]]] = {
    "add": _add, "sub": _sub, "rev": _rev, "upper": _upper,
    "sort": _sort, "count": _count, "copy": _copy, "dup": _dup,
}
BUILTIN_TASKS = tuple(GENERATORS)


def split_of(prompt: str) -> str | None:
    """The evaluation split a prompt belongs to, or None if it may be trained on.
    One prompt in 8 is held out: half of those validation, half test."""
    h = zlib.crc32(prompt.encode()) % 16
    return "validation" if h == 0 else "test" if h == 1 else None


def sample_train(task: str, rng: random.Random, hard: bool = True) -> tuple[str, str]:
    """One training pair for `task`, never a held-out prompt."""
    gen = GENERATORS[task]
    while True:
        prompt, answer = gen(rng, hard)
        if split_of(prompt) is None:
            return prompt, answer


def builtin_task(name: str, split: str = "validation", n: int = EVAL_SIZE) -> Task:
    """The fixed evaluation examples of a built-in task (same for every call)."""
    if name not in GENERATORS:
        raise ModelGlueError(f"unknown task {name!r} (built-in: {', '.join(BUILTIN_TASKS)}, all)")
    if split not in SPLITS:
        raise ModelGlueError(f"unknown split {split!r} (use validation or test)")
    rng = random.Random(f"{name}:{split}")  # str seeds are stable across runs
    seen: dict[str, str] = {}
    for _ in range(200 * n):  # small spaces run out; stop rather than loop forever
        prompt, answer = GENERATORS[name](rng, True)
        if split_of(prompt) == split:
            seen.setdefault(prompt, answer)
            if len(seen) == n:
                break
    examples = [{"prompt": p, "answer": a} for p, a in seen.items()]
    return Task(name, examples)


# ----------------------------------------------------------------------------------
# User tasks from JSONL: one {"prompt": ..., "answer": ...} per line, or
# {"prompt": ..., "choices": [...], "answer": index | choice text} for multiple choice.
# Like the built-ins, a JSONL task has a validation and a test split, so that a search
# never sees what it is reported on: separate files NAME.validation.jsonl and
# NAME.test.jsonl (either one may be named), or a "split" field on each line, or else
# a stable hash of the prompt sends half the lines to each split.

def split_files(path: Path) -> tuple[str, dict[str, Path]] | None:
    """(NAME, {split: file}) when `path` is one of a NAME.validation.jsonl / NAME.test.jsonl pair."""
    for split in SPLITS:
        suffix = f".{split}.jsonl"
        if path.name.endswith(suffix):
            name = path.name[: -len(suffix)]
            return name, {s: path.with_name(f"{name}.{s}.jsonl") for s in SPLITS}
    return None


def load_jsonl_task(path: str | Path, split: str | None = None) -> Task:
    """A JSONL task; `split` (validation or test) picks that split's examples, None all."""
    path = Path(path)
    if split is not None and split not in SPLITS:
        raise ModelGlueError(f"unknown split {split!r} (use validation or test)")
    if (named := split_files(path)) is None:
        return _read_jsonl(path, path.stem, split, by_line=True)
    name, pair = named
    if split is None:
        parts = [_read_jsonl(pair[s], name, None, by_line=False) for s in SPLITS]
        return Task(name, parts[0].examples + parts[1].examples, kind=parts[0].kind, source=str(path))
    if not pair[split].is_file():
        raise ModelGlueError(f"task file not found: {pair[split]} (the {split} split of {path})")
    return _read_jsonl(pair[split], name, split, by_line=False)


def _read_jsonl(path: Path, name: str, split: str | None, by_line: bool) -> Task:
    """The examples of one file; with by_line, only those of `split` (a line's "split"
    field, else the hash of its prompt)."""
    if not path.is_file():
        raise ModelGlueError(f"task file not found: {path}")
    examples: list[dict] = []
    kinds: set[str] = set()
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ModelGlueError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise ModelGlueError(f"{where}: expected an object with a string \"prompt\"")
        if "answer" not in row:
            raise ModelGlueError(f"{where}: missing \"answer\"")
        row_split = row.get("split")
        if row_split is not None and row_split not in SPLITS:
            raise ModelGlueError(f"{where}: \"split\" must be validation or test, got {row_split!r}")
        if by_line and split is not None and (row_split or _hash_split(row["prompt"])) != split:
            continue
        if "choices" in row:
            choices = row["choices"]
            if not (isinstance(choices, list) and choices and all(isinstance(c, str) for c in choices)):
                raise ModelGlueError(f"{where}: \"choices\" must be a non-empty list of strings")
            ans = row["answer"]
            if isinstance(ans, bool) or not isinstance(ans, (int, str)):
                raise ModelGlueError(f"{where}: \"answer\" must be a choice index or a choice text")
            if isinstance(ans, str):
                if ans not in choices:
                    raise ModelGlueError(f"{where}: answer {ans!r} is not one of the choices")
                ans = choices.index(ans)
            if not 0 <= ans < len(choices):
                raise ModelGlueError(f"{where}: answer index {ans} out of range for {len(choices)} choices")
            examples.append({"prompt": row["prompt"], "choices": choices, "answer": ans})
            kinds.add("choice")
        else:
            if not isinstance(row["answer"], str):
                raise ModelGlueError(f"{where}: \"answer\" must be a string")
            examples.append({"prompt": row["prompt"], "answer": row["answer"]})
            kinds.add("generate")
    if not examples:
        raise ModelGlueError(f"{path}: no examples" + (f" in its {split} split" if split else ""))
    if len(kinds) > 1:
        raise ModelGlueError(f"{path}: mixes generation and multiple-choice lines; use one kind per file")
    return Task(name, examples, kind=kinds.pop(), source=str(path), meta={"split": split} if split else {})


def _hash_split(prompt: str) -> str:
    return SPLITS[zlib.crc32(prompt.encode()) % 2]


def is_task_file(item: str) -> bool:
    return item.endswith(".jsonl") or "/" in item or Path(item).is_file()


def unmarked_split(path: str | Path) -> str | None:
    """For a JSONL task file without split markers (no NAME.validation/test.jsonl pair,
    no "split" field on any line): one line saying how search and glue split it. None
    for a file that marks its splits."""
    path = Path(path)
    if split_files(path) is not None or not path.is_file():
        return None
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # the task loader reports what is wrong with the file, with its line
    if any(not isinstance(r, dict) or not isinstance(r.get("prompt"), str) or r.get("split") is not None
           for r in rows):
        return None
    n_val = sum(1 for r in rows if _hash_split(r["prompt"]) == "validation")
    return (f"{path.name} has no split markers: a stable hash of each prompt sends {n_val} lines to validation "
            f"(searched) and {len(rows) - n_val} to test (reported)")


def whole_file_tasks(spec: str) -> list[str | Task]:
    """The spec with every unmarked JSONL file replaced by a task of all its lines (what
    `modelglue eval FILE.jsonl` scores, as every evaluator does); the rest unchanged."""
    out: list[str | Task] = []
    for item in (i.strip() for i in spec.split(",")):
        if item and not item.startswith("lm_eval:") and is_task_file(item) and unmarked_split(item) is not None:
            out.append(load_jsonl_task(item, None))
        elif item:
            out.append(item)
    return out


def load_tasks(spec: str | list[str] | Task | list[Task], split: str = "validation") -> list[Task]:
    """Resolve a task spec: "all", built-in names, JSONL paths (comma separated or a
    list), or Task objects (passed through). `lm_eval:NAME` entries are not resolved
    here (see `modelglue.evaluate.lmeval`)."""
    items = spec.split(",") if isinstance(spec, str) else list(spec) if isinstance(spec, (list, tuple)) else [spec]
    tasks: list[Task] = []
    for item in items:
        if isinstance(item, Task):
            tasks.append(item)
            continue
        item = item.strip()
        if not item:
            continue
        if item == "all":
            tasks += [builtin_task(n, split) for n in BUILTIN_TASKS]
        elif is_task_file(item):
            tasks.append(load_jsonl_task(item, split))
        else:
            tasks.append(builtin_task(item, split))
    if not tasks:
        raise ModelGlueError("no tasks given")
    return tasks
