"""Zoo analysis: fingerprint -> compatibility groups -> streamed similarity -> clusters.

`analyze_zoo` is the entry point for the CLI (`modelglue zoo analyze`) and for the glue
pipeline. It reads each model's weights exactly once (see `similarity.py`) and keeps
memory bounded by a few chunks per model, whatever the model size.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from modelglue.errors import ModelGlueError
from modelglue.io import Checkpoint
from modelglue.zoo.cluster import METHODS, Dendrogram, cluster
from modelglue.zoo.fingerprint import ModelFingerprint, compatibility_groups, fingerprint, incompatibility_reason
from modelglue.zoo.similarity import DEFAULT_CHUNK_ELEMS, GroupSimilarity, group_similarity


@dataclass
class ZooAnalysis:
    """The result of analysing a zoo. Model indices refer to `models` (input order)."""

    models: list[ModelFingerprint]
    groups: list[list[int]]  # compatibility groups: different groups can never be weight-merged
    clusters: list[list[int]]  # mergeable clusters (each inside one group)
    cluster_bases: list[int]  # the base of each cluster (given --base, else its most central member)
    cluster_groups: list[int]  # the group of each cluster
    similarity: list[GroupSimilarity | None]  # per group; None for a single-model group
    dendrograms: list[Dendrogram | None]  # per group
    method: str
    threshold: float
    base: int | None = None  # the model given as base, if any
    group_bases: list[int] = field(default_factory=list)  # per group: base for the group's task cosines

    # --- convenient views for callers (the glue pipeline)

    @property
    def paths(self) -> list[str]:
        return [m.path for m in self.models]

    @property
    def cluster_paths(self) -> list[list[str]]:
        return [[self.models[i].path for i in c] for c in self.clusters]

    @property
    def cluster_base_paths(self) -> list[str]:
        return [self.models[i].path for i in self.cluster_bases]

    def group_of(self, model: int) -> int:
        return next(g for g, members in enumerate(self.groups) if model in members)

    def cluster_of(self, model: int) -> int:
        return next(c for c, members in enumerate(self.clusters) if model in members)

    def weight_cosine(self, a: int, b: int) -> float:
        """The paper's weight similarity of two models (NaN across groups)."""
        g = self.group_of(a)
        if g != self.group_of(b):
            return float("nan")
        sim = self.similarity[g]
        if sim is None:
            return 1.0
        members = self.groups[g]
        return float(sim.weight_cosine[members.index(a), members.index(b)])

    def _local(self, model: int) -> tuple[int, int, GroupSimilarity | None]:
        g = self.group_of(model)
        return g, self.groups[g].index(model), self.similarity[g]

    def to_clusters_json(self) -> dict:
        per_model = []
        for i, m in enumerate(self.models):
            c = self.cluster_of(i)
            base = self.cluster_bases[c]
            g, li, sim = self._local(i)
            entry = {**m.to_json(), "group": g, "cluster": c, "cluster_base": self.models[base].path,
                     "is_cluster_base": base == i}
            if sim is not None:
                lb = self.groups[g].index(base)
                entry["weight_cosine_to_base"] = _num(sim.weight_cosine[li, lb])
                entry["rel_l2_to_base"] = _num(sim.rel_l2()[li, lb])
            per_model.append(entry)
        return {
            "format": "modelglue-zoo-analysis/1",
            "method": self.method,
            "threshold": self.threshold,
            "base": self.models[self.base].path if self.base is not None else None,
            "clusters": self.cluster_paths,
            "cluster_bases": self.cluster_base_paths,
            "groups": [[self.models[i].path for i in g] for g in self.groups],
            "cut": [None if d is None else _num(d.cut) for d in self.dendrograms],
            "models": per_model,
        }

    def to_similarity_json(self) -> dict:
        groups = []
        for g, members in enumerate(self.groups):
            sim = self.similarity[g]
            entry: dict = {"models": [self.models[i].path for i in members]}
            if sim is None:
                groups.append(entry)
                continue
            gb = self.groups[g].index(self.group_bases[g])
            clusters = []
            for c, cm in enumerate(self.clusters):
                if self.cluster_groups[c] != g:
                    continue
                local = [members.index(i) for i in cm]
                lb = members.index(self.cluster_bases[c])
                clusters.append({"models": [self.models[i].path for i in cm],
                                 "base": self.models[self.cluster_bases[c]].path,
                                 "task_cosine": _mat(sim.task_cosine(lb)[np.ix_(local, local)])})
            entry.update({
                "measure": "mean over the paper-set tensors of the mean per-column cosine "
                           "(F.cosine_similarity(W_a, W_b, dim=0).mean()); see docs/zoo_analysis.md",
                "weight_cosine": _mat(sim.weight_cosine),
                "task_cosine": {"base": self.models[self.group_bases[g]].path, "matrix": _mat(sim.task_cosine(gb))},
                "flat_cosine": _mat(sim.flat_cosine()),
                "rel_l2": _mat(sim.rel_l2()),
                "clusters": clusters,
                "per_layer": {str(L): {"weight_cosine": _mat(w), "task_cosine": _mat(sim.layer_task_cosine_by_base[L][gb])}
                              for L, w in sim.layer_weight_cosine.items()},
                "per_tensor_weight_cosine": {n: _mat(w) for n, w in sim.tensor_weight_cosine.items()},
                "paper_tensors": len(sim.paper_tensors),
                "bytes_read": sim.bytes_read,
                "seconds": round(sim.seconds, 3),
            })
            groups.append(entry)
        incompatible = []
        for a in range(len(self.groups)):
            for b in range(a + 1, len(self.groups)):
                ma, mb = self.models[self.groups[a][0]], self.models[self.groups[b][0]]
                incompatible.append({"groups": [a, b], "reason": incompatibility_reason(ma, mb)})
        return {"format": "modelglue-zoo-similarity/1", "groups": groups, "incompatible": incompatible}


def _num(x: float) -> float | None:
    x = float(x)
    return None if not np.isfinite(x) else round(x, 8)


def _mat(m: np.ndarray) -> list[list[float | None]]:
    return [[_num(v) for v in row] for row in np.asarray(m)]


def expand_model_dirs(dirs: list[str | Path]) -> list[Path]:
    """Model directories as given; a zoo directory (zoo.json, no config.json) expands to
    the models its manifest lists, in manifest order."""
    out: list[Path] = []
    for d in map(Path, dirs):
        manifest = d / "zoo.json"
        if not (d / "config.json").exists() and manifest.is_file():
            try:
                entries = json.loads(manifest.read_text())["models"]
                out += [d / (e.get("path") or e["name"]) for e in entries]
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                raise ModelGlueError(f"{manifest}: expected a JSON object with a models list of {{name, path}}") from None
        else:
            out.append(d)
    return out


def analyze_zoo(model_dirs: list[str | Path], base: str | Path | None = None, out_dir: str | Path | None = None, *,
                threshold: float = 0.95, method: str = "hierarchical", allow_pickle: bool = False,
                progress: bool = False, plots: bool = True, chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> ZooAnalysis:
    """Analyse a zoo: fingerprints, compatibility groups, similarities and clusters.

    model_dirs: Hugging Face model directories (or demo-zoo roots with zoo.json).
    base: a base model for task vectors; it joins the analysis if not listed. Clusters
        that do not contain it (and groups it is incompatible with) detect their own base.
    out_dir: when given, write clusters.json, similarity.json, heatmap.png, dendrogram.png.
    threshold: the paper's similarity threshold (for `hierarchical`: merges closer than
        1 - threshold are never cut).
    method: "hierarchical" (default) or "paper" (see `modelglue.zoo.cluster`).
    """
    if method not in METHODS:
        raise ModelGlueError(f"unknown clustering method {method!r} (use one of: {', '.join(METHODS)})")
    if not -1.0 <= threshold <= 1.0:
        raise ModelGlueError(f"threshold {threshold} is not a cosine similarity (expected -1..1)")
    paths = expand_model_dirs(model_dirs)
    if base is not None and not any(_same(Path(base), p) for p in paths):
        paths.append(Path(base))
    if not paths:
        raise ModelGlueError("no model directories given")
    seen: dict[Path, Path] = {}
    for p in paths:
        key = p.resolve()
        if key in seen:
            raise ModelGlueError(f"{p}: listed twice (also as {seen[key]})")
        seen[key] = p
    if out_dir is not None:
        out = Path(out_dir).resolve()
        for p in paths:
            if out == p.resolve() or out.is_relative_to(p.resolve()):
                raise ModelGlueError(f"output directory {out_dir} lies inside input model {p}")

    ckpts = [Checkpoint(p, allow_pickle=allow_pickle) for p in paths]
    names = _display_names(paths)
    fps = [fingerprint(c, name=n, path=str(p)) for c, n, p in zip(ckpts, names, paths)]
    base_idx = next(i for i, p in enumerate(paths) if _same(Path(base), p)) if base is not None else None

    groups = compatibility_groups(fps)
    sims: list[GroupSimilarity | None] = []
    dendros: list[Dendrogram | None] = []
    clusters: list[list[int]] = []
    cluster_bases: list[int] = []
    cluster_groups: list[int] = []
    group_bases: list[int] = []
    for g, members in enumerate(groups):
        if len(members) == 1:
            sim, local, dendro = None, [[0]], None
        else:
            sim = group_similarity([ckpts[i] for i in members], [fps[i].path for i in members],
                                   chunk_elems=chunk_elems, progress=progress)
            local, dendro = cluster(sim.weight_cosine, method, threshold)
        sims.append(sim)
        dendros.append(dendro)
        first_cluster = len(clusters)
        for lc in local:
            clusters.append([members[i] for i in lc])
            cluster_groups.append(g)
            if base_idx is not None and base_idx in clusters[-1]:
                cluster_bases.append(base_idx)
            else:
                cluster_bases.append(members[sim.most_central(lc)] if sim is not None else members[lc[0]])
        # The group's task cosines are taken against the given base if it is in the group,
        # else against the base of the group's largest cluster: "most central" over a whole
        # group that holds several families would pick an arbitrary fine-tune.
        if base_idx in members:
            group_bases.append(base_idx)
        else:
            largest = max(range(first_cluster, len(clusters)), key=lambda c: len(clusters[c]))
            group_bases.append(cluster_bases[largest])

    result = ZooAnalysis(models=fps, groups=groups, clusters=clusters, cluster_bases=cluster_bases,
                         cluster_groups=cluster_groups, similarity=sims, dendrograms=dendros, method=method,
                         threshold=threshold, base=base_idx, group_bases=group_bases)
    if out_dir is not None:
        from modelglue.zoo.report import write_outputs

        write_outputs(result, Path(out_dir), plots=plots)
    return result


def _same(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def _display_names(paths: list[Path]) -> list[str]:
    """Directory names, or parent/name where two models share a directory name."""
    names = [p.name or str(p) for p in paths]
    dup = {n for n in names if names.count(n) > 1}
    return [f"{p.parent.name}/{n}" if n in dup else n for p, n in zip(paths, names)]
