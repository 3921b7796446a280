"""What the UI lets a browser touch: paths confined to configured roots, and where the server may bind.

Every path a user types (a data folder, a weights file) goes through `confine`: it must lie inside one
of the roots the app was started with, after symlinks are resolved, and may not contain "..". The
server binds to loopback unless the operator gives credentials (`check_bind`).
"""
from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Sequence
from pathlib import Path

from core.errors import ConfigError, UserError


class UnsafeBindError(UserError):
    """A non-loopback address was requested without authentication."""


def _roots_text(roots: Sequence[Path]) -> str:
    return ", ".join(str(r) for r in roots) or "(none configured)"


def confine(text: str | None, roots: Sequence[Path], field: str, *, kind: str = "any") -> Path:
    """The real path named by `text`, which must lie inside one of `roots`.

    `text` is absolute, or relative to a root (the first root where it exists wins). Rejected with a
    ConfigError naming `field`: empty text, any ".." component, a path outside every root (symlinks
    are resolved first, so a link inside a root that points elsewhere is outside), a missing path,
    and a path of the wrong kind ("dir", "file" or "any")."""
    raw = (text or "").strip()
    if not raw:
        raise ConfigError(field, f"empty; give a path inside {_roots_text(roots)}")
    if "\x00" in raw:
        raise ConfigError(field, "contains a NUL character")
    candidate = Path(os.path.expanduser(raw))
    if ".." in candidate.parts:
        raise ConfigError(field, f"{raw!r}: '..' is not allowed; give a path inside {_roots_text(roots)}")
    real_roots = [Path(r).resolve() for r in roots]
    if candidate.is_absolute():
        options = [candidate]
    else:
        options = [root / candidate for root in real_roots]
        existing = [p for p in options if p.exists()]
        options = existing or options[:1]
    if not options:
        raise ConfigError(field, f"{raw!r}: no roots are configured for this field")
    target = options[0].resolve()
    if not any(target == root or target.is_relative_to(root) for root in real_roots):
        raise ConfigError(field, f"{raw!r} resolves to {target}, outside the allowed roots "
                                 f"({_roots_text(real_roots)}); move or link the data inside one of them, "
                                 "or restart the app with `--data-root DIR` (once per root)")
    if not target.exists():
        raise ConfigError(field, f"{raw!r}: {target} does not exist")
    if kind == "dir" and not target.is_dir():
        raise ConfigError(field, f"{raw!r}: {target} is not a folder")
    if kind == "file" and not target.is_file():
        raise ConfigError(field, f"{raw!r}: {target} is not a file")
    return target


def is_loopback(host: str) -> bool:
    """Whether every address `host` stands for is a loopback address ("127.0.0.1", "::1", "localhost")."""
    host = host.strip().strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def check_bind(host: str, auth) -> None:
    """Refuse to serve on a non-loopback address without authentication."""
    if not is_loopback(host) and not auth:
        raise UnsafeBindError(
            f"refusing to listen on {host}: it is reachable from other machines and the app can start training "
            "runs and read your run folders. Give credentials with --auth USER:PASSWORD, or bind to 127.0.0.1 "
            "and use an SSH tunnel (ssh -L 7860:127.0.0.1:7860 host)")


class LoginGuard:
    """The login check, rate-limited: `auth=LoginGuard(users).check` for gr.Blocks.launch.

    Each wrong password costs FAILURE_DELAY_S before the answer (awaited: the server keeps serving).
    MAX_FAILURES wrong passwords for one user name within WINDOW_S lock that name for LOCKOUT_S,
    doubling with each further lockout up to MAX_LOCKOUT_S; GLOBAL_MAX_FAILURES over all names within
    WINDOW_S lock every login for LOCKOUT_S. While locked every attempt is refused, the right password
    too (the login form cannot tell why). Passwords are compared in constant time."""

    FAILURE_DELAY_S = 1.0
    MAX_FAILURES = 5
    GLOBAL_MAX_FAILURES = 20
    WINDOW_S = 60.0
    LOCKOUT_S = 30.0
    MAX_LOCKOUT_S = 900.0

    def __init__(self, users: Sequence[tuple[str, str]], *, clock=None, sleep=None):
        import asyncio
        import time

        self.users = dict(users)
        self._clock = clock or time.monotonic
        self._sleep = sleep or asyncio.sleep
        self._failures: dict[str | None, list[float]] = {}  # user name (None: all) -> failure times
        self._locked_until: dict[str | None, float] = {}
        self._lockouts: dict[str | None, int] = {}

    def locked(self, username: str) -> float:
        """Seconds until `username` may try again (0: now)."""
        now = self._clock()
        return max(0.0, self._locked_until.get(username, 0.0) - now, self._locked_until.get(None, 0.0) - now)

    async def check(self, username: str, password: str) -> bool:
        import hmac

        if self.locked(username) > 0:
            await self._sleep(self.FAILURE_DELAY_S)
            return False
        expected = self.users.get(username)
        ok = expected is not None and hmac.compare_digest(password.encode(), expected.encode())
        if ok:
            self._failures.pop(username, None)
            self._lockouts.pop(username, None)
            return True
        self._fail(username)
        self._fail(None)
        await self._sleep(self.FAILURE_DELAY_S)
        return False

    def _fail(self, key: str | None) -> None:
        now = self._clock()
        recent = [t for t in self._failures.get(key, []) if now - t < self.WINDOW_S] + [now]
        self._failures[key] = recent
        limit = self.GLOBAL_MAX_FAILURES if key is None else self.MAX_FAILURES
        if len(recent) >= limit:
            n = self._lockouts.get(key, 0)
            self._lockouts[key] = n + 1
            self._locked_until[key] = now + min(self.LOCKOUT_S * 2 ** n, self.MAX_LOCKOUT_S)
            self._failures[key] = []


def check_ssl(certfile: str | os.PathLike | None, keyfile: str | os.PathLike | None) -> None:
    """--ssl-certfile and --ssl-keyfile come together and name readable files."""
    if bool(certfile) != bool(keyfile):
        raise ConfigError("--ssl-keyfile" if certfile else "--ssl-certfile",
                          "HTTPS needs both --ssl-certfile and --ssl-keyfile")
    for flag, path in (("--ssl-certfile", certfile), ("--ssl-keyfile", keyfile)):
        if path and not Path(path).is_file():
            raise ConfigError(flag, f"{path}: no such file")


def parse_auth(items: Sequence[str]) -> list[tuple[str, str]]:
    """["user:pass", ...] -> [(user, pass), ...]; the password may contain ':'."""
    out = []
    for item in items:
        user, sep, password = item.partition(":")
        if not sep or not user or not password:
            raise ConfigError("--auth", f"expected USER:PASSWORD, got {item!r}")
        out.append((user, password))
    return out
