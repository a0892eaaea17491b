"""ZooAnalysis: the result of `analyze_zoo` (groups, clusters, similarities) and its JSON
forms. Its own module so that analyze.py (which makes it) and report.py (which draws it)
both import it without importing each other."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from modelglue.zoo.cluster import Dendrogram
from modelglue.zoo.fingerprint import ALIGN, DIRECT, MIX, ModelFingerprint, incompatibility_reason
from modelglue.zoo.similarity import GroupSimilarity


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
    # per pair of groups: {"groups": [a, b], "relation": ALIGN | MIX, "reason"} (see zoo.fingerprint)
    group_links: list[dict] = field(default_factory=list)

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

    def group_relation(self, a: int, b: int) -> tuple[str, str]:
        """(relation, why) of two compatibility groups: DIRECT for a group with itself."""
        if a == b:
            return DIRECT, "one compatibility group"
        for link in self.group_links:
            if sorted(link["groups"]) == sorted([a, b]):
                return link["relation"], link["reason"]
        return MIX, "not compared"

    def alignment_families(self) -> list[list[int]]:
        """Groups joined by "merge after alignment" links (union of the links), each a
        list of group indices, in order of first group; single groups included."""
        family = list(range(len(self.groups)))

        def root(g: int) -> int:
            while family[g] != g:
                g = family[g]
            return g

        for link in self.group_links:
            if link["relation"] == ALIGN:
                a, b = sorted(root(g) for g in link["groups"])
                family[b] = a
        out: dict[int, list[int]] = {}
        for g in range(len(self.groups)):
            out.setdefault(root(g), []).append(g)
        return list(out.values())

    def merge_levels(self) -> dict:
        """Which models merge directly, which after aligning vocabularies, and which pairs
        of groups can only be mixed (model paths), for the reports."""
        names = lambda gs: [self.models[i].path for g in gs for i in self.groups[g]]  # noqa: E731
        families = self.alignment_families()
        family_of = {g: f for f, members in enumerate(families) for g in members}
        return {
            "direct": [names([g]) for g in range(len(self.groups))],
            "after_alignment": [{"models": names(f), "groups": f,
                                 "why": [f"group {link['groups'][0]} / group {link['groups'][1]}: {link['reason']}"
                                         for link in self.group_links
                                         if link["relation"] == ALIGN and set(link["groups"]) <= set(f)]}
                                for f in families if len(f) > 1],
            # pairs in one alignment family merge through the family's union vocabulary
            "mix_only": [{"groups": link["groups"], "why": link["reason"]} for link in self.group_links
                         if link["relation"] == MIX and family_of[link["groups"][0]] != family_of[link["groups"][1]]],
        }

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
            "merge_levels": self.merge_levels(),
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
                relation, why = self.group_relation(a, b)
                incompatible.append({"groups": [a, b], "reason": incompatibility_reason(ma, mb),
                                     "relation": relation, "relation_reason": why})
        return {"format": "modelglue-zoo-similarity/1", "groups": groups, "incompatible": incompatible}


def _num(x: float) -> float | None:
    x = float(x)
    return None if not np.isfinite(x) else round(x, 8)


def _mat(m: np.ndarray) -> list[list[float | None]]:
    return [[_num(v) for v in row] for row in np.asarray(m)]
