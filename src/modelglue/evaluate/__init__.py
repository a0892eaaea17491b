"""Evaluation: built-in synthetic tasks, JSONL tasks, lm-eval-harness, a score cache.

    from modelglue.evaluate import evaluate, evaluate_dir, load_model
    model, tok = load_model("zoo/a_base")
    evaluate(model, tok, "add,rev", split="validation", limit=100)["scores"]

Models are scored through text (`text_lm`): an ordinary model through its tokenizer, a
model-level mixture through its experts' own tokenizers.
"""
from __future__ import annotations

from modelglue.evaluate.core import (cache_dir, evaluate, evaluate_dir, load_model, load_text_lm,
                                     model_fingerprint, score_task)
from modelglue.evaluate.generate import choice_loglikelihoods, greedy_generate
from modelglue.evaluate.tasks import (BUILTIN_TASKS, SPLITS, Task, builtin_task, load_jsonl_task, load_tasks,
                                      sample_train, unmarked_split, whole_file_tasks)
from modelglue.evaluate.textlm import HFTextLM, TextLM, text_lm


def export_lm_eval_tasks(out_dir, tasks=None) -> list[str]:
    """Write lm-eval-harness task YAMLs (and their JSONL data); see modelglue.evaluate.lmeval."""
    from modelglue.evaluate.lmeval import export_lm_eval_tasks as _export

    return _export(out_dir, tasks=tasks)


__all__ = ["HFTextLM", "TextLM", "text_lm", "load_text_lm", "BUILTIN_TASKS", "SPLITS", "Task", "builtin_task", "unmarked_split", "whole_file_tasks", "cache_dir", "choice_loglikelihoods",
           "evaluate", "evaluate_dir", "export_lm_eval_tasks", "greedy_generate", "load_jsonl_task",
           "load_model", "load_tasks", "model_fingerprint", "sample_train", "score_task"]
