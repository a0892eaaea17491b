"""Zoo analysis: which models can be weight-merged, and how similar they are.

    from modelglue.zoo import analyze_zoo
    result = analyze_zoo(["zoo/a_base", "zoo/a_add", ...], out_dir="analysis")
    result.cluster_paths, result.cluster_base_paths

See docs/zoo_analysis.md for exactly what is computed.
"""
from modelglue.zoo.analyze import analyze_zoo, expand_model_dirs
from modelglue.zoo.result import ZooAnalysis
from modelglue.zoo.cluster import METHODS, choose_cut, hierarchical_clusters, paper_clusters
from modelglue.zoo.fingerprint import ModelFingerprint, compatibility_groups, fingerprint, tokenizer_identity
from modelglue.zoo.similarity import GroupSimilarity, group_similarity, paper_tensor

__all__ = [
    "METHODS", "GroupSimilarity", "ModelFingerprint", "ZooAnalysis", "analyze_zoo", "choose_cut",
    "compatibility_groups", "expand_model_dirs", "fingerprint", "group_similarity", "hierarchical_clusters",
    "paper_clusters", "paper_tensor", "tokenizer_identity",
]
