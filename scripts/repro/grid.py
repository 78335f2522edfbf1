"""What a method's reproduction declares (runs, tables, claims) and how its page is generated.

A method module `scripts/repro/<method>.py` defines:

* `SEEDS`, `BASES`: default numbers of seeds and base checkpoints of the full grid;
* `grid(quick, seeds, bases) -> list[Run]`: every run, each a normal `python -m clipjax.main`
  workdir `ROOT/<run.name>` (`{root}` in its config string and overrides is replaced by ROOT,
  `{repo}` by the repository), with the runs it needs listed in `deps`;
* `metrics(run, workdir) -> dict[str, float]`: the numbers its tables need, read from the finished
  workdir (`summary.json`, the post-run evaluation's JSON, ...);
* optionally, post-run evaluation functions named by `Run.evaluate`:
  `fn(workdir, **run.eval_args) -> dict` (the driver runs them in a subprocess and writes the dict
  to `WORKDIR/repro_<fn>.json`);
* `TABLES` and `CLAIMS`: what the generated page shows.

`render(...)` turns the run records (one small JSON object per finished run) into the markdown
that `scripts/reproduce.py` writes between the page's generation markers.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from clipjax import metrics
from repro import stats

BEGIN = "<!-- generated:begin -->"
END = "<!-- generated:end -->"
NOT_MEASURED = "not measured"  # the verdict of a claim without any paired records


@dataclasses.dataclass(frozen=True)
class Run:
  """One `python -m clipjax.main` run of a reproduction grid.

  Attributes:
    name: workdir name under ROOT (unique in the grid).
    config: `configs/<x>.py:<arg>`; `{root}` is replaced by ROOT, `{repo}` by the repository.
    group: the table row this run belongs to (e.g. the training loss).
    overrides: extra `--config.<key>=<value>` flags (`{root}`, `{repo}` replaced).
    deps: names of runs that must be finished first (e.g. the base a fine-tune starts from).
    seed: the seed of this run (pairs runs across groups); None if it has none.
    base: name of the base run it starts from or evaluates (pairs runs too); None if none.
    evaluate: name of a post-run evaluation function of the method module, or None.
    eval_args: keyword arguments of that function (JSON-serialisable).
    done_file: the file whose presence in the workdir means the run finished.
  """

  name: str
  config: str
  group: str
  overrides: tuple[str, ...] = ()
  deps: tuple[str, ...] = ()
  seed: int | None = None
  base: str | None = None
  evaluate: str | None = None
  eval_args: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False)
  done_file: str = "summary.json"


@dataclasses.dataclass(frozen=True)
class Column:
  """A metric column: `key` of the records' metrics, shown as `title`, times `scale`."""

  key: str
  title: str
  scale: float = 100.0
  digits: int = 1


@dataclasses.dataclass(frozen=True)
class Table:
  """One row per group (in `groups` order, or the records' order when empty), one cell per column.

  With `rows`, each group gets one line per row name, and `{row}` in a column key is replaced by
  it (e.g. rows = classifiers, key `clean/{row}`).
  """

  title: str
  columns: tuple[Column, ...]
  groups: tuple[str, ...] = ()
  rows: tuple[str, ...] = ()
  note: str = ""


@dataclasses.dataclass(frozen=True)
class Claim:
  """A paper claim tested by the mean paired difference `a − b` (same seed and base).

  Attributes:
    name: short name shown in the verdict table.
    text: what the paper claims, in words.
    a: metric key of the treatment.
    b: metric key of the baseline.
    a_groups: groups of the treatment runs (several: pooled).
    b_group: group of the baseline runs, paired by (seed, base); None: the baseline is metric `b`
      of the same record (two rules applied to one checkpoint).
    direction: +1 (a > b claimed), -1 (a < b claimed), 0 (a ≈ b within `margin`).
    paper: the paper's own number(s), quoted; "" where the paper gives none.
    margin: equivalence margin in metric units (direction 0).
    scale: display scale of the differences (100: percentage points).
  """

  name: str
  text: str
  a: str
  b: str
  a_groups: tuple[str, ...]
  b_group: str | None
  direction: int
  paper: str = ""
  margin: float = 0.0
  scale: float = 100.0


def read_json(workdir: str, name: str) -> Any:
  """`WORKDIR/name` parsed; a missing file is an error naming it."""
  path = os.path.join(workdir, name)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: missing (did the run or its evaluation finish?)")
  with open(path) as f:
    return metrics.loads(f.read())


def events(workdir: str, kind: str) -> list[dict]:
  """The events of one kind ("train", "eval") of `WORKDIR/metrics.jsonl`."""
  path = os.path.join(workdir, "metrics.jsonl")
  with open(path) as f:
    return [e for e in map(metrics.loads, filter(str.strip, f)) if e.get("kind") == kind]


def train_events(workdir: str) -> list[dict]:
  """The `"kind": "train"` events of `WORKDIR/metrics.jsonl`."""
  return events(workdir, "train")


def toposort(runs: Sequence[Run]) -> list[Run]:
  """Runs in dependency order (stable: declaration order where free).

  Raises:
    ValueError: duplicate names, an unknown dependency, or a cycle.
  """
  by_name: dict[str, Run] = {}
  for r in runs:
    if r.name in by_name:
      raise ValueError(f"run name {r.name!r} declared twice")
    by_name[r.name] = r
  for r in runs:
    missing = [d for d in r.deps if d not in by_name]
    if missing:
      raise ValueError(f"run {r.name!r} depends on undeclared runs {missing}")
  out: list[Run] = []
  state: dict[str, int] = {}  # 1: visiting, 2: done

  def visit(r: Run, chain: tuple[str, ...]) -> None:
    if state.get(r.name) == 2:
      return
    if state.get(r.name) == 1:
      raise ValueError(f"dependency cycle: {' -> '.join((*chain, r.name))}")
    state[r.name] = 1
    for d in r.deps:
      visit(by_name[d], (*chain, r.name))
    state[r.name] = 2
    out.append(r)

  for r in runs:
    visit(r, ())
  return out


def _ordered_groups(records: Sequence[dict], wanted: Sequence[str]) -> list[str]:
  present = list(dict.fromkeys(r["group"] for r in records))
  return [g for g in wanted if g in present] if wanted else present


def _table(t: Table, records: Sequence[dict]) -> list[str]:
  groups = _ordered_groups(records, t.groups)
  lines = [f"### {t.title}", ""]
  if t.note:
    lines += [t.note, ""]
  if not groups:
    return [*lines, "(no records)", ""]
  lines += [
    "| group | n | " + " | ".join(c.title for c in t.columns) + " |",
    "|---|---|" + "---|" * len(t.columns),
  ]
  for g in groups:
    recs = [r for r in records if r["group"] == g]
    for row in t.rows or (None,):
      label = g if row is None else (row if len(groups) == 1 else f"{g} · {row}")
      cells = []
      for c in t.columns:
        key = c.key if row is None else c.key.replace("{row}", row)
        have = [r for r in recs if key in r["metrics"]]
        cells.append(
          stats.format_spread(
            [r["metrics"][key] for r in have],
            [str(r.get("base")) for r in have],
            c.digits,
            c.scale,
          )
        )
      lines.append(f"| {label} | {len(recs)} | " + " | ".join(cells) + " |")
  return [*lines, ""]


def paired_differences(claim: Claim, records: Sequence[dict]) -> list[float]:
  """The paired differences `a − b` of a claim, in record order (metric units, unscaled)."""
  out = []
  for g in claim.a_groups:
    for r in records:
      if r["group"] != g or claim.a not in r["metrics"]:
        continue
      if claim.b_group is None:
        other = r
      else:
        match = [
          o
          for o in records
          if o["group"] == claim.b_group
          and o.get("seed") == r.get("seed")
          and o.get("base") == r.get("base")
        ]
        if len(match) > 1:
          raise ValueError(
            f"claim {claim.name!r}: {len(match)} records of group {claim.b_group!r} share "
            f"seed {r.get('seed')} and base {r.get('base')}"
          )
        if not match:
          continue
        other = match[0]
      if claim.b in other["metrics"]:
        d = float(r["metrics"][claim.a]) - float(other["metrics"][claim.b])
        if not math.isnan(d):
          out.append(d)
  return out


def claim_row(claim: Claim, records: Sequence[dict]) -> dict[str, Any]:
  """n, mean difference, 95 % bootstrap CI and verdict of one claim (differences scaled)."""
  d = np.asarray(paired_differences(claim, records)) * claim.scale
  if d.size == 0:
    return {"n": 0, "mean": math.nan, "ci": (math.nan, math.nan), "verdict": NOT_MEASURED}
  ci = stats.bootstrap_ci(d)
  return {
    "n": int(d.size),
    "mean": float(d.mean()),
    "ci": ci,
    "verdict": stats.verdict(ci, claim.direction, int(d.size), claim.margin * claim.scale),
  }


def _claims(claims: Sequence[Claim], records: Sequence[dict]) -> list[str]:
  lines = [
    "### Paper claims: paired differences (same seed and base) and verdicts",
    "",
    "Difference = treatment − baseline, mean over pairs, 95 % percentile-bootstrap CI "
    f"({stats.N_RESAMPLES} resamples). Verdict: *{stats.REPRODUCED}* if the CI excludes 0 on the "
    f"claimed side (equivalence claims: lies inside ± the margin), *{stats.NOT_REPRODUCED}* if it "
    f"excludes 0 on the other side (lies outside the margin), else *{stats.INCONCLUSIVE}*; "
    f"always the latter with fewer than {stats.MIN_PAIRS} pairs; *{NOT_MEASURED}* without any. "
    "A weak test at small n: with 3 pairs the CI excludes 0 exactly when all three differences "
    "share a sign (one-sided sign-test p = 1/8).",
    "",
    "| claim | paper | treatment − baseline | claimed | n | difference | 95 % CI | verdict |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for c in claims:
    row = claim_row(c, records)
    where = "same checkpoint" if c.b_group is None else f"vs `{c.b_group}`"
    groups = (
      " + ".join(f"`{g}`" for g in c.a_groups)
      if len(c.a_groups) <= 2
      else f"{len(c.a_groups)} groups pooled"
    )
    comp = f"`{c.a}` of {groups} − `{c.b}` ({where})"
    sign = {1: "> 0", -1: "< 0", 0: f"within ± {c.margin * c.scale:g}"}[c.direction]
    mean = "–" if row["n"] == 0 else f"{row['mean']:+.2f}"
    ci = "–" if row["n"] == 0 else f"[{row['ci'][0]:+.2f}, {row['ci'][1]:+.2f}]"
    lines.append(
      f"| {c.name}: {c.text} | {c.paper or '–'} | {comp} | {sign} | {row['n']} | {mean} | {ci} "
      f"| **{row['verdict']}** |"
    )
  return [*lines, ""]


def _cost(records: Sequence[dict], order: Sequence[str]) -> list[str]:
  lines = [
    "### Cost per run (CPU seconds of the run's processes, user + system; wall seconds)",
    "",
    "CPU time is the comparable number on a shared machine; wall time depends on its load "
    "(1-minute load average at each run's end in the records).",
    "",
    "| group | runs | CPU s | wall s | evaluation CPU s |",
    "|---|---|---|---|---|",
  ]
  present = _ordered_groups(records, ())
  for g in [g for g in order if g in present] + [g for g in present if g not in order]:
    recs = [r for r in records if r["group"] == g]
    ev = [r["eval_cpu_s"] for r in recs if r.get("eval_cpu_s") is not None]
    lines.append(
      f"| {g} | {len(recs)} | {stats.mean_std([r['cpu_s'] for r in recs], 0)} "
      f"| {stats.mean_std([r['wall_s'] for r in recs], 0)} | {stats.mean_std(ev, 0)} |"
    )
  return [*lines, ""]


def render(
  method: str,
  records: Sequence[dict],
  tables: Sequence[Table],
  claims: Sequence[Claim],
  command: str,
) -> str:
  """The generated section of a page (markers included) from the run records."""
  records = sorted(records, key=lambda r: r["run"])
  quick = sorted({bool(r.get("quick")) for r in records})
  commits = sorted({r.get("commit", "?") for r in records})
  seeds = sorted({r["seed"] for r in records if r.get("seed") is not None})
  bases = sorted({r["base"] for r in records if r.get("base") is not None})
  lines = [
    BEGIN,
    "",
    f"## Reproduction (generated from `{method}.records.json`; do not edit by hand)",
    "",
    f"Regenerate: `{command}`. Runs: `python scripts/reproduce.py {method}` "
    "(see `scripts/repro/" + method + ".py` for the grid).",
    "",
  ]
  if not records:
    lines += [
      "**No records yet**: this grid has not been run with the driver; anything below this "
      "section is earlier work and is not regenerated.",
      "",
      END,
    ]
    return "\n".join(lines)
  if quick != [False]:
    lines += [
      "**Toy-size (`--quick`) records: these numbers test the pipeline, not the paper.**",
      "",
    ]
  lines += [
    f"{len(records)} runs; seeds {seeds or '–'}; bases {bases or '–'}; commits "
    + ", ".join(f"`{c}`" for c in commits)
    + ". Cells: mean ± std over seeds (pooled within base); `(bases ± s)`: std of the per-base "
    "means when there are several bases; a single number where one run exists.",
    "",
  ]
  for t in tables:
    lines += _table(t, records)
  if claims:
    lines += _claims(claims, records)
  lines += _cost(records, list(dict.fromkeys(g for t in tables for g in t.groups)))
  lines.append(END)
  return "\n".join(lines)


def splice(page: str, generated: str, path: str) -> str:
  """`page` with the text between its markers replaced by `generated` (markers included).

  Raises:
    ValueError: the page lacks exactly one BEGIN followed by one END marker.
  """
  if page.count(BEGIN) != 1 or page.count(END) != 1 or page.index(BEGIN) > page.index(END):
    raise ValueError(f"{path}: needs exactly one {BEGIN!r} line followed by one {END!r} line")
  head, rest = page.split(BEGIN, 1)
  _, tail = rest.split(END, 1)
  return head + generated + tail
