"""Scorers: recipe -> {task: score}. The search never looks inside one.

A scorer is a plain picklable object, called as `scorer(recipe, split)`. It sets up its
heavy state (resident input tensors, a live model) lazily on first call, so the same
object can be shipped to Ray workers and each worker builds its own.

- `MergeScorer`: merges the recipe in memory into one resident model (no disk) and runs
  the evaluator on the chosen tasks; the default.

Multi-fidelity: a split may name a subset, "validation@0.25" (see `parse_split`). A
scorer that can score subsets says how small one may be with `smallest_subset()`; the
search then screens candidates on subsets and promotes the promising ones.
- `WeightDistanceScorer`: a synthetic fitness from the merged weights alone (how close
  they are to per-task target mixtures). Deterministic and fast: for tests and for
  studying strategies without evaluation noise.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Protocol, Sequence

import torch

from modelglue.errors import ModelGlueError
from modelglue.search.backends import parse_split

# A subset smaller than this many examples per task ranks candidates mostly by noise.
MIN_SUBSET_EXAMPLES = 16


class Scorer(Protocol):
    def __call__(self, recipe: dict[str, Any], split: str) -> dict[str, float]: ...

    def describe(self) -> dict[str, Any]:
        """What defines this scorer's numbers (stored in the journal: resuming with a
        different scorer is refused)."""
        ...


class MergeScorer:
    """Merge in memory into one resident model and evaluate it.

    `tasks` is any spec `modelglue.evaluate.evaluate` accepts (built-in names, JSONL
    paths, `lm_eval:NAME`). The resident model is loaded once from `reference` (any
    input with the output's architecture); each call overwrites its weights in place.
    `threads` defaults to 1: small models gain little from more, and oversubscribed torch
    threads on a shared CPU run many times slower (None: torch's default).
    """

    def __init__(self, tasks: str | Sequence[str], reference: str | Path, *, limit: int | None = None,
                 device: str = "cpu", batch_size: int = 256, merge_seed: int = 0, threads: int | None = 1):
        self.tasks = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else [str(t) for t in tasks]
        self.tasks = [t for t in self.tasks if t]
        if not self.tasks:
            raise ModelGlueError("--tasks: no tasks given")
        self.reference = str(reference)
        self.limit, self.device, self.batch_size = limit, device, batch_size
        self.merge_seed, self.threads = merge_seed, threads
        self._state: dict[str, Any] | None = None
        self._task_cache: dict[str, list] = {}

    def __getstate__(self) -> dict[str, Any]:  # ship the settings, never the loaded model
        return {**self.__dict__, "_state": None, "_task_cache": {}}

    def describe(self) -> dict[str, Any]:
        return {"scorer": "merge+evaluate", "tasks": self.tasks, "limit": self.limit}

    def task_names(self) -> list[str]:
        """The keys of the returned score dicts, in order (loads nothing heavy)."""
        from modelglue.evaluate import load_tasks

        names = []
        for t in self.tasks:
            names += [f"lm_eval:{t.split(':', 1)[1]}"] if t.startswith("lm_eval:") else [x.name for x in load_tasks(t)]
        return names

    def _setup(self) -> dict[str, Any]:
        if self._state is None:
            from modelglue.evaluate import load_model
            from modelglue.merge import InMemoryMerger

            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # the search shows its own progress
            if self.threads:
                torch.set_num_threads(self.threads)
            from modelglue.io.lora import model_directory

            # the skeleton every merge is written into: a MODEL+ADAPTER reference's MODEL
            model, tokenizer = load_model(model_directory(self.reference), device=self.device, dtype=torch.float32)
            self._state = {"model": model, "tokenizer": tokenizer, "merger": InMemoryMerger(device=self.device)}
        return self._state

    def _ours(self, split: str) -> list:
        """Our task objects of a whole split, `limit` applied, built once (built-in tasks
        are generated, not read)."""
        from modelglue.evaluate import load_tasks

        cache = self._task_cache
        if split not in cache:
            ours = [t for t in self.tasks if not t.startswith("lm_eval:")]
            cache[split] = [dataclasses.replace(t, examples=t.examples[:self.limit] if self.limit else t.examples)
                            for t in (load_tasks(ours, split) if ours else [])]
        return cache[split]

    def tasks_for(self, split: str) -> list:
        """What to evaluate on `split`: a subset split keeps the first fraction of each
        task's examples (at least one)."""
        name, fraction = parse_split(split)
        lm = [t for t in self.tasks if t.startswith("lm_eval:")]
        if fraction < 1 and lm:
            raise ModelGlueError("lm_eval tasks cannot be scored on a subset of their examples")
        ours = [t if fraction >= 1 else
                dataclasses.replace(t, examples=t.examples[:max(1, math.ceil(fraction * len(t.examples)))])
                for t in self._ours(name)]
        return ours + lm

    def smallest_subset(self) -> float:
        """The smallest fraction of the validation split that still leaves every task
        MIN_SUBSET_EXAMPLES examples (1.0: no subsets, e.g. with lm_eval tasks)."""
        if any(t.startswith("lm_eval:") for t in self.tasks):
            return 1.0
        sizes = [len(t.examples) for t in self._ours("validation")]
        return min(1.0, max(MIN_SUBSET_EXAMPLES / max(1, n) for n in sizes)) if sizes else 1.0

    def __call__(self, recipe: dict[str, Any], split: str) -> dict[str, float]:
        from modelglue.evaluate import evaluate

        st = self._setup()
        tasks = self.tasks_for(split)
        st["merger"].merge_into(st["model"], recipe, seed=self.merge_seed)
        res = evaluate(st["model"], st["tokenizer"], tasks, split=parse_split(split)[0], limit=None,
                       batch_size=self.batch_size)
        return {k: float(v) for k, v in res["scores"].items()}


class WeightDistanceScorer:
    """Synthetic tasks scored from the merged weights: task k scores
    exp(-||theta - target_k|| / ||target_k - anchor||), where target_k is a fixed mixture
    of the inputs. The same merge always gets the same score, and no model is run."""

    def __init__(self, targets: dict[str, dict[str, float]], *, split_noise: float = 0.0, subset_noise: float = 0.01,
                 merge_seed: int = 0, delay: float = 0.0):
        """`targets`: task -> {model path: weight} (normalised). `split_noise` shifts the
        test-split scores a little, deterministically, so the two splits differ.
        A subset split ("validation@f") adds deterministic noise of about
        subset_noise * sqrt(1/f - 1), as a sample of fewer examples would."""
        self.targets = {t: {str(Path(m).resolve()): float(w) for m, w in mix.items()} for t, mix in targets.items()}
        self.split_noise, self.subset_noise, self.merge_seed, self.delay = split_noise, subset_noise, merge_seed, delay
        self._state: dict[str, Any] | None = None

    def smallest_subset(self) -> float:
        return 1 / 16

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_state": None}

    def describe(self) -> dict[str, Any]:
        return {"scorer": "weight-distance", "targets": self.targets, "split_noise": self.split_noise,
                "subset_noise": self.subset_noise}

    def task_names(self) -> list[str]:
        return list(self.targets)

    def _flat(self, recipe: dict[str, Any]) -> torch.Tensor:
        from modelglue.merge import InMemoryMerger

        if self._state is None:
            self._state = {"merger": InMemoryMerger(), "targets": {}}
        sd = self._state["merger"].state_dict(recipe, seed=self.merge_seed)
        return torch.cat([sd[k].flatten().double() for k in sorted(sd) if sd[k].is_floating_point()])

    def __call__(self, recipe: dict[str, Any], split: str) -> dict[str, float]:
        if self.delay:
            time.sleep(self.delay)
        theta = self._flat(recipe)
        out = {}
        for task, mix in self.targets.items():
            if task not in self._state["targets"]:
                models = [{"model": m, "parameters": {"weight": w}} for m, w in mix.items()]
                target = self._flat({"merge_method": "linear", "models": models, "dtype": "float64"})
                anchor = self._flat({"merge_method": "linear", "models": [{"model": m, "parameters": {"weight": 1.0}}
                                                                           for m in mix], "dtype": "float64"})
                self._state["targets"][task] = (target, float((target - anchor).norm()) or 1.0)
            target, scale = self._state["targets"][task]
            score = float(torch.exp(-(theta - target).norm() / scale))
            name, fraction = parse_split(split)
            digest = hashlib.sha256(json.dumps([recipe, task, split], sort_keys=True).encode()).digest()
            if name != "validation" and self.split_noise:
                score = max(0.0, score + self.split_noise * (digest[0] / 255 - 0.5))
            if fraction < 1 and self.subset_noise:
                score = max(0.0, score + self.subset_noise * math.sqrt(1 / fraction - 1) * 2 * (digest[1] / 255 - 0.5))
            out[task] = round(score, 6)
        return out
