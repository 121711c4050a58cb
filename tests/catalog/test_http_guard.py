"""jobs.http: the SSRF guard of outgoing webhooks, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpcore
import httpx
import pytest

from jobs.http import AllowList, BlockedDestination, blocked_reason, guarded_client


class _Recorder(BaseHTTPRequestHandler):
    hosts: list[str]

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.hosts.append(self.headers.get("host", ""))
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("location", "/elsewhere")
        else:
            self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[int, list[str]]]:
    """A local HTTP server; yields its port and the Host header of every request it received."""
    hosts: list[str] = []
    handler = type("Recorder", (_Recorder,), {"hosts": hosts})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield httpd.server_address[1], hosts
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


@pytest.fixture
def no_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything opens a TCP connection: a refusal must come before any packet."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"a connection was attempted: {args}")

    monkeypatch.setattr(httpcore.SyncBackend, "connect_tcp", refuse)


def test_loopback_is_refused_without_an_allow_list(server: tuple[int, list[str]]) -> None:
    port, hosts = server
    with guarded_client() as client, pytest.raises(BlockedDestination, match="127.0.0.1: loopback address") as info:
        client.get(f"http://127.0.0.1:{port}/")
    assert hosts == []  # the server never saw it
    assert isinstance(info.value, httpx.TransportError)
    assert info.value.request.url.port == port  # httpx attaches the request, as for its own transport errors
    assert "FORGEJOBS_CATALOG_WEBHOOK_ALLOW" in str(info.value)


@pytest.mark.parametrize("allow", [["127.0.0.1"], ["127.0.0.0/8"], ["::1", " 127.0.0.1 "]])
def test_loopback_is_reached_when_allowed(server: tuple[int, list[str]], allow: list[str]) -> None:
    port, hosts = server
    with guarded_client(allow=allow) as client:
        response = client.get(f"http://127.0.0.1:{port}/")
    assert (response.status_code, response.text) == (200, "ok")
    assert hosts == [f"127.0.0.1:{port}"]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://10.0.0.1/", "10.0.0.1: non-public address"),
        ("http://172.16.5.4/", "non-public address"),
        ("http://192.168.1.1/", "non-public address"),
        ("http://169.254.169.254/latest/meta-data/", "link-local address"),
        ("http://100.64.0.1/", "in 100.64.0.0/10"),
        ("http://[::1]/", "loopback address"),
        ("http://[fd00::1]/", "unique local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://[::ffff:127.0.0.1]/", "127.0.0.1 embedded in IPv6"),
        ("http://[::ffff:169.254.169.254]/", "embedded in IPv6"),
        ("http://0.0.0.0:8080/", "unspecified address"),
        ("http://[::]/", "unspecified address"),
        ("http://224.0.0.1/", "multicast"),
        ("http://2130706433/", "(127.0.0.1): loopback"),  # 127.0.0.1 written as one number
        ("http://localhost/", "localhost name"),
        ("http://LOCALHOST./", "localhost name"),
        ("http://api.localhost/", "localhost name"),
        ("http://metadata.google.internal/computeMetadata/v1/", "cloud metadata host name"),
    ],
)
@pytest.mark.usefixtures("no_connect")
def test_internal_destinations_are_refused_before_any_packet(url: str, reason: str) -> None:
    with (
        guarded_client() as client,
        pytest.raises(BlockedDestination, match=reason.replace("(", r"\(").replace(")", r"\)")),
    ):
        client.get(url)


@pytest.mark.usefixtures("no_connect")
def test_a_private_allow_list_entry_does_not_open_other_private_ranges() -> None:
    with guarded_client(allow=["10.1.0.0/16"]) as client:
        with pytest.raises(BlockedDestination, match="10.2.0.1"):
            client.get("http://10.2.0.1/")
        with pytest.raises(BlockedDestination, match="169.254.169.254"):
            client.get("http://169.254.169.254/")


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"],
)
def test_public_addresses_pass_the_check(address: str) -> None:
    assert blocked_reason(ipaddress.ip_address(address)) is None


def test_allow_list_parsing() -> None:
    allow = AllowList.parse(["127.0.0.1", "10.0.0.0/8", "[::1]", "Hooks.Internal.", ""])
    assert allow.allows_address(ipaddress.ip_address("10.9.8.7"))
    assert allow.allows_address(ipaddress.ip_address("::ffff:127.0.0.1"))
    assert not allow.allows_address(ipaddress.ip_address("127.0.0.2"))
    assert allow.allows_host("hooks.internal")
    with pytest.raises(ValueError, match="'10.0.0.0/33' is not an IP address or network"):
        AllowList.parse(["10.0.0.0/33"])


def _fake_resolver(monkeypatch: pytest.MonkeyPatch, name: str, answers: list[list[str]]) -> list[tuple[str, Any]]:
    """Make `socket.getaddrinfo` answer `name` with `answers[0]`, then `answers[1]`, ... (the last repeats);
    other names (the literal address the guard connects to) resolve for real. Returns the calls for `name`."""
    real = socket.getaddrinfo
    calls: list[tuple[str, Any]] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != name:
            return real(host, port, *args, **kwargs)
        answer = answers[min(len(calls), len(answers) - 1)]
        calls.append((host, port))
        return [
            (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, int(port))) for address in answer
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return calls


def test_every_resolved_address_is_checked(monkeypatch: pytest.MonkeyPatch, no_connect: None) -> None:
    calls = _fake_resolver(monkeypatch, "rebind.example.test", [["93.184.216.34", "127.0.0.1"]])
    with guarded_client() as client, pytest.raises(BlockedDestination, match=r"rebind.example.test \(127.0.0.1\)"):
        client.get("http://rebind.example.test/")
    assert len(calls) == 1


def test_the_connection_goes_to_the_checked_address_resolved_once(
    server: tuple[int, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, hosts = server
    # First answer: the allowed local server. Any later lookup would get a refused documentation address,
    # so reaching the server proves the connection used the address that was checked, from one resolution.
    calls = _fake_resolver(monkeypatch, "hooks.example.test", [["127.0.0.1"], ["192.0.2.1"]])
    with guarded_client(allow=["127.0.0.1"], timeout=5) as client:
        response = client.get(f"http://hooks.example.test:{port}/")
    assert response.status_code == 200
    assert hosts == [f"hooks.example.test:{port}"]  # the Host header keeps the original name
    assert calls == [("hooks.example.test", port)]


def test_a_host_name_on_the_allow_list_skips_the_address_check(
    server: tuple[int, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, hosts = server
    _fake_resolver(monkeypatch, "hooks.internal", [["127.0.0.1"]])
    with guarded_client(allow=["hooks.internal"]) as client:
        assert client.get(f"http://hooks.internal:{port}/").status_code == 200
    with guarded_client(allow=["other.internal"]) as client, pytest.raises(BlockedDestination):
        client.get(f"http://hooks.internal:{port}/")
    assert hosts == [f"hooks.internal:{port}"]


def test_redirects_are_not_followed(server: tuple[int, list[str]]) -> None:
    port, hosts = server
    with guarded_client(allow=["127.0.0.1"]) as client:
        response = client.get(f"http://127.0.0.1:{port}/redirect")
    assert response.status_code == 302
    assert len(hosts) == 1


def test_an_unresolvable_name_is_an_ordinary_connect_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    with guarded_client() as client, pytest.raises(httpx.ConnectError, match="cannot resolve nowhere.example.test"):
        client.get("http://nowhere.example.test/")
