"""The S3-compatible store behind `response_format=url` (``image_store = "s3://bucket/prefix"``).

Every ingress replica reads the same bucket, so a link made by one is served by any other. Names,
signatures and expiry are the directory store's (`LinkSigner`): the object key is
``<prefix>/<name>`` and the name carries its expiry, so `sweep` needs no index.

Two kinds of link:
- default: canvasd's own signed link (``<base>/v1/images/files/<name>?expires=..&sig=..``); the
  server checks it and answers with the object's bytes.
- ``presigned_urls=True``: the store's own presigned GET url (SigV4), valid for the store's ttl; the
  client downloads from the bucket directly and the S3 server checks signature and expiry.

The client is boto3's, configured the usual way (AWS_* environment variables, profiles, instance
roles); ``endpoint_url`` points it at MinIO, Ceph, R2 or any other S3-compatible server.
"""

from __future__ import annotations

import time
from typing import Callable

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from canvasd.media.encode import MEDIA_TYPES
from canvasd.media.store import (
    ImageBody,
    LinkSigner,
    NotFound,
    StoredImage,
    Sweeper,
    files_path,
)

_MISSING = {"NoSuchKey", "404", "NotFound"}


class S3ImageStore:
    def __init__(
        self,
        bucket: str,
        prefix: str,
        secret: bytes,
        ttl_s: int,
        *,
        endpoint_url: str | None = None,
        presigned_urls: bool = False,
        clock: Callable[[], float] = time.time,
    ):
        self.signer = LinkSigner(secret, ttl_s, clock)
        self.ttl_s = self.signer.ttl_s
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.presigned_urls = presigned_urls
        # SigV4 everywhere: presigned urls of other S3-compatible servers expect it too.
        self.client = boto3.client("s3", endpoint_url=endpoint_url,
                                   config=Config(signature_version="s3v4", retries={"max_attempts": 3}))
        self._sweeper = Sweeper(self.sweep, "canvasd-s3-sweeper")

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def save(self, data: bytes, output_format: str) -> StoredImage:
        stored = self.signer.new(output_format)
        media_type = MEDIA_TYPES[stored.name.rsplit(".", 1)[1]]
        # S3 PUTs are atomic: a half-written object is never visible.
        self.client.put_object(Bucket=self.bucket, Key=self._key(stored.name), Body=data,
                               ContentType=media_type)
        return stored

    def link(self, stored: StoredImage, base_url: str) -> str:
        if self.presigned_urls:
            remaining = max(1, stored.expires_at - int(self.signer.clock()))
            return self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self._key(stored.name)},
                ExpiresIn=remaining)
        return f"{base_url}{files_path(stored.name)}?{self.signer.query(stored)}"

    def fetch(self, name: str, expires: int | str, sig: str) -> ImageBody:
        media_type = self.signer.check(name, expires, sig)
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(name))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING:
                raise NotFound(name) from None
            raise
        return ImageBody(media_type, data=obj["Body"].read())

    def sweep(self) -> int:
        """Delete objects under the prefix whose name says they have expired."""
        removed = 0
        prefix = f"{self.prefix}/" if self.prefix else ""
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            stale = [o["Key"] for o in page.get("Contents", [])
                     if self.signer.is_expired(o["Key"][len(prefix):])]
            for i in range(0, len(stale), 1000):  # DeleteObjects takes at most 1000 keys
                batch = stale[i : i + 1000]
                self.client.delete_objects(Bucket=self.bucket,
                                           Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
                removed += len(batch)
        return removed

    def start_sweeper(self, interval_s: float = 60) -> None:
        self._sweeper.start(interval_s)

    def stop_sweeper(self, timeout_s: float = 5.0) -> None:
        self._sweeper.stop(timeout_s)
