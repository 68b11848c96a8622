"""The small subset of HTTP/1.x the health endpoints speak, as pure functions.

Parsing is strict and bounded so that no input can make the server raise,
allocate without limit or answer with a stack trace: a request head larger
than :data:`MAX_HEAD_BYTES` is refused with 431 (414 when the request line
alone is too long), garbage with 400, a request body with 413 (every
endpoint is read-only), an HTTP version other than 1.x with 505. Every
response closes the connection, which keeps the server free of keep-alive
and pipelining state (probes open a connection per check anyway).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

#: Largest request head (request line + headers) accepted.
MAX_HEAD_BYTES = 16 * 1024
#: Longest request line accepted.
MAX_REQUEST_LINE = 8 * 1024
#: Most header fields accepted.
MAX_HEADERS = 100

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}

_TOKEN_RE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_VERSION_RE = re.compile(rb"HTTP/(\d)\.(\d)\Z")


@dataclass(frozen=True)
class Request:
    """A parsed request head. Header names are lower-case; values are str (latin-1)."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass(frozen=True)
class Response:
    """Status, body and extra headers; :meth:`encode` gives the bytes on the wire."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()

    def encode(self, *, head_only: bool = False) -> bytes:
        lines = [
            f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Unknown')}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Cache-Control: no-store",
            "X-Content-Type-Options: nosniff",
            "Connection: close",
        ]
        lines += [f"{name}: {value}" for name, value in self.headers]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head if head_only else head + self.body


def error(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    """A JSON error response ``{"error": message}`` (message must be plain ASCII, no quotes)."""
    return Response(status, b'{"error":"' + message.encode("ascii") + b'"}', headers=headers)


class BadRequest(Exception):
    """Raised by :func:`parse_head` with the response to send instead."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


def head_complete(buffer: bytes | bytearray, start: int = 0) -> int:
    """Length of the request head in ``buffer`` (through the blank line), 0 if incomplete.

    ``start``: where to resume the search for the blank line (the previous
    length minus 3), so a head trickling in byte by byte costs linear time.
    Raises :class:`BadRequest` (414/431) when the head is already too large.
    """
    start = max(0, start)
    end = buffer.find(b"\r\n\r\n", start)
    if end < 0:
        end_lf = buffer.find(b"\n\n", start)  # tolerate bare LF line endings
        if end_lf >= 0:
            end = end_lf
            length = end_lf + 2
        else:
            length = 0
    else:
        length = end + 4
    first_eol = buffer.find(b"\n", 0, MAX_REQUEST_LINE + 2)
    if first_eol < 0 and len(buffer) > MAX_REQUEST_LINE:
        raise BadRequest(error(414, "request line too long"))
    if (length == 0 and len(buffer) > MAX_HEAD_BYTES) or length > MAX_HEAD_BYTES:
        raise BadRequest(error(431, "request head too large"))
    return length


def parse_head(head: bytes, *, asterisk: bool = False) -> Request:
    """Parse a complete request head; raise :class:`BadRequest` on anything malformed.

    ``asterisk``: accept ``OPTIONS *`` (path ``*``), so that a server can
    answer it with its 405 rather than a 400.
    """
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise BadRequest(error(400, "empty request"))
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise BadRequest(error(400, "malformed request line"))
    method_b, target_b, version_b = parts
    if not _TOKEN_RE.match(method_b):
        raise BadRequest(error(400, "malformed method"))
    version = _VERSION_RE.match(version_b)
    if not version:
        raise BadRequest(error(400, "malformed HTTP version"))
    if version.group(1) != b"1":
        raise BadRequest(error(505, "only HTTP/1.x is supported"))
    if len(lines) - 1 > MAX_HEADERS:
        raise BadRequest(error(431, "too many header fields"))
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN_RE.match(name):  # also refuses obsolete line folding
            raise BadRequest(error(400, "malformed header field"))
        if any((c < 0x20 and c != 0x09) or c == 0x7F for c in value):
            raise BadRequest(error(400, "control character in header field"))
        key = name.decode("ascii").lower()
        text = value.strip(b" \t").decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    try:
        target = target_b.decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest(error(400, "non-ASCII request target")) from None
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in target):
        raise BadRequest(error(400, "malformed request target"))
    if asterisk and target == "*" and method_b == b"OPTIONS":
        return Request("OPTIONS", "*", {}, headers)
    if not target.startswith("/") and not target.lower().startswith(("http://", "https://")):
        raise BadRequest(error(400, "malformed request target"))
    split = urlsplit(target)
    try:
        query = parse_qs(split.query, keep_blank_values=True, max_num_fields=20, errors="strict")
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(error(400, "malformed query string")) from None
    return Request(method_b.decode("ascii"), split.path or "/", query, headers)


def body_error(request: Request) -> Response | None:
    """The response refusing a request body, or None when there is none.

    Every endpoint is read-only and takes no body; checked after routing so
    that a POST still gets its 405.
    """
    if request.header("transfer-encoding") is not None:
        return error(413, "request bodies are not accepted")
    length = request.header("content-length")
    if length is None:
        return None
    text = length.strip()
    if not text.isdigit() or len(text) > 18:
        return error(400, "malformed Content-Length")
    if int(text) > 0:
        return error(413, "request bodies are not accepted")
    return None
