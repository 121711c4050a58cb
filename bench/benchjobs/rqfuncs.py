"""Raw-RQ counterpart of `NoopJob`: workers import it as `benchjobs.rqfuncs.noop`."""

from __future__ import annotations


def noop(n: int) -> None:
    return None
