"""Service URLs whose API key comes from the environment: ``${NAME}`` placeholders.

Bundler providers take their API key in the URL: in the query (``...?apikey=KEY``) or as the
last path segment (``.../v2/KEY``). The home stores the URL with the key written as a
placeholder, e.g. ``https://bundler.example/rpc?apikey=${X402_AGENT_BUNDLER_KEY}``; the key is
read from the environment only when a request is sent, and every text shown to anyone (errors,
status) carries the placeholder form, never the expanded URL.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from urllib.parse import parse_qsl, urlsplit

from .errors import ConfigError
from .reasons import Reason

BUNDLER_KEY_ENV = "X402_AGENT_BUNDLER_KEY"  # the name the docs suggest; any name works
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SECRET_PARAM = re.compile(r"key|token|secret|auth|password", re.IGNORECASE)
# A path segment this long, of letters and digits mixed, is taken for a key (providers' keys
# are 20+ random characters; path words like "rpc", "v2" or "base-sepolia" are not).
_KEY_LIKE_SEGMENT = re.compile(r"(?=.*[0-9])(?=.*[A-Za-z])[A-Za-z0-9_-]{20,}")


def placeholders(url: str) -> list[str]:
    """The environment variable names ``url`` refers to."""
    return _PLACEHOLDER.findall(url)


def clear_secret(url: str) -> str | None:
    """Where ``url`` seems to hold a key in clear (``query parameter 'apikey'``, ``path
    segment 3``), without the key itself; None when it holds none outside placeholders."""
    parts = urlsplit(_PLACEHOLDER.sub("", url))
    if parts.password:
        return "a password in the URL"
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if value and _SECRET_PARAM.search(name):
            return f"query parameter {name!r}"
    for index, segment in enumerate(parts.path.split("/")):
        if _KEY_LIKE_SEGMENT.fullmatch(segment):
            return f"path segment {index}"
    return None


def check_no_clear_secret(url: str, what: str) -> None:
    """Refuse to store ``url`` if it seems to hold a key in clear (``key_in_clear``)."""
    where = clear_secret(url)
    if where is not None:
        raise ConfigError(
            f"the {what} seems to hold an API key in clear ({where}): write it as "
            f"${{{BUNDLER_KEY_ENV}}} in the URL and export {BUNDLER_KEY_ENV}",
            reason=Reason.KEY_IN_CLEAR,
        )


def expand(url: str, environ: Mapping[str, str] | None = None) -> str:
    """``url`` with each placeholder replaced by its variable's value (``key_env_missing``
    naming the variable when it is not set)."""
    env = os.environ if environ is None else environ

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        found = env.get(name)
        if not found:
            raise ConfigError(
                f"the bundler URL needs ${name}, which is not set in the environment",
                reason=Reason.KEY_ENV_MISSING,
                variable=name,
            )
        return found

    return _PLACEHOLDER.sub(value, url)


def redact(text: str, url: str, environ: Mapping[str, str] | None = None) -> str:
    """``text`` with every expanded placeholder value of ``url`` written back as ``${NAME}``."""
    env = os.environ if environ is None else environ
    for name in placeholders(url):
        secret = env.get(name)
        if secret:
            text = text.replace(secret, f"${{{name}}}")
    return text


__all__ = ["BUNDLER_KEY_ENV", "check_no_clear_secret", "clear_secret", "expand", "placeholders", "redact"]
