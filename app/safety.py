"""What the UI lets a browser touch: paths confined to configured roots, and where the server may bind.

Every path a user types (a data folder, a weights file, a reference set) goes through `confine`, and every
weights reference (a run id, RUN@STEP, or a path: Evaluate's source, Diagnostics' checkpoint) through
`confine_weights`, before anything else reads the filesystem: a path must lie inside one of the roots the
app was started with, by its text first (nothing outside is even stat'ed) and again after symlinks are
resolved, and may not contain "..". A path outside the roots and one that does not exist get the same
answer, so the form tells a browser nothing about the server's other files. The server binds to loopback
unless the operator gives credentials (`check_bind`).
"""
from __future__ import annotations

import contextvars
import ipaddress
import os
import re
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.errors import ConfigError, UserError


class UnsafeBindError(UserError):
    """A non-loopback address was requested without authentication."""


def _roots_text(roots: Sequence[Path]) -> str:
    return ", ".join(str(r) for r in roots) or "(none configured)"


def _not_found(field: str, raw: str, roots: Sequence[Path]) -> ConfigError:
    """The one answer for a path outside the roots and a path that does not exist."""
    return ConfigError(field, f"{raw!r}: not found inside the allowed roots ({_roots_text(roots)}); give a path "
                              "inside one of them (or restart the app with `--data-root DIR`, once per root)")


def _under(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def confine(text: str | None, roots: Sequence[Path], field: str, *, kind: str = "any") -> Path:
    """The real path named by `text`, which must lie inside one of `roots`.

    `text` is absolute, or relative to a root (the first root where it exists wins). Rejected with a
    ConfigError naming `field`: empty text, any ".." component, a path of the wrong kind ("dir", "file"
    or "any"), and, with one and the same message, a path outside every root (an absolute path by its
    text before the filesystem is touched, then with symlinks resolved, so a link inside a root that
    points elsewhere is outside) or a missing one."""
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
        if not _under(candidate, [*map(Path, roots), *real_roots]):
            raise _not_found(field, raw, real_roots)
        options = [candidate]
    else:
        options = [root / candidate for root in real_roots]
        existing = [p for p in options if p.exists()]
        options = existing or options[:1]
    if not options:
        raise ConfigError(field, f"{raw!r}: no roots are configured for this field")
    target = options[0].resolve()
    if not _under(target, real_roots) or not target.exists():
        raise _not_found(field, raw, real_roots)
    if kind == "dir" and not target.is_dir():
        raise ConfigError(field, f"{raw!r}: {target} is not a folder")
    if kind == "file" and not target.is_file():
        raise ConfigError(field, f"{raw!r}: {target} is not a file")
    return target


_RUN_REF = re.compile(r"[A-Za-z0-9][\w.-]*(@\d+)?")  # a run id (or a fragment of one), optionally @STEP


def confine_weights(text: str | None, runs_dir: Path, roots: Sequence[Path], field: str) -> str:
    """A weights reference typed in a browser, checked before anything reads a path outside the roots: a run
    id or RUN@STEP, looked up among the run folders of `runs_dir` only, or a path confined to `roots`
    (`confine`). Returns what to hand to core.checkpoints.resolve_weights: the run reference as typed, or the
    confined absolute path. Empty text stays empty (the caller's default)."""
    from core.checkpoints import find_run_dir

    raw = (text or "").strip()
    if not raw:
        return raw
    if _RUN_REF.fullmatch(raw):
        try:
            find_run_dir(runs_dir, raw.partition("@")[0], field)  # lists runs_dir, nothing else
        except ConfigError:
            raise _not_found(field, raw, list(dict.fromkeys(Path(r).resolve() for r in (runs_dir, *roots)))) from None
        return raw
    return str(confine(raw, roots, field))


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


CLIENT: contextvars.ContextVar[str] = contextvars.ContextVar("vapi_client", default="?")


class ClientAddress:
    """ASGI middleware: the peer address of each HTTP request in `CLIENT`, where the login check (which gradio
    calls with the user name and password only) reads it. The TCP peer, not a forwarded header a client could
    write itself; behind a reverse proxy every client is the proxy (see LoginGuard)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope.get("type") == "http" and scope.get("client"):
            CLIENT.set(str(scope["client"][0]))
        await self.app(scope, receive, send)


class LoginGuard:
    """The login check, throttled per client: `auth=LoginGuard(users).check` for gr.Blocks.launch (with the
    ClientAddress middleware, which `app.main` installs).

    A client's attempts are answered one at a time, in order. Each wrong password costs FAILURE_DELAY_S before
    its answer, and each further one within WINDOW_S doubles the wait before that client's next attempt is even
    checked, up to MAX_DELAY_S (1, 2, 4, ... 60 s: 30 wrong passwords from one address take ~20 minutes).
    Nothing is locked: another client (the owner at her own address) is checked at once, and the right password
    from a throttled client works after its wait. There is no per-user lock, so guessing many names, or any
    number of wrong passwords, cannot lock a user out. Passwords are compared in constant time. A client that
    is the same address as many users (a NAT, a reverse proxy) shares one backoff."""

    FAILURE_DELAY_S = 1.0
    WINDOW_S = 600.0
    MAX_DELAY_S = 60.0
    MAX_CLIENTS = 10_000  # addresses remembered; the oldest are forgotten beyond this

    def __init__(self, users: Sequence[tuple[str, str]], *, clock=None, sleep=None, failure_delay_s: float | None = None,
                 max_delay_s: float | None = None):
        import asyncio
        import time

        self.users = dict(users)
        self._clock = clock or time.monotonic
        self._sleep = sleep or asyncio.sleep
        self.failure_delay_s = self.FAILURE_DELAY_S if failure_delay_s is None else failure_delay_s
        self.max_delay_s = self.MAX_DELAY_S if max_delay_s is None else max_delay_s
        self._failures: dict[str, list[float]] = {}  # client -> times of its recent wrong passwords
        self._next: dict[str, float] = {}  # client -> when its next attempt is checked
        self._locks: dict[str, Any] = {}  # client -> asyncio.Lock: its attempts one at a time

    def wait(self, client: str) -> float:
        """Seconds before `client`'s next attempt is checked (0: now)."""
        return max(0.0, self._next.get(client, 0.0) - self._clock())

    async def check(self, username: str, password: str, client: str | None = None) -> bool:
        import asyncio
        import hmac

        client = CLIENT.get() if client is None else client
        lock = self._locks.setdefault(client, asyncio.Lock())
        async with lock:
            if self.wait(client) > 0:
                await self._sleep(self.wait(client))
            expected = self.users.get(username)
            ok = expected is not None and hmac.compare_digest(password.encode(), expected.encode())
            if ok:
                self._failures.pop(client, None)
                self._next.pop(client, None)
                return True
            now = self._clock()
            recent = [t for t in self._failures.get(client, []) if now - t < self.WINDOW_S] + [now]
            self._failures[client] = recent
            self._next[client] = now + min(self.failure_delay_s * 2 ** (len(recent) - 1), self.max_delay_s)
            self._forget_oldest()
            await self._sleep(self.failure_delay_s)
            return False

    def _forget_oldest(self) -> None:
        while len(self._failures) > self.MAX_CLIENTS:
            oldest = min(self._failures, key=lambda c: self._failures[c][-1])
            for table in (self._failures, self._next, self._locks):
                table.pop(oldest, None)


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
