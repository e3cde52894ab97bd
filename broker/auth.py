"""Password authentication for the embedded broker, from a mosquitto password file.

The file is the one ``mosquitto_passwd`` writes (and mosquitto 2.x reads), one ``user:hash`` per
line, so one file serves both brokers. Two hash formats exist, both with a 12-byte salt and a
64-byte digest, each base64-encoded:

    $7$<iterations>$<salt>$<digest>   PBKDF2-HMAC-SHA512 (mosquitto 2.x default, 101 iterations)
    $6$<salt>$<digest>                SHA-512 of password + salt (mosquitto 1.6 and older)

Parsing follows mosquitto 2.0's ``pwfile__parse`` / ``unpwd__decode_passwords``: lines starting
with ``#`` and lines without ``:`` are skipped, user and hash are trimmed of blanks, and an entry
whose hash cannot be decoded is dropped with a warning (naming the user, never the hash).

Nothing here ever logs a password or a hash.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from amqtt.contexts import BaseContext
from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import Session

from lifelong.common.errors import LifelongError

log = logging.getLogger("lifelong.broker.auth")

SALT_LEN = 12  # mosquitto rejects any other salt length
INLINE_ITERATIONS = 10_000
DIGEST_LEN = 64  # SHA-512
# A dummy entry hashed when the user is unknown, so that "no such user" and "wrong password"
# take about the same time.
_DUMMY_SALT = os.urandom(SALT_LEN)


class PasswordFileError(LifelongError):
    """The password file cannot be read (missing, unreadable, not text)."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class PasswordHash:
    """One decoded entry of a mosquitto password file."""

    kind: str  # "7" (PBKDF2-HMAC-SHA512) or "6" (salted SHA-512)
    iterations: int  # 1 for kind "6"
    salt: bytes
    digest: bytes

    def __repr__(self) -> str:  # never show the material, even in a debugger or a traceback
        return f"PasswordHash(kind=${self.kind}$, iterations={self.iterations})"

    @classmethod
    def parse(cls, encoded: str) -> PasswordHash:
        """Decode ``$7$...`` or ``$6$...``; raises ``ValueError`` (without the hash in the message)."""
        parts = encoded.split("$")
        if len(parts) < 2 or parts[0] != "":
            raise ValueError("not a mosquitto hash")
        kind = parts[1]
        if kind == "7" and len(parts) == 5:
            try:
                iterations = int(parts[2])
            except ValueError:
                raise ValueError("invalid iteration count") from None
            if iterations < 1:
                raise ValueError("invalid iteration count")
            salt_b64, digest_b64 = parts[3], parts[4]
        elif kind == "6" and len(parts) == 4:
            iterations = 1
            salt_b64, digest_b64 = parts[2], parts[3]
        else:
            raise ValueError("unknown hash type (only $6$ and $7$ are supported)")
        try:
            salt = base64.b64decode(salt_b64, validate=True)
            digest = base64.b64decode(digest_b64, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("invalid base64") from None
        if len(salt) != SALT_LEN:
            raise ValueError(f"salt is {len(salt)} bytes, not {SALT_LEN}")
        if len(digest) != DIGEST_LEN:
            raise ValueError(f"digest is {len(digest)} bytes, not {DIGEST_LEN}")
        return cls(kind, iterations, salt, digest)

    def compute(self, password: str | bytes) -> bytes:
        pw = password.encode("utf-8") if isinstance(password, str) else password
        if self.kind == "7":
            return hashlib.pbkdf2_hmac("sha512", pw, self.salt, self.iterations, DIGEST_LEN)
        return hashlib.sha512(pw + self.salt).digest()

    def verify(self, password: str | bytes) -> bool:
        return hmac.compare_digest(self.compute(password), self.digest)


_DUMMY = PasswordHash("7", 101, _DUMMY_SALT, bytes(DIGEST_LEN))


def parse_password_file(text: str, *, source: str = "password file") -> dict[str, PasswordHash]:
    """Parse the content of a mosquitto password file into ``{user: hash}``.

    Bad entries are skipped with a warning, as mosquitto does; the last entry of a user wins.
    """
    users: dict[str, PasswordHash] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        if raw.startswith("#") or ":" not in raw:
            continue
        user, _, rest = raw.partition(":")
        user = user.strip()
        encoded = rest.split(":", 1)[0].strip()
        if not user:
            log.warning("%s line %d: empty user name, entry ignored", source, lineno)
            continue
        if not encoded:
            log.warning("%s line %d: user %r has no password hash, entry ignored", source, lineno, user)
            continue
        try:
            users[user] = PasswordHash.parse(encoded)
        except ValueError as exc:
            log.warning("%s line %d: user %r: %s, entry ignored", source, lineno, user, exc)
    return users


def load_password_file(path: str | os.PathLike[str]) -> dict[str, PasswordHash]:
    """Read and parse a password file; raises ``PasswordFileError`` if it cannot be read."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PasswordFileError(f"password file {str(p)!r} does not exist") from None
    except UnicodeDecodeError:
        raise PasswordFileError(f"password file {str(p)!r} is not UTF-8 text") from None
    except OSError as exc:
        raise PasswordFileError(f"cannot read password file {str(p)!r}: {exc.strerror}") from None
    return parse_password_file(text, source=str(p))


async def _verify(entry: PasswordHash, password: str) -> bool:
    """Check a password without stalling the broker on an expensive hash.

    mosquitto_passwd's 101 PBKDF2 rounds take well under a millisecond, so they run inline; a
    file written by another tool with many more rounds is verified in a worker thread.
    """
    if entry.iterations <= INLINE_ITERATIONS:
        return entry.verify(password)
    return await asyncio.to_thread(entry.verify, password)


class PasswordFileAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]  # amqtt is untyped
    """amqtt auth plugin: mosquitto password file, or open access when no file is configured.

    With ``password_file``: a client must send a user name that is in the file and the matching
    password, else CONNACK 5 (not authorised). Without it, every client is accepted; one without
    a user name is marked anonymous (amqtt then keeps no offline queue for it).
    """

    @dataclass
    class Config:
        password_file: str | None = None
        """Path of a mosquitto password file; None allows every client."""

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self._path: str | None = self.config.password_file
        self._users: dict[str, PasswordHash] = {}
        if self._path is not None:
            self._users = load_password_file(self._path)
            log.info("%d user(s) loaded from %s", len(self._users), self._path)
            if not self._users:
                log.warning("no valid user in %s: every client will be refused", self._path)

    @property
    def users(self) -> frozenset[str]:
        return frozenset(self._users)

    def reload(self) -> None:
        """Re-read the password file (SIGHUP). On error the users loaded before stay in force."""
        if self._path is None:
            return
        try:
            users = load_password_file(self._path)
        except PasswordFileError as exc:
            log.error("password file not reloaded, keeping %d user(s): %s", len(self._users), exc)
            return
        self._users = users
        log.info("%d user(s) reloaded from %s", len(users), self._path)

    async def authenticate(self, *, session: Session) -> bool:
        if self._path is None:
            if not session.username:
                session.is_anonymous = True
            return True
        if not session.username:
            log.info("refused client %r: no user name", session.client_id)
            return False
        entry = self._users.get(session.username)
        if entry is None:
            _DUMMY.verify(session.password or "")
            log.info("refused client %r: unknown user %r", session.client_id, session.username)
            return False
        if session.password is None or not await _verify(entry, session.password):
            log.info("refused client %r: bad password for user %r", session.client_id, session.username)
            return False
        return True
