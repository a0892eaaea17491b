"""Zoo analysis: fingerprint -> compatibility groups -> streamed similarity -> clusters.

Groups that cannot merge directly are linked pairwise: "merge after alignment" (the
same vocabulary up to added tokens or padding rows) or "mix only".

`analyze_zoo` is the entry point for the CLI (`modelglue zoo analyze`) and for the glue
pipeline. It reads each model's weights exactly once (see `similarity.py`) and keeps
memory bounded by a few chunks per model, whatever the model size.
"""
from __future__ import annotations

import json
from pathlib import Path

from modelglue.errors import ModelGlueError
from modelglue.io import Checkpoint, check_outside_inputs
from modelglue.zoo.cluster import METHODS, Dendrogram, cluster
from modelglue.zoo.fingerprint import ModelFingerprint, compatibility_groups, fingerprint, merge_relation, read_tokenizer
from modelglue.zoo.result import ZooAnalysis
from modelglue.zoo.similarity import DEFAULT_CHUNK_ELEMS, GroupSimilarity, group_similarity


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
    paths = _model_paths(model_dirs, base)
    if out_dir is not None:
        check_outside_inputs(out_dir, paths)
    ckpts = [Checkpoint(p, allow_pickle=allow_pickle) for p in paths]
    fps, vocabs = _fingerprints(ckpts, paths)
    base_idx = next(i for i, p in enumerate(paths) if _same(Path(base), p)) if base is not None else None
    groups = compatibility_groups(fps)
    parts = _Clustering()
    for g, members in enumerate(groups):
        parts.add_group(g, members, ckpts, fps, base_idx, method, threshold, chunk_elems, progress)
    result = ZooAnalysis(models=fps, groups=groups, clusters=parts.clusters, cluster_bases=parts.cluster_bases,
                         cluster_groups=parts.cluster_groups, similarity=parts.sims, dendrograms=parts.dendros,
                         method=method, threshold=threshold, base=base_idx, group_bases=parts.group_bases,
                         group_links=group_links(groups, fps, vocabs))
    if out_dir is not None:
        from modelglue.zoo.report import write_outputs  # lazy: matplotlib

        write_outputs(result, Path(out_dir), plots=plots)
    return result


def _fingerprints(ckpts: list[Checkpoint], paths: list[Path]) -> tuple[list[ModelFingerprint], dict]:
    """Each model's fingerprint, and the vocabulary of each distinct tokenizer (keyed by
    its identity) for the group links: every tokenizer.json is parsed once, and one
    vocabulary is kept per tokenizer, not per model."""
    fps, vocabs = [], {}
    for c, name, p in zip(ckpts, _display_names(paths), paths):
        tok = read_tokenizer(c.path)
        vocabs.setdefault(tok.identity, tok.vocab)
        fps.append(fingerprint(c, name=name, path=str(p), tokenizer=tok))
    return fps, vocabs


def _model_paths(model_dirs: list[str | Path], base: str | Path | None) -> list[Path]:
    """The model directories (zoo roots expanded, the base appended if not listed), each once."""
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
    return paths


class _Clustering:
    """The clusters of each compatibility group, collected group by group."""

    def __init__(self) -> None:
        self.sims: list[GroupSimilarity | None] = []
        self.dendros: list[Dendrogram | None] = []
        self.clusters: list[list[int]] = []
        self.cluster_bases: list[int] = []
        self.cluster_groups: list[int] = []
        self.group_bases: list[int] = []

    def add_group(self, g: int, members: list[int], ckpts: list[Checkpoint], fps: list, base_idx: int | None,
                  method: str, threshold: float, chunk_elems: int, progress: bool) -> None:
        if len(members) == 1:
            sim, local, dendro = None, [[0]], None
        else:
            sim = group_similarity([ckpts[i] for i in members], [fps[i].path for i in members],
                                   chunk_elems=chunk_elems, progress=progress)
            local, dendro = cluster(sim.weight_cosine, method, threshold)
        self.sims.append(sim)
        self.dendros.append(dendro)
        first_cluster = len(self.clusters)
        for lc in local:
            self.clusters.append([members[i] for i in lc])
            self.cluster_groups.append(g)
            if base_idx is not None and base_idx in self.clusters[-1]:
                self.cluster_bases.append(base_idx)
            else:
                self.cluster_bases.append(members[sim.most_central(lc)] if sim is not None else members[lc[0]])
        # The group's task cosines are taken against the given base if it is in the group,
        # else against the base of the group's largest cluster: "most central" over a whole
        # group that holds several families would pick an arbitrary fine-tune.
        if base_idx in members:
            self.group_bases.append(base_idx)
        else:
            largest = max(range(first_cluster, len(self.clusters)), key=lambda c: len(self.clusters[c]))
            self.group_bases.append(self.cluster_bases[largest])


def group_links(groups: list[list[int]], fps: list[ModelFingerprint],
                vocabs: dict[str | None, dict[str, int] | None]) -> list[dict]:
    """For every pair of compatibility groups: whether they merge after aligning their
    vocabularies or can only be mixed, and why (compared on each group's first model;
    a group shares one tokenizer and one tensor layout). `vocabs`: tokenizer identity ->
    its vocabulary (`_fingerprints`); only pairs whose tensor layouts agree compare them."""
    links = []
    for a in range(len(groups)):
        for b in range(a + 1, len(groups)):
            fa, fb = fps[groups[a][0]], fps[groups[b][0]]
            same_layout = fa.architecture == fb.architecture and fa.layout and fa.layout == fb.layout
            va, vb = (vocabs.get(fa.tokenizer), vocabs.get(fb.tokenizer)) if same_layout else (None, None)
            relation, reason = merge_relation(fa, fb, va, vb)
            links.append({"groups": [a, b], "relation": relation, "reason": reason})
    return links


def _same(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def _display_names(paths: list[Path]) -> list[str]:
    """Directory names, or parent/name where two models share a directory name."""
    names = [p.name or str(p) for p in paths]
    dup = {n for n in names if names.count(n) > 1}
    return [f"{p.parent.name}/{n}" if n in dup else n for p, n in zip(paths, names)]
