"""What an agent may send, checked in one place before anything reaches the network.

The flow (Python API, both drivers, quotes), the agent tools (MCP, LangChain) and the CLI all
call ``check_request``; the MCP and LangChain argument schemas advertise the same numbers. Every
refusal is an ``InvalidRequest`` with a reason code, never a traceback.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

from .errors import InvalidRequest
from .reasons import Reason

if TYPE_CHECKING:
    import httpx

# RFC 9110 asks servers to accept request lines of at least 8000 octets and common servers
# stop near there (nginx 8 KiB header buffers, Apache LimitRequestLine 8190): a longer URL
# would fail at the server anyway, and an agent has no business sending one.
MAX_URL_CHARS = 8 * 1024
# Far more than any API needs (auth, content type, accept, a few custom ones); servers commonly
# refuse past 100 fields (Apache LimitRequestFields).
MAX_HEADERS = 64
MAX_HEADER_NAME_CHARS = 256
# One field as large as servers commonly accept (Apache LimitRequestFieldSize 8190) ...
MAX_HEADER_VALUE_CHARS = 8 * 1024
# ... and all of them together well below common totals (16-64 KiB), leaving room for the
# payment header (a few KiB) the flow adds to the paid retry.
MAX_HEADERS_TOTAL_CHARS = 16 * 1024
# The body is held in memory, hashed into the request fingerprint and sent twice (the unpaid
# request and the paid retry): paid APIs take prompts and JSON documents, not uploads.
MAX_BODY_BYTES = 1024 * 1024
# Idempotency keys and session names are stored in the ledger and shown in receipts: short,
# printable and free of separators (UUIDs, ULIDs and base64url fit).
MAX_KEY_CHARS = 200
KEY_PATTERN = r"[A-Za-z0-9._:~+/=@-]+"
_KEY = re.compile(KEY_PATTERN)

ALLOWED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# The HTTP client frames the message and owns the connection (Host, Content-Length,
# Transfer-Encoding and the hop-by-hop fields of RFC 9110 7.6.1); a caller who set them could
# smuggle a second request or send the payment to another virtual host. The wallet alone sets
# the x402 payment headers (the SDK's names, compared case-insensitively).
RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "expect",
        "payment-signature",
        "x-payment",
    }
)
RESERVED_PREFIX = "proxy-"
# RFC 9110 field-name token; values: printable ASCII, space and tab (httpx encodes ASCII only).
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")

# JSON-schema hints for the agent tools' arguments: the same limits, shown to the model. The
# tools enforce them through ``check_request`` so that a violation comes back as a refusal with
# its reason rather than a schema validator's text.
SCHEMA_HINTS: dict[str, dict[str, Any]] = {
    "url": {"maxLength": MAX_URL_CHARS},
    "headers": {
        "maxProperties": MAX_HEADERS,
        "additionalProperties": {"type": "string", "maxLength": MAX_HEADER_VALUE_CHARS},
    },
    "body": {"maxLength": MAX_BODY_BYTES},
    "idempotency_key": {"minLength": 1, "maxLength": MAX_KEY_CHARS, "pattern": f"^{KEY_PATTERN}$"},
}


def check_request(
    url: object,
    method: object = "GET",
    headers: object = None,
    body: object = None,
    idempotency_key: object = None,
    session: object = None,
) -> None:
    """Refuse a request that must never reach the network."""
    check_url(url)
    if not isinstance(method, str) or method.upper() not in ALLOWED_METHODS:
        raise InvalidRequest(
            f"method {str(method)[:20]!r} is not allowed (one of {', '.join(sorted(ALLOWED_METHODS))})",
            reason=Reason.INVALID_METHOD,
        )
    check_headers(headers)
    check_body(body)
    check_key(idempotency_key, "idempotency key", Reason.INVALID_IDEMPOTENCY_KEY)
    check_key(session, "session", Reason.INVALID_SESSION)


@lru_cache(maxsize=256)
def parsed_url(url: str) -> httpx.URL:
    """httpx parses a URL in Python: once per URL, not at each check and request (a URL is
    immutable). One that does not parse raises each time (exceptions are not cached)."""
    import httpx  # lazily: the MCP server reads this module's limits at start

    return httpx.URL(url)


def check_url(url: object) -> None:
    if not isinstance(url, str):
        raise InvalidRequest("the URL must be a string", reason=Reason.INVALID_URL)
    if len(url) > MAX_URL_CHARS:
        raise InvalidRequest(
            f"the URL has {len(url)} characters, more than the limit of {MAX_URL_CHARS}",
            reason=Reason.URL_TOO_LONG,
            limit=MAX_URL_CHARS,
        )
    import httpx

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is the check (out of range raises)
        parsed_url(url)  # what the client will send must parse as well
    except (ValueError, httpx.InvalidURL) as exc:
        raise InvalidRequest(
            f"the URL cannot be parsed: {str(exc)[:120]}", reason=Reason.INVALID_URL
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(
            "only http and https URLs with a host can be fetched", reason=Reason.UNSUPPORTED_URL
        )


def redirect_target(url: str, location: str) -> str | None:
    """The URL a server's ``Location`` points to, or None when it cannot be a request (an
    unclosed IPv6 bracket, a port out of range, too long): such an answer is not followed."""
    try:
        target = urljoin(url, location)
        check_url(target)
    except ValueError:
        return None
    except InvalidRequest as exc:
        if exc.reason != "unsupported_url":  # another scheme is another origin: refused as such
            return None
    return target


def check_headers(headers: object) -> None:
    if headers is None:
        return
    if not isinstance(headers, Mapping):
        raise InvalidRequest("headers must be a mapping of name: value strings", reason=Reason.INVALID_HEADER)
    if len(headers) > MAX_HEADERS:
        raise InvalidRequest(
            f"{len(headers)} headers, more than the limit of {MAX_HEADERS}",
            reason=Reason.TOO_MANY_HEADERS,
            limit=MAX_HEADERS,
        )
    total = 0
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise InvalidRequest("header names and values must be strings", reason=Reason.INVALID_HEADER)
        if len(name) > MAX_HEADER_NAME_CHARS or len(value) > MAX_HEADER_VALUE_CHARS:
            raise InvalidRequest(
                f"header {name[:40]!r} is larger than the limit ({MAX_HEADER_NAME_CHARS}"
                f" characters per name, {MAX_HEADER_VALUE_CHARS} per value)",
                reason=Reason.HEADER_TOO_LARGE,
            )
        total += len(name) + len(value)
        if total > MAX_HEADERS_TOTAL_CHARS:
            raise InvalidRequest(
                f"the headers together are larger than the limit of {MAX_HEADERS_TOTAL_CHARS} characters",
                reason=Reason.HEADER_TOO_LARGE,
                limit=MAX_HEADERS_TOTAL_CHARS,
            )
        if any(c in name + value for c in "\r\n\0") or not name.strip():
            raise InvalidRequest(
                "header names and values may not contain line breaks", reason=Reason.HEADER_INJECTION
            )
        if not _HEADER_NAME.fullmatch(name) or not _HEADER_VALUE.fullmatch(value):
            raise InvalidRequest(
                f"header {name[:40]!r} is not a valid HTTP header (token name, printable ASCII value)",
                reason=Reason.INVALID_HEADER,
            )
        lowered = name.lower()
        if lowered in RESERVED_HEADERS or lowered.startswith(RESERVED_PREFIX):
            raise InvalidRequest(
                f"header {name} is set by the HTTP client or the wallet, never by the caller",
                reason=Reason.RESERVED_HEADER,
                header=name,
            )


def check_body(body: object) -> None:
    if body is None:
        return
    if not isinstance(body, str | bytes):
        raise InvalidRequest("the body must be text or bytes", reason=Reason.INVALID_BODY)
    if isinstance(body, str):
        if len(body) > MAX_BODY_BYTES:  # every character is at least one byte
            size = len(body)
        else:
            try:
                size = len(body.encode())  # as it is sent
            except UnicodeEncodeError:
                raise InvalidRequest(
                    "the body is not valid text (lone surrogates)", reason=Reason.INVALID_BODY
                ) from None
    else:
        size = len(body)
    if size > MAX_BODY_BYTES:
        raise InvalidRequest(
            f"the body has {size} bytes, more than the limit of {MAX_BODY_BYTES}",
            reason=Reason.BODY_TOO_LARGE,
            limit=MAX_BODY_BYTES,
        )


def check_key(value: object, what: str, reason: Reason) -> None:
    """An idempotency key or session name: absent, or 1..MAX_KEY_CHARS safe characters."""
    if value is None:
        return
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_KEY_CHARS or not _KEY.fullmatch(value):
        raise InvalidRequest(
            f"the {what} must be 1 to {MAX_KEY_CHARS} characters of letters, digits and ._:~+/=@-",
            reason=reason,
        )


def check_limit(limit: object, maximum: int) -> int:
    """How many receipts to list: a whole number from 1 to ``maximum``."""
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= maximum:
        raise InvalidRequest(
            f"limit must be a whole number from 1 to {maximum}", reason=Reason.INVALID_LIMIT, maximum=maximum
        )
    return limit
