"""Streaming pairwise similarity of the k models of one compatibility group.

What is computed (the Model-GLUE paper's measure, generalised to every pair at once):

* For one tensor W of shape [rows, cols] (1-D tensors count as [n, 1], higher ranks as
  [shape[0], rest]) and two models a, b, the *per-column cosine* is
  ``mean_j cos(W_a[:, j], W_b[:, j])`` -- exactly ``F.cosine_similarity(W_a, W_b, dim=0).mean()``
  in the paper's released code (one cosine per input feature, averaged). A column where
  either vector is zero counts as cosine 0, as torch does.
* The *weight cosine* of two models is the unweighted mean of that number over the
  "paper set" of tensors (`paper_tensor`): every tensor of the decoder layers whose name
  holds ``self_attn`` or ``mlp`` (the released code's filter; for Llama-family models
  these are all the attention and MLP weights, and no norms, embeddings or lm_head).
  Models that name their blocks otherwise (GPT-2, GPT-NeoX) use every layer tensor that
  is not a norm instead, since the literal filter would silently drop their attention.
* The *task cosine* against a base z is the same measure on task vectors
  ``W_a - W_z`` and ``W_b - W_z``.
* Tensors outside the paper set (embeddings, lm_head, norms) get only the *flat* cosine
  of the whole tensor, in the per-tensor report; they do not enter the overall numbers.

How it streams: the outer loop runs over tensor names and the inner loop over the k
models, reading at most ``chunk_elems`` elements of each model at a time (a block of
whole rows; rows are contiguous on disk). For every column j we accumulate the k x k Gram
matrix ``G_j = X_j X_j^T`` (float64) of the k column vectors. All the numbers above follow
from these Gram matrices: the raw cosine is ``G_j[a,b] / sqrt(G_j[a,a] G_j[b,b])`` and the
task-vector Gram against any base z is ``G_j[a,b] - G_j[a,z] - G_j[z,b] + G_j[z,z]``.
So every file is read exactly once, memory is k chunks plus one tensor's Gram matrices
(cols x k x k), and the task cosine is available for every candidate base after one
pass -- the base need not be known before reading.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from modelglue.arch import tensor_role
from modelglue.io import Checkpoint

# Elements of float64 working memory per block, summed over the k models (64 MB). One
# buffer is reused for every block: fresh large allocations would be page-faulted (and
# zeroed by the kernel) again for each of the hundreds of tensors.
DEFAULT_CHUNK_ELEMS = 8 * 2**20
# A task-vector column whose squared norm is below this share of the raw squared norms
# is zero up to float64 cancellation noise (the Gram identity subtracts large numbers).
_ZERO_REL = 1e-12


def paper_tensor(name: str, uses_self_attn: bool) -> bool:
    """Is this tensor part of the overall similarity (see the module docstring)?"""
    role = tensor_role(name)
    if role.kind != "layer":
        return False
    if uses_self_attn:
        return "self_attn" in name or "mlp" in name
    low = name.lower()
    return "norm" not in low and ".ln" not in low


@dataclass
class GroupSimilarity:
    """Pairwise similarities of the models of one compatibility group (index order = `models`)."""

    models: list[str]
    weight_cosine: np.ndarray  # [k, k] the paper's measure on raw weights
    task_cosine_by_base: np.ndarray  # [z, k, k] the same on task vectors against base z (NaN on row/col z)
    gram: np.ndarray  # [k, k] flat dot products over the paper set (float64)
    layer_weight_cosine: dict[int | str, np.ndarray] = field(default_factory=dict)
    layer_task_cosine_by_base: dict[int | str, np.ndarray] = field(default_factory=dict)
    # every float tensor: per-column cosine in the paper set, flat cosine outside it
    tensor_weight_cosine: dict[str, np.ndarray] = field(default_factory=dict)
    paper_tensors: list[str] = field(default_factory=list)
    bytes_read: int = 0
    seconds: float = 0.0

    @property
    def k(self) -> int:
        return len(self.models)

    def task_cosine(self, base: int) -> np.ndarray:
        return self.task_cosine_by_base[base]

    def rel_l2(self) -> np.ndarray:
        """[a, b] = ||W_a - W_b|| / ||W_b|| over the paper set (how far a drifted from b)."""
        d = np.diag(self.gram)
        sq = np.maximum(d[:, None] + d[None, :] - 2 * self.gram, 0.0)
        return np.sqrt(sq) / np.sqrt(np.maximum(d[None, :], 1e-300))

    def flat_cosine(self) -> np.ndarray:
        """Cosine of the whole flattened paper set (one vector per model), for reference."""
        d = np.sqrt(np.maximum(np.diag(self.gram), 1e-300))
        return self.gram / (d[:, None] * d[None, :])

    def most_central(self, members: list[int] | None = None) -> int:
        """The member with the highest mean weight cosine to the other members: the base
        of a family of fine-tunes sits in the middle of them. Ties go to the first."""
        members = list(range(self.k)) if members is None else list(members)
        if len(members) == 1:
            return members[0]
        sub = self.weight_cosine[np.ix_(members, members)]
        means = (sub.sum(1) - np.diag(sub)) / (len(members) - 1)
        return members[int(np.argmax(means))]


def _read_order(ckpt: Checkpoint, names: list[str]) -> list[str]:
    """Names in on-disk order, so each file is read front to back."""
    infos = {n: ckpt.info(n) for n in names}
    if any(i is None for i in infos.values()):
        return names
    return sorted(names, key=lambda n: (str(infos[n].path), infos[n].offset))


def _column_cosine_mean(G: torch.Tensor) -> torch.Tensor:
    """[c, k, k] Gram matrices -> [k, k] mean over columns of the per-column cosine."""
    d = torch.diagonal(G, dim1=1, dim2=2).clamp_min(0)  # [c, k]
    den = torch.sqrt(d[:, :, None] * d[:, None, :])
    cos = torch.where(den > 0, G / den.clamp_min(1e-300), torch.zeros((), dtype=G.dtype))
    return cos.mean(0)


def _task_cosine_means(G: torch.Tensor) -> torch.Tensor:
    """[c, k, k] raw Gram matrices -> [z, k, k] per-column task cosine means for every base z."""
    c, k, _ = G.shape
    d = torch.diagonal(G, dim1=1, dim2=2)  # [c, k]
    out = torch.empty(k, k, k, dtype=torch.float64)
    for z in range(k):
        gz = G[:, :, z]  # [c, k]
        D = G - gz[:, :, None] - gz[:, None, :] + G[:, z, z][:, None, None]
        dd = torch.diagonal(D, dim1=1, dim2=2)  # squared task-vector column norms
        nonzero = dd > _ZERO_REL * (d + d[:, z : z + 1])
        dd = torch.where(nonzero, dd, torch.zeros((), dtype=dd.dtype))
        den = torch.sqrt(dd[:, :, None] * dd[:, None, :])
        cos = torch.where(den > 0, D / den.clamp_min(1e-300), torch.zeros((), dtype=D.dtype))
        out[z] = cos.mean(0)
        out[z, z, :] = float("nan")
        out[z, :, z] = float("nan")
    return out


def _layer_key(layer: int | str) -> tuple:
    return (isinstance(layer, str), layer if isinstance(layer, int) else 0, str(layer))


def group_similarity(ckpts: list[Checkpoint], paths: list[str] | None = None, *,
                     chunk_elems: int = DEFAULT_CHUNK_ELEMS, progress: bool = False) -> GroupSimilarity:
    """Stream the models of one compatibility group once and return their similarities.

    `ckpts` must share tensor names and shapes (one compatibility group); dtypes may differ.
    """
    start_time = time.perf_counter()
    k = len(ckpts)
    first = ckpts[0]
    names = _read_order(first, [n for n in first.names() if first.dtype(n).is_floating_point])
    uses_self_attn = any("self_attn" in n for n in names)
    paper = [n for n in names if paper_tensor(n, uses_self_attn)] or list(names)  # no blocks: use all
    sums = _Sums(k)
    reader = _GramReader(ckpts, chunk_elems)
    bar = None
    if progress:
        from tqdm import tqdm

        total = sum(c.nbytes(n) for c in ckpts for n in names)
        bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"similarity ({k} models)", leave=False)
    paper_set = set(paper)
    try:
        for name in names:
            G = reader.gram(name, name in paper_set, bar)
            if G is not None:
                sums.add(name, G, name in paper_set)
    finally:
        if bar is not None:
            bar.close()
    return sums.result(paths if paths is not None else [str(c.path) for c in ckpts], paper, reader.bytes_read,
                       time.perf_counter() - start_time)


class _GramReader:
    """Reads one tensor of every model in blocks of whole rows and sums the per-column
    k x k Gram matrices; one float64 buffer is reused for every block."""

    def __init__(self, ckpts: list[Checkpoint], chunk_elems: int):
        self.ckpts, self.chunk_elems = ckpts, chunk_elems
        self.buffer = torch.empty(0, dtype=torch.float64)
        self.bytes_read = 0

    def gram(self, name: str, in_paper: bool, bar=None) -> torch.Tensor | None:
        """[cols, k, k] Gram matrices of the tensor's columns (None for an empty tensor)."""
        shape = self.ckpts[0].shape(name)
        k = len(self.ckpts)
        if in_paper:
            rows = shape[0] if len(shape) >= 1 else 1
            cols = math.prod(shape[1:]) if len(shape) >= 2 else 1
        else:
            # Outside the paper set (embeddings, lm_head, norms) only the flat cosine
            # is reported: viewed as one column, the Gram is one plain GEMM with no
            # transposed copy (embeddings + lm_head are ~40% of a small model).
            rows, cols = math.prod(shape), 1
        if rows == 0 or cols == 0:
            return None
        # Whole rows per chunk so that k chunks of float64 stay within the budget.
        step = max(1, self.chunk_elems // (k * cols))
        G = torch.zeros(cols, k, k, dtype=torch.float64)
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            need = cols * k * (r1 - r0)
            if self.buffer.numel() < need:
                self.buffer = torch.empty(need, dtype=torch.float64)
            block = self.buffer[:need].view(cols, k, r1 - r0)
            for i, ckpt in enumerate(self.ckpts):
                x = ckpt.get_flat(name, r0 * cols, r1 * cols).view(r1 - r0, cols)
                block[:, i, :].copy_(x.T)  # column-major per model, upcast to float64
                nb = x.numel() * x.element_size()
                self.bytes_read += nb
                if bar is not None:
                    bar.update(nb)
                del x
            G += torch.bmm(block, block.transpose(1, 2))
        return G


class _Sums:
    """Running sums of the per-tensor similarities, overall and per layer."""

    def __init__(self, k: int):
        self.weight = np.zeros((k, k))
        self.task = np.zeros((k, k, k))
        self.gram = np.zeros((k, k))
        self.layer_w: dict[int | str, np.ndarray] = {}
        self.layer_t: dict[int | str, np.ndarray] = {}
        self.layer_n: dict[int | str, int] = {}
        self.tensor_w: dict[str, np.ndarray] = {}

    def add(self, name: str, G: torch.Tensor, in_paper: bool) -> None:
        cos = _column_cosine_mean(G).numpy()
        self.tensor_w[name] = cos
        if not in_paper:
            return
        self.weight += cos
        self.gram += G.sum(0).numpy()
        task = _task_cosine_means(G).numpy()
        self.task += task
        role = tensor_role(name)
        layer = role.layer if role.kind == "layer" else role.kind
        self.layer_w[layer] = self.layer_w.get(layer, 0) + cos
        self.layer_t[layer] = self.layer_t.get(layer, 0) + task
        self.layer_n[layer] = self.layer_n.get(layer, 0) + 1

    def result(self, paths: list[str], paper: list[str], bytes_read: int, seconds: float) -> GroupSimilarity:
        k = len(paths)
        n = max(1, len(paper))
        task_all = self.task / n
        # A model identical to the base has no task vector at all: its task cosines are
        # undefined (NaN), not 0.
        gram, d = self.gram, np.diag(self.gram)
        for z in range(k):
            for a in range(k):
                if a != z and d[a] + d[z] - 2 * gram[a, z] <= _ZERO_REL * (d[a] + d[z]):
                    task_all[z, a, :] = task_all[z, :, a] = np.nan
        return GroupSimilarity(
            models=list(paths),
            weight_cosine=self.weight / n,
            task_cosine_by_base=task_all,
            gram=gram,
            layer_weight_cosine={L: self.layer_w[L] / self.layer_n[L] for L in sorted(self.layer_w, key=_layer_key)},
            layer_task_cosine_by_base={L: self.layer_t[L] / self.layer_n[L] for L in sorted(self.layer_t, key=_layer_key)},
            tensor_weight_cosine=self.tensor_w,
            paper_tensors=paper,
            bytes_read=bytes_read,
            seconds=seconds,
        )
