"""Slow and idle connections over real sockets: request-head deadline, body read timeout,
connection cap, keep-alive still working. Every wait is bounded by a socket timeout."""

from __future__ import annotations

import json
import socket
import time

import pytest

HEAD_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def server(live_server):
    return live_server(header_timeout_s=HEAD_TIMEOUT_S, body_timeout_s=BODY_TIMEOUT_S, max_connections=6)


def connect(server) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def closed_after(sock: socket.socket) -> float:
    t0 = time.monotonic()
    read_until_closed(sock)
    return time.monotonic() - t0


def test_idle_connection_is_closed_after_the_head_deadline(server):
    with connect(server) as sock:
        waited = closed_after(sock)  # recv returns b"" when the server closes; 10 s socket timeout
    assert HEAD_TIMEOUT_S * 0.5 < waited < HEAD_TIMEOUT_S + 5


def test_slowloris_head_is_cut(server):
    with connect(server) as sock:
        sock.sendall(b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\n")
        for _ in range(3):  # trickle header bytes, each before the deadline
            time.sleep(HEAD_TIMEOUT_S / 3)
            try:
                sock.sendall(b"X-Slow: 1\r\n")
            except OSError:
                break
        assert read_until_closed(sock) == b""  # closed without a response


def test_body_that_stops_arriving_gets_408(server):
    with connect(server) as sock:
        sock.sendall(b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"prompt\": ")
        response = read_until_closed(sock)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    error = json.loads(body)["error"]
    assert error["code"] == "request_timeout" and set(error) == {"message", "type", "param", "code"}


def test_connection_cap_answers_503_in_the_envelope(server):
    held = [connect(server) for _ in range(6)]
    try:
        time.sleep(0.2)
        with connect(server) as extra:
            response = read_until_closed(extra)
        head, _, body = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503")
        assert json.loads(body)["error"]["code"] == "server_overloaded"
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.3)  # the held connections are gone: new ones are served again
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 200")


def test_keep_alive_requests_still_work(server):
    with connect(server) as sock:
        for _ in range(2):
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while b'{"status":"ok"}' not in data:
                chunk = sock.recv(65536)
                assert chunk, "connection closed between keep-alive requests"
                data += chunk
            time.sleep(HEAD_TIMEOUT_S * 1.5)  # idle between requests is the keep-alive timer's business
