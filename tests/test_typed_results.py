"""Handles are typed by `perform`'s return annotation: mypy proves it on tests/typing/.

`typed_results.py` states the expected types with `assert_type` and must check clean;
`typed_results_wrong.py` uses results as the wrong types and must fail on exactly the
lines under its `# error: <message>` comments, with those messages.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TYPING = ROOT / "tests" / "typing"


def mypy(path: Path, cache: Path) -> tuple[int, str]:
    """mypy with the project's configuration (strict, the Pydantic plugin) on one file."""
    pytest.importorskip("mypy")
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(cache), "--no-error-summary", str(path.relative_to(ROOT))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return done.returncode, done.stdout + done.stderr


def test_results_are_typed_without_annotations_in_user_code(tmp_path: Path) -> None:
    code, output = mypy(TYPING / "typed_results.py", tmp_path)
    assert code == 0, output


def test_a_result_used_as_the_wrong_type_is_reported_on_each_marked_line(tmp_path: Path) -> None:
    path = TYPING / "typed_results_wrong.py"
    expected = {
        number + 1: marker.group(1).strip()  # the message is about the line under the comment
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if (marker := re.match(r"\s*# error: (.+)$", line))
    }
    assert len(expected) >= 5
    code, output = mypy(path, tmp_path)
    assert code == 1, output
    reported: dict[int, str] = {}
    for line in output.splitlines():
        found = re.match(rf"{re.escape(str(path.relative_to(ROOT)))}:(\d+): error: (.+)$", line)
        if found:
            reported[int(found.group(1))] = re.sub(r"\s+\[[a-z-]+\]$", "", found.group(2))  # without [code]
    assert set(reported) == set(expected), output
    assert reported == expected, output
