"""Does a rerun reproduce the committed reproduction table? (issue 14's acceptance check)

Compares one seed's rows in two results files of ``reproduce.py`` (the committed table and a rerun of the same
command in another folder or on another machine). Both evaluate the same seeded images, so each cell's difference
is paired per image: ``rerun - committed`` with its standard error. A cell is within the reported spread when that
difference is at most ``Z`` x the across-seed standard deviation the committed table reports for it (the
"mean ± sd" of the table) or ``Z`` x its own SE, whichever is larger; the paper-claim verdicts are recomputed with the rerun's seed in place of the committed
one.

    python benchmarks/reproduce.py --seed 0 --output runs/rerun/reproduce --workdir runs/rerun/seed0   # the rerun
    python benchmarks/reproduce_rerun.py git:bcf5f7b runs/rerun/reproduce.json --seed 0

``git:REV`` reads ``benchmarks/results/reproduce.json`` as committed at ``REV``. Writes
``results/reproduce_rerun_seed<N>.{json,md}`` (``--output``).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("reproduce_benchmark", Path(__file__).with_name("reproduce.py"))
reproduce = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reproduce)


def read(source: str) -> dict[str, Any]:
    """A results file, or ``git:REV`` for the table committed at REV."""
    if source.startswith("git:"):
        text = subprocess.run(["git", "show", f"{source[4:]}:benchmarks/results/reproduce.json"], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout
        return json.loads(text)
    return json.loads(Path(source).read_text())


def compare(committed: dict[str, Any], rerun: dict[str, Any], seed: int, z: float = reproduce.Z) -> dict[str, Any]:
    """Per row and column: both accuracies, the paired difference with its SE, the committed spread (sd over its
    seeds) and whether the difference is within ``z`` sd; plus the claim verdicts before and after."""
    key = str(seed)
    if committed.get("settings") != rerun.get("settings"):
        raise SystemExit("the two files were made with other settings: "
                         + reproduce.differing(committed.get("settings", {}), rerun.get("settings", {})))
    old, new = committed["seeds"].get(key), rerun["seeds"].get(key)
    if not old or not new:
        raise SystemExit(f"seed {seed} is missing from {'the committed table' if not old else 'the rerun'}")
    cells = []
    for label in [r for r in reproduce.ROWS if r in old["rows"] and r in new["rows"]]:
        for column, (_, _, header) in reproduce.COLUMNS.items():
            a, b = old["rows"][label]["eval"]["vectors"][column], new["rows"][label]["eval"]["vectors"][column]
            if a["images"] != b["images"]:
                raise SystemExit(f"{label} {header}: the rerun evaluated other images than the committed table")
            d = reproduce.paired_difference(reproduce.unbits(b["correct"]), reproduce.unbits(a["correct"]))
            values = [e["rows"][label]["eval"]["accuracy"][column] for e in committed["seeds"].values()
                      if label in e["rows"]]
            _, sd = reproduce.mean_sd(values)
            cells.append({"row": label, "column": column, "committed": old["rows"][label]["eval"]["accuracy"][column],
                          "rerun": new["rows"][label]["eval"]["accuracy"][column], "diff": d["diff"], "se": d["se"],
                          "n": d["n"], "sd_seeds": sd, "n_seeds": len(values),
                          "within": None if sd is None else abs(d["diff"]) <= z * max(sd, d["se"] or 0.0) + 1e-12})
    after = copy.deepcopy(committed)
    after["seeds"][key] = new
    complete = set(old["rows"]) <= set(new["rows"])  # a partial rerun's seed would drop rows from the verdicts
    return {"seed": seed, "z": z, "cells": cells,
            "rows_only_committed": sorted(set(old["rows"]) - set(new["rows"])),
            "rows_only_rerun": sorted(set(new["rows"]) - set(old["rows"])),
            "machines": {"committed": old.get("machine"), "rerun": new.get("machine")},
            "warm_start_loss": {"committed": (old.get("warm_start") or {}).get("last_terms", {}).get("loss"),
                                "rerun": (new.get("warm_start") or {}).get("last_terms", {}).get("loss")},
            "claims": {"committed": reproduce.claims(committed),
                       "with_rerun": reproduce.claims(after) if complete else None}}


def to_markdown(result: dict[str, Any], sources: tuple[str, str]) -> str:
    cells, z = result["cells"], result["z"]
    judged = [c for c in cells if c["within"] is not None]
    lines = [f"# Reproduction check: seed {result['seed']} rerun against the committed table", "",
             f"Committed: `{sources[0]}`; rerun: `{sources[1]}`. Same command and settings, same seeded test images "
             f"per row, so each difference (rerun - committed, points) is paired per image (± its SE). Within: "
             f"|difference| <= {z:g} x the larger of the committed across-seed sd of that cell and the SE.", "",
             f"Warm start final loss: committed {result['warm_start_loss']['committed']}, rerun "
             f"{result['warm_start_loss']['rerun']}. Machines: committed "
             f"{(result['machines']['committed'] or {}).get('cpu')}, rerun {(result['machines']['rerun'] or {}).get('cpu')}.",
             "", f"**{sum(c['within'] for c in judged)} of {len(judged)} cells within the reported spread** "
             f"({len(cells) - len(judged)} without a spread: a row with one committed seed).", "",
             "| row | column | committed | rerun | difference | sd (seeds) | within |", "|---|---|---:|---:|---:|---:|---|"]
    for c in cells:
        sd = "-" if c["sd_seeds"] is None else f"{100 * c['sd_seeds']:.1f} ({c['n_seeds']})"
        within = "-" if c["within"] is None else ("yes" if c["within"] else "**no**")
        lines.append(f"| {c['row']} | {reproduce.COLUMNS[c['column']][2]} | {100 * c['committed']:.1f} | "
                     f"{100 * c['rerun']:.1f} | {reproduce._points(c)} | {sd} | {within} |")
    if result["claims"]["with_rerun"] is None:
        lines += ["", "Paper claims: recomputed once the rerun has every row of the committed seed (a partial "
                  "seed in its place would change which rows the verdicts rest on)."]
    else:
        lines += ["", "Paper claims, committed table vs with the rerun's seed in its place:", "",
                  "| claim | committed | with the rerun |", "|---|---|---|"]
        for (claim, before, _), (_, now, _) in zip(result["claims"]["committed"], result["claims"]["with_rerun"]):
            lines.append(f"| {claim} | {before} | {now} |")
    if result["rows_only_committed"] or result["rows_only_rerun"]:
        lines += ["", f"Rows only in the committed table: {', '.join(result['rows_only_committed']) or 'none'}; "
                  f"only in the rerun: {', '.join(result['rows_only_rerun']) or 'none'}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("committed", help="the committed results JSON, or git:REV")
    p.add_argument("rerun", help="the rerun's results JSON")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", help="path stem (default benchmarks/results/reproduce_rerun_seed<N>)")
    args = p.parse_args(argv)
    result = compare(read(args.committed), read(args.rerun), args.seed)
    result["command"] = "python benchmarks/reproduce_rerun.py " + " ".join(argv if argv is not None else sys.argv[1:])
    stem = Path(args.output or reproduce.RESULTS / f"reproduce_rerun_seed{args.seed}")
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    markdown = to_markdown(result, (args.committed, args.rerun))
    stem.with_suffix(".md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
