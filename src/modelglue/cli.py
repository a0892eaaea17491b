"""The `modelglue` command line: thin wrappers over the Python API.

Every command exits 0 on success and 2 with a one-line `error: ...` on bad input
(ModelGlueError); `--debug` shows the traceback instead. Commands register
themselves below with the usual click decorators.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from modelglue.errors import ModelGlueError


class _Group(click.Group):
    """A click group that turns exceptions into one-line errors unless --debug."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except ModelGlueError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except Exception as exc:  # a bug or an unforeseen input: still one line
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", err=True)
            ctx.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.version_option(package_name="modelglue")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """modelglue: merge, search, mix and glue a zoo of language models."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


@main.group(cls=_Group)
def zoo() -> None:
    """Model zoo commands: analyze a zoo, build the demo zoo."""


def _parse_size(text: str) -> int:
    """'2GB', '500MB', '1.5G', '1000000' -> bytes."""
    units = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "ki": 2**10, "mi": 2**20, "gi": 2**30}
    s = text.strip().lower().rstrip("b")
    for suffix in sorted(units, key=len, reverse=True):
        if s.endswith(suffix):
            try:
                return int(float(s[: -len(suffix)]) * units[suffix])
            except ValueError:
                break
    try:
        return int(float(s))
    except ValueError:
        raise ModelGlueError(f"--shard-size: cannot read {text!r} (use e.g. 2GB, 500MB)") from None


@main.command("merge")
@click.argument("recipe", type=click.Path(path_type=Path))
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--device", default="cpu", show_default=True, help="Where the arithmetic runs: cpu or cuda.")
@click.option("--threads", type=int, default=None, help="CPU threads for torch (default: all cores).")
@click.option("--shard-size", default="5GB", show_default=True, help="Largest output shard, e.g. 2GB, 500MB.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for randomised methods (dare_*, della*).")
@click.option("--allow-pickle", is_flag=True, help="Read .bin/.pt checkpoints (with torch.load(weights_only=True)).")
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it exists.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def merge_cmd(recipe: Path, out_dir: Path, device: str, threads: int | None, shard_size: str, seed: int,
              allow_pickle: bool, overwrite: bool, quiet: bool) -> None:
    """Merge models as RECIPE.yml (mergekit format) says, into OUT_DIR."""
    import time

    from modelglue.merge import merge

    start = time.perf_counter()
    merge(recipe, out_dir, device=device, seed=seed, threads=threads, shard_size=_parse_size(shard_size),
          allow_pickle=allow_pickle, overwrite=overwrite, progress=not quiet)
    click.echo(f"merged into {out_dir} in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
