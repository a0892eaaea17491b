"""Reading and writing model directories: validated safetensors, sharded atomic output."""
from modelglue.io.buffers import BufferPool, keep_freed_memory
from modelglue.io.checkpoint import (
    Checkpoint,
    atomic_output_dir,
    check_output_dir,
    copy_tokenizer_files,
    read_config,
)
from modelglue.io.paths import atomic_write, check_outside_inputs
from modelglue.io.safetensors_io import ShardedWriter, TensorSpec, read_header, read_tensor, save_tensors

__all__ = [
    "BufferPool", "keep_freed_memory", "atomic_write", "check_outside_inputs",
    "Checkpoint", "atomic_output_dir", "check_output_dir", "copy_tokenizer_files", "read_config",
    "ShardedWriter", "TensorSpec", "read_header", "read_tensor", "save_tensors",
]
