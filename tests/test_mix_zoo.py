"""On the tiny demo zoo: a model-level mixture of family A's best model and family C
(another architecture, the only one that knows `sub`) beats either alone on the union
of their tasks."""
from __future__ import annotations

import json
import random

import pytest

LIMIT = 100
MARGIN = 0.05  # a task leaves the stronger expert only for a clearly better one


@pytest.mark.slow
def test_model_mixture_of_a_and_c_beats_both(tiny_zoo, tmp_path):
    import modelglue  # noqa: F401
    from modelglue.evaluate import evaluate, evaluate_dir, load_model, sample_train
    from modelglue.mixture import mix

    manifest = json.loads((tiny_zoo / "zoo.json").read_text())
    tasks = manifest["tasks"]
    scores = json.loads((tiny_zoo / "scores.json").read_text())["scores"]
    fam = {m["name"]: m for m in manifest["models"]}
    best_a = max((n for n in fam if fam[n]["family"] == "A"), key=lambda n: sum(scores[n].values()))
    c = next(n for n in fam if fam[n]["family"] == "C")
    experts = [tiny_zoo / best_a, tiny_zoo / c]
    # Each task's owner, from the validation split (never the test split): A, which is
    # stronger overall, unless C is clearly better on that task (ties and near-ties
    # would otherwise flip on noise).
    val = [evaluate_dir(e, tasks, split="validation", limit=LIMIT)["scores"] for e in experts]
    owner = {t: int(val[1][t] > val[0][t] + MARGIN) for t in tasks}
    assert owner[manifest["c_task"]] == 1
    rng = random.Random(0)
    rows = [{"prompt": sample_train(t, rng)[0], "expert": owner[t]} for t in tasks for _ in range(16)]
    rep = mix("model", experts, tmp_path / "mm", router="trained", router_data=rows)
    assert rep.routing_accuracy >= 0.95
    model, tok = load_model(tmp_path / "mm")
    mixed = evaluate(model, tok, tasks, split="test", limit=LIMIT)["mean"]
    alone = [evaluate_dir(e, tasks, split="test", limit=LIMIT)["mean"] for e in experts]
    print(f"mixture {mixed:.3f} vs {best_a} {alone[0]:.3f}, {c} {alone[1]:.3f}")
    assert mixed > max(alone)
