"""`image_store = "s3://bucket/prefix"` against a real S3-compatible server: moto's standalone
server (`ThreadedMotoServer`) on a loopback port, reached over HTTP by boto3 inside canvasd.
Nothing inside canvasd is mocked; the server is the only stand-in (for AWS itself)."""

from __future__ import annotations

import io
import os
import socket
import time
from urllib.parse import parse_qs, urlparse

import boto3
import httpx
import pytest
from moto import server as moto_server
from openai import OpenAI
from PIL import Image

from canvasd.media.s3store import S3ImageStore
from canvasd.media.store import Expired, ImageStore, InvalidSignature, NotFound, open_store


BUCKET = "canvasd-test"


class Clock:
    def __init__(self, t: float | None = None):
        self.t = time.time() if t is None else t

    def __call__(self) -> float:
        return self.t


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1")
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def objects(endpoint: str, prefix: str) -> list[str]:
    page = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for o in page.get("Contents", [])]


def png(colour=(10, 200, 30, 255)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (8, 8), colour).save(buf, "PNG")
    return buf.getvalue()


def signed(link: str) -> tuple[str, str, str]:
    u = urlparse(link)
    q = parse_qs(u.query)
    return u.path.rsplit("/", 1)[1], q["expires"][0], q["sig"][0]


def test_open_store_picks_the_implementation(tmp_path, s3_endpoint):
    assert isinstance(open_store(f"file://{tmp_path}/imgs", b"k", 60), ImageStore)
    assert isinstance(open_store(str(tmp_path / "plain"), b"k", 60), ImageStore)
    s3 = open_store(f"s3://{BUCKET}/a/b", b"k", 60, endpoint_url=s3_endpoint)
    assert isinstance(s3, S3ImageStore) and s3.bucket == BUCKET and s3.prefix == "a/b"
    with pytest.raises(ValueError):
        open_store("s3:///nobucket", b"k", 60)
    with pytest.raises(ValueError):
        open_store("ftp://host/x", b"k", 60)
    with pytest.raises(ValueError):
        open_store(str(tmp_path), b"k", 60, presigned_urls=True)


def test_s3_store_round_trip_tamper_expiry_and_sweep(s3_endpoint):
    clock = Clock()
    store = S3ImageStore(BUCKET, "unit", b"s3cret", 3600, endpoint_url=s3_endpoint, clock=clock)
    data = png()
    stored = store.save(data, "png")
    assert objects(s3_endpoint, "unit/") == [f"unit/{stored.name}"]
    link = store.link(stored, "https://img.example.com")
    assert link.startswith(f"https://img.example.com/v1/images/files/{stored.name}?")
    name, expires, sig = signed(link)
    body = store.fetch(name, expires, sig)
    assert body.data == data and body.media_type == "image/png" and body.path is None
    with pytest.raises(InvalidSignature):
        store.fetch(name, expires, sig[:-1] + ("0" if sig[-1] != "0" else "1"))
    with pytest.raises(InvalidSignature):  # a longer life is not for the asking
        store.fetch(name, str(int(expires) + 3600), sig)
    with pytest.raises(InvalidSignature):  # another server's secret
        S3ImageStore(BUCKET, "unit", b"other", 3600, endpoint_url=s3_endpoint).fetch(name, expires, sig)
    # a signed link to an object that is gone
    other = store.save(data, "webp")
    boto3.client("s3", endpoint_url=s3_endpoint).delete_object(Bucket=BUCKET, Key=f"unit/{other.name}")
    with pytest.raises(NotFound):
        store.fetch(*signed(store.link(other, "")))
    # expiry: the link stops working, and the sweep deletes the object (the name carries its expiry)
    clock.t += 1800
    fresh = store.save(data, "jpeg")
    clock.t = stored.expires_at + 1
    with pytest.raises(Expired):
        store.fetch(name, expires, sig)
    assert store.sweep() == 1
    assert objects(s3_endpoint, "unit/") == [f"unit/{fresh.name}"]


def test_s3_presigned_links_download_from_the_bucket(s3_endpoint):
    store = S3ImageStore(BUCKET, "presigned", b"k", 600, endpoint_url=s3_endpoint, presigned_urls=True)
    data = png((1, 2, 3, 255))
    stored = store.save(data, "png")
    link = store.link(stored, "https://ignored.example.com")
    assert link.startswith(s3_endpoint) and "X-Amz-Signature=" in link
    assert int(parse_qs(urlparse(link).query)["X-Amz-Expires"][0]) <= 600
    r = httpx.get(link)
    assert r.status_code == 200 and r.content == data


def test_api_url_responses_through_s3(live_server, s3_endpoint, tmp_path):
    srv = live_server(image_store=f"s3://{BUCKET}/api", s3_endpoint_url=s3_endpoint)
    client = OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)
    result = client.images.generate(model="test-model", prompt="a disc", n=2, response_format="url",
                                    size="256x256")
    urls = [d.url for d in result.data]
    assert len(set(urls)) == 2 and all(u.startswith(f"{srv.url}/v1/images/files/img-") for u in urls)
    assert len(objects(s3_endpoint, "api/")) == 2  # nothing went to the local image folder
    assert not any(srv.settings.image_dir.glob("img-*"))
    for url in urls:
        r = httpx.get(url)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        img = Image.open(io.BytesIO(r.content))
        assert img.size == (256, 256)
    r = httpx.get(urls[0][:-1] + ("0" if urls[0][-1] != "0" else "1"))
    assert r.status_code == 403 and r.json()["error"]["code"] == "invalid_signature"
    # another server over the same bucket and secret serves the link (what Ray's ingress replicas do)
    twin = live_server(image_store=f"s3://{BUCKET}/api", s3_endpoint_url=s3_endpoint)
    r = httpx.get(twin.url + urls[1][len(srv.url):])
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (256, 256)


def test_api_presigned_urls(live_server, s3_endpoint):
    srv = live_server(image_store=f"s3://{BUCKET}/signed", s3_endpoint_url=s3_endpoint,
                      s3_presigned_urls=True)
    r = httpx.post(f"{srv.url}/v1/images/generations",
                   json={"model": "test-model", "prompt": "x", "response_format": "url", "output_format": "webp"})
    url = r.json()["data"][0]["url"]
    assert url.startswith(f"{s3_endpoint}/{BUCKET}/signed/img-")
    got = httpx.get(url)
    assert got.status_code == 200
    assert Image.open(io.BytesIO(got.content)).format == "WEBP"
