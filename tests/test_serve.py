"""twentyq serve (issue 19): the HTTP API, its dynamic batcher, limits, API key and graceful shutdown.

Two levels:

- the FastAPI app in-process (``TestClient``) over the fake encoder and the colour system: every
  endpoint, every error shape, the limits, the API key, the timeout, the 500 path, and the
  batcher itself (one model call for concurrent requests, each with its own budget);
- a real ``python -m engine.cli serve`` on a free 127.0.0.1 port over the tiny random CLIP:
  the endpoints, concurrent clients (threads) each getting its own images back under its own
  budget, and SIGTERM draining the requests in flight (all answered, exit 0).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="twentyq serve needs the serve extra: pip install -e '.[serve,test]'")
pytest.importorskip("uvicorn", reason="twentyq serve needs the serve extra: pip install -e '.[serve,test]'")
pytest.importorskip("multipart", reason="twentyq serve needs the serve extra: pip install -e '.[serve,test]'")
pytest.importorskip("fastapi_offline", reason="twentyq serve needs the serve extra: pip install -e '.[serve,test]'")
httpx = pytest.importorskip("httpx", reason="the serve tests need httpx: pip install -e '.[test]'")

from PIL import Image  # noqa: E402

from engine.core.results import Result  # noqa: E402
from engine.run.classifier import Classifier, RunConfig  # noqa: E402
from engine.serve.app import create_app  # noqa: E402
from engine.serve.batcher import Batcher  # noqa: E402
from engine.serve.settings import ServeSettings  # noqa: E402

from .support.data import COLOUR_SYSTEM, noise_image, png, solid  # noqa: E402
from .support.encoders import FakeEncoder, NanRowEncoder, SlowEncoder, tiny_model_dir  # noqa: E402
from .support.serving import COLOUR_2, RED, free_port, make_client, parts, start_server, stop_server  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ERROR_KEYS = {"code", "message", "field"}
def b64(img: Image.Image) -> str:
    return base64.b64encode(png(img)).decode()


@pytest.fixture(scope="module")
def client():
    with make_client(max_wait_ms=1) as c:
        yield c


def assert_error(r, status: int, code: str, field=None):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS, body
    assert body["error"]["code"] == code, body
    assert body["error"]["field"] == field, body
    msg = body["error"]["message"]
    assert msg and "\n" not in msg
    return msg


# --------------------------------------------------------------------------- endpoints (in-process)
def test_health_systems_models(client):
    h = client.get("/v1/health").json()
    assert h["status"] == "ok" and h["ready"] is True and h["model"] == "fake" and h["device"] == "cpu"
    assert h["systems"] == ["colours", "colours2"]
    s = client.get("/v1/systems").json()
    assert [x["name"] for x in s["systems"]] == ["colours", "colours2"]
    assert s["systems"][0]["default"] and not s["systems"][1]["default"]
    assert s["systems"][0]["classes"] == ["cherry", "leaf", "sea"] and "eig" in s["policies"]
    m = client.get("/v1/models").json()["models"]
    assert [x["model"] for x in m] == ["fake"] and m[0]["embed_dim"] == 8


def test_docs_work_offline(client):
    """Swagger UI and ReDoc load their assets from this server (the fastapi-offline package), no CDN."""
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        assert "cdn.jsdelivr" not in html and "googleapis" not in html
    html = client.get("/docs").text
    js = html.split('src="')[1].split('"')[0]
    assert js.startswith("/static-offline-docs/")
    assert client.get(js).status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"/v1/classify", "/v1/health", "/v1/systems", "/v1/models"} <= set(spec["paths"])
    body = spec["paths"]["/v1/classify"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)


def test_classify_multipart_records_are_result_to_dict(client):
    imgs = {"r.png": solid("red"), "g.png": solid("green"), "b.png": solid("blue")}
    r = client.post("/v1/classify?budget=5&tau=0.95", files=parts(*((n, png(i)) for n, i in imgs.items())))
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"model", "system", "stop_rule", "results", "timings"}
    assert body["model"] == "fake" and body["system"] == "colours"
    assert {"decode_ms", "queue_ms", "embed_ms", "classify_ms", "total_ms", "batch_images"} <= set(body["timings"])
    # exactly what the Python API (and `twentyq classify --json`) gives for the same images
    ref = Classifier(system=COLOUR_SYSTEM, encoder=FakeEncoder()).classify(list(imgs.values()), budget=5, tau=0.95)
    for rec, want, name in zip(body["results"], ref, imgs):
        want = {**want.to_dict(), "image": name}
        assert set(rec) == set(want)
        assert rec == json.loads(json.dumps(want))
    assert [x["label"] for x in body["results"]] == ["cherry", "leaf", "sea"]
    assert all(x["q_spent"] <= 5 for x in body["results"])


def test_classify_json_base64_and_second_system(client):
    data_url = "data:image/png;base64," + b64(solid("green"))
    wrapped = "\n".join(b64(solid("blue"))[i:i + 76] for i in range(0, len(b64(solid("blue"))), 76))
    r = client.post("/v1/classify", json={"images": [data_url, wrapped], "system": "colours2", "budget": 3,
                                          "policy": "eig", "scorer": "bayes", "top_k": 2, "delta": 0.0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["system"] == "colours2"
    assert [x["image"] for x in body["results"]] == ["images[0]", "images[1]"]
    assert [x["label"] for x in body["results"]] == ["leaf", "sea"]
    assert all(len(x["top"]) == 2 and x["q_spent"] <= 3 for x in body["results"])


def test_query_params_also_apply_to_json(client):
    r = client.post("/v1/classify?budget=0", json={"images": [b64(solid("red"))]})
    assert r.status_code == 200 and r.json()["results"][0]["q_spent"] == 0


# --------------------------------------------------------------------------- error shapes
TRUNCATED = png(noise_image(1, (64, 64)))[:200]


@pytest.mark.parametrize("url, kw, status, code, field", [
    ("/v1/classify?budget=abc", {"files": parts(("a.png", RED))}, 400, "invalid_parameter", "budget"),
    ("/v1/classify?budget=-1", {"files": parts(("a.png", RED))}, 400, "invalid_parameter", "budget"),
    ("/v1/classify?tau=1.5", {"files": parts(("a.png", RED))}, 400, "invalid_parameter", "tau"),
    ("/v1/classify?tau=nan", {"files": parts(("a.png", RED))}, 400, "invalid_parameter", "tau"),
    ("/v1/classify?delta=-2", {"files": parts(("a.png", RED))}, 400, "invalid_parameter", "delta"),
    ("/v1/classify?settle=1.5", {"files": parts(("a.png", RED))}, 400, "invalid_parameter", "settle"),
    ("/v1/classify?settle=0.9", {"files": parts(("a.png", RED))}, 400, "invalid_parameter", "settle"),
    ("/v1/classify?settle=auto", {"files": parts(("a.png", RED))}, 400, "invalid_parameter", "settle"),
    ("/v1/classify?settle=soon", {"files": parts(("a.png", RED))}, 400, "invalid_parameter", "settle"),
    ("/v1/classify?top_k=0", {"files": parts(("a.png", RED))}, 400, "invalid_parameter", "top_k"),
    ("/v1/classify?shortlist=1", {"files": parts(("a.png", RED))}, 400, "invalid_parameter", "shortlist"),
    ("/v1/classify?shortlist=3", {"files": parts(("a.png", RED))}, 400, "invalid_parameter", "shortlist"),
    ("/v1/classify?policy=psychic", {"files": parts(("a.png", RED))}, 400, "unknown_policy", "policy"),
    ("/v1/classify?policy=dev-order", {"files": parts(("a.png", RED))}, 400, "invalid_parameter", "policy"),
    ("/v1/classify?scorer=vibes", {"files": parts(("a.png", RED))}, 400, "invalid_parameter", "scorer"),
    ("/v1/classify?system=nope", {"files": parts(("a.png", RED))}, 400, "unknown_system", "system"),
    ("/v1/classify?budgett=3", {"files": parts(("a.png", RED))}, 400, "unknown_parameter", "budgett"),
    ("/v1/classify", {"files": parts(("a.png", b"not an image"))}, 400, "bad_image", "image[0]"),
    ("/v1/classify", {"files": parts(("t.png", TRUNCATED), ("u.png", b"junk"))}, 400, "bad_image", "image[0]"),
    ("/v1/classify", {"files": parts(("a.png", b""))}, 400, "bad_image", "image[0]"),
    ("/v1/classify", {"files": parts(("a.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"))},
     400, "bad_image", "image[0]"),
    ("/v1/classify", {"data": {"image": "/etc/passwd"}, "files": parts(("a.png", RED))}, 400, "bad_image", "image[0]"),
    ("/v1/classify", {"data": {"budget": "3"}, "files": parts(("a.png", RED))}, 400, "unknown_field", "budget"),
    ("/v1/classify", {"json": {"images": []}}, 400, "no_images", "image"),
    ("/v1/classify", {"json": {"images": ["%%%"]}}, 400, "bad_image", "images[0]"),
    ("/v1/classify", {"json": {"images": [123]}}, 400, "invalid_parameter", "images[0]"),
    ("/v1/classify", {"json": {"image": "x"}}, 400, "unknown_parameter", "image"),
    ("/v1/classify", {"json": {"budget": 3}}, 400, "missing_field", "images"),
    ("/v1/classify", {"json": {"images": [b64(solid("red"))], "budget": True}}, 400, "invalid_parameter", "budget"),
    ("/v1/classify", {"json": {"images": [b64(solid("red"))], "budget": 2.5}}, 400, "invalid_parameter", "budget"),
    ("/v1/classify", {"json": ["x"]}, 400, "bad_json", None),
    ("/v1/classify", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "bad_json",
     None),
    ("/v1/classify?budget=2", {"json": {"images": [b64(solid("red"))], "budget": 3}}, 400, "conflicting_parameter",
     "budget"),
    ("/v1/classify", {"content": RED, "headers": {"content-type": "image/png"}}, 415, "unsupported_media_type", None),
    ("/v1/classify", {}, 415, "unsupported_media_type", None),
])
def test_bad_requests_get_one_error_shape(client, url, kw, status, code, field):
    assert_error(client.post(url, **kw), status, code, field)


def test_unknown_route_and_method(client):
    assert_error(client.get("/v2/classify"), 404, "not_found")
    assert_error(client.get("/v1/classify"), 405, "method_not_allowed")


def test_no_server_side_paths(client):
    """A path string is never opened: JSON images are base64 bytes, multipart images are file bodies."""
    msg = assert_error(client.post("/v1/classify", json={"images": [str(REPO / "README.md")]}), 400, "bad_image",
                       "images[0]")
    assert "base64" in msg


# --------------------------------------------------------------------------- limits
def test_too_many_images():
    with make_client(max_images=2) as c:
        three = parts(*((f"{i}.png", RED) for i in range(3)))
        assert c.post("/v1/classify", files=three[:2]).status_code == 200
        assert_error(c.post("/v1/classify", files=three), 413, "too_many_images", "image")
        assert_error(c.post("/v1/classify", json={"images": [b64(solid("red"))] * 3}), 413, "too_many_images",
                     "images")


def test_body_size_limit_with_and_without_content_length():
    with make_client(max_bytes=4096) as c:
        big = png(noise_image(2, (80, 80)))  # ~19 kB of noise
        assert len(big) > 4096
        assert_error(c.post("/v1/classify", files=parts(("n.png", big))), 413, "body_too_large")

        def chunks():  # no Content-Length: counted while read
            for i in range(0, len(big), 1024):
                yield big[i:i + 1024]

        r = c.post("/v1/classify", content=chunks(), headers={"content-type": "application/json"})
        assert_error(r, 413, "body_too_large")
        assert c.post("/v1/classify", files=parts(("r.png", RED))).status_code == 200


def test_pixel_limit_refuses_before_decoding(monkeypatch):
    """The declared size is read from the header; an over-limit image is refused without decoding it."""
    import engine.encoders.images as images  # uploads decode by the rules of files: to_rgb decodes the pixels

    decoded = []
    monkeypatch.setattr(images, "to_rgb", lambda im: decoded.append(im) or im)
    with make_client(max_pixels=10_000) as c:
        big = png(Image.new("RGB", (200, 100), (1, 2, 3)))  # 20,000 px, tiny file
        msg = assert_error(c.post("/v1/classify", files=parts(("big.png", big))), 413, "image_too_large", "image[0]")
        assert "200x100" in msg and "--max-pixels" in msg
        assert decoded == []
    # a header claiming 60,000 x 60,000 with no pixel data: refused as too large, not as truncated
    bomb = png(Image.new("L", (1, 1)))
    ihdr = bomb.index(b"IHDR")
    import struct
    import zlib

    head = b"IHDR" + struct.pack(">II", 60_000, 60_000) + bomb[ihdr + 12:ihdr + 17]
    bomb = bomb[:ihdr] + head + struct.pack(">I", zlib.crc32(head)) + bomb[ihdr + 21:]
    with make_client() as c:
        assert_error(c.post("/v1/classify", files=parts(("bomb.png", bomb))), 413, "image_too_large", "image[0]")


def test_settings_are_checked():
    for kw in ({"max_batch": 0}, {"max_wait_ms": -1}, {"max_images": 0}, {"max_bytes": 10},
               {"max_pixels": 10**9}, {"timeout_s": 0}, {"systems": ()}, {"api_key": "two words"},
               {"max_decode_memory": 1000}, {"decode_wait_s": -1}, {"decode_wait_s": float("nan")},
               {"read_timeout_s": 0}):
        with pytest.raises(ValueError):
            ServeSettings(**kw)


@pytest.mark.slow  # over 1 s on an idle machine: out of the quick loop (-m 'not slow')
def test_timeout_answers_504_and_the_server_goes_on():
    with make_client(encoder=SlowEncoder(per_call_s=0.6), timeout_s=0.2, max_wait_ms=0) as c:
        assert_error(c.post("/v1/classify", files=parts(("r.png", RED))), 504, "timeout")
    with make_client(encoder=SlowEncoder(per_call_s=0.6), timeout_s=5, max_wait_ms=0) as c:
        assert c.post("/v1/classify", files=parts(("r.png", RED))).status_code == 200


def test_unexpected_error_is_a_logged_500(caplog, monkeypatch):
    # (an encoder failing on one image is that image's error, as in classify --json; a bug in the loop is not)
    def broken(*a, **k):
        raise RuntimeError("kaboom in the loop")

    with make_client() as c, caplog.at_level(logging.ERROR, logger="twentyq.serve"):
        monkeypatch.setattr("engine.run.classifier.classify", broken)  # the backend chooser the Classifier calls
        msg = assert_error(c.post("/v1/classify", files=parts(("r.png", RED))), 500, "internal")
        assert "kaboom" not in msg  # no internals in the answer
    rec = [r for r in caplog.records if r.name == "twentyq.serve"]
    assert rec and rec[0].exc_info and "kaboom" in str(rec[0].exc_info[1])


def test_api_key():
    with make_client(api_key="s3cret-key") as c:
        assert c.get("/v1/health").status_code == 200  # liveness needs no key
        r = c.post("/v1/classify", files=parts(("r.png", RED)))
        assert_error(r, 401, "missing_api_key", "Authorization")
        assert r.headers["www-authenticate"] == "Bearer"
        assert_error(c.get("/v1/systems", headers={"Authorization": "Bearer nope"}), 401, "bad_api_key",
                     "Authorization")
        assert_error(c.get("/v1/models", headers={"X-API-Key": "s3cret-ke"}), 401, "bad_api_key", "Authorization")
        assert c.get("/v1/systems", headers={"Authorization": "Bearer s3cret-key"}).status_code == 200
        assert c.post("/v1/classify", files=parts(("r.png", RED)),
                      headers={"X-API-Key": "s3cret-key"}).status_code == 200
        # a wrong credential is not made good by a right one beside it (schemathesis ST401)
        for auth in ("Bearer nope", "Basic czNjcmV0LWtleQ==", "s3cret-key"):
            assert_error(c.get("/v1/systems", headers={"Authorization": auth, "X-API-Key": "s3cret-key"}), 401,
                         "bad_api_key", "Authorization")


def test_with_a_key_only_health_and_the_page_are_open():
    """Issue 27: with a key, /openapi.json, /docs, /redoc, their assets and unknown paths need it; health
    says only its status and version (no model path); the page and its assets stay open."""
    key = {"X-API-Key": "s3cret-key"}
    with make_client(api_key="s3cret-key") as c:
        assert c.get("/v1/health").json() == {"status": "ok", "version": c.get("/v1/health").json()["version"]}
        for path in ("/", "/static/app.js", "/static/style.css"):
            assert c.get(path).status_code == 200, path
        docs_js = c.get("/docs", headers=key).text.split('src="')[1].split('"')[0]
        for path in ("/openapi.json", "/docs", "/redoc", docs_js, "/v1/systems", "/v1/models", "/v2/nothing"):
            assert_error(c.get(path), 401, "missing_api_key", "Authorization")
            assert c.get(path, headers=key).status_code in (200, 404), path
        spec = c.get("/openapi.json", headers=key).json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer KEY"}
    assert schemes["apiKeyHeader"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    for path, ops in spec["paths"].items():
        for op in ops.values():
            if path == "/v1/health":
                assert "security" not in op
            else:
                assert op["security"] == [{"bearerAuth": []}, {"apiKeyHeader": []}] and "401" in op["responses"]
    with make_client() as c:  # no key: no scheme declared, the full health answer
        assert "securitySchemes" not in c.get("/openapi.json").json().get("components", {})
        h = c.get("/v1/health").json()
        assert h["model"] == "fake" and h["decode_memory_limit"] > 0 and h["decode_memory_in_use"] == 0


def test_a_non_ascii_key_is_compared_as_utf8_bytes():
    """Issue 27: a UTF-8 key sent as UTF-8 bytes is accepted (it was 401: the header arrived as latin-1)."""
    key = "clé-ключ-鍵"
    with make_client(api_key=key) as c:
        assert c.get("/v1/systems", headers={b"x-api-key": key.encode("utf-8")}).status_code == 200
        assert c.get("/v1/systems", headers={b"authorization": b"Bearer " + key.encode("utf-8")}).status_code == 200
        assert_error(c.get("/v1/systems", headers={b"x-api-key": key.encode("latin-1", "replace")}), 401,
                     "bad_api_key", "Authorization")


def test_security_headers_and_the_pages_csp(client):
    page = client.get("/")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert client.get("/static/app.js").headers["content-security-policy"] == csp
    for path in ("/", "/v1/health", "/openapi.json", "/nope"):
        r = client.get(path)
        assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff", path


def test_multipart_schema_needs_one_image(client):
    spec = client.get("/openapi.json").json()
    image = spec["paths"]["/v1/classify"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert image["properties"]["image"]["minItems"] == 1


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"images": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
                                  b'{"images": ["x"], "budget": ' + b"9" * 5000 + b"}"])
def test_deeply_nested_or_huge_json_is_a_400(client, body):
    """Issue 27: a deeply nested body was a 500 and a logged RecursionError."""
    r = client.post("/v1/classify", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] in ("bad_json", "invalid_parameter")


def test_api_key_file(tmp_path):
    from engine.serve.settings import read_api_key

    (tmp_path / "k").write_text("  abc123\n")
    assert read_api_key(str(tmp_path / "k")) == "abc123"
    (tmp_path / "e").write_text("\n")
    for p in ("e", "missing"):
        with pytest.raises(ValueError, match="--api-key-file"):
            read_api_key(str(tmp_path / p))


# --------------------------------------------------------------------------- the batcher
def _batcher_run(max_batch: int, jobs: list[tuple[list, str, RunConfig]], max_wait_s: float = 0.3):
    enc = FakeEncoder()
    clfs = {name: Classifier(system=s, encoder=enc) for name, s in (("colours", COLOUR_SYSTEM),
                                                                     ("colours2", COLOUR_2))}
    b = Batcher(clfs, max_batch=max_batch, max_wait_s=max_wait_s)

    async def main():
        return await asyncio.gather(*(b.submit(ims, s, cfg) for ims, s, cfg in jobs))

    try:
        answers = asyncio.run(main())
    finally:
        b.close(5)
    return enc, b, answers, clfs


def test_batcher_one_model_call_for_concurrent_requests_each_with_its_own_budget():
    colours = ["red", "green", "blue"]
    jobs = [([solid(colours[(k + i) % 3]) for i in range(1 + k % 2)], "colours2" if k % 3 == 0 else "colours",
             RunConfig(budget=k, tau=0.99)) for k in range(6)]
    enc, b, answers, clfs = _batcher_run(32, jobs)
    assert enc.image_calls == 1 and b.batches_run == 1 and b.batch_sizes == [9]
    for (ims, system, cfg), ans in zip(jobs, answers):
        assert ans.timings["batch_requests"] == 6 and ans.timings["batch_images"] == 9
        want = Classifier(system=clfs[system].system, encoder=FakeEncoder()).classify(ims, budget=cfg.budget,
                                                                                   tau=0.99)
        got = [r.to_dict() for r in ans.results]
        assert [{**w.to_dict(), "image": None} for w in want] == got
        assert all(r.q_spent <= cfg.budget for r in ans.results)


def test_batcher_off_and_oversize_requests():
    jobs = [([solid("red")] * n, "colours", RunConfig()) for n in (1, 3, 1)]
    enc, b, answers, _ = _batcher_run(1, jobs)  # batching off: one model call per request
    assert enc.image_calls == 3 and sorted(b.batch_sizes) == [1, 1, 3]
    enc, b, answers, _ = _batcher_run(2, jobs)  # the 3-image request runs alone, the others may pair
    assert 3 in b.batch_sizes and max(b.batch_sizes) == 3 and sum(b.batch_sizes) == 5
    assert [len(a.results) for a in answers] == [1, 3, 1]


def test_a_failing_settings_group_fails_its_own_requests_only():
    """One request whose settings break the classify call (a bug or a value that slipped through) used to fail
    every request of its model batch with a 500; now only its own group's."""
    enc = FakeEncoder()
    clfs = {"colours": Classifier(system=COLOUR_SYSTEM, encoder=enc), "colours2": Classifier(system=COLOUR_2, encoder=enc)}

    def broken(*a, **k):
        raise OverflowError("int too large to convert to float")

    clfs["colours2"].classify_embedded = broken
    b = Batcher(clfs, max_batch=32, max_wait_s=0.3)

    async def main():
        return await asyncio.gather(*(b.submit([solid("red")], s, RunConfig()) for s in
                                      ("colours", "colours2", "colours", "colours2")), return_exceptions=True)

    try:
        answers = asyncio.run(main())
    finally:
        b.close(5)
    assert b.batches_run == 1 and enc.image_calls == 1
    assert [type(a).__name__ for a in answers] == ["Answer", "OverflowError", "Answer", "OverflowError"]
    assert [a.results[0].label for a in answers[::2]] == ["cherry", "cherry"]


def test_a_budget_past_any_q_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"budget == 9999.*\.\.\., must be a whole number from 0 to 1,000,000,000"):
        RunConfig(budget=int("9" * 400))
    assert RunConfig(budget=10**9).budget == 10**9


def test_batcher_reports_nonfinite_embeddings_per_image():
    enc = NanRowEncoder(row=1)
    b = Batcher({"colours": Classifier(system=COLOUR_SYSTEM, encoder=enc)}, max_batch=8, max_wait_s=0)
    try:
        ans = asyncio.run(b.submit([solid("red"), solid("green"), solid("blue")], "colours", RunConfig()))
    finally:
        b.close(5)
    assert [r.label for r in ans.results] == ["cherry", None, "sea"]
    assert ans.results[1].error and isinstance(ans.results[1], Result)


# --------------------------------------------------------------------------- the CLI in-process
def test_serve_flags_errors_are_one_line_exit_2(capsys):
    from engine.cli.app import main

    assert main(["serve", "--max-batch", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("twentyq: error: --max-batch == 0") and "\n" not in err
    assert main(["serve", "--api-key-file", "/nonexistent/key"]) == 2
    assert "--api-key-file" in capsys.readouterr().err
    for flag, value in (("--max-decode-memory", "1000"), ("--read-timeout-s", "0"), ("--decode-wait-s", "-1")):
        assert main(["serve", flag, value]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"twentyq: error: {flag} == ") and "\n" not in err
    # a calibration is read before the model loads: a wrong one costs a second, not a model load
    assert main(["serve", "--calibration", "/nonexistent/cal.json", "--port", str(free_port())]) == 2
    err = capsys.readouterr().err.strip()
    assert "calibration '/nonexistent/cal.json': no such file" in err and "\n" not in err
    assert main(["serve", "--calibration", "pokemon15_gen1.sprites", "--port", str(free_port())]) == 2
    err = capsys.readouterr().err.strip()
    assert "made for system 'pokemon15_gen1', which this server does not serve" in err and "\n" not in err
    assert main(["serve", "--calibration", "-", "--port", str(free_port())]) == 2
    assert "does not read a calibration from standard input" in capsys.readouterr().err


def test_serve_port_in_use_is_exit_2(capsys):
    from engine.cli.app import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code = main(["serve", "--model", "/nonexistent/model", "--port", str(port)])  # refused before loading
    assert code == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err and "\n" not in err.strip()


# --------------------------------------------------------------------------- a real server (subprocess)
@pytest.fixture(scope="module")
def live():
    proc, url = start_server("--system", "pokemon15", "--system", "flowers17", "--max-wait-ms", "150",
                              "--max-batch", "64")
    yield url
    code, err = stop_server(proc)
    assert code == 0, err


@pytest.mark.slow
def test_live_endpoints(live):
    h = httpx.get(f"{live}/v1/health").json()
    assert h["ready"] and h["device"] == "cpu" and h["systems"] == ["pokemon15", "flowers17"]
    assert "tiny-clip" in h["model"]
    assert [s["name"] for s in httpx.get(f"{live}/v1/systems").json()["systems"]] == ["pokemon15", "flowers17"]
    assert httpx.get(f"{live}/v1/models").json()["models"][0]["embed_dim"] > 0
    assert httpx.get(f"{live}/docs").status_code == 200
    r = httpx.post(f"{live}/v1/classify", params={"budget": 20},
                   files=parts(("a.png", png(noise_image(3))), ("b.jpg", png(noise_image(4), "JPEG"))))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["system"] == "pokemon15" and "tiny-clip" in body["model"]
    assert [x["image"] for x in body["results"]] == ["a.png", "b.jpg"]
    assert all(x["error"] is None and x["q_spent"] <= 20 for x in body["results"])
    r = httpx.post(f"{live}/v1/classify", json={"images": [b64(noise_image(5))], "system": "flowers17", "budget": 4})
    assert r.status_code == 200 and r.json()["system"] == "flowers17"
    assert_error(httpx.post(f"{live}/v1/classify", params={"system": "pokemon16"}, files=parts(("a.png", RED))),
                 400, "unknown_system", "system")


@pytest.mark.slow
def test_live_concurrent_clients_get_their_own_answers(live):
    """8 threads at once, each with its own images, system and budget: each answer is that caller's."""
    from engine.encoders import load_encoder

    n = 8
    barrier = threading.Barrier(n)
    answers: list = [None] * n

    def caller(k: int):
        names = [f"c{k}_{i}.png" for i in range(2)]
        files = parts(*((nm, png(noise_image(100 + 2 * k + i))) for i, nm in enumerate(names)))
        params = {"budget": 2 * k, "system": "flowers17" if k % 2 else "pokemon15", "tau": 0.99}
        barrier.wait(timeout=10)
        answers[k] = (names, params, httpx.post(f"{live}/v1/classify", params=params, files=files, timeout=30))

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(a is not None for a in answers), "a request was lost"
    enc = load_encoder(str(tiny_model_dir("clip")), device="cpu")
    local = {s: Classifier(system=s, encoder=enc) for s in ("pokemon15", "flowers17")}
    biggest = 0
    for k, (names, params, r) in enumerate(answers):
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["system"] == params["system"]
        assert [x["image"] for x in body["results"]] == names
        want = local[params["system"]].classify([noise_image(100 + 2 * k + i) for i in range(2)],
                                                budget=params["budget"], tau=0.99)
        for rec, w in zip(body["results"], want):
            assert rec["q_spent"] <= params["budget"]
            assert rec["label"] == w.label and rec["q_spent"] == w.q_spent
            assert [s["group"] for s in rec["asked"]] == [s.group for s in w.steps]
            assert rec["confidence"] == pytest.approx(w.confidence, abs=1e-4)
        biggest = max(biggest, body["timings"]["batch_requests"])
    assert biggest > 1, "no two concurrent requests were batched together"


@pytest.mark.slow  # a server of its own (~8 s to start on 2 shared cores) and a 1 s batch wait
def test_live_sigterm_drains_in_flight_requests():
    """SIGTERM while requests wait in the batcher: every one is answered, then the server exits 0."""
    proc, url = start_server("--max-wait-ms", "1000", "--max-batch", "64")
    n = 4
    results: list = [None] * n

    def caller(k):
        try:
            results[k] = httpx.post(f"{url}/v1/classify", params={"budget": k}, timeout=30,
                                    files=parts((f"s{k}.png", png(noise_image(200 + k)))))
        except Exception as e:  # noqa: BLE001
            results[k] = e

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(n)]
    try:
        for t in threads:
            t.start()
        for _ in range(100):  # until all four wait in the batcher (up to 10 s)
            if httpx.get(f"{url}/v1/health", timeout=2).json()["pending_requests"] == n:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the requests never reached the batcher")
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(timeout=30)
        code, err = stop_server(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, err
    assert "stopped by SIGTERM" in err
    for k, r in enumerate(results):
        assert isinstance(r, httpx.Response) and r.status_code == 200, r
        rec = r.json()["results"][0]
        assert rec["image"] == f"s{k}.png" and rec["q_spent"] <= k
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/v1/health", timeout=2)


@pytest.mark.slow  # two tiny-CLIP servers, a few requests each
def test_bench_serve_smoke(tmp_path):
    from bench import serve as bench_serve

    out = tmp_path / "serve.json"
    assert bench_serve.main(["--models", "tiny-clip", "--requests", "6", "--clients", "3", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["batching"] for r in rows] == [True, False]
    assert all(r["ok"] == 6 and r["failed"] == r["lost"] == 0 and r["exit_code_after_sigterm"] == 0 for r in rows)
    assert rows[1]["mean_batch_images"] == 1.0


# --------------------------------------------------------------------------- issue 27: hostile uploads
def _png_header_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height (no pixel data for it)."""
    import struct
    import zlib

    small = png(Image.new("L", (1, 1)))
    ihdr = small.index(b"IHDR")
    head = b"IHDR" + struct.pack(">II", width, height) + small[ihdr + 12:ihdr + 17]
    return small[:ihdr] + head + struct.pack(">I", zlib.crc32(head)) + small[ihdr + 21:]


def test_one_bad_image_is_that_images_error_not_the_requests(client):
    """As in `twentyq classify`: a bad image is its own record's error; the others are classified (200).
    Only when every image is bad is the answer the first one's error."""
    files = parts(("r.png", RED), ("t.png", TRUNCATED), ("x.png", b"not an image"),
                  ("huge.png", _png_header_claiming(30_000, 30_000)), ("b.png", png(solid("blue"))))
    r = client.post("/v1/classify", files=files)
    assert r.status_code == 200, r.text
    recs = r.json()["results"]
    assert [x["image"] for x in recs] == ["r.png", "t.png", "x.png", "huge.png", "b.png"]
    assert [x["label"] for x in recs] == ["cherry", None, None, None, "sea"]
    assert recs[0]["error"] is None and recs[4]["error"] is None
    assert "image[1]" in recs[1]["error"] and "truncated" in recs[1]["error"]
    assert "image[2]" in recs[2]["error"] and "not an image" in recs[2]["error"]
    assert "40,000,000 (--max-pixels)" in recs[3]["error"]
    r = client.post("/v1/classify", json={"images": ["%%%", b64(solid("green"))]})
    assert r.status_code == 200 and [x["label"] for x in r.json()["results"]] == [None, "leaf"]
    assert_error(client.post("/v1/classify", files=parts(("h.png", _png_header_claiming(30_000, 30_000)),
                                                         ("t.png", TRUNCATED))), 413, "image_too_large", "image[0]")


@pytest.mark.parametrize("side", [30_000, 100_000])
def test_the_pixel_limit_quoted_is_the_servers_own(client, side):
    """Issue 27: 30000² and 100000² headers got a 413 quoting Pillow's 200,000,000-pixel guard."""
    msg = assert_error(client.post("/v1/classify", files=parts(("h.png", _png_header_claiming(side, side)))),
                       413, "image_too_large", "image[0]")
    assert f"{side * side:,} pixels" in msg and "40,000,000 (--max-pixels)" in msg and "200,000,000" not in msg


def test_memory_budget_is_first_come_first_served_and_times_out():
    from engine.serve.memory import BudgetTimeout, MemoryBudget

    async def main():
        b = MemoryBudget(100)
        assert await b.acquire(60, 1) == 60
        order = []

        async def taker(name, n, timeout=5.0):
            got = await b.acquire(n, timeout)
            order.append(name)
            return got

        big = asyncio.ensure_future(taker("big", 80))
        await asyncio.sleep(0.01)
        small = asyncio.ensure_future(taker("small", 10))  # would fit now, but waits behind "big"
        await asyncio.sleep(0.05)
        assert order == [] and b.waiting == 2
        b.release(60)
        assert await big == 80 and await small == 10 and order == ["big", "small"]
        with pytest.raises(BudgetTimeout) as e:
            await b.acquire(50, 0.05)
        assert e.value.retry_after_s == 1 and b.refused == 1 and b.waiting == 0
        b.release(90)
        assert b.used == 0 and await b.acquire(10**9, 0) == 100  # more than the whole budget: all of it, alone
        b.release(100)
        # a waiter cancelled (its request timed out) gives its place up and lets the next one in
        held = await b.acquire(100, 0)
        cancelled = asyncio.ensure_future(b.acquire(100, 5))
        later = asyncio.ensure_future(b.acquire(1, 5))
        await asyncio.sleep(0.01)
        cancelled.cancel()
        b.release(held)
        assert await later == 1 and b.used == 1 and b.peak == 100
        with pytest.raises(RuntimeError):
            b.release(2)

    asyncio.run(main())


def test_request_cost_is_every_kept_image_plus_the_largest_decode():
    from engine.serve.memory import decode_cost, kept_cost, request_cost

    assert kept_cost(6000, 6000) == 2048 * 2048 * 4 and kept_cost(100, 50) == 100 * 50 * 4
    # decoded (4 bytes a pixel in Pillow) + the EXIF copy + buffers, the resize's intermediate, the kept copy
    assert decode_cost(6000, 6000, "RGB") == 6000 * 6000 * 9 + 2048 * 6000 * 4 + kept_cost(6000, 6000)
    assert decode_cost(100, 100, "RGB") == 100 * 100 * 9 + kept_cost(100, 100)  # small: no resize
    assert decode_cost(100, 100, "RGBA") > decode_cost(100, 100, "RGB") > decode_cost(100, 100, "L")
    assert decode_cost(100, 100, "P", True) > decode_cost(100, 100, "P")
    heads = [(6000, 6000, "RGB", False), (100, 100, "RGBA", False)]
    assert request_cost(heads) == kept_cost(100, 100) + decode_cost(6000, 6000, "RGB")
    assert request_cost([]) == 0


@pytest.mark.slow  # over 1 s on an idle machine: out of the quick loop (-m 'not slow')
def test_no_decode_memory_within_the_wait_is_a_503_with_retry_after_then_recovery():
    """A small budget (1 MiB): while one request holds it (its images wait for a slow model), another waits
    ``decode_wait_s`` and gets 503 + Retry-After; valid images are never a 400; afterwards requests pass."""
    big = png(solid("red").resize((600, 600)))  # kept 600²x4 = 1.4 MB: the whole 1 MiB budget
    with make_client(encoder=SlowEncoder(per_call_s=0.5), max_decode_memory=1024 * 1024, decode_wait_s=0.2, max_wait_ms=0) as c:
        first: list = []
        t = threading.Thread(target=lambda: first.append(c.post("/v1/classify", files=parts(("a.png", big)))))
        t.start()
        for _ in range(100):
            if c.app.state.decode_budget.used:
                break
            time.sleep(0.01)
        r = c.post("/v1/classify", files=parts(("b.png", RED)))
        msg = assert_error(r, 503, "busy")
        assert r.headers["retry-after"] == "1" and "--max-decode-memory" in msg and "--decode-wait-s" in msg
        t.join(30)
        assert first[0].status_code == 200 and first[0].json()["results"][0]["label"] == "cherry"
        assert c.app.state.decode_budget.used == 0
        r = c.post("/v1/classify", files=parts(("c.png", RED)))
        assert r.status_code == 200 and r.json()["results"][0]["error"] is None


@pytest.mark.slow  # over 1 s on an idle machine: out of the quick loop (-m 'not slow')
def test_a_timed_out_request_stops_decoding_and_gives_its_memory_back(monkeypatch):
    """Issue 27: requests answered 504 went on decoding. Now the images after the timeout are not
    decoded, and the memory is given back once the image being decoded is done."""
    import engine.serve.app as app_module

    real, decoded = app_module.decode_image, []

    def slow_decode(data, field, max_pixels):
        time.sleep(0.3)
        decoded.append(field)
        return real(data, field, max_pixels)

    monkeypatch.setattr(app_module, "decode_image", slow_decode)
    with make_client(timeout_s=0.45) as c:
        files = parts(*((f"{i}.png", RED) for i in range(6)))
        assert_error(c.post("/v1/classify", files=files), 504, "timeout")
        time.sleep(1.0)
        assert len(decoded) <= 2, decoded  # the 3rd..6th images were never decoded
        assert c.app.state.decode_budget.used == 0


# --------------------------------------------------------------------------- issue 27: over a real socket
class _ThreadServer:
    """The app over uvicorn with the protocol and read limits ``twentyq serve`` uses, in a thread, on a
    free 127.0.0.1 port (the fake encoder: starts in well under a second)."""

    def __init__(self, **settings):
        import uvicorn

        from engine.serve.connections import uvicorn_options

        enc = FakeEncoder()
        clf = Classifier(system=COLOUR_SYSTEM, encoder=enc)
        s = ServeSettings(systems=(clf.system.name,), **settings)
        self.port = free_port()
        config = uvicorn.Config(create_app(s, {clf.system.name: clf}), host="127.0.0.1", port=self.port,
                                log_level="warning", lifespan="on", **uvicorn_options(s.read_timeout_s))
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                return self
            time.sleep(0.02)
        raise AssertionError("the in-thread server did not start")

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the server closes ``sock`` within ``seconds``, and what it sent before."""
    sock.settimeout(seconds)
    got = b""
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return True, got
            got += chunk
    except socket.timeout:
        return False, got
    except ConnectionResetError:
        return True, got


@pytest.mark.slow  # over 1 s on an idle machine: out of the quick loop (-m 'not slow')
def test_half_sent_headers_and_bodies_are_dropped():
    """Issue 27: half-sent headers and bodies were never timed out. Headers must be complete, and then the
    body, within --read-timeout-s; a normal request on the same server still works."""
    with _ThreadServer(read_timeout_s=0.4) as srv:
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", srv.port)) as s:  # nothing at all
            closed, _ = _closed_within(s, 5)
        assert closed and time.monotonic() - t0 < 3
        with socket.create_connection(("127.0.0.1", srv.port)) as s:  # a header line, then silence
            s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            closed, got = _closed_within(s, 5)
        assert closed and got == b""
        with socket.create_connection(("127.0.0.1", srv.port)) as s:  # headers, half the body
            s.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{\"images\": [")
            closed, got = _closed_within(s, 5)
        assert closed and got.startswith(b"HTTP/1.1 408") and b"--read-timeout-s" in got
        r = httpx.post(f"{srv.url}/v1/classify", files=parts(("r.png", RED)), timeout=10)
        assert r.status_code == 200 and r.json()["results"][0]["label"] == "cherry"


def test_a_utf8_api_key_works_end_to_end():
    """Issue 27: a non-ASCII key was accepted at start-up, then every client sending it (as UTF-8) got 401."""
    key = "clé-ключ"
    with _ThreadServer(api_key=key) as srv:
        ok = httpx.get(f"{srv.url}/v1/systems", headers={b"authorization": b"Bearer " + key.encode()}, timeout=10)
        assert ok.status_code == 200
        assert httpx.get(f"{srv.url}/v1/systems", headers={b"x-api-key": key.encode()}, timeout=10).status_code == 200
        bad = httpx.get(f"{srv.url}/v1/systems", headers={b"x-api-key": "cle-ключ".encode()}, timeout=10)
        assert bad.status_code == 401 and bad.json()["error"]["code"] == "bad_api_key"
        assert httpx.get(f"{srv.url}/v1/health", timeout=10).json().keys() == {"status", "version"}


_MEASURE = """
import io, sys, numpy as np
from PIL import Image, ImageFile
ImageFile.MAXBLOCK = 1 << 27  # a progressive JPEG of noise is written in one block
from engine.serve.memory import decode_cost
from engine.serve.uploads import decode_image, read_header

def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))

rng, side = np.random.default_rng(0), 2500
noise = lambda *shape: rng.integers(0, 256, shape, dtype=np.uint8)
cases = {"RGB png": (Image.fromarray(noise(side, side, 3)), "PNG", {}),
         "RGBA png": (Image.fromarray(noise(side, side, 4)), "PNG", {}),
         "P+transparency png": (Image.fromarray(noise(side, side)).convert("P"), "PNG", {"transparency": 0}),
         "I;16 png": (Image.fromarray(rng.integers(0, 65535, (side, side), dtype=np.uint16)), "PNG", {}),
         "CMYK jpeg": (Image.fromarray(noise(side, side, 3)).convert("CMYK"), "JPEG", {}),
         "RGB webp": (Image.fromarray(noise(side, side, 3)), "WEBP", {"quality": 80}),
         "RGBA webp": (Image.fromarray(noise(side, side, 4)), "WEBP", {"quality": 80}),
         "progressive 4:4:4 jpeg": (Image.fromarray(noise(side, side, 3)), "JPEG",
                                    {"progressive": True, "subsampling": 0, "quality": 95})}
for name, (im, fmt, kw) in cases.items():
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    data = buf.getvalue()
    del im, buf
    estimate = decode_cost(*read_header(data, "x", 10**9).cost)
    open("/proc/self/clear_refs", "w").write("5")  # resets the peak (VmHWM) to the current RSS
    before = status("VmRSS")
    img = decode_image(data, "x", 10**9)
    print(name, status("VmHWM") - before, estimate, flush=True)
    del img
"""


@pytest.mark.slow  # decodes eight 6-megapixel images in a fresh process (~5 s)
def test_decode_cost_estimates_cover_the_measured_peak():
    """The budget is only as good as the estimate: for each kind of image, the memory a decode really
    took (the process's peak RSS, reset just before) is at most what memory.decode_cost reserved."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak RSS")
    out = subprocess.run([sys.executable, "-c", _MEASURE], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    rows = [line.rsplit(" ", 2) for line in out.stdout.strip().splitlines()]
    assert len(rows) == 8
    for name, measured, estimate in rows:
        assert int(measured) <= int(estimate), f"{name}: measured {int(measured):,} B > estimated {int(estimate):,} B"
        assert int(measured) > int(estimate) / 4, f"{name}: the estimate is far too high ({estimate} vs {measured})"


def test_a_setting_the_calibration_cannot_serve_is_a_400_before_any_work(monkeypatch):
    """A few-shot calibration needs the bayes scorer and no shortlist (Classifier.check_calibrated): the
    server answers 400 naming the field before the request reaches a batch (where it failed the whole
    batch with a 500), and a valid request still goes through."""
    from engine.run.calibration_file import CalibrationError
    from engine.run.classifier import Classifier

    def few_shot_only_bayes(self, config):
        if config.scorer != "bayes":
            raise CalibrationError("calibration x is few-shot: its posterior needs the bayes scorer")

    monkeypatch.setattr(Classifier, "check_calibrated", few_shot_only_bayes)
    with make_client(max_wait_ms=1) as c:
        msg = assert_error(c.post("/v1/classify?scorer=sum", files=parts(("a.png", RED))), 400, "invalid_parameter",
                           "scorer")
        assert "few-shot" in msg
        assert c.post("/v1/classify", files=parts(("a.png", RED))).status_code == 200


# --------------------------------------------------------------------------- twentyq serve --calibration
@pytest.fixture(scope="module")
def lda_world(tmp_path_factory):
    """A 4-class system whose images' similarities come from a true LDA model (SimEncoder: each noise PNG answers
    its row), its Gaussian and LR few-shot calibrations fitted on the even images, saved with the system."""
    import numpy as np

    from engine.run.calibration_file import fit_calibration, save_calibration
    from systems.io import save_system

    from .strategies import make_system
    from .support.encoders import SimEncoder
    from .test_gaussian_posterior import lda_data

    d = tmp_path_factory.mktemp("lda_world")
    sims, truth, sizes, C = lda_data(5, 30)
    sims = sims / np.linalg.norm(sims, axis=1, keepdims=True)  # what the engine sees: cosines of unit rows
    rules = [tuple(frozenset([(k + j) % int(s)]) for j, s in enumerate(sizes)) for k in range(C)]
    system = make_system(rules, sizes, name="lda")
    images = [noise_image(5000 + i, size=(6, 5)) for i in range(len(truth))]
    enc = SimEncoder(system, {SimEncoder.key(im): row for im, row in zip(images, sims)})
    dev = np.arange(len(truth)) % 2 == 0
    kw = dict(lam0=100.0, eps=0.05, model="sim", model_id=enc.model_id, policies=["fixed"])
    cals = {"gaussian": fit_calibration(sims[dev], truth[dev], system, posterior="gaussian", setting="few-shot", **kw),
            "lr": fit_calibration(sims[dev], truth[dev], system, posterior="lr", setting="few-shot", auto=False, **kw),
            "zero-shot": fit_calibration(sims[dev], truth[dev], system, setting="zero-shot", auto=False, **kw)}
    files = {p: save_calibration(c, d / f"{p}.json").path for p, c in cals.items()}
    return {"system": system, "system_file": str(save_system(system, d / "lda.json")), "encoder": enc,
            "test_images": [im for im, x in zip(images, dev) if not x], "files": files,
            "cals": {p: load_calibration_file(f) for p, f in files.items()}}


def load_calibration_file(path):
    from engine.run.calibration_file import load_calibration

    return load_calibration(path)


def test_each_calibration_goes_to_the_served_system_it_was_made_for(lda_world, monkeypatch, capsys):
    from engine.cli.app import main
    from engine.run.config import EncoderSpec
    from engine.serve.app import calibrations_by_system, load_classifiers

    from .support.encoders import SimEncoder

    g, lr = lda_world["files"]["gaussian"], lda_world["files"]["lr"]
    assert set(calibrations_by_system((g,), ["colours", "lda"])) == {"lda"}
    assert calibrations_by_system((), ["lda"]) == {}
    with pytest.raises(ValueError, match=r"made for system 'lda', which this server does not serve .*add --system lda"):
        calibrations_by_system((g,), ["colours"])
    with pytest.raises(ValueError, match="two calibrations for system 'lda'"):
        calibrations_by_system((g, lr), ["lda"])
    with pytest.raises(ValueError, match="no such file, nor a calibration shipped"):
        calibrations_by_system(("/nonexistent/cal.json",), ["lda"])
    with pytest.raises(ValueError, match="--calibration"):
        ServeSettings(systems=("lda",), calibrations=(" ",))
    # load_classifiers hands each served system its own calibration (checked against the model), the others none
    monkeypatch.setattr(EncoderSpec, "load", lambda self: lda_world["encoder"])
    settings = ServeSettings(encoder=EncoderSpec(model="sim"), systems=(lda_world["system_file"], "pokemon15"),
                             calibrations=(g,))
    clfs = load_classifiers(settings, warm=False)
    assert clfs["lda"].calibration.sha256 == lda_world["cals"]["gaussian"].sha256
    assert clfs["pokemon15"].calibration is None
    # every --calibration given reaches the server's settings (two for one system: refused before the model loads)
    assert main(["serve", "--system", lda_world["system_file"], "--calibration", g, "--calibration", lr,
                 "--port", str(free_port())]) == 2
    assert "two calibrations for system 'lda'" in capsys.readouterr().err
    other = SimEncoder(lda_world["system"], lda_world["encoder"].rows, model_id="other@2")
    monkeypatch.setattr(EncoderSpec, "load", lambda self: other)
    with pytest.raises(ValueError, match="was fitted for model 'sim'"):
        load_classifiers(settings, warm=False)


def test_a_served_calibration_answers_as_the_classifier_does_with_settle_and_target_accuracy(lda_world):
    from fastapi.testclient import TestClient

    from engine.run.config import EncoderSpec

    from .strategies import make_system

    enc, system = lda_world["encoder"], lda_world["system"]

    def app(cal):  # a system's name is part of what a calibration checks: one app per calibration
        clfs = {"lda": Classifier(EncoderSpec(model="sim"), system, encoder=enc, calibration=cal),
                "colours": Classifier(system=COLOUR_SYSTEM, encoder=enc)}
        return clfs, TestClient(create_app(ServeSettings(systems=tuple(clfs)), clfs), raise_server_exceptions=False)

    imgs = lda_world["test_images"][:12]
    body = {"images": [b64(im) for im in imgs]}
    clfs, client = app(lda_world["cals"]["gaussian"])
    cal = lda_world["cals"]["gaussian"]
    with client as c:
        info = {s["name"]: s["calibration"] for s in c.get("/v1/systems").json()["systems"]}
        assert info["colours"] is None
        assert cal.auto["choice"]
        assert info["lda"] == {"name": "gaussian.json", "sha256": cal.sha256[:12], "setting": "few-shot",
                               "posterior": "gaussian", "auto_policy": cal.auto["choice"]}
        stops = set()
        for kw in ({"settle": "auto", "policy": "fixed", "tau": 1.0}, {"settle": 0.6, "policy": "fixed"},
                   {"target_accuracy": 0.8, "policy": "fixed"}):
            r = c.post("/v1/classify", json={**body, **kw, "system": "lda"})
            assert r.status_code == 200, r.text
            want = clfs["lda"].classify(imgs, RunConfig(**kw))
            got = r.json()["results"]
            assert [(x["label"], x["stop"], x["q_spent"]) for x in got] == [(w.label, w.stop, w.q_spent) for w in want]
            stops |= {x["stop"] for x in got}
        assert "settled" in stops
        # what each request ran with: the choices the calibration made on its dev images
        rule = c.post("/v1/classify", json={**body, "system": "lda", "policy": "auto", "settle": "auto"}).json()
        assert rule["stop_rule"] == {"policy": f"auto ({cal.auto['choice']})", "tau": 0.9, "delta": 0.0,
                                     "budget": None, "target": None,
                                     "settle": cal.settle_for("auto", None, system, 0.9).threshold}
        far = c.post("/v1/classify", json={**body, "system": "lda", "target_accuracy": 0.999, "policy": "fixed",
                                           "budget": 5}).json()
        assert far["stop_rule"]["target"] == {"target_accuracy": 0.999, "tau": 1.0, "reached": False}
        assert far["stop_rule"]["tau"] == 1.0 and far["stop_rule"]["budget"] == 5 and far["stop_rule"]["settle"] is None
        near = c.post("/v1/classify", json={**body, "system": "lda", "target_accuracy": 0.5, "policy": "fixed"}).json()
        want = cal.tau_for("fixed", 0.5, None, system=system)
        assert near["stop_rule"]["target"] == {"target_accuracy": 0.5, "tau": want.tau, "reached": True}
        # what the dev paths cannot describe is a 400 naming the field, before any work; the file by its name only
        for kw, field in (({"settle": "auto", "delta": 0.1}, "settle"), ({"target_accuracy": 1.5}, "target_accuracy"),
                          ({"target_accuracy": "nan"}, "target_accuracy"),
                          ({"target_accuracy": 0.8, "settle": 0.9}, "target_accuracy"), ({"scorer": "sum"}, "scorer")):
            msg = assert_error(c.post("/v1/classify", json={**body, **kw, "system": "lda"}), 400, "invalid_parameter",
                               field)
            assert str(Path(lda_world["files"]["gaussian"]).parent) not in msg
            # in the client's words: request fields, not the command line's flags
            assert not any(f"--{f.replace('_', '-')}" in msg for f in ("settle", "delta", "target_accuracy", "scorer",
                                                                        "shortlist", "policy")), msg
        msg = assert_error(c.post("/v1/classify", json={**body, "settle": "auto", "delta": 0.1, "system": "lda"}), 400,
                           "invalid_parameter", "settle")
        assert "drop delta, or pass a number to settle" in msg, msg
        assert "'gaussian.json'" in assert_error(c.post("/v1/classify", json={**body, "scorer": "sum", "system": "lda"}),
                                                 400, "invalid_parameter", "scorer")
        assert_error(c.post("/v1/classify", json={**body, "target_accuracy": 0.8, "system": "colours"}), 400,
                     "invalid_parameter", "target_accuracy")
    _, client = app(lda_world["cals"]["lr"])
    with client as c:
        assert c.get("/v1/systems").json()["systems"][0]["calibration"]["posterior"] == "lr"
        msg = assert_error(c.post("/v1/classify", json={**body, "settle": 0.9, "system": "lda"}), 400,
                           "invalid_parameter", "settle")
        assert "Gaussian few-shot calibration" in msg
    # a zero-shot calibration moved to a system with other classes (the same questions): only λ_g and the
    # confusions move; a target accuracy and auto, chosen on the old classes, are 400s naming their field
    moved = make_system(list(system.rules[:3]), system.option_counts, name="lda")
    clf = Classifier(EncoderSpec(model="sim"), moved, encoder=enc, calibration=lda_world["cals"]["zero-shot"])
    assert clf.calibration.moved_to
    with TestClient(create_app(ServeSettings(systems=("lda",)), {"lda": clf}), raise_server_exceptions=False) as c:
        assert c.get("/v1/systems").json()["systems"][0]["calibration"]["setting"] == "zero-shot"
        assert_error(c.post("/v1/classify", json={**body, "target_accuracy": 0.8}), 400, "invalid_parameter",
                     "target_accuracy")
        assert_error(c.post("/v1/classify", json={**body, "policy": "auto"}), 400, "invalid_parameter", "policy")
        assert c.post("/v1/classify", json={**body, "policy": "fixed"}).status_code == 200
