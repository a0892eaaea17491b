"""Reads that reuse memory (BufferPool, glibc's thresholds) and reads that map instead
of copying (map_tensor): same bytes as a plain read, and no way to corrupt a file or
a tensor still in use."""
from __future__ import annotations

import platform

import pytest
import torch
from safetensors.torch import save_file

from modelglue.errors import ModelGlueError
from modelglue.io import BufferPool, Checkpoint, keep_freed_memory, read_header, read_tensor
from modelglue.io import buffers
from modelglue.io.safetensors_io import map_tensor

needs_use_count = pytest.mark.skipif(buffers._storage_use_count is None, reason="torch has no storage use counts")


@needs_use_count
def test_pool_hands_a_buffer_out_again_only_once_nothing_uses_it():
    pool = BufferPool(1 << 20)
    first = pool.take(1000)
    address = first.data_ptr()
    view = first[10:20].view(torch.int16)  # a view keeps the block in use
    del first
    second = pool.take(1000)
    assert second.data_ptr() != address  # a new block: the first one is still in use
    del view
    third = pool.take(800)
    assert third.data_ptr() == address and third.numel() == 800  # idle now: handed out again
    assert pool.nbytes == 2000
    del third
    assert pool.take(1000).data_ptr() == address  # second is still held: the first block again


@needs_use_count
def test_pool_stays_within_its_bytes():
    pool = BufferPool(3000)
    held = [pool.take(1000), pool.take(1000)]
    big = pool.take(2000)  # would exceed the cap while both are held: plain memory, not pooled
    assert pool.nbytes == 2000
    del held, big
    again = pool.take(2500)  # idle blocks too small are dropped to make room
    assert pool.nbytes == 2500 and again.numel() == 2500
    assert pool.take(5000).numel() == 5000 and pool.nbytes == 2500  # bigger than the cap: never pooled


@needs_use_count
def test_pooled_reads_return_the_file_contents(tmp_path):
    values = {"a": torch.randn(64, 32), "b": torch.arange(100, dtype=torch.int64)}
    save_file(values, tmp_path / "model.safetensors")
    infos, _ = read_header(tmp_path / "model.safetensors")
    pool = BufferPool(1 << 20)
    for _ in range(3):  # the same blocks again and again
        got = {name: read_tensor(info, pool=pool) for name, info in infos.items()}
        assert all(torch.equal(got[n], values[n]) for n in values)
        del got
    assert pool.nbytes == infos["a"].nbytes + infos["b"].nbytes


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_keeps_freed_memory():
    assert keep_freed_memory() is True


def test_mapped_tensor_equals_the_read_one_and_writes_stay_private(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"small": torch.ones(3), "w": torch.randn(300, 70), "h": torch.randn(7).half()}, path)
    before = path.read_bytes()
    infos, _ = read_header(path)
    for info in infos.values():
        mapped = map_tensor(info)
        assert mapped.dtype == info.dtype and tuple(mapped.shape) == info.shape
        assert torch.equal(mapped, read_tensor(info))
        mapped.mul_(2)  # copy-on-write: neither the file nor a second mapping sees it
        assert torch.equal(map_tensor(info), read_tensor(info))
    assert path.read_bytes() == before
    ck = Checkpoint.__new__(Checkpoint)  # map_flat: a slice of the flat tensor
    ck._pickled, ck._infos = None, infos
    assert torch.equal(ck.map_flat("w", 100, 5000), read_tensor(infos["w"]).reshape(-1)[100:5000])


def test_mapping_a_file_that_shrank_is_a_one_line_error(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.randn(1000)}, path)
    info = read_header(path)[0]["w"]
    with open(path, "r+b") as f:
        f.truncate(info.offset + 100)
    with pytest.raises(ModelGlueError, match="truncated"):
        map_tensor(info)
