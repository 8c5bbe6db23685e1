"""Which image URLs a request may make the server fetch (SSRF guard).

Nothing is fetched unless the operator allow-lists it (`SUGAR_ALLOW_URLS`).
An allow-list entry is a URL: scheme, host, optional port and optional path
prefix (`https://images.example.org/public/`). A requested URL is parsed, not
string-matched: the scheme must be http(s), userinfo (`user@host`) is refused,
scheme, host (case-insensitive) and port (the scheme's default when absent)
must equal an entry's, and its path must start with the entry's path at a
segment boundary (a path with `.` or `..` segments, percent-encoded or not, is
refused: the target would normalise it out of the prefix; so is a URL with
whitespace or control characters, or over 8,192 characters). The host is then resolved and every address it resolves to
must be public: loopback, private, link-local, multicast, reserved and
unspecified addresses are refused unless the operator opens them too
(`SUGAR_ALLOW_PRIVATE_URLS`, e.g. for an image service on the same network).
Redirects are not followed. Error messages never echo what the target
answered, so the server cannot be used to scan ports.

Residual risk, stated: the address is checked at resolution time and httpx
resolves again when it connects (DNS rebinding); an operator who allow-lists a
hostname whose DNS an attacker controls accepts that.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_URL_CHARS = 8192


class UrlRefused(ValueError):
    """The URL may not be fetched; the message says why (and nothing about the target)."""


@dataclass(frozen=True)
class AllowedPrefix:
    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, entry: str) -> AllowedPrefix:
        u = urlsplit(entry.strip())
        if u.scheme not in DEFAULT_PORTS or not u.hostname or u.username or u.password:
            raise ValueError(f"allow_urls entry {entry!r}: expected http(s)://host[:port][/path]")
        return cls(u.scheme, u.hostname.lower(), u.port or DEFAULT_PORTS[u.scheme], u.path or "/")

    def admits(self, scheme: str, host: str, port: int, path: str) -> bool:
        if (scheme, host, port) != (self.scheme, self.host, self.port):
            return False
        prefix = self.path if self.path.endswith("/") else self.path + "/"
        return path == self.path or path.startswith(prefix) or self.path == "/"


def _public(addr: str) -> bool:
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return not (ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_multicast
                or ip.is_reserved or ip.is_unspecified)


def resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise UrlRefused("the URL's host does not resolve") from None
    return sorted({str(info[4][0]) for info in infos})


class UrlPolicy:
    def __init__(self, allow: list[str], allow_private: bool = False, resolver=resolve) -> None:
        self.allowed = [AllowedPrefix.parse(a) for a in allow]
        self.allow_private = allow_private
        self.resolver = resolver

    def check(self, url: str) -> str:
        """The URL to fetch, or UrlRefused."""
        if not self.allowed:
            raise UrlRefused("image URLs are not allowed (the operator has not allow-listed any)")
        if len(url) > MAX_URL_CHARS:
            raise UrlRefused(f"URL of {len(url)} characters exceeds the limit of {MAX_URL_CHARS}")
        if any(ord(c) <= 32 or c == "\x7f" for c in url):
            # urlsplit drops tabs and newlines (WHATWG) but the client sends them: refused, not guessed
            raise UrlRefused("URL contains whitespace or control characters")
        try:
            u = urlsplit(url)
            port = u.port
        except ValueError:
            raise UrlRefused("malformed URL") from None
        if u.scheme not in DEFAULT_PORTS:
            raise UrlRefused(f"URL scheme {u.scheme!r} is not allowed (http or https only)")
        if "@" in u.netloc:
            raise UrlRefused("URLs with credentials (user@host) are not allowed")
        if not u.hostname:
            raise UrlRefused("URL has no host")
        host, port = u.hostname.lower(), port or DEFAULT_PORTS[u.scheme]
        segments = unquote(u.path).replace("\\", "/").split("/")
        if "." in segments or ".." in segments:
            # the target normalises /img/../secret.png to /secret.png: outside an /img/ prefix
            raise UrlRefused("URL path has '.' or '..' segments")
        if not any(a.admits(u.scheme, host, port, u.path or "/") for a in self.allowed):
            raise UrlRefused("URL is not in the allow-list")
        if not self.allow_private:
            for addr in self.resolver(host, port):
                if not _public(addr):
                    raise UrlRefused("URL resolves to a loopback, private or link-local address "
                                     "(refused unless the operator allows private URLs)")
        return url
