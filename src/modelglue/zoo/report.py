"""Outputs of a zoo analysis: JSON files, plots, and the printed summary table."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from modelglue.errors import ModelGlueError
from modelglue.io.paths import atomic_write
from modelglue.zoo.result import ZooAnalysis


def _fmt_params(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def _fmt(x: float | None, spec: str = ".4f") -> str:
    return "-" if x is None or not math.isfinite(x) else format(x, spec)


def summary_table(result: ZooAnalysis) -> str:
    """One row per model, clusters in order: where it landed and how close to its base."""
    rows = []
    for c, members in enumerate(result.clusters):
        base = result.cluster_bases[c]
        g = result.cluster_groups[c]
        sim = result.similarity[g]
        for i in members:
            m = result.models[i]
            cos = rel = task = None
            if sim is not None:
                li, lb = result.groups[g].index(i), result.groups[g].index(base)
                cos = float(sim.weight_cosine[li, lb])
                rel = float(sim.rel_l2()[li, lb])
                # task cosine to the rest of the cluster, against the cluster base
                others = [result.groups[g].index(j) for j in members if j not in (i, base)]
                if others and i != base:
                    vals = sim.task_cosine(lb)[li, others]
                    vals = vals[np.isfinite(vals)]
                    task = float(vals.mean()) if len(vals) else None
            rows.append([str(c), str(g), m.name + (" *" if i == base else ""), m.architecture, _fmt_params(m.num_params),
                         m.dtype, str(m.vocab_size), (m.tokenizer or "?")[:8], _fmt(cos), _fmt(rel, ".2%"), _fmt(task, ".3f")])
    header = ["cl", "grp", "model (* = base)", "architecture", "params", "dtype", "vocab", "tokenizer",
              "cos->base", "relL2->base", "task cos"]
    widths = [max(len(r[j]) for r in rows + [header]) for j in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths)))
    n_groups, n_clusters = len(result.groups), len(result.clusters)
    lines.append(f"{len(result.models)} models, {n_groups} compatibility group{'s' * (n_groups != 1)}, "
                 f"{n_clusters} cluster{'s' * (n_clusters != 1)} (method {result.method}, threshold {result.threshold})")
    for g, d in enumerate(result.dendrograms):
        if d is not None and result.method == "hierarchical":
            lines.append(f"group {g}: cut at distance {d.cut:.4g} (cosine {1 - d.cut:.4f}), floor {d.floor:.4g}")
    return "\n".join(lines + merge_level_lines(result))


def merge_level_lines(result: ZooAnalysis) -> list[str]:
    """Which models merge directly, which after aligning vocabularies, which only mix."""
    def names(g: int) -> str:
        return ", ".join(result.models[i].name for i in result.groups[g])

    lines = ["merge directly (one compatibility group each):"]
    lines += [f"  group {g}: {names(g)}" for g in range(len(result.groups))]
    levels = result.merge_levels()
    if levels["after_alignment"]:
        lines.append("merge after aligning vocabularies (a union tokenizer, tokenizer_source: union):")
        for fam in levels["after_alignment"]:
            lines.append(f"  groups {' + '.join(map(str, fam['groups']))}:")
            lines += [f"    {why}" for why in fam["why"]]
    if levels["mix_only"]:
        lines.append("mix only (a model-level mixture joins them):")
        lines += [f"  group {a} / group {b}: {m['why']}" for m in levels["mix_only"] for a, b in [m["groups"]]]
    return lines


def write_outputs(result: ZooAnalysis, out_dir: Path, plots: bool = True) -> None:
    """similarity.json, plots, then clusters.json last: its presence means the rest is there."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        stale = out_dir / "clusters.json"
        if stale.exists():
            stale.unlink()  # a failed rerun must not leave the old result looking current
        atomic_write(out_dir / "similarity.json", json.dumps(result.to_similarity_json(), indent=1))
        if plots:
            plot_heatmap(result, out_dir / "heatmap.png")
            plot_dendrogram(result, out_dir / "dendrogram.png")
        atomic_write(out_dir / "clusters.json", json.dumps(result.to_clusters_json(), indent=2))
    except OSError as exc:
        raise ModelGlueError(f"{out_dir}: cannot write analysis output ({exc.strerror or exc})") from None


def _ordered(result: ZooAnalysis) -> list[int]:
    return [i for c in result.clusters for i in c]


def _full_matrices(result: ZooAnalysis) -> tuple[np.ndarray, np.ndarray]:
    """Zoo-wide weight cosine (NaN across groups) and task cosine (in-cluster, vs the cluster base)."""
    n = len(result.models)
    W = np.full((n, n), np.nan)
    T = np.full((n, n), np.nan)
    for g, members in enumerate(result.groups):
        sim = result.similarity[g]
        if sim is None:
            W[members[0], members[0]] = 1.0
            continue
        W[np.ix_(members, members)] = sim.weight_cosine
    for c, members in enumerate(result.clusters):
        g = result.cluster_groups[c]
        sim = result.similarity[g]
        if sim is None:
            continue
        local = [result.groups[g].index(i) for i in members]
        lb = result.groups[g].index(result.cluster_bases[c])
        T[np.ix_(members, members)] = sim.task_cosine(lb)[np.ix_(local, local)]
    return W, T


def plot_heatmap(result: ZooAnalysis, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = _ordered(result)
    W, T = _full_matrices(result)
    W, T = W[np.ix_(order, order)], T[np.ix_(order, order)]
    labels = [result.models[i].name for i in order]
    n = len(order)
    size = max(5.0, 0.45 * n + 2.5)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size, size), constrained_layout=True)
    titles = ["weight cosine (per-column, paper measure)", "task-vector cosine (vs cluster base)"]
    for ax, M, title in zip(axes, (W, T), titles):
        cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#dddddd")
        im = ax.imshow(np.ma.masked_invalid(M), cmap=cmap, vmin=min(0.0, np.nanmin(M)) if np.isfinite(M).any() else 0,
                       vmax=1.0)
        ax.set_xticks(range(n), labels, rotation=90, fontsize=8)
        ax.set_yticks(range(n), labels, fontsize=8)
        ax.set_title(title, fontsize=10)
        if n <= 16:
            for a in range(n):
                for b in range(n):
                    if np.isfinite(M[a, b]):
                        # four decimals: 0.9498 must not print as 0.950 next to a 0.95 threshold
                        ax.text(b, a, f"{M[a, b]:.4f}", ha="center", va="center", fontsize=5.5,
                                color="white" if M[a, b] < 0.6 else "black")
        # cluster boundaries
        pos = 0
        for members in result.clusters:
            ax.add_patch(matplotlib.patches.Rectangle((pos - 0.5, pos - 0.5), len(members), len(members),
                                                      fill=False, edgecolor="red", linewidth=1.5))
            pos += len(members)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle("grey: not comparable (another compatibility group / another cluster)", fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_dendrogram(result: ZooAnalysis, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.cluster.hierarchy import dendrogram

    trees = [(g, d) for g, d in enumerate(result.dendrograms) if d is not None]
    if not trees:
        fig, ax = plt.subplots(figsize=(5, 2))
        ax.text(0.5, 0.5, "no group holds two or more models", ha="center", va="center")
        ax.axis("off")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return
    fig, axes = plt.subplots(len(trees), 1, figsize=(max(6.0, 0.5 * max(len(result.groups[g]) for g, _ in trees) + 3),
                                                      3.5 * len(trees)), squeeze=False, constrained_layout=True)
    for ax, (g, d) in zip(axes[:, 0], trees):
        labels = [result.models[i].name for i in result.groups[g]]
        dendrogram(d.linkage, labels=labels, ax=ax, color_threshold=d.cut, leaf_rotation=90)
        heights = d.linkage[:, 2]
        positive = heights[heights > 0]
        # Fine-tunes sit at ~1e-4, other bases at ~1: a log-like axis shows both.
        ax.set_yscale("symlog", linthresh=float(positive.min()) / 2 if len(positive) else 1e-6)
        ax.axhline(d.cut, color="red", linestyle="--", linewidth=1, label=f"cut {d.cut:.3g}")
        if d.floor != d.cut:
            ax.axhline(d.floor, color="grey", linestyle=":", linewidth=1, label=f"1 - threshold {d.floor:.3g}")
        ax.set_ylabel("1 - weight cosine")
        ax.set_title(f"group {g}: {result.models[result.groups[g][0]].architecture} ({result.method})", fontsize=10)
        ax.legend(fontsize=8, loc="upper left")
    fig.savefig(path, dpi=110)
    plt.close(fig)
