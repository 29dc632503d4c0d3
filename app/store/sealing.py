"""Secrets the service must read back, encrypted at rest with keys from the environment.

An API key is stored as a hash: checking it needs only the hash. A webhook's signing secret
cannot be: signing each delivery needs the secret itself. So it is sealed with Fernet
(AES-128-CBC and HMAC-SHA256, from ``cryptography``) under ``MARQUEE_WEBHOOK_SECRET_KEYS``, and
whoever reads the database without that key reads no secret.

Several keys may be given, comma-separated: the first seals, every one opens, so a key is
rotated by putting the new one first, running ``marquee webhooks seal-secrets`` (which seals
every stored secret under it), then dropping the old one. With no key, secrets are stored as
they are (a warning at start-up in production); a stored plain secret is still read, and the
same command seals it once a key is set.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

SEALED_PREFIX = "fernet:"  # a sealed value; a plain one (whsec_...) never starts so


class SecretUnavailable(Exception):
    """A sealed secret that none of the configured keys opens."""


def parse_keys(text: str) -> list[str]:
    """The keys in a comma-separated setting; a ValueError naming the one that is not a key."""
    keys = [part.strip() for part in text.split(",") if part.strip()]
    for position, key in enumerate(keys, start=1):
        try:
            Fernet(key)
        except (ValueError, TypeError):
            raise ValueError(
                f"key {position} is not a Fernet key (the URL-safe base64 of 32 bytes; make one "
                "with `marquee webhooks new-key`)"
            ) from None
    return keys


def is_sealed(stored: str) -> bool:
    return stored.startswith(SEALED_PREFIX)


def new_key() -> str:
    return Fernet.generate_key().decode()


class Sealer:
    """Seals with the first key, opens with any; no keys: stores and reads plain text."""

    def __init__(self, keys: Sequence[str] = ()) -> None:
        self._fernet = MultiFernet([Fernet(key) for key in keys]) if keys else None

    @property
    def sealing(self) -> bool:
        return self._fernet is not None

    def seal(self, secret: str) -> str:
        if self._fernet is None:
            return secret
        return SEALED_PREFIX + self._fernet.encrypt(secret.encode()).decode()

    def open(self, stored: str) -> str:
        if not is_sealed(stored):
            return stored  # stored before a key was set
        if self._fernet is None:
            raise SecretUnavailable("sealed, and MARQUEE_WEBHOOK_SECRET_KEYS is not set")
        try:
            return self._fernet.decrypt(stored.removeprefix(SEALED_PREFIX).encode()).decode()
        except InvalidToken:
            raise SecretUnavailable(
                "sealed with a key MARQUEE_WEBHOOK_SECRET_KEYS does not hold"
            ) from None

    def reseal(self, stored: str) -> str:
        """``stored`` sealed under the first key (a plain one sealed, an old key's re-sealed)."""
        return self.seal(self.open(stored))
