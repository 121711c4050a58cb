"""The test suite's own fixtures: how a test claims a Redis database of its own."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import redis

from tests import conftest
from tests.conftest import CLAIM_KEY, _claim, claimant


def dead_pid() -> int:
    """The pid of a process of this host that has exited (and been reaped)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_a_database_left_by_a_killed_test_is_taken_over_and_emptied(conn: redis.Redis) -> None:
    conn.set(CLAIM_KEY, f"{socket.gethostname()}:{dead_pid()}")
    conn.set("forgejobs:{fast}:job:left-behind", "x")
    assert _claim(conn)
    assert conn.keys("*") == [CLAIM_KEY.encode()] and conn.get(CLAIM_KEY) == claimant().encode()


def test_a_database_claimed_by_a_live_process_or_another_host_is_left_alone(conn: redis.Redis) -> None:
    for holder in (claimant(), f"another-host:{dead_pid()}", "12345"):  # this process; elsewhere; an old claim
        conn.set(CLAIM_KEY, holder)
        conn.set("forgejobs:{fast}:job:theirs", "x")
        assert not _claim(conn)
        assert conn.get(CLAIM_KEY) == holder.encode() and conn.exists("forgejobs:{fast}:job:theirs")
    conn.delete("forgejobs:{fast}:job:theirs")
    conn.set(CLAIM_KEY, claimant())  # as the fixture left it, for its teardown


def test_a_claim_made_in_a_forked_process_names_that_process() -> None:
    """mutmut forks each test run from a parent that imported conftest: a killed child's claim must name the
    child, or it would look held by a live process for as long as the parent runs."""
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        os.write(write, claimant().encode())
        os._exit(0)
    os.waitpid(child, 0)
    assert os.read(read, 200).decode() == f"{socket.gethostname()}:{child}"
    os.close(read)
    os.close(write)


def test_under_mutation_a_database_left_unclaimed_with_only_forgejobs_keys_is_emptied_and_claimed(
    conn: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn.delete(CLAIM_KEY)  # as if a worker a mutant kept running wrote here after its test emptied the database
    conn.set("forgejobs:events", "x")
    monkeypatch.setattr(conftest, "UNIT_ONLY", False)
    assert not _claim(conn) and conn.exists("forgejobs:events")  # a normal run cannot tell it from someone's data
    monkeypatch.setattr(conftest, "UNIT_ONLY", True)
    conn.set("theirs", "x")
    assert not _claim(conn) and conn.exists("forgejobs:events", "theirs") == 2  # not only forgejobs keys: left
    conn.delete("theirs")
    assert _claim(conn)
    assert conn.keys("*") == [CLAIM_KEY.encode()] and conn.get(CLAIM_KEY) == claimant().encode()
