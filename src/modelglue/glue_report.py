"""The glue report: results.json, report.md and a self-contained report.html with plots."""
from __future__ import annotations

import base64
import json
from pathlib import Path

from modelglue.io.paths import atomic_write

KIND_LABEL = {
    "single": "single model", "uniform-merge": "uniform merge of a cluster", "merge-all": "merge of the largest group",
    "ffn-moe": "FFN-level MoE", "cluster-merge": "searched merge of a cluster", "model-glue": "Model-GLUE (final)",
    "aligned-merge": "union-tokenizer merge of aligned clusters",
}


KIND_COLOR = {"single": "#9aa5b1", "uniform-merge": "#f0b429", "merge-all": "#de911d", "ffn-moe": "#8e44ad",
              "cluster-merge": "#2680c2", "model-glue": "#27ab83", "aligned-merge": "#3ebd93"}


def results_chart(results: dict, path: Path) -> Path:
    """Test mean of every entry as horizontal bars, the final model and best single highlighted."""
    from matplotlib.figure import Figure  # the object API: no pyplot state, no display
    from matplotlib.patches import Patch

    entries = sorted(results["entries"], key=lambda e: e["test_mean"])
    fig = Figure(figsize=(8, 0.34 * len(entries) + 1.6))
    ax = fig.add_subplot()
    ax.barh([e["name"] for e in entries], [e["test_mean"] for e in entries],
            color=[KIND_COLOR.get(e["kind"], "#888") for e in entries])
    line = ax.axvline(results["best_single"]["test_mean"], color="#333", ls="--", lw=1)
    for i, e in enumerate(entries):
        ax.text(e["test_mean"] + 0.005, i, f"{e['test_mean']:.3f}", va="center", fontsize=8)
    kinds = list(dict.fromkeys(e["kind"] for e in reversed(entries)))
    ax.legend([Patch(color=KIND_COLOR.get(k, "#888")) for k in kinds] + [line],
              [KIND_LABEL.get(k, k) for k in kinds] + ["best single model"], loc="lower right", fontsize=8)
    ax.set_xlabel("test mean accuracy")
    ax.set_xlim(0, min(1.0, max(e["test_mean"] for e in entries) + 0.12))
    ax.set_title("Model-GLUE against its baselines (test split)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def table_md(results: dict) -> str:
    tasks = results["tasks"]
    head = "| model | kind | " + " | ".join(tasks) + " | test mean | validation mean |"
    rows = [head, "|" + "---|" * (len(tasks) + 4)]
    for e in sorted(results["entries"], key=lambda e: -e["test_mean"]):
        cells = [f"{e['test'].get(t, float('nan')):.3f}" for t in tasks]
        name = f"**{e['name']}**" if e["kind"] == "model-glue" else e["name"]
        rows.append(f"| {name} | {KIND_LABEL.get(e['kind'], e['kind'])} | " + " | ".join(cells)
                    + f" | {e['test_mean']:.3f} | {e['validation_mean']:.3f} |")
    return "\n".join(rows)


def _images(out: Path) -> list[tuple[str, Path]]:
    """Every picture the pipeline made, in reading order."""
    found = [(title, out / "analysis" / name) for title, name in
             (("Similarity of the models", "heatmap.png"), ("Clustering dendrogram", "dendrogram.png"))]
    for search_dir in sorted((out / "clusters").glob("cluster*/search-*")) + sorted((out / "clusters").glob("cluster*/pareto")):
        for png in sorted(search_dir.glob("*.png")):
            label = "Pareto front" if "front" in png.name else "Search convergence"
            found.append((f"{label}: {search_dir.parent.name}, {search_dir.name.removeprefix('search-')}", png))
    found.append(("Results", out / "results.png"))
    return [(t, p) for t, p in found if p.is_file()]


def summary_lines(results: dict) -> list[str]:
    final, best = results["final"], results["best_single"]
    lines = [f"Final model **{final['name']}** ({final['path']}): test mean {final['test_mean']:.3f}; best single "
             f"model {best['name']}: {best['test_mean']:.3f} (gain {final['gain_over_best_single']:+.3f})."]
    ab = results.get("ablation")
    if ab:
        mix = ab["mixture"]
        lines.append(f"Merging added {mix['merging_adds_test']:+.3f} (the same mixture of each cluster's best member: "
                     f"{mix['of_best_members_test']:.3f}); routing added "
                     f"{mix['of_best_members_test'] - best['test_mean']:+.3f} over the best single model.")
    return lines


def ablation_md(ab: dict) -> str:
    rows = ["| cluster | members | best member | its test mean | cluster model | difference | merge | non-zero weights |",
            "|---|---|---|---|---|---|---|---|"]
    for r in ab["clusters"]:
        rows.append(f"| {r['cluster']} | {r['members']} | {r['best_member']} | {r['best_member_test']:.3f} | "
                    f"{r['cluster_model_test']:.3f} | {r['delta_test']:+.3f} | {r['method'] or 'none (best member kept)'} | "
                    f"{r['nonzero_models']} of {r['members']} ({100 * r['nonzero_share']:.0f}%) |")
    m = ab["mixture"]
    rows.append(f"| mixture | | of best members | {m['of_best_members_test']:.3f} | {m['of_cluster_models_test']:.3f} | "
                f"{m['merging_adds_test']:+.3f} | of cluster models | |")
    return "\n".join(rows)


def join_lines(results: dict) -> list[str]:
    """Which models merge directly (one compatibility group each), which after aligning
    their vocabularies, which only mix, and what glue did with each."""
    levels = results.get("merge_levels")
    if not levels:
        return []
    direct = "; ".join(f"group {g}: " + ", ".join(Path(p).name for p in models)
                       for g, models in enumerate(levels["direct"]))
    aligned = [f"aligned family {a['family']}: {a['note']}" for a in results.get("aligned_merges") or []]
    return [f"merge directly (one compatibility group each): {direct}", *results.get("join_notes", []), *aligned]


def _href(path: str, out: Path) -> str | None:
    """A link from the report to a model directory (relative where it lies under --out)."""
    if not path:
        return None
    p = Path(path).resolve()
    try:
        return p.relative_to(out.resolve()).as_posix() + "/"
    except ValueError:
        return p.as_uri() + "/"


def _recipe_href(path: str, out: Path) -> str | None:
    if path and (Path(path) / "mergekit_config.yml").is_file():
        return (_href(path, out) or "") + "mergekit_config.yml"
    return None


def write_report(results: dict, out: Path) -> None:
    """report.md, report.html (self-contained: images inlined) and results.json."""
    import jinja2

    out = Path(out)
    results_chart(results, out / "results.png")
    summary = summary_lines(results)
    clusters = "\n".join(f"- cluster {i} (base {Path(b).name}): " + ", ".join(Path(p).name for p in c)
                         for i, (c, b) in enumerate(zip(results["clusters"], results["cluster_bases"])))
    notes = "\n".join(f"- {e['name']}: {e['note']}" for e in results["entries"] if e.get("note"))
    joins = join_lines(results)
    images = _images(out)
    ab = results.get("ablation")
    md = "\n\n".join([
        "# Model-GLUE report", *summary, "## Clusters", clusters,
        *(["## How the clusters can be joined", "\n".join(f"- {line}" for line in joins)] if joins else []),
        *(["## What merging added (test split)", ablation_md(ab)] if ab else []),
        "## Results (test split)", table_md(results),
        "## Notes", notes or "-",
        "## Figures", "\n".join(f"![{t}]({p.relative_to(out)})" for t, p in images),
        f"Total time {results['seconds']} s. Full data in results.json.",
    ]) + "\n"
    atomic_write(out / "report.md", md)

    def img(path: Path) -> str:
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()

    env = jinja2.Environment(loader=jinja2.PackageLoader("modelglue", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    page = env.get_template("report.html.j2").render(
        final=results["final"], best_single=results["best_single"], ablation=ab, pareto=results.get("pareto"),
        routing_adds=(ab["mixture"]["of_best_members_test"] - results["best_single"]["test_mean"]) if ab else 0.0,
        clusters=[{"base": Path(b).name, "members": [Path(p).name for p in c]}
                  for c, b in zip(results["clusters"], results["cluster_bases"])],
        joins=joins, tasks=results["tasks"], kind_label=KIND_LABEL,
        entries=[{**e, "href": _href(e["path"], out), "recipe": _recipe_href(e["path"], out)}
                 for e in sorted(results["entries"], key=lambda e: -e["test_mean"])],
        notes=[e for e in results["entries"] if e.get("note")],
        # the heatmap (one cell per model pair, labelled) and the results chart need the page's width
        figures=[{"title": t, "src": img(p), "wide": p.name in ("heatmap.png", "results.png")} for t, p in images],
        seconds=results["seconds"])
    atomic_write(out / "report.html", page)
    atomic_write(out / "results.json", json.dumps(results, indent=2) + "\n")
