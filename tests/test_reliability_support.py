"""Shared helpers for the reliability suites (no tests here).

* tiny Llama checkpoints built once per session (`build_zoo`);
* `run_cli`: the real `modelglue` console script in a subprocess;
* `Zygote`: a helper process that imports modelglue (and torch) once and then forks one
  child per command, which runs the very same entry point (`modelglue.cli:main`) with
  its own argv, cwd, stdout/stderr files and exit status. A fresh `modelglue` process
  spends ~2 s of CPU importing torch; forking keeps the whole catalogue of bad inputs
  and the kill tests to a few seconds on 2 cores. The zygote never runs a torch kernel
  before forking (so no OpenMP pool exists to break in the child), and a few cases of
  every suite also go through the genuine console script to prove both paths agree.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

CLI = Path(sys.executable).parent / "modelglue"
CLI_ARGS = [str(CLI)] if CLI.exists() else [sys.executable, "-m", "modelglue.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0", "TQDM_DISABLE": ""}


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.strip()]


def run_cli(args: list[str], cwd: Path, timeout: float = 60) -> Result:
    """The installed `modelglue` console script, in a fresh process."""
    p = subprocess.run(CLI_ARGS + [str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                       timeout=timeout, env=ENV)
    return Result(p.returncode, p.stdout, p.stderr)


_ZYGOTE_CODE = r"""
import json, os, sys, traceback
import modelglue.cli, modelglue.merge  # torch is imported here, once; no kernel runs before fork
sys.stdout.write("ready\n"); sys.stdout.flush()
for line in sys.stdin:
    req = json.loads(line)
    if req["op"] == "spawn":
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.setpgid(0, 0)
                os.chdir(req["cwd"])
                for fd, name in ((1, req["stdout"]), (2, req["stderr"])):
                    f = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    os.dup2(f, fd); os.close(f)
                null = os.open(os.devnull, os.O_RDONLY); os.dup2(null, 0); os.close(null)
                sys.argv = ["modelglue"] + req["args"]
                try:
                    modelglue.cli.main(req["args"], prog_name="modelglue")
                    code = 0
                except SystemExit as e:
                    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                except BaseException:
                    traceback.print_exc(); code = 1
            finally:
                try:
                    sys.stdout.flush(); sys.stderr.flush()
                finally:
                    os._exit(code)
        sys.stdout.write(json.dumps({"pid": pid}) + "\n"); sys.stdout.flush()
    elif req["op"] == "wait":
        _, status = os.waitpid(req["pid"], 0)
        rc = os.waitstatus_to_exitcode(status)
        sys.stdout.write(json.dumps({"rc": rc}) + "\n"); sys.stdout.flush()
"""


_SHARED: "Zygote | None" = None


def shared_zygote() -> "Zygote":
    """One zygote for the whole test session (closed at exit)."""
    global _SHARED
    if _SHARED is None or _SHARED.proc.poll() is not None:
        import atexit

        _SHARED = Zygote()
        atexit.register(_SHARED.close)
    return _SHARED


class Zygote:
    """Forks `modelglue` commands from a process that has already imported torch."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _ZYGOTE_CODE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=ENV)
        self.lock = threading.Lock()
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if line.strip() != "ready":
            raise RuntimeError(f"zygote failed to start: {line!r}")

    def _ask(self, req: dict) -> dict:
        with self.lock:
            self.proc.stdin.write(json.dumps(req) + "\n")  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
            return json.loads(self.proc.stdout.readline())  # type: ignore[union-attr]

    def spawn(self, args: list[str], cwd: Path, tag: str = "run") -> tuple[int, Path, Path]:
        out, err = cwd / f".{tag}.stdout", cwd / f".{tag}.stderr"
        pid = self._ask({"op": "spawn", "args": [str(a) for a in args], "cwd": str(cwd),
                         "stdout": str(out), "stderr": str(err)})["pid"]
        return pid, out, err

    def wait(self, pid: int) -> int:
        return self._ask({"op": "wait", "pid": pid})["rc"]

    def run(self, args: list[str], cwd: Path, tag: str = "run") -> Result:
        pid, out, err = self.spawn(args, cwd, tag)
        rc = self.wait(pid)
        return Result(rc, out.read_text(), err.read_text())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # type: ignore[union-attr]
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait()


# ----------------------------------------------------------------------------- tiny models


def build_llama(path: Path, *, seed: int = 0, hidden: int = 16, layers: int = 2, vocab: int = 32,
                intermediate: int | None = None, dtype: torch.dtype | None = None) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a busy 2-core machine, spinning worker threads cost 10x
    try:
        torch.manual_seed(seed)
        cfg = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate or 2 * hidden, num_hidden_layers=layers,
                          num_attention_heads=2, num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=64)
        model = LlamaForCausalLM(cfg)
        if dtype is not None:
            model = model.to(dtype)
        model.save_pretrained(path)
    finally:
        torch.set_num_threads(threads)
    return path


_ZOO: dict[str, Path] = {}


def build_zoo(root: Path) -> dict[str, Path]:
    """Tiny Llamas: a, b, c (same shape), v64 (other vocab), h32 (other width), l3 (3 layers), f16."""
    if not _ZOO:
        root.mkdir(parents=True, exist_ok=True)
        specs = {"a": {}, "b": {}, "c": {}, "v64": {"vocab": 64}, "h32": {"hidden": 32}, "l3": {"layers": 3},
                 "f16": {"dtype": torch.float16}}
        for i, (name, kw) in enumerate(specs.items()):
            _ZOO[name] = build_llama(root / name, seed=i, **kw)
    return dict(_ZOO)


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def leftovers(out_dir: Path) -> list[str]:
    """Anything a failed command left at or next to out_dir (the output or hidden temp siblings)."""
    found = [out_dir.name] if out_dir.exists() else []
    return found + sorted(p.name for p in out_dir.parent.glob(f".{out_dir.name}.*"))


def assert_clean_failure(res: Result, out_dir: Path | None, *expect: str) -> str:
    """Exit 2, exactly one `error: ...` line on stderr naming what it should, no traceback,
    nothing left at (or next to) out_dir. Returns the error line."""
    lines = res.error_lines
    assert res.rc == 2, f"exit {res.rc}, stderr:\n{res.stderr}"
    assert "Traceback" not in res.stderr, res.stderr
    assert len(lines) == 1, f"expected one stderr line, got:\n{res.stderr}"
    assert lines[0].startswith("error: "), lines[0]
    for e in expect:
        assert e in lines[0], f"{e!r} not in {lines[0]!r}"
    if out_dir is not None:
        assert leftovers(out_dir) == [], leftovers(out_dir)
    return lines[0]


def load_and_check(out_dir: Path) -> dict[str, torch.Tensor]:
    """A complete output: config + weights load, every tensor finite."""
    from safetensors.torch import load_file

    assert (out_dir / "config.json").is_file()
    tensors: dict[str, torch.Tensor] = {}
    index = out_dir / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    for f in files:
        tensors.update(load_file(out_dir / f))
    for name, t in tensors.items():
        assert torch.isfinite(t.float()).all(), name
    return tensors
