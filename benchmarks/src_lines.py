"""How many lines of src/ implement the behaviour that existed when issue 16 was filed?

Issue 16 asks for "fewer lines in src/ than today for the same behaviour"; it counted 8,855
lines of src/**/*.py, which is the tree at FILED below (this script checks that). Much
behaviour was added since, so the raw total says nothing; this splits today's lines by the
issue whose commit wrote them:

    .venv/bin/python benchmarks/src_lines.py [--rev HEAD] [--files]

Method (stdlib + git only; seconds):
- `git blame --line-porcelain -w -M -C` on every src/**/*.py at REV attributes each line to
  the commit that last changed it (-w: re-indents do not count as changes; -M/-C: lines
  moved within a file or between files changed in the same commit keep their origin, so the
  engine split keeps merge.py's lines as the filing-time lines they are).
- Issue 16's commits are refactors of existing behaviour, so they are passed with
  --ignore-rev: a line they only changed is blamed on the commit before them (git's
  heuristic: the same or a similar line nearby). Lines git cannot trace further stay on
  issue 16's commit; they are counted on the filing side (most of that rewrite served
  filing-time behaviour; some of it rewrote features added since, so this side is
  overcounted by at most those lines).
- Each later commit maps to the issue it served through ISSUE_OF, a table written by hand
  from the commit messages and the closing notes of `issues stops` (the message's first
  words beside each). A commit that serves two issues goes to the one its message leads
  with. Commits after LAST_MAPPED that are not in the table count as issue 16 (they are
  this issue's session; the report lists them); any other commit that touches src/ and is
  missing from the table is listed as unmapped.
- Blame counts a filing-time line that a later feature edited (a new argument, a longer
  message) as the feature's. The "edited" column estimates those lines: for each line a
  feature commit wrote, the hunk of that commit's diff (`git diff -U0 -w`) that holds it;
  a hunk that wrote k lines and removed f filing-time lines (blame of the parent, through
  issue 16's refactors) counts min(k, f) of them as edited. Filing-time lines plus edited
  lines is an upper bound for the filing side (an edit for a feature usually adds some of
  the feature to the line), filing-time lines alone a lower bound.
- Blank lines, comments and docstrings count like code, as in the 8,855.
"""
from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
from typing import NamedTuple

FILED = "5983d89"  # 2026-11-29 06:04 UTC: src/**/*.py holds the 8,855 lines issue 16 quotes
FILED_LINES = 8855
REFACTOR = 16  # this issue's commits rewrite; they are ignored by blame
# Commits after the last one in ISSUE_OF (the session of 2026-12-03 evening works on
# issue 16) count as issue 16 unless listed; the report names them.
LAST_MAPPED = "e8e6a7b"

# commit -> issue, for every commit after FILED that touches src/ (git log FILED..HEAD -- src)
ISSUE_OF = {
    "f335450": 16,  # registry: methods declare the box the search explores (issue 16 item 3)
    "13f754c": 15,  # search: method auto, multi-fidelity screening, CMA-ES restarts
    "4cf9842": 15,  # search --method auto without --base: most central model is the base
    "dc8e5c5": 18,  # newcomer's path: --help imports no torch; eval FILE.jsonl whole file
    "c6c9861": 18,  # search progress as log lines
    "d5223b4": 18,  # glue report: legend, links, full-width figures
    "41555b1": 18,  # demo/glue print the report's summary and ablation table
    "3fcf75c": 18,  # modelglue.merge stays the merge function under lazy imports
    "bd3935a": 21,  # Ray backend for real clusters
    "b2c8955": 16,  # trim: kthvalue plus an index tie rule; introsort removed
    "1cd4386": 16,  # registry: keyword registration, choices checked at validation
    "6e1dd2c": 16,  # no import circles
    "3162faa": 15,  # demo zoo (full): wider base, gentle fine-tunes keep the base by KL
    "581f213": 16,  # one atomic-write helper, one path-safety check, one dtype table
    "cdaa6c9": 16,  # engine split by job
    "4cb4c29": 16,  # merge of branch demo-zoo-2 (resolution only)
    "7f98a22": 16,  # output-directory check names the case
    "68c9c29": 21,  # Ray tests pass under pytest-xdist
    "004377f": 18,  # demo zoo build: one progress line per trained model
    "0059ebf": 17,  # registry: optional base, input counts, whole-number parameters
    "8b6d357": 17,  # nuslerp, multislerp, karcher
    "5a6c88c": 17,  # sce, ram, ramplus_tl
    "2997b40": 17,  # nearswap, arcee_fusion
    "b62f453": 15,  # demo zoo (full): gentle fine-tunes keep hidden states
    "ddbba3c": 21,  # Ray backend: a lost worker rejoins after a probe
    "a2c7c80": 18,  # make demo under a log
    "3aac21e": 15,  # search starts: best three members at full weight
    "c7220d3": 15,  # glue: the Pareto search has its own budget
    "cc9cba9": 17,  # recipe: chat_template refused in one line
    "b5f1774": 16,  # recipe: _validate split by job
    "8d4b808": 17,  # recipes: 1e-9 and 5E-1 are numbers, as mergekit reads them
    "de6eaa5": 16,  # recipes parsed by the SafeLoader subclass's own constructor
    "0266fdb": 16,  # demo train(): the keep loss in its own function
    "23f54a0": 16,  # one atomic-write helper and one path-safety check (search, glue)
    "42b267e": 17,  # tokenizer_source: union and the tokenizer: block (tokenizer_spec.py)
    "f96f3b4": 16,  # read_header split by job
    "dd11829": 17,  # LoRA inputs: MODEL+ADAPTER
    "a316104": 17,  # modelglue extract-lora
    "fb4ae74": 20,  # demo: 'dup' task, char tokenizer with an id shuffle
    "607f4d8": 20,  # eval drives any model through text (evaluate.textlm)
    "894191c": 20,  # zoo analysis: 'merge after alignment'
    "3963c05": 16,  # zoo.similarity: group_similarity split
    "1118396": 16,  # search: SearchContext.score and run_search split
    "d572354": 17,  # tokenizer_source union|base|model: engine/vocab.py
    "9f636d5": 17,  # mix: Mixtral, Qwen2-MoE, Qwen3-MoE; mergekit-moe configs
    "fb4abfe": 17,  # modelglue mix CONFIG.yml
    "c869a91": 17,  # vocab alignment vectorised
    "0309c89": 17,  # recipes: chat_template as mergekit writes it; ignored keys warned
    "cc990d5": 16,  # mix: _build_model_level split
    "d71a377": 17,  # mix_moe_config exported
    "254033d": 20,  # glue joins clusters with different tokenizers (and run_glue split)
    "e026b61": 17,  # mergekit-moe configs: degenerate-router warning
    "d65d8ec": 17,  # extract-lora golden
    "35ec730": 17,  # vocab: MODEL+ADAPTER reads its model's tokenizer
    "29e3ad9": 17,  # mix CONFIG.yml: --level flags refused
    "3bf59c3": 17,  # Checkpoint.adapter defaults to None
    "0e0e682": 17,  # recipes: values read as mergekit's pydantic reads them
    "8f803d0": 19,  # greedy_generate: only the last position's logits
    "b7b9c06": 19,  # InMemoryMerger.merge_into in chunks
    "6262d38": 17,  # --strict refuses an invalid inline chat_template
    "015f529": 17,  # vocab planning: each tokenizer's vocabulary read once
    "7d31354": 20,  # glue: aligned clusters tried as one union-tokenizer merge
    "b49165b": 17,  # engine/__init__: vocab.py in the list
    "0c09a48": 20,  # mixture/modeling docstrings: text_lm()
    "8a35e7b": 20,  # eval cache version 2
    "53b6fdc": 19,  # merge_into on one torch thread
    "08846fe": 17,  # near match prefers a swap of letters
    "07d9031": 17,  # chat_templates: a directory name with '+'
    "6e73178": 19,  # 16-bit merges compute in float32 by default
    "9dc4eda": 19,  # merge.py: restore 53b6fdc's InMemoryMerger changes
    "e22dd73": 17,  # safetensors writer: flatten before the byte view (SVD columns)
    "0e23b1a": 16,  # read_json_object written once
    "84c79eb": 20,  # demo zoo: family D with its own tokenizer
    "9369fff": 16,  # no import cycles of any length
    "28f9e45": 16,  # task_vector_merge split
    "43d4b67": 17,  # MODEL+ADAPTER bases: chat_template auto, generation_config
    "e2010dd": 16,  # _one_thread written once
    "d1c302f": 16,  # one dtype table, one logits_of; unused LAYOUTS/FFN_TYPES gone
    "c14f0ba": 17,  # mix --level refuses --strict
    "36dea0a": 16,  # did_you_mean, warn, path_exists, load_tokenizer written once
    "e8e6a7b": 16,  # one config_vocab_size
}

ISSUE_TITLE = {
    15: "merges that beat their members (method auto, screening, demo zoo)",
    17: "mergekit parity (8 methods, tokenizers, chat templates, LoRA, MoE configs)",
    18: "newcomer's path (lazy imports, progress logs, report)",
    19: "performance (16-bit arithmetic, merge_into, evaluator)",
    20: "zoo in the wild (text interface, cross-tokenizer glue, family D)",
    21: "Ray on real clusters",
}

HEADER = re.compile(r"^([0-9a-f]{40}) (\d+) \d+(?: \d+)?$")
HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


class Line(NamedTuple):
    commit: str
    orig_line: int  # the line's number in `orig_path` at `commit`
    orig_path: str
    previous: tuple[str, str] | None  # (parent, path there) if the file existed before commit


def git(*args: str) -> str:
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout


def src_files(rev: str) -> list[str]:
    names = git("ls-tree", "-r", "--name-only", rev, "--", "src").splitlines()
    return [n for n in names if n.endswith(".py")]


def blame(rev: str, path: str, ignored: list[str], lines: str | None = None) -> list[Line]:
    """Who wrote each line of path at rev (or of the range `lines`), looking through `ignored`."""
    args = ["blame", "--line-porcelain", "-w", "-M", "-C", *(["-L", lines] if lines else [])]
    for commit in ignored:
        args += ["--ignore-rev", commit]
    out, fields = [], {}
    for row in git(*args, rev, "--", path).splitlines():
        match = HEADER.match(row)
        if match:
            fields = {"commit": match.group(1), "orig_line": int(match.group(2))}
        elif row.startswith("filename "):
            fields["orig_path"] = row.removeprefix("filename ")
        elif row.startswith("previous "):
            parent, prev_path = row.removeprefix("previous ").split(" ", 1)
            fields["previous"] = (parent, prev_path)
        elif row.startswith("\t"):
            out.append(Line(fields["commit"], fields["orig_line"], fields["orig_path"],
                            fields.get("previous")))
    return out


class Attribution:
    """Sorts lines into "filed", "rewritten" (issue 16's own lines) and "issue N"."""

    def __init__(self, rev: str):
        self.filed = set(git("rev-list", FILED).split())
        short = list(ISSUE_OF)
        self.issue_of = dict(zip(git("rev-parse", *short).split(), ISSUE_OF.values()))
        self.later = set(git("rev-list", f"{FILED}..{rev}", "--", "src").split())
        self.since_table = sorted(set(git("rev-list", f"{LAST_MAPPED}..{rev}", "--", "src").split())
                                  - set(self.issue_of))
        self.issue_of.update({c: REFACTOR for c in self.since_table})
        self.missing = sorted(self.later - set(self.issue_of))
        self.refactors = [c for c, i in self.issue_of.items() if i == REFACTOR and c in self.later]

    def kind(self, commit: str) -> str:
        if commit in self.filed:
            return "filed"
        issue = self.issue_of.get(commit)
        if issue is None:
            return "unmapped"
        return "rewritten" if issue == REFACTOR else f"issue {issue}"

    def edited(self, feature_lines: dict[tuple[str, str, str, str], list[tuple[int, str]]]) -> collections.Counter:
        """Per file at rev: lines a feature commit wrote in place of filing-time lines (see the
        module docstring). feature_lines: (commit, path, parent, parent path) -> [(line, rev path)]."""
        edited = collections.Counter()
        for (commit, path, parent, prev_path), lines in feature_lines.items():
            diff = git("diff", "-U0", "-w", "-M", parent, commit, "--", prev_path, path)
            for match in map(HUNK.match, diff.splitlines()):
                if not match:
                    continue
                old, removed = int(match.group(1)), int(match.group(2) or 1)
                new, added = int(match.group(3)), int(match.group(4) or 1)
                written = [p for n, p in lines if new <= n < new + added]
                if not written or not removed:
                    continue
                before = blame(parent, prev_path, self.refactors, f"{old},+{removed}")
                filed = sum(self.kind(line.commit) in ("filed", "rewritten") for line in before)
                edited.update(written[:filed])
        return edited


def count(rev: str, who: Attribution) -> tuple[dict[str, collections.Counter], collections.Counter]:
    """Per file at rev: lines by kind, and the feature lines that edited filing-time lines."""
    per_file, feature_lines = {}, collections.defaultdict(list)
    for path in src_files(rev):
        lines = blame(rev, path, who.refactors)
        per_file[path] = collections.Counter(who.kind(line.commit) for line in lines)
        for line in lines:
            if who.kind(line.commit).startswith("issue") and line.previous:
                key = (line.commit, line.orig_path, *line.previous)
                feature_lines[key].append((line.orig_line, path))
    return per_file, who.edited(feature_lines)


def area(path: str) -> str:
    """The part of modelglue a file belongs to, for the per-area table."""
    rest = path.removeprefix("src/modelglue/")
    top = rest.split("/")[0].removesuffix(".py")
    if top in ("engine", "methods", "io", "merge", "recipe", "tokenizer_spec", "arch",
               "errors", "extract_lora", "chat_templates"):
        return "merge engine"
    return {"glue_report": "glue", "__init__": "package"}.get(top, top)


def filed_side(counts: collections.Counter) -> int:
    return counts["filed"] + counts["rewritten"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rev", default="HEAD")
    parser.add_argument("--files", action="store_true", help="also print the per-file table")
    args = parser.parse_args()

    filed_per_area = collections.Counter()
    for path in src_files(FILED):
        filed_per_area[area(path)] += len(git("show", f"{FILED}:{path}").splitlines())
    if sum(filed_per_area.values()) != FILED_LINES:
        sys.exit(f"error: src/ at {FILED} has {sum(filed_per_area.values())} lines, not {FILED_LINES}")
    who = Attribution(args.rev)
    per_file, edited = count(args.rev, who)
    summary(per_file, edited)
    by_area(per_file, edited, filed_per_area)
    if args.files:
        print("\n| file | lines | filing-time | edited by a feature |\n|---|---:|---:|---:|")
        for path, counts in sorted(per_file.items()):
            print(f"| {path.removeprefix('src/modelglue/')} | {sum(counts.values())} | "
                  f"{filed_side(counts)} | {edited[path]} |")
    if who.since_table:
        print(f"\ncommits after {LAST_MAPPED} counted as issue 16: {' '.join(c[:7] for c in who.since_table)}")
    if who.missing:
        print(f"\nunmapped commits (add them to ISSUE_OF): {' '.join(c[:7] for c in who.missing)}")


def summary(per_file: dict[str, collections.Counter], edited: collections.Counter) -> None:
    totals = sum(per_file.values(), collections.Counter())
    total = sum(totals.values())
    print(f"src/**/*.py: {total} lines now, {FILED_LINES} at {FILED} (issue 16 filed)\n")
    print("| lines last written by | lines | share |\n|---|---:|---:|")
    print(f"| filing-time commits (seen through issue 16's refactors) | {totals['filed']} | "
          f"{totals['filed'] / total:.1%} |")
    print(f"| issue 16's own lines (counted as filing-time) | {totals['rewritten']} | "
          f"{totals['rewritten'] / total:.1%} |")
    old = filed_side(totals)
    print(f"| **filing-time behaviour** | **{old}** | {old / total:.1%} |")
    for issue, title in ISSUE_TITLE.items():
        n = totals[f"issue {issue}"]
        print(f"| issue {issue}: {title} | {n} | {n / total:.1%} |")
    if totals["unmapped"]:
        print(f"| unmapped commits | {totals['unmapped']} | {totals['unmapped'] / total:.1%} |")
    print(f"| **behaviour added since** | **{total - old}** | {(total - old) / total:.1%} |")
    upper = old + sum(edited.values())
    print(f"\nfiling-time behaviour today: {old} lines, {upper} if the {sum(edited.values())} "
          f"filing-time lines a later feature edited count too; {FILED_LINES} at filing "
          f"({old - FILED_LINES:+d} / {upper - FILED_LINES:+d})\n")


def by_area(per_file: dict[str, collections.Counter], edited: collections.Counter,
            filed_per_area: collections.Counter) -> None:
    now, upper = collections.Counter(), collections.Counter()
    for path, counts in per_file.items():
        now[area(path)] += filed_side(counts)
        upper[area(path)] += filed_side(counts) + edited[path]
    print("| area | lines at filing | filing-time behaviour today (+ edited) | change |\n"
          "|---|---:|---:|---:|")
    for name in sorted(set(filed_per_area) | set(now), key=lambda a: -filed_per_area[a]):
        then = filed_per_area[name]
        print(f"| {name} | {then} | {now[name]} ({upper[name]}) | "
              f"{now[name] - then:+d} ({upper[name] - then:+d}) |")


if __name__ == "__main__":
    main()
