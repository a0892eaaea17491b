"""Shared pytest fixtures. Other test files may append fixtures below."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Tests run as `pytest -n 2` on 2 shared cores: one torch thread per worker. More threads
# than free cores make torch's small ops many times slower, not faster.
torch.set_num_threads(1)

# One Ray authentication mode for every Ray test of the session, set before any ray.init:
# a local ray.init() otherwise switches its process to token auth (and writes
# ~/.ray/auth_token), after which that process cannot drive a cluster that `ray start`
# began without a token ("Missing authorization header": its actors die at creation).
os.environ["RAY_AUTH_MODE"] = "disabled"


@pytest.fixture(scope="session")
def tiny_zoo() -> Path:
    """The tiny demo zoo (built once, then cached across sessions).

    Built by `modelglue.demo.demo_zoo(scale="tiny")` under
    `$XDG_CACHE_HOME/modelglue/demo-zoo-tiny-seed0-<hash of the demo source>/`, behind a
    file lock so pytest-xdist workers build it once. The first build takes minutes (about 2 min
    of CPU on one thread; 4-11 min wall measured on 2 shared cores); later sessions reuse
    it. Layout:

        zoo.json        manifest: {"tasks": [...7 task names], "base_tasks": [6 names],
                        "c_task": "sub", "models": [{"name", "path", "family" (A|B|C),
                        "role" (base|gentle|harsh), "arch" (llama|qwen3), "parent",
                        "train_tasks", "lr", "steps", ...}]}
        scores.json     {"split": "test", "scores": {model: {task: exact_match}}}
        a_base/         llama, family A base (short curriculum of add rev upper sort count copy)
        a_sort/ a_rev/ a_count/  gentle fine-tunes of a_base (lr 1e-3, 50% replay)
        a_harsh_add/    harsh fine-tune of a_base (lr 3e-3, add only: forgets the rest)
        b_base/         llama, same shape, another seed (not weight-mergeable with A)
        b_sort/         gentle fine-tune of b_base
        c_base/         qwen3 (hidden 96 vs llama 64): not mergeable with A or B; the only model that knows `sub`

    Each model dir is an ordinary Hugging Face dir (config.json, model.safetensors,
    tokenizer.json + tokenizer_config.json, generation_config.json); all share one
    char-level tokenizer. Treat the zoo as read-only: copy a model before changing it.
    """
    from modelglue.demo import demo_zoo

    return demo_zoo(scale="tiny")


@pytest.fixture(scope="module")
def ray_exclusive():
    """Holds a machine-wide lock while a module's Ray tests run.

    The cluster tests end with `ray stop --force`, which stops every Ray process of this
    user, and pytest-xdist may put Ray tests on two workers at once (its `loadgroup`
    grouping is silently ignored by pytest 9.2, which no longer reads `item._nodeid`).
    A file lock serialises them whatever the scheduler does.
    """
    import tempfile

    from filelock import FileLock

    with FileLock(str(Path(tempfile.gettempdir()) / "modelglue-tests-ray.lock")):
        yield
