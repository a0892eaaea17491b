"""The built-in demo zoo: tiny char-level LMs in families, trained on the CPU in minutes."""
from __future__ import annotations

from modelglue.demo.train import build_tokenizer
from modelglue.demo.zoo import BASE_TASKS, C_TASK, FAMILY_TASKS, build_demo_zoo, demo_zoo, format_table, zoo_specs

__all__ = ["BASE_TASKS", "C_TASK", "FAMILY_TASKS", "build_demo_zoo", "build_tokenizer", "demo_zoo", "format_table", "zoo_specs"]
