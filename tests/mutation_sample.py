"""Pick a random sample of a module's mutants that have no result yet, for a module too big to run whole.

`forgejobs.runtime.worker` has about 1,200 mutants, most of them reached by dozens of worker tests that take
seconds each: a whole run takes hours on a 2-core machine. A uniform random sample of the mutants not run
yet gives an estimate of the score with a known margin; `tests/mutation_score.py` prints it.

    python tests/mutation_sample.py MODULE N [SEED]     (MODULE as given to ./dev mutate: runtime.worker)

It writes the sample to mutants/sample-MODULE.txt (a first line `# pool P seed S`: how many mutants had no
result when it was drawn) and prints the names, for `mutmut run`:

    .venv/bin/mutmut run $(python tests/mutation_sample.py runtime.worker 300)

The mutants must exist (any `./dev mutate` run generates those of every module).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def sample_path(module: str) -> Path:
    return ROOT / "mutants" / f"sample-{module.removeprefix('forgejobs.')}.txt"


def main(args: list[str]) -> int:
    if len(args) not in (2, 3) or not args[1].isdigit():
        print(__doc__.split("\n\n")[2], file=sys.stderr)
        return 2
    module = "forgejobs." + args[0].removeprefix("forgejobs.")
    size, seed = int(args[1]), int(args[2]) if len(args) == 3 else 20261201
    meta = ROOT / "mutants" / (module.replace(".", "/") + ".py.meta")
    if not meta.exists():
        print(f"no mutants of {module} under mutants/: run ./dev mutate first", file=sys.stderr)
        return 1
    exit_codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
    pool = sorted(name for name, code in exit_codes.items() if code is None)
    chosen = sorted(random.Random(seed).sample(pool, min(size, len(pool))))
    sample_path(module).write_text(f"# pool {len(pool)} seed {seed}\n" + "".join(f"{n}\n" for n in chosen))
    print("\n".join(chosen))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
