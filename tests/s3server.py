"""An S3 API on loopback for the tests: moto's server, behind a proxy that counts every request and its bytes
and can answer chosen requests with a fault (HTTP 500/503/403/404, a dropped or cut connection).

Every address is 127.0.0.1 with a port the system picks; nothing leaves the machine.
"""

from __future__ import annotations

import http.client
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

ERROR_CODES = {403: "AccessDenied", 404: "NoSuchKey", 500: "InternalError", 503: "SlowDown"}
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}


@dataclass
class Request:
    """One request as the proxy saw it: method, key path (``/bucket/key``), Range header, status, body bytes."""

    method: str
    path: str
    range: str | None
    status: int
    body_bytes: int


@dataclass
class Fault:
    """Answer matching requests with ``kind`` (an HTTP status, ``"drop"`` or ``"cut"``), ``times`` times
    (None: always). ``method`` and ``path_suffix`` select the requests."""

    kind: int | str
    times: int | None = 1
    method: str = "GET"
    path_suffix: str = ""
    hits: int = field(default=0)

    def matches(self, method: str, path: str) -> bool:
        return (method == self.method and path.endswith(self.path_suffix)
                and (self.times is None or self.hits < self.times))


class Proxy:
    """Forwards HTTP/1.1 requests to ``upstream`` and records them; see :class:`Fault`."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.requests: list[Request] = []
        self.faults: list[Fault] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = unquote(urlsplit(self.path).path)
                fault = proxy._take_fault(self.command, path)
                if fault == "drop":
                    proxy._record(self.command, path, self.headers.get("Range"), 0, 0)
                    self.close_connection = True
                    return
                if isinstance(fault, int):
                    payload = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{ERROR_CODES[fault]}</Code>'
                               f"<Message>injected</Message><Key>{path}</Key></Error>").encode()
                    self.send_response(fault)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    proxy._record(self.command, path, self.headers.get("Range"), fault, 0)
                    return
                connection = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
                    connection.request(self.command, self.path, body=body, headers=headers)
                    response = connection.getresponse()
                    data = response.read()
                finally:
                    connection.close()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in HOP_HEADERS and key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if fault == "cut" and len(data) > 1:  # headers promise the whole body; half arrives
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    proxy._record(self.command, path, self.headers.get("Range"), response.status, len(data) // 2)
                    return
                if self.command != "HEAD":
                    self.wfile.write(data)
                proxy._record(self.command, path, self.headers.get("Range"), response.status,
                              0 if self.command == "HEAD" else len(data))

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def _take_fault(self, method: str, path: str) -> int | str | None:
        with self.lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    fault.hits += 1
                    return fault.kind
        return None

    def _record(self, method: str, path: str, range_: str | None, status: int, body: int) -> None:
        with self.lock:
            self.requests.append(Request(method, path, range_, status, body))

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.faults.clear()

    def gets(self, suffix: str = "") -> list[Request]:
        """The GET requests for objects whose path ends with ``suffix`` (listings excluded)."""
        with self.lock:
            return [r for r in self.requests if r.method == "GET" and r.path.endswith(suffix)
                    and not r.path.endswith("/") and r.path.count("/") > 1]

    def bytes_fetched(self, suffix: str = "") -> int:
        return sum(r.body_bytes for r in self.gets(suffix))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class S3:
    """moto's S3 server on loopback with the counting proxy in front; ``endpoint`` is the proxy's URL."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.moto.start()
        self.proxy = Proxy(self.moto.get_host_and_port())
        self.endpoint = self.proxy.url

    def close(self) -> None:
        self.proxy.close()
        self.moto.stop()
