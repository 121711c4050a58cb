"""The demo's choice of Redis at its edges (tests/test_demo.py has the usual cases): a Redis answering at the
default URL, a redis-server that does not start, one that ignores SIGTERM, and neither a binary nor fakeredis.

The stand-in servers are small scripts of the test's own, given to `private_redis_server` as its binary."""

from __future__ import annotations

import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from forgejobs.embedded import answers, choose_redis, private_redis_server
from forgejobs.errors import ForgeJobsError
from tests.helpers import wait_for

NOTHING_LISTENS = "redis://127.0.0.1:1/0"

# Answers HELLO and PING on the --unixsocket it is given (+OK to anything else, e.g. CLIENT SETINFO) and
# ignores SIGTERM, noting each one; writes its pid to $FAKE_REDIS_NOTES first.
STUBBORN_SERVER = """
import os, signal, socket, sys, threading

notes = open(os.environ["FAKE_REDIS_NOTES"], "a", buffering=1)
notes.write(f"pid {os.getpid()}\\n")
signal.signal(signal.SIGTERM, lambda *_: notes.write("SIGTERM ignored\\n"))
path = sys.argv[sys.argv.index("--unixsocket") + 1]
REPLIES = {b"PING": b"+PONG\\r\\n", b"HELLO": b"%1\\r\\n+proto\\r\\n:3\\r\\n"}


def serve(conn):
    buffer = b""
    while True:
        data = conn.recv(65536)
        if not data:
            return
        buffer += data
        while buffer.startswith(b"*") and b"\\r\\n" in buffer:
            lines = buffer.split(b"\\r\\n")
            count = int(lines[0][1:])
            if len(lines) < 1 + 2 * count + 1:
                break
            words = lines[2 : 2 + 2 * count : 2]
            buffer = b"\\r\\n".join(lines[1 + 2 * count :])
            conn.sendall(REPLIES.get(words[0].upper(), b"+OK\\r\\n"))


server = socket.socket(socket.AF_UNIX)
server.bind(path)
server.listen()
while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


@pytest.fixture
def own_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The test's own directory for the servers' temporary folders (tempfile's, in this process). A short one
    in /tmp, not tmp_path: the Unix socket's path inside it must stay under 108 bytes (pytest-xdist's
    tmp_path is long enough to pass that)."""
    path = Path(tempfile.mkdtemp(prefix="fj-emb-", dir="/tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def executable(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def gone(pid: int) -> bool:
    """The process has ended (a zombie not yet reaped by its parent counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


def test_a_redis_answering_at_the_default_url_is_used_as_it_is(redis_url: str) -> None:
    with choose_redis(None, redis_url) as choice:
        assert not choice.embedded
        assert choice.url == redis_url and choice.description == f"local Redis at {redis_url}"
        assert choice.connection.ping()


def test_a_redis_server_that_exits_at_once_is_reported_with_its_exit_code(own_tmp: Path) -> None:
    binary = executable(own_tmp / "exits", "#!/bin/sh\nexit 3\n")
    with (
        pytest.raises(RuntimeError, match=r"private redis-server did not start \(exit code 3\)"),
        private_redis_server(binary),
    ):
        pytest.fail("yielded a server that never started")
    assert list(own_tmp.glob("forgejobs-redis-*")) == []  # its temporary folder is removed


def test_a_redis_server_that_ignores_sigterm_is_killed_at_the_end(
    own_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notes = own_tmp / "notes.txt"
    monkeypatch.setenv("FAKE_REDIS_NOTES", str(notes))
    binary = executable(own_tmp / "stubborn", f"#!{sys.executable}\n{STUBBORN_SERVER}")

    with private_redis_server(binary) as url:
        assert url.startswith(f"unix://{own_tmp}/forgejobs-redis-") and answers(url)
        pid = int(notes.read_text().split()[1])

    assert "SIGTERM ignored" in notes.read_text()  # asked to stop first, then (after its grace) killed
    wait_for(lambda: gone(pid), timeout=10, what=f"the stubborn server {pid} to end")
    assert not answers(url) and list(own_tmp.glob("forgejobs-redis-*")) == []


def test_with_neither_redis_server_nor_fakeredis_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("forgejobs.embedded.shutil.which", lambda name: None)
    monkeypatch.setitem(sys.modules, "fakeredis", None)  # as if the embedded extra were not installed
    with pytest.raises(ForgeJobsError) as raised, choose_redis(None, NOTHING_LISTENS):
        pytest.fail("chose a Redis although none can be had")
    message = str(raised.value)
    assert message.startswith(f"no Redis answers at {NOTHING_LISTENS} and no redis-server is on the PATH")
    assert "pip install 'forgejobs[embedded]'" in message and "FORGEJOBS_REDIS_URL" in message
