"""Where an unstable CPU `torch.sort` puts equal values, without sorting.

mergekit's TIES ranks a task vector with `torch.argsort(|d|, descending=True)` and keeps
the first k entries. Where equal magnitudes straddle position k, which of them it keeps is
decided by the sort algorithm: torch's CPU sort runs libstdc++'s `std::sort` (introsort:
median-of-three quicksort down to runs of 16, then one insertion sort, which keeps equal
values in the order the quicksort left them). Reproducing that choice used to cost a full
sort of the tensor, 12 bytes and ~27 comparisons an entry, single-threaded.

Whether an entry ends before position p only depends on the partitions of the runs that
contain p: like quickselect, `sort_prefix_ties` follows std::sort's own pivots and
partitions into that run only, a few vectorised passes over a halving range (about 2n
entries in all, int32 positions). Everything else std::sort would still do cannot move
an entry across p. `follows_torch_sort` checks the emulation against the installed torch
once, so a torch with another CPU sort falls back to sorting rather than to a wrong answer.
"""
from __future__ import annotations

import functools

import torch

STEP = 1 << 16  # stops are counted per piece of this many entries
BLOCK = STEP << 3  # entries per vectorised pass (a multiple of STEP). Small temporaries matter:
# two threads preparing at once keep glibc arenas of the sizes they free (4M-entry blocks
# cost 0.65 GB more peak RSS on the 0.5B TIES benchmark, for no speed)
THRESHOLD = 16  # libstdc++'s _S_threshold: runs this short are left to the insertion sort
# Follow at most n / MAX_TIED equal values (their positions are tracked); beyond, sorting
# is faster. Tensors of more than BIG entries follow up to n / MAX_TIED_BIG: there the
# sort's 16 bytes an entry outweigh its speed (benchmarks/introsort_bench.py, 136M
# entries, two threads: following takes 8.2 bytes an entry and 4.8 s at the n / 14.5 ties
# of a bfloat16 task vector, 9.6 and 7.2 s at n / 9; the sort 16 and 5.5 / 4.8 s).
MAX_TIED, MAX_TIED_BIG, BIG = 16, 8, 1 << 25


def _stop_left(x: torch.Tensor, pivot: float, descending: bool) -> torch.Tensor:
    """Where the left scan of __unguarded_partition stops: x does not sort before pivot."""
    return x <= pivot if descending else x >= pivot


def _stop_right(x: torch.Tensor, pivot: float, descending: bool) -> torch.Tensor:
    """Where the right scan stops: pivot does not sort before x."""
    return x >= pivot if descending else x <= pivot


def _piece_counts(mask: torch.Tensor) -> torch.Tensor:
    """How many entries of mask are set in each piece of STEP entries (one count_nonzero a
    piece: several times faster than a count along a reshaped dimension)."""
    return torch.tensor([int(torch.count_nonzero(piece)) for piece in mask.split(STEP)], dtype=torch.int64)


def _stops(a: torch.Tensor, lo: int, hi: int, stop, pivot: float, descending: bool, count: int, *,
           reverse: bool = False) -> torch.Tensor:
    """The first `count` int32 positions in [lo, hi) where `stop` holds, ascending (or all
    of them, descending, with `reverse`), written into one preallocated tensor."""
    out = torch.empty(count, dtype=torch.int32)
    filled = 0
    for b in range(lo, hi, BLOCK):
        if filled == count:
            break
        found = stop(a[b:min(hi, b + BLOCK)], pivot, descending).nonzero().flatten()[:count - filled]
        k = len(found)
        if reverse:
            out[count - filled - k:count - filled] = found.flip(0) + b
        else:
            out[filled:filled + k] = found + b
        filled += k
    assert filled == count, "stop counts changed between passes"
    return out


def _partition(a: torch.Tensor, first: int, last: int, pivot: float,
               descending: bool) -> tuple[int, torch.Tensor, torch.Tensor]:
    """libstdc++'s __unguarded_partition of a[first:last] around `pivot`, without moving
    anything: the cut it returns and the s position pairs it swaps, (L_i, R_i) for i < s,
    L ascending, R descending. The i-th left stop pairs with the i-th right stop while
    L_i < R_i; the scans meet at q0, the first q with as many left stops before q as
    right stops at or after it, so every L_i < q0 <= R_i."""
    # Stops counted per piece of STEP entries; D(q) = left stops in [first, q) - right
    # stops in [q, last) never decreases: find the piece where it turns non-negative,
    # then the exact q0 inside it.
    left = torch.cat([_piece_counts(_stop_left(a[b:min(last, b + BLOCK)], pivot, descending))
                      for b in range(first, last, BLOCK)])
    right = torch.cat([_piece_counts(_stop_right(a[b:min(last, b + BLOCK)], pivot, descending))
                       for b in range(first, last, BLOCK)])
    left_before = left.cumsum(0) - left
    right_from = right.flip(0).cumsum(0).flip(0)
    j = int(torch.count_nonzero(left_before < right_from)) - 1
    b = first + j * STEP
    x = a[b:min(last, b + STEP)]
    cum_left = _stop_left(x, pivot, descending).cumsum(0)
    cum_right = _stop_right(x, pivot, descending).cumsum(0)
    need = int(right_from[j] - left_before[j])
    t = int(torch.searchsorted(cum_left + cum_right, need))
    q0 = b + t + 1
    swaps = int(right_from[j]) - int(cum_right[t])
    lefts = int(left_before[j]) + int(cum_left[t])
    left_pos = _stops(a, first, q0, _stop_left, pivot, descending, min(lefts, swaps + 1))
    right_pos = _stops(a, q0, last, _stop_right, pivot, descending, swaps, reverse=True)
    if lefts > swaps:  # the left scan stops again before reaching the last swapped R
        cut = int(left_pos[swaps])
    else:  # both scans resume at q0: the left one stops at the first stop of either kind
        cut = None
        for b in range(q0, last, STEP):
            x = a[b:min(last, b + STEP)]
            hit = (_stop_left(x, pivot, descending) | _stop_right(x, pivot, descending)).nonzero()
            if len(hit):
                cut = b + int(hit[0])
                break
        assert cut is not None, "unguarded partition ran off its range"
    return cut, left_pos[:swaps], right_pos


def depth_limit(n: int) -> int:
    """std::sort's partition budget for n entries, 2 floor(log2 n): a run that needs more
    is heapsorted instead."""
    return 2 * (n.bit_length() - 1)


def _median_to_first(a: torch.Tensor, first: int, last: int, descending: bool) -> int:
    """libstdc++'s __move_median_to_first on (first + 1, middle, last - 1): the position
    whose value is swapped into `first` as the pivot."""
    i, j, k = first + 1, first + (last - first) // 2, last - 1
    x, y, z = float(a[i]), float(a[j]), float(a[k])

    def before(u: float, v: float) -> bool:
        return u > v if descending else u < v

    if before(x, y):
        return j if before(y, z) else k if before(x, z) else i
    if before(x, z):
        return i
    return k if before(y, z) else j


def sort_prefix_ties(values: torch.Tensor, p: int, value: float,
                     descending: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Which entries equal to `value` `torch.sort(values, descending)` (unstable, CPU)
    places before position p, where `value` is the sorted value at p - 1 and p.

    Returns (tied, before): the ascending indices of the entries equal to `value`, and
    whether each ends before p. Overwrites `values` (a flat float32 CPU tensor). None where
    the emulation does not apply (another device or dtype, NaN, a torch whose sort it does
    not follow, so many equal values that tracking them costs more than a sort, or a run
    deep enough for std::sort to switch to heapsort): then sort. Only the last of these
    is found after `values` has been overwritten; `followable` tells the others first,
    and `follow` is this function for callers that have asked it."""
    if not followable(values, value):
        return None
    return follow(values, p, value, descending)


def followable(values: torch.Tensor, value: float) -> bool:
    """Whether sort_prefix_ties applies to `values` cut at `value`, as far as can be told
    without following: CPU float32, no NaN, fewer than 2^31 entries, at most n / MAX_TIED
    of them equal to `value` (n / MAX_TIED_BIG beyond BIG entries), and a torch whose
    sort the emulation follows."""
    n = values.numel()
    most_tied = max(THRESHOLD, n // (MAX_TIED_BIG if n > BIG else MAX_TIED))
    return (values.device.type == "cpu" and values.dtype == torch.float32 and n < 2**31
            and int(torch.count_nonzero(values == value)) <= most_tied
            and not bool(values.isnan().any()) and follows_torch_sort())


def follow(values: torch.Tensor, p: int, value: float,
           descending: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
    """sort_prefix_ties where `followable(values, value)` holds: None only when the run
    gets deep enough for heapsort (values are then partly rearranged)."""
    n = values.numel()
    tied = (values == value).nonzero().flatten()
    before = torch.zeros(len(tied), dtype=torch.bool)
    # Only the tied entries still inside the run that holds p are followed (`live`: their
    # indices into `tied`, `at`: where each is now); the others are settled. Each level
    # costs the live ones only, which shrink with the run: about 2 T in all, not T a level.
    live = torch.arange(len(tied), dtype=torch.int32)
    at = tied.to(torch.int32)
    first, last, depth = 0, n, depth_limit(n)
    while last - first > THRESHOLD and len(live):
        if depth == 0:
            return None  # std::sort would heapsort this run
        depth -= 1
        m = _median_to_first(values, first, last, descending)
        values[first], values[m] = float(values[m]), float(values[first])
        at = torch.where(at == first, m, torch.where(at == m, first, at)).to(torch.int32)
        pivot = float(values[first])
        cut, left_pos, right_pos = _partition(values, first + 1, last, pivot, descending)
        if len(left_pos):  # tied entries among the swapped ones move to their partners
            # All tied entries are equal, so they are left stops for this pivot or not (and
            # right stops or not): look each up only among the swaps its value can be in.
            moved = at
            if bool(_stop_left(torch.tensor(value), pivot, descending)):
                i = torch.searchsorted(left_pos, at).clamp(max=len(left_pos) - 1)
                moved = torch.where(left_pos[i] == at, right_pos[i], moved)
            if bool(_stop_right(torch.tensor(value), pivot, descending)):
                right_up = right_pos.flip(0)
                k = torch.searchsorted(right_up, at).clamp(max=len(right_up) - 1)
                moved = torch.where(right_up[k] == at, left_pos[len(left_pos) - 1 - k], moved)
            at = moved
        # Settle the tied entries that leave the run holding p: everything left of the cut
        # ends before p when p lies on or right of the cut, everything right of it after.
        left_of_cut = at < cut
        if p >= cut:
            before[live[left_of_cut]] = True
        if p == cut:
            live = live[:0]
            break
        stay = left_of_cut if p < cut else ~left_of_cut
        live, at = live[stay], at[stay]
        if p < cut:  # follow the left run: only its side of the swaps matters
            values[left_pos] = values[right_pos]
            last = cut
        else:
            values[right_pos] = values[left_pos]
            first = cut
    if len(live):  # the insertion sort keeps equal values in their current order
        run = values[first:last]
        ahead = int(torch.count_nonzero(run > value if descending else run < value))
        ranked = live[at.argsort()]
        before[ranked[:max(0, p - first - ahead)]] = True
    return tied, before


@functools.lru_cache(maxsize=1)
def follows_torch_sort() -> bool:
    """Whether this torch's CPU sort is the std::sort the emulation follows: checked once
    on a probe with many equal values, both directions, several cuts."""
    generator = torch.Generator().manual_seed(0)
    probe = torch.randint(0, 60, (3000,), generator=generator).float()
    for descending in (True, False):
        order = torch.sort(probe, descending=descending).indices
        sorted_values = probe[order]
        for p in range(100, 3000, 450):
            value = float(sorted_values[p])
            if float(sorted_values[p - 1]) != value:
                continue
            followed = follow(probe.clone(), p, value, descending)
            expected = order[:p][sorted_values[:p] == value].sort().values
            if followed is None or not torch.equal(followed[0][followed[1]], expected):
                return False
    return True

