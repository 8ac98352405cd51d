"""Files behind `response_format=url`: stored on disk, served through HMAC-signed, expiring links.

A stored file's name is ``img-<expires_at>-<32 hex random>.<ext>``: unguessable (128 random bits),
and it carries its own expiry, so `sweep` works after a restart without any index or sidecar.
A url is ``…/<name>?expires=<unix>&sig=<hex HMAC-SHA256(secret, name + "\\n" + expires)>``.

`open` checks, in order: the name is one of ours (anything else, including path traversal, is
`NotFound`), the signature (`InvalidSignature`), the expiry (`Expired`), the file (`NotFound`).
Writes are atomic (temp file + rename) so a half-written image is never served.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from canvasd.media.encode import MEDIA_TYPES

log = logging.getLogger("canvasd.media.store")

_NAME_RE = re.compile(r"^img-(\d{1,12})-([0-9a-f]{32})\.(png|jpeg|webp)$")
_TMP_PREFIX = ".tmp-"
_TMP_MAX_AGE_S = 3600  # leftovers of a crash mid-write


class StoreError(Exception):
    """Base of the reasons a signed url is refused."""


class InvalidSignature(StoreError):
    pass


class Expired(StoreError):
    pass


class NotFound(StoreError):
    pass


@dataclass(frozen=True)
class StoredImage:
    name: str  # file name, also the url's last path segment
    expires_at: int  # unix seconds; the url is valid up to and including this second


class ImageStore:
    def __init__(
        self,
        root: Path,
        secret: bytes,
        ttl_s: int,
        *,
        clock: Callable[[], float] = time.time,
    ):
        if not secret:
            raise ValueError("ImageStore needs a non-empty secret")
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._secret = bytes(secret)
        self.ttl_s = int(ttl_s)
        self._clock = clock
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None

    # -- writing ---------------------------------------------------------------------------
    def save(self, data: bytes, output_format: str) -> StoredImage:
        ext = "jpeg" if output_format == "jpg" else output_format
        if ext not in MEDIA_TYPES:
            raise ValueError(f"unsupported output_format {output_format!r}")
        expires_at = int(self._clock()) + self.ttl_s
        name = f"img-{expires_at}-{secrets.token_hex(16)}.{ext}"
        tmp = self.root / f"{_TMP_PREFIX}{name}"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, self.root / name)
        return StoredImage(name=name, expires_at=expires_at)

    def signed_query(self, stored: StoredImage) -> str:
        return f"expires={stored.expires_at}&sig={self._sign(stored.name, stored.expires_at)}"

    # -- reading ---------------------------------------------------------------------------
    def open(self, name: str, expires: int | str, sig: str) -> tuple[Path, str]:
        """(path, media type) of a stored image, if the signed link is genuine and current."""
        match = _NAME_RE.match(name or "")
        if match is None:
            raise NotFound(name)
        try:
            expires_at = int(expires)
        except (TypeError, ValueError):
            raise InvalidSignature(name) from None
        if not isinstance(sig, str) or not hmac.compare_digest(
            sig.lower().encode("ascii", "replace"), self._sign(name, expires_at).encode("ascii")
        ):
            raise InvalidSignature(name)
        if self._clock() > expires_at:
            raise Expired(name)
        path = self.root / name
        if not path.is_file():
            raise NotFound(name)
        return path, MEDIA_TYPES[match.group(3)]

    # -- expiry ----------------------------------------------------------------------------
    def sweep(self) -> int:
        """Delete expired images (and stale temp files); returns how many files were removed."""
        now = self._clock()
        removed = 0
        for entry in os.scandir(self.root):
            if not entry.is_file(follow_symlinks=False):
                continue
            match = _NAME_RE.match(entry.name)
            if match is not None:
                stale = now > int(match.group(1))
            elif entry.name.startswith(_TMP_PREFIX):
                stale = now - entry.stat().st_mtime > _TMP_MAX_AGE_S
            else:
                continue  # not ours: leave it alone
            if stale:
                try:
                    os.unlink(entry.path)
                    removed += 1
                except FileNotFoundError:
                    pass
        return removed

    def start_sweeper(self, interval_s: float = 60) -> None:
        """Sweep now and then every `interval_s` seconds in a daemon thread until `stop_sweeper`."""
        if self._sweeper is not None and self._sweeper.is_alive():
            return
        self._stop.clear()
        self._sweeper = threading.Thread(
            target=self._sweep_loop, args=(interval_s,), name="canvasd-image-sweeper", daemon=True
        )
        self._sweeper.start()

    def stop_sweeper(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._sweeper is not None:
            self._sweeper.join(timeout_s)
            self._sweeper = None

    def _sweep_loop(self, interval_s: float) -> None:
        while True:  # sweep at once too: files may have expired while the server was down
            try:
                removed = self.sweep()
                if removed:
                    log.debug("swept %d expired images", removed)
            except OSError:
                log.exception("image sweep failed")
            if self._stop.wait(interval_s):
                return

    def _sign(self, name: str, expires_at: int) -> str:
        msg = f"{name}\n{expires_at}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()
