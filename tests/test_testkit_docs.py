"""docs/testing.md quotes tests of the suite as its examples: each quoted block must still be in its file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "testing.md"
QUOTE = re.compile(r"From `(?P<path>tests/[^`]+)`:\n\n```python\n(?P<code>.*?)\n```", re.DOTALL)


def quotes() -> list[tuple[str, str]]:
    return [(m["path"], m["code"]) for m in QUOTE.finditer(PAGE.read_text())]


def test_the_page_quotes_tests_for_each_feature() -> None:
    files = {path for path, _ in quotes()}

    assert len(quotes()) >= 25
    assert files >= {
        "tests/test_testkit_modes.py",
        "tests/test_testkit_assertions.py",
        "tests/test_testkit_running.py",
        "tests/test_testkit_clock.py",
        "tests/test_backoff_sees_error.py",
    }


@pytest.mark.parametrize(("path", "code"), quotes(), ids=[f"{p}:{c.split('(')[0][-60:]}" for p, c in quotes()])
def test_a_quoted_block_is_in_its_file(path: str, code: str) -> None:
    assert code in (ROOT / path).read_text(), f"docs/testing.md quotes code that is no longer in {path}"
