"""The mutation score per module after `./dev mutate` (reads mutmut's results under mutants/).

Score = killed / (mutants - equivalent). A mutant counts as killed when a test failed, it timed out or
hung (a loop that no longer ends, a wait that is never answered), crashed, or the type checker refused it;
one that no test of the in-process selection reaches ("no tests") counts as surviving. Equivalent mutants
(they change nothing a caller can observe) are listed with the reason in tests/mutation_equivalent.toml and
left out of the score.

    python tests/mutation_score.py [MODULE...]      (MODULE as given to ./dev mutate: backoff, runtime.worker)
"""

from __future__ import annotations

import json
import sys
import tomllib
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENT = ROOT / "tests" / "mutation_equivalent.toml"
KILLED = {1, 3, 36, 37, 24, -24, 152, 255, -9, -11}  # -9: killed after its time limit (a hang), -11: crashed
SURVIVED = {0, 5, 33}


def module_of(mutant: str) -> str:
    """`forgejobs.runtime.worker.xǁWorkerǁrun__mutmut_3` -> `forgejobs.runtime.worker`."""
    parts = mutant.split(".")
    return ".".join(p for p in parts[:-1])


def main(selected: list[str]) -> int:
    equivalent: dict[str, str] = tomllib.loads(EQUIVALENT.read_text())["mutants"] if EQUIVALENT.exists() else {}
    prefixes = tuple(f"forgejobs.{name.removeprefix('forgejobs.')}" for name in selected)
    counts: dict[str, Counter[str]] = {}
    alive: list[str] = []
    stale: list[str] = []
    for meta in sorted((ROOT / "mutants" / "forgejobs").rglob("*.py.meta")):
        exit_codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
        for mutant, code in exit_codes.items():
            module = module_of(mutant)
            if prefixes and not any(module == p or module.startswith(p + ".") for p in prefixes):
                continue
            tally = counts.setdefault(module, Counter())
            if mutant in equivalent:
                tally["equivalent"] += 1
                if code in KILLED:
                    stale.append(mutant)
            elif code in KILLED:
                tally["killed"] += 1
            elif code in SURVIVED:
                tally["survived"] += 1
                alive.append(mutant)
            else:
                tally["not run"] += 1
    if not counts:
        print("no mutation results: run ./dev mutate first")
        return 1
    print(f"{'module':32} {'mutants':>7} {'killed':>7} {'alive':>6} {'equiv':>6} {'not run':>7} {'score':>6}")
    for module, tally in sorted(counts.items()):
        total = sum(tally.values())
        judged = tally["killed"] + tally["survived"]
        score = f"{100 * tally['killed'] / judged:.0f}%" if judged else "-"
        print(
            f"{module:32} {total:7} {tally['killed']:7} {tally['survived']:6} {tally['equivalent']:6}"
            f" {tally['not run']:7} {score:>6}"
        )
    if alive:
        print(f"\n{len(alive)} surviving mutants (see one with: .venv/bin/mutmut show NAME):")
        for mutant in alive:
            print(f"  {mutant}")
    if stale:
        print("\nlisted as equivalent in tests/mutation_equivalent.toml but killed now (remove them):")
        for mutant in stale:
            print(f"  {mutant}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
