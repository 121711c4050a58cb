"""The mutation score per module after `./dev mutate` (reads mutmut's results under mutants/).

Score = killed / (mutants - equivalent). A mutant counts as killed when a test failed, it timed out or
hung (a loop that no longer ends, a wait that is never answered), crashed, or the type checker refused it;
one that no test of the in-process selection reaches ("no tests") counts as surviving. Equivalent mutants
(they change nothing a caller can observe) are listed with the reason in tests/mutation_equivalent.toml and
left out of the score.

    python tests/mutation_score.py [MODULE...]      (MODULE as given to ./dev mutate: backoff, runtime.worker)

For a module with a sample (tests/mutation_sample.py: mutants/sample-MODULE.txt), it also prints the score
estimated from the mutants run before the sample was drawn plus the sample, with a 95 % interval.
"""

from __future__ import annotations

import json
import math
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


def estimate(module: str, verdicts: dict[str, str]) -> str | None:
    """The score of a module part of whose mutants were run whole and the rest sampled: the mutants run before
    the sample was drawn count as they are; the pool the sample came from counts at the sample's kill rate."""
    path = ROOT / "mutants" / f"sample-{module.removeprefix('forgejobs.')}.txt"
    if not path.exists():
        return None
    header, *names = path.read_text().split("\n")
    pool = int(header.split()[2])
    drawn = set(filter(None, names))
    in_sample = Counter(verdicts.get(n, "not run") for n in drawn)
    judged = in_sample["killed"] + in_sample["survived"]
    if not judged:
        return None
    rate = in_sample["killed"] / judged
    # Wilson's interval for the sample's kill rate (it stays informative when every sampled mutant was killed)
    z = 1.96
    centre = (rate + z * z / (2 * judged)) / (1 + z * z / judged)
    spread = z * math.sqrt(rate * (1 - rate) / judged + z * z / (4 * judged * judged)) / (1 + z * z / judged)
    low, high = max(0.0, centre - spread), min(1.0, centre + spread)
    scored_pool = pool * (1 - in_sample["equivalent"] / (judged + in_sample["equivalent"]))
    before = Counter(v for n, v in verdicts.items() if n not in drawn)
    killed, run = before["killed"], before["killed"] + before["survived"]

    def score(r: float) -> float:
        return 100 * (killed + r * scored_pool) / (run + scored_pool)

    return (
        f"{module}: {run} mutants run before a random sample of {len(drawn)} was drawn from the {pool} not run yet;"
        f" {in_sample['killed']} of the {judged} sampled mutants run were killed ({100 * rate:.1f} %, 95 % interval "
        f"{100 * low:.1f}-{100 * high:.1f} %); estimated score {score(rate):.1f} % (95 % interval "
        f"{score(low):.1f}-{score(high):.1f} %)"
    )


def main(selected: list[str]) -> int:
    equivalent: dict[str, str] = tomllib.loads(EQUIVALENT.read_text())["mutants"] if EQUIVALENT.exists() else {}
    prefixes = tuple(f"forgejobs.{name.removeprefix('forgejobs.')}" for name in selected)
    counts: dict[str, Counter[str]] = {}
    verdicts: dict[str, dict[str, str]] = {}
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
                verdict = "equivalent"
                if code in KILLED:
                    stale.append(mutant)
            elif code in KILLED:
                verdict = "killed"
            elif code in SURVIVED:
                verdict = "survived"
                alive.append(mutant)
            else:
                verdict = "not run"
            tally[verdict] += 1
            verdicts.setdefault(module, {})[mutant] = verdict
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
    for module in sorted(verdicts):
        line = estimate(module, verdicts[module])
        if line:
            print(f"\n{line}")
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
