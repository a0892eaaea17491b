"""The glue report: results.json, report.md and a self-contained report.html with plots."""
from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path

KIND_LABEL = {
    "single": "single model", "uniform-merge": "uniform merge of a cluster", "merge-all": "merge of the largest group",
    "ffn-moe": "FFN-level MoE", "cluster-merge": "searched merge of a cluster", "model-glue": "Model-GLUE (final)",
}


def _atomic_write(path: Path, data: str | bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def results_chart(results: dict, path: Path) -> Path:
    """Test mean of every entry as horizontal bars, the final model and best single highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = sorted(results["entries"], key=lambda e: e["test_mean"])
    colors = {"single": "#9aa5b1", "uniform-merge": "#f0b429", "merge-all": "#de911d", "ffn-moe": "#8e44ad",
              "cluster-merge": "#2680c2", "model-glue": "#27ab83"}
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(entries) + 1.4))
    ax.barh([e["name"] for e in entries], [e["test_mean"] for e in entries],
            color=[colors.get(e["kind"], "#888") for e in entries])
    ax.axvline(results["best_single"]["test_mean"], color="#333", ls="--", lw=1, label="best single model")
    for i, e in enumerate(entries):
        ax.text(e["test_mean"] + 0.005, i, f"{e['test_mean']:.3f}", va="center", fontsize=7)
    ax.set_xlabel("test mean accuracy")
    ax.set_xlim(0, min(1.0, max(e["test_mean"] for e in entries) + 0.12))
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Model-GLUE against its baselines (test split)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _table_md(results: dict) -> str:
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
    for search_dir in sorted((out / "clusters").glob("cluster*/search-*")):
        for png in sorted(search_dir.glob("*.png")):
            label = "Pareto front" if "front" in png.name else "Search convergence"
            found.append((f"{label}: {search_dir.parent.name}, {search_dir.name[7:]}", png))
    found.append(("Results", out / "results.png"))
    return [(t, p) for t, p in found if p.is_file()]


def write_report(results: dict, out: Path) -> None:
    out = Path(out)
    results_chart(results, out / "results.png")
    final, best = results["final"], results["best_single"]
    summary = (f"Final model **{final['name']}** ({final['path']}): test mean {final['test_mean']:.3f}; best single "
               f"model {best['name']}: {best['test_mean']:.3f} (gain {final['gain_over_best_single']:+.3f}).")
    clusters = "\n".join(f"- cluster {i} (base {Path(b).name}): " + ", ".join(Path(p).name for p in c)
                         for i, (c, b) in enumerate(zip(results["clusters"], results["cluster_bases"])))
    notes = "\n".join(f"- {e['name']}: {e['note']}" for e in results["entries"] if e.get("note"))
    images = _images(out)
    md = "\n\n".join([
        "# Model-GLUE report", summary, "## Clusters", clusters, "## Results (test split)", _table_md(results),
        "## Notes", notes or "-",
        "## Figures", "\n".join(f"![{t}]({p.relative_to(out)})" for t, p in images),
        f"Total time {results['seconds']} s. Full data in results.json.",
    ]) + "\n"
    _atomic_write(out / "report.md", md)

    def img(path: Path) -> str:
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()

    tasks = results["tasks"]
    rows = "".join(
        f"<tr class='{e['kind']}'><td>{html.escape(e['name'])}</td><td>{html.escape(KIND_LABEL.get(e['kind'], e['kind']))}</td>"
        + "".join(f"<td>{e['test'].get(t, float('nan')):.3f}</td>" for t in tasks)
        + f"<td><b>{e['test_mean']:.3f}</b></td><td>{e['validation_mean']:.3f}</td></tr>"
        for e in sorted(results["entries"], key=lambda e: -e["test_mean"]))
    figures = "".join(f"<figure><img alt='{html.escape(t)}' src='{img(p)}'><figcaption>{html.escape(t)}</figcaption></figure>"
                      for t, p in images)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Model-GLUE report</title><style>
body{{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}}
table{{border-collapse:collapse;font-size:13px}} td,th{{border:1px solid #ddd;padding:3px 7px;text-align:right}}
td:first-child,td:nth-child(2),th:first-child,th:nth-child(2){{text-align:left}} tr.model-glue{{background:#e3f9e5;font-weight:bold}}
figure{{display:inline-block;margin:1em;vertical-align:top}} img{{max-width:520px;border:1px solid #eee}}
</style></head><body><h1>Model-GLUE report</h1>
<p>{html.escape(summary.replace('**', ''))}</p><h2>Clusters</h2><ul>{''.join(
        f'<li>cluster {i} (base {html.escape(Path(b).name)}): {html.escape(", ".join(Path(p).name for p in c))}</li>'
        for i, (c, b) in enumerate(zip(results['clusters'], results['cluster_bases'])))}</ul>
<h2>Results (test split)</h2><table><tr><th>model</th><th>kind</th>{''.join(f'<th>{html.escape(t)}</th>' for t in tasks)}
<th>test mean</th><th>validation mean</th></tr>{rows}</table><h2>Figures</h2>{figures}</body></html>"""
    _atomic_write(out / "report.html", page)
    _atomic_write(out / "results.json", json.dumps(results, indent=2) + "\n")
