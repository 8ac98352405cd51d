"""Files behind `response_format=url`: stored on disk, served through HMAC-signed, expiring links.

`ImageStorage` is what the API needs of any store (save, link, fetch, sweep); `ImageStore` here is
the directory implementation (local or a shared mount), `canvasd.media.s3store.S3ImageStore` the
S3-compatible one, and `open_store` picks one from an ``image_store`` url (``file:///dir`` or
``s3://bucket/prefix``). Both name, sign and check links through one `LinkSigner`.

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
from typing import Callable, Protocol
from urllib.parse import unquote, urlparse

from canvasd.media.encode import MEDIA_TYPES

log = logging.getLogger("canvasd.media.store")

# matched with fullmatch (a `$` would let "…png\n" through) and ASCII digits only (`\d` also
# matches other scripts' digits, which int() accepts)
_NAME_RE = re.compile(r"img-([0-9]{1,12})-([0-9a-f]{32})\.(png|jpeg|webp|svg)", re.ASCII)
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


@dataclass(frozen=True)
class ImageBody:
    """A stored image to answer with: a local file (`path`) or its bytes (`data`)."""

    media_type: str
    path: Path | None = None
    data: bytes | None = None


class ImageStorage(Protocol):
    """What the API needs of a store behind `response_format=url`."""

    ttl_s: int

    def save(self, data: bytes, output_format: str) -> StoredImage: ...

    def link(self, stored: StoredImage, base_url: str) -> str:
        """The url the client gets; `base_url` is this server's public base (for links it serves)."""

    def fetch(self, name: str, expires: int | str, sig: str) -> ImageBody:
        """The image behind a link this server signed; raises NotFound/InvalidSignature/Expired."""

    def start_sweeper(self, interval_s: float = 60) -> None: ...

    def stop_sweeper(self, timeout_s: float = 5.0) -> None: ...


def files_path(name: str) -> str:
    """The route (under the public base url) that serves a stored image by name."""
    return f"/v1/images/files/{name}"


class LinkSigner:
    """Names stored images and signs/checks their links: the one rule both stores share."""

    def __init__(self, secret: bytes, ttl_s: int, clock: Callable[[], float] = time.time):
        if not secret:
            raise ValueError("an image store needs a non-empty secret")
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self._secret = bytes(secret)
        self.ttl_s = int(ttl_s)
        self.clock = clock

    def new(self, output_format: str) -> StoredImage:
        ext = "jpeg" if output_format == "jpg" else output_format
        if ext not in MEDIA_TYPES:
            raise ValueError(f"unsupported output_format {output_format!r}")
        expires_at = int(self.clock()) + self.ttl_s
        return StoredImage(name=f"img-{expires_at}-{secrets.token_hex(16)}.{ext}", expires_at=expires_at)

    def query(self, stored: StoredImage) -> str:
        return f"expires={stored.expires_at}&sig={self.sign(stored.name, stored.expires_at)}"

    def check(self, name: str, expires: int | str, sig: str) -> str:
        """The media type of a genuine, current link's image; raises NotFound, InvalidSignature
        or Expired, in that order of checks."""
        match = _NAME_RE.fullmatch(name or "")
        if match is None:
            raise NotFound(name)
        try:
            expires_at = int(expires)
        except (TypeError, ValueError):
            raise InvalidSignature(name) from None
        if not isinstance(sig, str) or not hmac.compare_digest(
            sig.lower().encode("ascii", "replace"), self.sign(name, expires_at).encode("ascii")
        ):
            raise InvalidSignature(name)
        if self.clock() > expires_at:
            raise Expired(name)
        return MEDIA_TYPES[match.group(3)]

    def is_expired(self, name: str) -> bool | None:
        """Whether a stored name's own expiry has passed; None for names that are not ours."""
        match = _NAME_RE.fullmatch(name)
        return None if match is None else self.clock() > int(match.group(1))

    def sign(self, name: str, expires_at: int) -> str:
        msg = f"{name}\n{expires_at}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()


class Sweeper:
    """Calls `sweep` now and then every `interval_s` seconds in a daemon thread until stopped."""

    def __init__(self, sweep: Callable[[], int], name: str):
        self._sweep = sweep
        self._name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, interval_s: float) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, args=(interval_s,), name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _loop(self, interval_s: float) -> None:
        while True:  # sweep at once too: files may have expired while the server was down
            try:
                removed = self._sweep()
                if removed:
                    log.debug("swept %d expired images", removed)
            except Exception:  # noqa: BLE001 - a failed sweep is retried at the next interval
                log.exception("image sweep failed")
            if self._stop.wait(interval_s):
                return


class ImageStore:
    """The directory store (the default, ``file:///dir``)."""

    def __init__(
        self,
        root: Path,
        secret: bytes,
        ttl_s: int,
        *,
        clock: Callable[[], float] = time.time,
    ):
        self.signer = LinkSigner(secret, ttl_s, clock)
        self.ttl_s = self.signer.ttl_s
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._sweeper = Sweeper(self.sweep, "canvasd-image-sweeper")

    @property
    def _clock(self) -> Callable[[], float]:
        return self.signer.clock

    # -- writing ---------------------------------------------------------------------------
    def save(self, data: bytes, output_format: str) -> StoredImage:
        stored = self.signer.new(output_format)
        tmp = self.root / f"{_TMP_PREFIX}{stored.name}"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, self.root / stored.name)
        return stored

    def signed_query(self, stored: StoredImage) -> str:
        return self.signer.query(stored)

    def link(self, stored: StoredImage, base_url: str) -> str:
        return f"{base_url}{files_path(stored.name)}?{self.signer.query(stored)}"

    # -- reading ---------------------------------------------------------------------------
    def open(self, name: str, expires: int | str, sig: str) -> tuple[Path, str]:
        """(path, media type) of a stored image, if the signed link is genuine and current."""
        media_type = self.signer.check(name, expires, sig)
        path = self.root / name
        # a regular file of our own only: a symlink planted in the directory is not followed
        if path.is_symlink() or not path.is_file():
            raise NotFound(name)
        return path, media_type

    def fetch(self, name: str, expires: int | str, sig: str) -> ImageBody:
        path, media_type = self.open(name, expires, sig)
        return ImageBody(media_type, path=path)

    # -- expiry ----------------------------------------------------------------------------
    def sweep(self) -> int:
        """Delete expired images (and stale temp files); returns how many files were removed."""
        now = self._clock()
        removed = 0
        for entry in os.scandir(self.root):
            if not entry.is_file(follow_symlinks=False):
                continue
            expired = self.signer.is_expired(entry.name)
            if expired is not None:
                stale = expired
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
        self._sweeper.start(interval_s)

    def stop_sweeper(self, timeout_s: float = 5.0) -> None:
        self._sweeper.stop(timeout_s)


def open_store(url: str, secret: bytes, ttl_s: int, *, endpoint_url: str | None = None,
               presigned_urls: bool = False) -> ImageStorage:
    """The store an ``image_store`` setting names: ``file:///dir`` (or a plain path) or
    ``s3://bucket/prefix`` (boto3, imported only then)."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        from canvasd.media.s3store import S3ImageStore

        if not parsed.netloc:
            raise ValueError(f"image_store {url!r}: an s3:// url needs a bucket (s3://bucket/prefix)")
        return S3ImageStore(parsed.netloc, parsed.path.strip("/"), secret, ttl_s,
                            endpoint_url=endpoint_url, presigned_urls=presigned_urls)
    if presigned_urls:
        raise ValueError("s3_presigned_urls needs an s3:// image_store")
    if parsed.scheme == "file":
        return ImageStore(Path(unquote(parsed.path)), secret, ttl_s)
    if parsed.scheme == "":
        return ImageStore(Path(url), secret, ttl_s)
    raise ValueError(f"image_store {url!r}: expected file:///dir or s3://bucket/prefix")
