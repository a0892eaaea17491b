"""The `modelglue` command line: thin wrappers over the Python API.

Every command exits 0 on success and 2 with a one-line `error: ...` on bad input
(ModelGlueError); `--debug` shows the traceback instead. Commands register
themselves below with the usual click decorators.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click

# transformers draws a "Loading weights" bar for every model it loads (hundreds in a
# search or the demo); the commands show their own progress instead.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from modelglue.errors import ModelGlueError


class _Group(click.Group):
    """A click group that turns exceptions into one-line errors unless --debug."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except Exception as exc:
            usage = isinstance(exc, click.UsageError)
            if (ctx.obj and ctx.obj.get("debug")) or (isinstance(exc, click.ClickException) and not usage):
                raise
            if usage:  # bad option or argument: one line too, not usage + hint + error
                message, code = exc.format_message(), exc.exit_code
            elif isinstance(exc, ModelGlueError):
                message, code = str(exc), exc.exit_code
            else:  # a bug or an unforeseen input: still one line
                message, code = f"{type(exc).__name__}: {exc} (run with --debug for the traceback)", 1
            click.echo(f"error: {message}", err=True)
            ctx.exit(code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.version_option(package_name="modelglue")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """modelglue: merge, search, mix and glue a zoo of language models."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    _unwind_on_sigterm()


def _unwind_on_sigterm() -> None:
    """Let SIGTERM (kill, a job scheduler's timeout) unwind like Ctrl-C, so temporary output
    directories are removed and the exit is 'interrupted' (130). Only where nobody else
    has claimed the signal, and only on the main thread (where Python runs handlers)."""
    import signal
    import threading

    def _raise(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise)


@main.group(cls=_Group)
def zoo() -> None:
    """Model zoo commands: analyze a zoo, build the demo zoo."""


def _parse_size(text: str) -> int:
    """'2GB', '500MB', '1.5G', '1000000' -> bytes (a positive, finite size)."""
    units = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "ki": 2**10, "mi": 2**20, "gi": 2**30}
    s = text.strip().lower().rstrip("b")
    scale = 1
    for suffix in sorted(units, key=len, reverse=True):
        if s.endswith(suffix):
            s, scale = s[: -len(suffix)], units[suffix]
            break
    try:
        value = int(float(s) * scale)  # ValueError for junk and NaN, OverflowError for inf
    except (ValueError, OverflowError):
        raise ModelGlueError(f"--shard-size: cannot read {text!r} (use e.g. 2GB, 500MB)") from None
    if value <= 0:
        raise ModelGlueError(f"--shard-size: must be a positive size, got {text!r}")
    return value


@main.command("merge")
@click.argument("recipe", type=click.Path(path_type=Path))
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--device", default="cpu", show_default=True, help="Where the arithmetic runs: cpu or cuda.")
@click.option("--threads", type=int, default=None,
              help="CPU threads for torch (default: 1 for streamed elementwise methods, else all cores).")
@click.option("--shard-size", default="5GB", show_default=True, help="Largest output shard, e.g. 2GB, 500MB.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for randomised methods (dare_*, della*).")
@click.option("--allow-pickle", is_flag=True, help="Read .bin/.pt checkpoints (with torch.load(weights_only=True)).")
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it exists.")
@click.option("--fsync", is_flag=True, help="fsync every shard before the final rename (survives power loss).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--strict", is_flag=True, help="Refuse keys and parameters mergekit would ignore (default: warn and run).")
@click.option("--exact", is_flag=True, help="16-bit merges: do the arithmetic in 16 bits as mergekit does "
              "(bit-identical outputs) instead of in float32 rounded once (within one ulp, faster).")
def merge_cmd(recipe: Path, out_dir: Path, device: str, threads: int | None, shard_size: str, seed: int,
              allow_pickle: bool, overwrite: bool, fsync: bool, quiet: bool, strict: bool, exact: bool) -> None:
    """Merge models as RECIPE.yml (mergekit format) says, into OUT_DIR."""
    from modelglue.merge import merge

    if threads is not None and threads < 1:
        raise ModelGlueError(f"--threads: must be at least 1, got {threads}")
    start = time.perf_counter()
    # The bar is for people: on a pipe or a log file it would only garble the error line.
    merge(recipe, out_dir, device=device, seed=seed, threads=threads, shard_size=_parse_size(shard_size),
          allow_pickle=allow_pickle, overwrite=overwrite, progress=not quiet and sys.stderr.isatty(), fsync=fsync,
          strict=strict, exact=exact)
    click.echo(f"merged into {out_dir} in {time.perf_counter() - start:.1f}s")


@main.command("extract-lora")
@click.argument("base", type=click.Path(path_type=Path))
@click.argument("tuned", type=click.Path(path_type=Path))
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--rank", "--max-rank", "rank", type=int, default=128, show_default=True,
              help="Largest LoRA rank (mergekit-extract-lora's --max-rank).")
@click.option("--include-regex", "-i", "include", multiple=True, help="Decompose only modules matching (re.search).")
@click.option("--exclude-regex", "-e", "exclude", multiple=True, help="Leave out modules matching (re.search).")
@click.option("--embed-lora/--no-embed-lora", default=False, show_default=True,
              help="LoRA on the input embedding (else embeddings and lm_head are saved at full rank).")
@click.option("--save-module", "save_modules", multiple=True, help="Save this module (name or last part) at full rank.")
@click.option("--sv-epsilon", type=float, default=0.0, show_default=True, help="Drop singular values at or below this.")
@click.option("--distribute-scale/--no-distribute-scale", default=True, show_default=True,
              help="Split the singular values between lora_A and lora_B as their square roots.")
@click.option("--skip-undecomposable", is_flag=True, help="Leave out 1-D weights (norms) instead of saving them whole.")
@click.option("--device", default="cpu", show_default=True, help="Where the SVDs run: cpu or cuda.")
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it exists.")
@click.option("--quiet", "-q", is_flag=True, help="No per-module progress.")
def extract_lora_cmd(base: Path, tuned: Path, out_dir: Path, rank: int, include: tuple[str, ...],
                     exclude: tuple[str, ...], embed_lora: bool, save_modules: tuple[str, ...], sv_epsilon: float,
                     distribute_scale: bool, skip_undecomposable: bool, device: str, overwrite: bool,
                     quiet: bool) -> None:
    """Write a PEFT LoRA adapter for TUNED - BASE (truncated SVD per linear weight) to OUT_DIR."""
    from modelglue.extract_lora import ExtractOptions, extract_lora

    opts = ExtractOptions(rank, include, exclude, embed_lora, save_modules, sv_epsilon, distribute_scale,
                          skip_undecomposable, device)
    summary = extract_lora(base, tuned, out_dir, opts, overwrite=overwrite, progress=not quiet and sys.stderr.isatty())
    errors = list(summary["errors"].values())
    click.echo(f"wrote {out_dir}: {summary['modules']} modules at rank <= {summary['rank']} "
               f"(relative error mean {sum(errors) / len(errors):.3g}, max {max(errors):.3g}), "
               f"{len(summary['saved'])} tensors at full rank")


# ---- demo zoo and evaluation (modelglue.demo, modelglue.evaluate) --------------------

@zoo.command("build-demo")
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--scale", type=click.Choice(["full", "tiny"]), default="full", show_default=True,
              help="full: the demo zoo (minutes); tiny: the test zoo (seconds).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the whole zoo (deterministic).")
@click.option("--threads", type=int, default=1, show_default=True,
              help="torch threads (1 is fastest on a shared CPU).")
@click.option("--force", is_flag=True, help="Replace OUT_DIR if it is not empty.")
def build_demo_cmd(out_dir: Path, scale: str, seed: int, threads: int, force: bool) -> None:
    """Train the demo zoo into OUT_DIR (zoo.json manifest, scores.json, one HF dir per model)."""
    from modelglue.demo import build_demo_zoo

    build_demo_zoo(out_dir, seed=seed, scale=scale, threads=threads, force=force)


@main.command("eval")
@click.argument("model_dir", type=click.Path(path_type=Path), required=False)
@click.option("--tasks", default="all", show_default=True,
              help="Comma list: built-in names (add, rev, ...), all, FILE.jsonl, lm_eval:NAME.")
@click.option("--split", type=click.Choice(["validation", "test"]), default=None,
              help="Split of the built-in tasks and of task files that mark their splits (default: test). "
                   "A task file without split markers is scored whole unless --split is given.")
@click.option("--limit", type=int, default=None, help="First N examples of each task.")
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Write results as JSON.")
@click.option("--no-cache", is_flag=True, help="Recompute instead of reusing cached scores.")
@click.option("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
@click.option("--export-lm-eval", "export_dir", type=click.Path(path_type=Path), default=None,
              help="Write the tasks as lm-eval-harness YAMLs into DIR (MODEL_DIR optional).")
def eval_cmd(model_dir: Path | None, tasks: str, split: str | None, limit: int | None, batch_size: int,
             json_out: Path | None, no_cache: bool, threads: int | None, export_dir: Path | None) -> None:
    """Score MODEL_DIR on tasks: greedy exact match (or log-likelihood for multiple choice)."""
    import json as _json

    if export_dir is not None:
        from modelglue.evaluate.lmeval import export_lm_eval_tasks

        names = export_lm_eval_tasks(export_dir, tasks=None if tasks == "all" else tasks)
        click.echo(f"wrote {len(names)} lm-eval tasks to {export_dir}: lm_eval --include_path {export_dir} "
                   f"--tasks {','.join(n for n in names if not n.endswith('_val'))}")
        if model_dir is None:
            return
    if model_dir is None:
        raise ModelGlueError("give a MODEL_DIR (or --export-lm-eval DIR)")
    if limit is not None and limit < 1:
        raise ModelGlueError("--limit must be at least 1")
    if threads:
        import torch

        torch.set_num_threads(threads)
    from modelglue.evaluate import evaluate_dir, whole_file_tasks

    # every line of a file that does not mark its splits, as any evaluator scores the file it is given
    spec = tasks if split is not None else whole_file_tasks(tasks)
    res = evaluate_dir(model_dir, spec, split=split or "test", limit=limit, batch_size=batch_size,
                       use_cache=not no_cache)
    width = max([len(t) for t in res["scores"]] + [4])
    click.echo(f"{'task':<{width}}  {'metric':<11}  {'n':>5}  score")
    for name, score in res["scores"].items():
        d = res["details"][name]
        click.echo(f"{name:<{width}}  {d['metric']:<11}  {d['n'] or 0:>5}  {score:.4f}"
                   + ("  (cached)" if d.get("cached") else ""))
    click.echo(f"{'mean':<{width}}  {'':<11}  {'':>5}  {res['mean']:.4f}")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(_json.dumps(res, indent=2) + "\n")


# ---- search (modelglue.search) ---------------------------------------------------------

def _parse_task_weights(text: str | None) -> dict[str, float] | None:
    """'add=2,rev=1' -> {'add': 2.0, 'rev': 1.0}."""
    if not text:
        return None
    out = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise ModelGlueError(f"--task-weights: cannot read {part!r} (use e.g. add=2,rev=1)")
    return out


@main.command("search")
@click.option("--models", "models_flag", is_flag=True,
              help="The model directories to merge follow (DIR...; also accepted without --models).")
@click.argument("model_dirs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--base", type=click.Path(path_type=Path), default=None,
              help="Base model (needed by ties/dare/task_arithmetic; with linear, one more member).")
@click.option("--tasks", required=True, help="Comma list: built-in names, FILE.jsonl, lm_eval:NAME.")
@click.option("--strategy", default="cmaes", show_default=True,
              type=click.Choice(["uniform", "heuristic-average", "heuristic-coefficient", "heuristic-similarity",
                                 "cmaes", "pareto"]))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Output directory.")
@click.option("--budget", type=float, default=None,
              help="Full-validation evaluations to spend (a candidate screened on a quarter of the examples costs 0.25; "
                   "default per strategy).")
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--ray-address", default=None,
              help="Ray cluster to join: HOST:PORT of `ray start --head`, or auto (default: start a local one).")
@click.option("--workers", type=int, default=2, show_default=True, help="Ray scoring workers.")
@click.option("--worker-cpus", type=float, default=1.0, show_default=True, help="CPUs per Ray worker.")
@click.option("--worker-gpus", type=float, default=0.0, show_default=True, help="GPUs per Ray worker.")
@click.option("--resume", is_flag=True, help="Continue the search journaled in --out; nothing is scored twice.")
@click.option("--method", default="auto", show_default=True, help="Merge method, or auto: choose among linear, task_arithmetic, ties, dare_ties, breadcrumbs_ties, della by validation score.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the search (and of dare merges).")
@click.option("--limit", type=int, default=None, help="First N examples of each task.")
@click.option("--save-model", is_flag=True, help="Also write the best merge to OUT/model.")
@click.option("--task-weights", default=None, help="Fitness weights, e.g. add=2,rev=1 (default: mean).")
@click.option("--layer-groups", type=int, default=1, show_default=True,
              help="Weights per model: one per group of layers, interpolated across depth.")
@click.option("--search-density/--no-search-density", default=None,
              help="Search per-model densities (default: for the methods that sparsify: ties, dare, della, ...).")
@click.option("--precision", type=int, default=2, show_default=True,
              help="Decimals of coefficients; equal after rounding = the same candidate.")
@click.option("--popsize", type=int, default=None, help="CMA-ES population (default 4 + 3 ln dim).")
@click.option("--sigma", type=float, default=None, help="CMA-ES initial step size (default 0.3).")
@click.option("--init", type=click.Choice(["screen", "uniform", "best-single", "heuristic"]), default="screen",
              show_default=True, help="CMA-ES starts: screen structured and random starts of every method on "
                                      "validation subsets, the uniform merge, near the best single model, or "
                                      "after a heuristic-average run.")
@click.option("--no-multi-fidelity", is_flag=True,
              help="Score every candidate on the whole validation split (no screening on subsets).")
@click.option("--grid", default=None, help="heuristic-coefficient grid, e.g. 0.1,0.3,0.5,0.7,0.9.")
@click.option("--similarity-order", type=click.Choice(["descending", "ascending"]), default="descending",
              show_default=True, help="heuristic-similarity: most or least similar model first.")
@click.option("--pareto-points", type=int, default=5, show_default=True, help="pareto: task-weightings swept.")
@click.option("--no-baselines", is_flag=True, help="Skip scoring each single model and the uniform merge.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--threads", type=int, default=1, show_default=True, help="torch threads per scorer (0: torch's default).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def search_cmd(models_flag: bool, model_dirs: tuple[Path, ...], base: Path | None, tasks: str, strategy: str,
               out_dir: Path, budget: int | None, backend: str, ray_address: str | None, workers: int,
               worker_cpus: float, worker_gpus: float, resume: bool,
               method: str, seed: int, limit: int | None, save_model: bool, task_weights: str | None,
               layer_groups: int, search_density: bool | None, precision: int, popsize: int | None, sigma: float | None,
               init: str, no_multi_fidelity: bool, grid: str | None, similarity_order: str, pareto_points: int,
               no_baselines: bool,
               device: str, threads: int, quiet: bool) -> None:
    """Search merge coefficients of --models DIR... on the validation split of --tasks;
    report the best merge (and, for pareto, the front) on the test split."""
    from modelglue.search import SearchConfig, run_search

    models = [Path(p) for d in model_dirs for p in str(d).split(",") if p]
    if not models:
        raise ModelGlueError("give the model directories: --models DIR [DIR...]")
    if limit is not None and limit < 1:
        raise ModelGlueError("--limit must be at least 1")
    try:
        grid_values = [float(g) for g in grid.split(",")] if grid else None
    except ValueError:
        raise ModelGlueError(f"--grid: cannot read {grid!r} (use e.g. 0.1,0.3,0.5)") from None
    cfg = SearchConfig(models=models, tasks=tasks, out_dir=out_dir, strategy=strategy, base=base, method=method,
                       budget=budget, backend=backend, ray_address=ray_address, workers=workers,
                       worker_cpus=worker_cpus, worker_gpus=worker_gpus, resume=resume,
                       seed=seed, limit=limit, save_model=save_model, task_weights=_parse_task_weights(task_weights),
                       layer_groups=layer_groups, search_density=search_density, precision=precision,
                       popsize=popsize, sigma=sigma, init=init, multi_fidelity=not no_multi_fidelity,
                       grid=grid_values, similarity_order=similarity_order,
                       pareto_points=pareto_points, baselines=not no_baselines, device=device,
                       threads=threads or None, progress=not quiet)
    result = run_search(cfg)
    click.echo(result.summary)
    click.echo(f"outputs in {out_dir}: best.yml, results.json, convergence.png"
               + (", pareto.png" if result.front else "") + (", model/" if save_model else ""))


# ---- zoo analysis (modelglue.zoo) -----------------------------------------------------

@zoo.command("analyze")
@click.argument("model_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--base", type=click.Path(path_type=Path), default=None,
              help="Base model for task vectors (joins the analysis if not listed). Default: each cluster's most central model.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Write clusters.json, similarity.json, heatmap.png, dendrogram.png here.")
@click.option("--threshold", type=float, default=0.95, show_default=True,
              help="Weight-cosine threshold (paper rule); for hierarchical, merges closer than 1 - threshold are never cut.")
@click.option("--method", type=click.Choice(["hierarchical", "paper"]), default="hierarchical", show_default=True,
              help="hierarchical: average linkage cut at the largest gap; paper: the Model-GLUE first-member rule.")
@click.option("--allow-pickle", is_flag=True, help="Read .bin/.pt checkpoints (with torch.load(weights_only=True)).")
@click.option("--no-plots", is_flag=True, help="Skip heatmap.png and dendrogram.png.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def zoo_analyze_cmd(model_dirs: tuple[Path, ...], base: Path | None, out_dir: Path | None, threshold: float,
                    method: str, allow_pickle: bool, no_plots: bool, quiet: bool) -> None:
    """Fingerprint, compare and cluster MODEL_DIR... (HF model directories, or a demo zoo root with zoo.json)."""
    from modelglue.zoo import analyze_zoo
    from modelglue.zoo.report import summary_table

    start = time.perf_counter()
    result = analyze_zoo(list(model_dirs), base=base, out_dir=out_dir, threshold=threshold, method=method,
                         allow_pickle=allow_pickle, progress=not quiet, plots=not no_plots)
    click.echo(summary_table(result))
    read = sum(s.bytes_read for s in result.similarity if s is not None)
    click.echo(f"analyzed in {time.perf_counter() - start:.1f}s ({read / 1e6:.1f} MB of weights read)"
               + (f"; wrote {out_dir}/clusters.json, similarity.json" + ("" if no_plots else ", heatmap.png, dendrogram.png")
                  if out_dir else ""))


# ---- mixtures (modelglue.mixture) -------------------------------------------------------

@main.command("mix")
@click.option("--level", default=None, type=click.Choice(["model", "block", "ffn"]),
              help="model: route whole models; block: route decoder blocks; ffn: an MoE of the MLPs "
                   "(Mixtral, Qwen2-MoE, Qwen3-MoE). Without --level: `mix CONFIG.yml OUT`, a mergekit-moe config.")
@click.option("--experts", "experts_flag", is_flag=True,
              help="The expert model directories follow (DIR...; also accepted without --experts).")
@click.argument("expert_dirs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--router", default="hidden", show_default=True,
              type=click.Choice(["hidden", "embed", "random", "trained", "uniform"]),
              help="hidden/embed: centroids of each expert's prompts; trained: logistic regression; "
                   "random; uniform (block/ffn only).")
@click.option("--router-data", type=click.Path(path_type=Path), default=None,
              help='JSONL lines {"prompt", "expert": index|name} (see docs/mixtures.md).')
@click.option("--out", "out_dir", default=None, type=click.Path(path_type=Path), help="Output directory.")
@click.option("--top-k", type=int, default=2, show_default=True, help="Experts per token (ffn) or sequence (block).")
@click.option("--base", type=click.Path(path_type=Path), default=None,
              help="ffn/block: attention, embeddings, norms (and dense layers) from here (default: the experts' mean).")
@click.option("--num-dense-layers", type=int, default=0, show_default=True,
              help="ffn/block: the first K layers stay dense (from --base), the rest are mixed.")
@click.option("--pooling", type=click.Choice(["mean", "last", "first"]), default="mean", show_default=True,
              help="How a prompt's tokens are pooled for routing (model and block levels).")
@click.option("--router-layer", type=int, default=None,
              help="model: hidden-state layer the router reads (default: the encoder's middle).")
@click.option("--router-encoder", type=int, default=None,
              help="model: index of the expert whose features the router reads (default: the smallest).")
@click.option("--seed", "--random-seed", "seed", type=int, default=0, show_default=True)
@click.option("--shard-size", default="5GB", show_default=True, help="Largest output shard (ffn), e.g. 2GB.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@click.option("--strict", is_flag=True, help="CONFIG.yml: refuse keys mergekit-moe would ignore (default: warn).")
@click.option("--i-understand-this-is-not-useful-without-training", "allow_all_same", is_flag=True,
              help="CONFIG.yml: build it even if every expert is the same model (as mergekit-moe's flag).")
def mix_cmd(level: str | None, experts_flag: bool, expert_dirs: tuple[Path, ...], router: str,
            router_data: Path | None, out_dir: Path | None, top_k: int, base: Path | None, num_dense_layers: int,
            pooling: str, router_layer: int | None, router_encoder: int | None, seed: int, shard_size: str,
            overwrite: bool, strict: bool, allow_all_same: bool) -> None:
    """Join expert models into one mixture: model-, block- or FFN-level, with a router;
    or run a mergekit-moe config unchanged: modelglue mix CONFIG.yml OUT."""
    from modelglue.mixture import mix

    if level is None:
        _refuse_flags(click.get_current_context(), LEVEL_ONLY_FLAGS, "goes with --level; a mergekit-moe config "
                      "sets its own (gate_mode, experts_per_token, base_model: see docs/mixtures.md)")
        return _mix_moe_config(expert_dirs, out_dir, seed, _parse_size(shard_size), overwrite, strict, allow_all_same)
    _refuse_flags(click.get_current_context(), ("strict", "allow_all_same"), "goes with a mergekit-moe CONFIG.yml, "
                  "not with --level")
    if out_dir is None:
        raise ModelGlueError("give the output directory: --out DIR")
    experts = [Path(p) for d in expert_dirs for p in str(d).split(",") if p]
    if not experts:
        raise ModelGlueError("give the expert directories: --experts DIR [DIR...]")
    start = time.perf_counter()
    rep = mix(level, experts, out_dir, router=router, router_data=router_data, top_k=top_k, base=base,
              num_dense_layers=num_dense_layers, pooling=pooling, router_layer=router_layer,
              router_encoder=router_encoder, seed=seed, shard_size=_parse_size(shard_size), overwrite=overwrite)
    acc = "n/a (no held-out prompts)" if rep.routing_accuracy is None else f"{rep.routing_accuracy:.3f}"
    click.echo(f"{level}-level mixture of {len(experts)} experts ({', '.join(rep.experts)}) with a {router} router "
               f"into {out_dir} in {time.perf_counter() - start:.1f}s")
    click.echo(f"routing accuracy on {rep.n_test} held-out prompts: {acc}"
               + (f" (train {rep.routing_accuracy_train:.3f})" if rep.routing_accuracy_train is not None else ""))


# A mergekit-moe config sets its own routing: these flags of the --level interface would be ignored.
LEVEL_ONLY_FLAGS = ("experts_flag", "router", "router_data", "top_k", "base", "num_dense_layers", "pooling",
                    "router_layer", "router_encoder")


def _refuse_flags(ctx: click.Context, names: tuple[str, ...], why: str) -> None:
    """Refuse flags given on the command line that this form of the command would ignore."""
    opts = {p.name: p.opts[0] for p in ctx.command.params}
    for name in names:
        if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE:
            raise ModelGlueError(f"{opts[name]} {why}")


def _mix_moe_config(args: tuple[Path, ...], out_dir: Path | None, seed: int, shard_size: int, overwrite: bool,
                    strict: bool, allow_all_same: bool) -> None:
    from modelglue.mixture.moe_config import is_moe_config, mix_moe_config

    if out_dir is not None:
        args = args + (out_dir,)
    if len(args) != 2 or not is_moe_config(args[0]):
        raise ModelGlueError("give --level model|block|ffn and the experts, or a mergekit-moe config: "
                             "modelglue mix CONFIG.yml OUT")
    start = time.perf_counter()
    rep = mix_moe_config(args[0], args[1], seed=seed, overwrite=overwrite, allow_all_same=allow_all_same,
                         strict=strict, shard_size=shard_size)
    click.echo(f"{rep.details['architecture']} of {len(rep.experts)} experts ({', '.join(rep.experts)}), "
               f"gate_mode {rep.router}, into {args[1]} in {time.perf_counter() - start:.1f}s")


# ---- the whole pipeline (modelglue.glue) ----------------------------------------------

def _print_results(results: dict, out: Path) -> None:
    """The report's tables and summary, as report.md has them."""
    from modelglue.glue_report import ablation_md, summary_lines, table_md

    click.echo(table_md(results))
    if results.get("ablation"):
        click.echo("\nWhat merging added (test split):\n" + ablation_md(results["ablation"]))
    click.echo("\n" + "\n".join(line.replace("**", "") for line in summary_lines(results)))
    click.echo(f"final model in {out / 'final'}; report: {out / 'report.html'} (and report.md, results.json)")


@main.command("glue")
@click.argument("zoo_file", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Output directory.")
@click.option("--budget", type=int, default=None, help="Scored candidates per search (overrides ZOO.yml).")
@click.option("--limit", type=int, default=None, help="Validation examples per task (overrides ZOO.yml).")
@click.option("--quiet", "-q", is_flag=True, help="No progress messages.")
def glue_cmd(zoo_file: Path, out_dir: Path, budget: int | None, limit: int | None, quiet: bool) -> None:
    """Run Model-GLUE on the zoo that ZOO_FILE lists: cluster, merge, mix, report."""
    from modelglue.glue import load_glue_config, run_glue

    cfg = load_glue_config(zoo_file, out_dir, budget=budget, limit=limit)
    _print_results(run_glue(cfg, quiet=quiet), out_dir)


@main.command("demo")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("demo-out"), show_default=True)
@click.option("--quick", is_flag=True, help="The tiny test zoo and small budgets (about a minute).")
@click.option("--quiet", "-q", is_flag=True, help="No progress messages.")
def demo_cmd(out_dir: Path, quick: bool, quiet: bool) -> None:
    """Build the demo zoo (cached) and run Model-GLUE on it."""
    from modelglue.demo import demo_zoo
    from modelglue.glue import demo_config, run_glue

    zoo_root = demo_zoo(scale="tiny" if quick else "full", quiet=quiet)
    cfg = demo_config(zoo_root, out_dir, quick=quick)
    _print_results(run_glue(cfg, quiet=quiet), out_dir)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
