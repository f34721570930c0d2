"""geo-pix2pix serve: a real server on 127.0.0.1 (a free port), real HTTP; every request
loop is bounded in count and time."""

from __future__ import annotations

import http.client
import io
import random
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import mercantile
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from tilesdata import HELSINKI, block, read_tree, write_xyz

from geo_pix2pix.cli.main import main
from geo_pix2pix.errors import OptionError, OutputExistsError
from geo_pix2pix.model.networks import Generator
from geo_pix2pix.serve import start_background
from geo_pix2pix.tiles import make_tiles

pytest.importorskip("uvicorn")

#: The source: 4×4 tiles of zoom 16 (one 8×8 metatile); the model runs at zoom 16.
BASE = block(16, HELSINKI.x, HELSINKI.y, 4, 4)
OPTS = dict(zooms="15-17", render_zoom=16)


class Counting(torch.nn.Module):
    """Inverts the map's colours (a structured image, unlike the map) and counts its calls."""

    identity = "counting-test-model"

    def __init__(self, gate: threading.Event | None = None) -> None:
        super().__init__()
        self.calls, self.gate, self.lock = 0, gate, threading.Lock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.lock:
            self.calls += 1
        if self.gate is not None:
            assert self.gate.wait(60), "the test never opened the gate"
        return -x


@pytest.fixture
def source(tmp_path):
    return write_xyz(tmp_path / "src", BASE)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Generator(base_width=8, norm="instance").eval()
    torch.set_num_threads(threads)


@pytest.fixture
def servers():
    """Start servers with ``servers(source, cache, **kw)``; all are stopped at the end."""
    started = []

    def start(src, cache, **kw):
        s = start_background(src, cache, port=0, **{**OPTS, **kw})
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def area_tiles(zooms=(15, 16, 17)):
    out = []
    for z in zooms:
        if z >= 16:
            f = 2 ** (z - 16)
            out += [mercantile.Tile(b.x * f + i, b.y * f + j, z) for b in BASE for j in range(f) for i in range(f)]
        else:
            out += sorted({mercantile.parent(b, zoom=z) for b in BASE})
    return out


def get(client: httpx.Client, t: mercantile.Tile, **kw) -> httpx.Response:
    return client.get(f"/{t.z}/{t.x}/{t.y}.png", **kw)


def health(server) -> dict:
    return httpx.get(server.url + "healthz", timeout=10).json()


def wait_until(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_live_tiles_are_the_batch_tiles_both_ways(tmp_path, source, tiny, servers):
    batch = tmp_path / "batch"
    make_tiles(source, batch, model=tiny, **OPTS)
    expected = read_tree(batch)
    tiles = area_tiles()
    assert {(t.z, t.x, t.y) for t in tiles} == set(expected)

    # serve → cache: every tile as tiles made it, then `tiles` finds nothing to do
    live = tmp_path / "live"
    s = servers(source, live, model=tiny)
    with httpx.Client(base_url=s.url, timeout=60) as c:
        for t in tiles:
            r = get(c, t)
            assert r.status_code == 200, r.text
            assert r.content == expected[(t.z, t.x, t.y)], t
    s.stop()
    assert read_tree(live) == expected
    again = make_tiles(source, live, model=tiny, **OPTS)
    assert (again.rendered, again.unchanged) == (0, len(tiles)), again.summary()
    assert "0 regenerated" in again.summary()

    # tiles → cache: serve answers from it without running the model
    s = servers(source, batch, model=tiny)
    with httpx.Client(base_url=s.url, timeout=60) as c:
        for t in tiles:
            assert get(c, t).content == expected[(t.z, t.x, t.y)]
    assert health(s)["renders"] == 0


def test_sixteen_concurrent_requests_for_one_metatile_run_the_model_once(tmp_path, source, servers):
    once = Counting()
    make_tiles(source, tmp_path / "batch", model=once, zooms="16", render_zoom=16)
    assert once.calls > 0

    model = Counting()
    s = servers(source, tmp_path / "live", model=model)
    barrier = threading.Barrier(16)

    def fetch(t):
        with httpx.Client(base_url=s.url, timeout=60) as c:
            barrier.wait(10)
            return get(c, t)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(fetch, BASE))
    assert [r.status_code for r in answers] == [200] * 16
    assert model.calls == once.calls  # one render of the metatile, as the batch run's
    h = health(s)
    assert (h["jobs"], h["renders"]) == (1, 1)
    assert h["coalesced"] == 15


def test_http_surface(tmp_path, source, servers):
    s = servers(source, tmp_path / "live", model=Counting())
    t = BASE[5]
    with httpx.Client(base_url=s.url, timeout=60) as c:
        # out of range and outside the extent: 404 at once, nothing rendered
        for path in ("/14/9327/4742.png", "/18/0/0.png", f"/16/{t.x + 40}/{t.y}.png", "/16/0/0.png",
                     f"/16/{t.x}/{t.y}.jpg", "/3/9/9.png", "/40/0/0.png"):
            assert c.get(path).status_code == 404, path
        assert health(s)["jobs"] == 0

        r = get(c, t)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(r.content)).size == (256, 256)
        etag = r.headers["etag"]
        key = sqlite3.connect(tmp_path / "live/.geo-pix2pix/manifest.sqlite").execute(
            "SELECT key FROM tiles WHERE z=? AND x=? AND y=?", (t.z, t.x, t.y)).fetchone()[0]
        assert etag == f'"{key}"'
        assert "max-age" in r.headers["cache-control"]
        assert r.headers["access-control-allow-origin"] == "*"
        nm = get(c, t, headers={"If-None-Match": etag})
        assert nm.status_code == 304 and nm.content == b"" and nm.headers["etag"] == etag
        assert nm.headers["cache-control"] == r.headers["cache-control"]
        assert nm.headers["access-control-allow-origin"] == "*" and "content-type" not in nm.headers
        for tags in (f'"other", W/{etag}', "*"):  # a list, a weak tag, any
            assert get(c, t, headers={"If-None-Match": tags}).status_code == 304, tags
        assert get(c, t, headers={"If-None-Match": '"other"'}).status_code == 200
        warm = get(c, t)  # its unit checked: from the cache, as the first answer
        assert warm.content == r.content and warm.headers["etag"] == etag
        assert warm.headers["content-length"] == str(len(r.content))
        assert warm.headers["access-control-expose-headers"] == "ETag"
        assert warm.headers["cache-control"] == "public, max-age=3600"
        head = c.head(f"/{t.z}/{t.x}/{t.y}.png")
        assert head.status_code == 200 and head.headers["etag"] == etag and head.content == b""
        assert head.headers["content-length"] == str(len(r.content))
        assert c.post(f"/{t.z}/{t.x}/{t.y}.png").status_code == 405
        pre = c.options(f"/{t.z}/{t.x}/{t.y}.png", headers={"Origin": "http://example.org",
                                                             "Access-Control-Request-Method": "GET"})
        assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == "*"

        m = c.get(f"/map/{t.z}/{t.x}/{t.y}.png")
        assert m.status_code == 200 and m.content == (source / f"16/{t.x}/{t.y}.png").read_bytes()
        assert m.headers["content-type"] == "image/png" and m.headers["access-control-allow-origin"] == "*"
        assert c.get(f"/map/{t.z}/{t.x}/{t.y}.png", headers={"If-None-Match": m.headers["etag"]}).status_code == 304
        assert c.get(f"/map/17/{2 * t.x}/{2 * t.y}.png").status_code == 404  # the source has zoom 16 only

        doc = c.get("/tilejson.json", headers={"Host": "tiles.example.org:8080"}).json()
        assert doc["tilejson"] == "3.0.0"
        assert doc["tiles"] == ["http://tiles.example.org:8080/{z}/{x}/{y}.png"]
        assert (doc["minzoom"], doc["maxzoom"]) == (15, 17)

        page = c.get("/")
        assert page.status_code == 200 and "leaflet/leaflet.js" in page.text and "cdn" not in page.text.lower()
        for name in ("viewer/leaflet/leaflet.js", "viewer/leaflet/leaflet.css", "viewer/viewer.js"):
            assert c.get("/" + name).status_code == 200
        assert c.get("/healthz").json()["status"] == "ok"

    # No listing, no path outside the tiles: sent as written (http.client does not normalise).
    host, port = s.url.split("//")[1].rstrip("/").split(":")
    for path in ("/../../etc/passwd", "/16/../../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd",
                 "/viewer/../cache.py", "/viewer/%2e%2e/app.py", "/viewer/", "/viewer/leaflet/",
                 "/16/", f"/16/{t.x}/", "/.geo-pix2pix/manifest.sqlite", "/viewer/..%2f..%2fcache.py",
                 "/16/1/..%2f..%2f1.png", "/viewer/index.html/../../../serve/app.py"):
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        assert resp.status in (400, 404), (path, resp.status)
        assert b"import" not in body and b"root:" not in body and b"SQLite" not in body


def test_caches_that_cannot_be_served_are_refused(tmp_path, source):
    with pytest.raises(OptionError, match="PMTiles archive is written whole"):
        start_background(source, tmp_path / "aerial.pmtiles", port=0, **OPTS)
    foreign = tmp_path / "foreign"
    (foreign / "16").mkdir(parents=True)
    with pytest.raises(OutputExistsError, match="not made by geo-pix2pix"):
        start_background(source, foreign, port=0, **OPTS)


def test_full_queue_answers_503_with_retry_after(tmp_path, source, servers):
    gate = threading.Event()
    s = servers(source, tmp_path / "live", model=Counting(gate), zooms="16-18", queue_size=1)
    # three blocks of zoom 18 (8×8 tiles each): one rendering, one queued, one too many
    b0, b1, b2 = (mercantile.Tile(BASE[0].x * 4 + dx, BASE[0].y * 4 + dy, 18) for dx, dy in ((0, 0), (8, 0), (0, 8)))
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(lambda: get(httpx.Client(base_url=s.url, timeout=60), b0))
        assert wait_until(lambda: health(s)["rendering"] == 1)
        second = pool.submit(lambda: get(httpx.Client(base_url=s.url, timeout=60), b1))
        assert wait_until(lambda: health(s)["queued"] == 1)
        r = httpx.get(f"{s.url}{b2.z}/{b2.x}/{b2.y}.png", timeout=10)
        assert r.status_code == 503
        assert int(r.headers["retry-after"]) >= 1
        assert r.headers["cache-control"] == "no-store"
        gate.set()
        assert first.result(60).status_code == 200
        assert second.result(60).status_code == 200
    assert health(s)["rejected"] == 1
    assert httpx.get(f"{s.url}{b2.z}/{b2.x}/{b2.y}.png", timeout=60).status_code == 200  # room again


def test_client_disconnect_drops_its_queued_work(tmp_path, source, servers):
    gate = threading.Event()
    model = Counting(gate)
    s = servers(source, tmp_path / "live", model=model, zooms="16-18")
    b0 = mercantile.Tile(BASE[0].x * 4, BASE[0].y * 4, 18)
    b1 = mercantile.Tile(b0.x + 8, b0.y, 18)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(lambda: get(httpx.Client(base_url=s.url, timeout=60), b0))
        assert wait_until(lambda: health(s)["rendering"] == 1)
        host, port = s.url.split("//")[1].rstrip("/").split(":")
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.sendall(f"GET /18/{b1.x}/{b1.y}.png HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        assert wait_until(lambda: health(s)["queued"] == 1)
        sock.close()  # the client goes away while its block waits
        assert wait_until(lambda: health(s)["dropped"] == 1), health(s)
        assert health(s)["queued"] == 0
        gate.set()
        assert first.result(60).status_code == 200
    h = health(s)
    assert h["jobs"] == 1  # the dropped block never ran
    assert not (tmp_path / f"live/18/{b1.x}/{b1.y}.png").exists()


@pytest.mark.slow
def test_bounded_load(tmp_path, servers):
    # 8×8 tiles of zoom 16 across four metatiles; an MBTiles cache (unique rows are checkable)
    x0, y0 = HELSINKI.x - HELSINKI.x % 8 - 4, HELSINKI.y - HELSINKI.y % 8 - 4
    src = write_xyz(tmp_path / "src", block(16, x0, y0, 8, 8))
    cache = tmp_path / "live.mbtiles"
    s = servers(src, cache, model=Counting(), zooms="14-18", queue_size=3)
    rng = random.Random(0)
    requests = []
    for _ in range(300):
        z = rng.choice([13, 14, 15, 16, 17, 18, 19])
        f = 2.0 ** (z - 16)
        x = int((x0 + rng.uniform(-1, 9)) * f)
        y = int((y0 + rng.uniform(-1, 9)) * f)
        requests.append((z, x, y, rng.random() < 0.2))
    etags: dict = {}
    lock = threading.Lock()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def client(batch):
        out = []
        with httpx.Client(base_url=s.url, timeout=60) as c:
            for z, x, y, revalidate in batch:
                with lock:
                    tag = etags.get((z, x, y)) if revalidate else None
                r = c.get(f"/{z}/{x}/{y}.png", headers={"If-None-Match": tag} if tag else {})
                if r.status_code == 200:
                    with lock:
                        etags[(z, x, y)] = r.headers["etag"]
                out.append(((z, x, y), r.status_code, r.content))
        return out

    t0 = time.monotonic()
    with ThreadPoolExecutor(32) as pool:
        results = [a for part in pool.map(client, [requests[i::32] for i in range(32)]) for a in part]
    took = time.monotonic() - t0
    assert len(results) == 300 and took < 240
    statuses = {status for _, status, _ in results}
    assert statuses <= {200, 304, 404, 503}, statuses
    assert 200 in statuses and 404 in statuses
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 500_000  # kB
    s.stop()

    db = sqlite3.connect(cache)
    rows = db.execute("SELECT zoom_level, tile_column, tile_row, tile_data FROM tiles").fetchall()
    stored = {(z, x, 2**z - 1 - r): bytes(d) for z, x, r, d in rows}
    assert len(stored) == len(rows)  # nothing duplicated
    for (z, x, y), status, content in results:
        if status == 200:
            assert stored[(z, x, y)] == content  # nothing lost, nothing changed
    man = sqlite3.connect(tmp_path / ".live.mbtiles.geo-pix2pix/manifest.sqlite")
    ok = {(z, x, y) for z, x, y in man.execute("SELECT z, x, y FROM tiles WHERE status='ok'") if 14 <= z <= 18}
    assert ok == set(stored)  # every row has its tile, every tile its row
    # the cache is a valid tiles cache: a tiles run makes only what serve never made
    again = make_tiles(src, cache, model=Counting(), zooms="14-18", render_zoom=16)
    assert again.failed == 0 and again.unchanged >= len(stored) - again.empty


SLOW_SERVER = textwrap.dedent("""
    import sys, time, torch
    from pathlib import Path
    from geo_pix2pix.serve import serve

    class Slow(torch.nn.Module):
        identity = "counting-test-model"  # same keys as the tests' Counting model
        def forward(self, x):
            Path(sys.argv[3]).touch()
            time.sleep(1.0)
            return -x

    serve(sys.argv[1], sys.argv[2], port=int(sys.argv[4]), model=Slow(), zooms="15-17", render_zoom=16)
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_sigterm_during_a_render_leaves_a_cache_serve_and_tiles_read(tmp_path, source, servers):
    cache, marker, port = tmp_path / "live", tmp_path / "rendering", free_port()
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SERVER, str(source), str(cache), str(marker), str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        assert wait_until(lambda: _up(url), 120), proc.stdout.read() if proc.poll() is not None else "no start"
        t = BASE[0]
        pending = threading.Thread(target=lambda: _quietly(lambda: httpx.get(f"{url}16/{t.x}/{t.y}.png",
                                                                              timeout=60)))
        pending.start()
        assert wait_until(marker.exists, 60)
        proc.send_signal(signal.SIGTERM)  # the model is running
        out, _ = proc.communicate(timeout=120)
        pending.join(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in out, out
    assert not list((cache / ".geo-pix2pix" / "incoming").glob("*")), "a temporary tile was left"
    man = sqlite3.connect(cache / ".geo-pix2pix/manifest.sqlite")
    for z, x, y, status in man.execute("SELECT z, x, y, status FROM tiles"):
        assert status != "ok" or (cache / f"{z}/{x}/{y}.png").is_file()

    s = servers(source, cache, model=Counting())
    with httpx.Client(base_url=s.url, timeout=60) as c:
        assert get(c, BASE[0]).status_code == 200
    s.stop()
    result = make_tiles(source, cache, model=Counting(), **OPTS)
    assert result.failed == 0 and result.total == len(area_tiles())


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _quietly(fn):
    try:
        fn()
    except httpx.HTTPError:
        pass


def test_tiles_webviewer_writes_the_page_beside_the_folder(tmp_path, source):
    dest = tmp_path / "aerial"
    r = CliRunner().invoke(main, ["tiles", str(source), str(dest), "--zoom", "15-16", "--no-model",
                                  "--render-zoom", "16", "--webviewer"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    page = (dest / "index.html").read_text()
    assert '"url": "{z}/{x}/{y}.png"' in page and "viewer/leaflet/leaflet.js" in page
    assert (dest / "viewer/leaflet/leaflet.js").stat().st_size > 100_000
    assert (dest / "viewer/leaflet/LICENSE").exists()
    r = CliRunner().invoke(main, ["tiles", str(source), str(tmp_path / "a.mbtiles"), "--zoom", "16", "--no-model",
                                  "--webviewer"])
    assert r.exit_code == 1 and "--webviewer writes index.html into an XYZ folder" in r.output


@pytest.mark.slow
def test_viewer_page_in_a_headless_browser(tmp_path, servers):
    from cdp import Browser, chromium_or_skip

    chromium_or_skip()
    x0, y0 = HELSINKI.x - 3, HELSINKI.y - 2
    src = write_xyz(tmp_path / "src", block(16, x0, y0, 7, 5))
    s = servers(src, tmp_path / "live", model=Counting(), zooms="15-16")
    browser = Browser(1000, 700)
    try:
        browser.goto(s.url)
        browser.wait_for("window.geoPix2pix && geoPix2pix.state.aerialLoaded && geoPix2pix.state.mapLoaded", 120)
        assert health(s)["jobs"] >= 1  # the page asked for aerial tiles and they were rendered
        assert browser.js("geoPix2pix.state.tileErrors") == 0
        attribution = browser.js("document.querySelector('.leaflet-control-attribution').textContent")
        assert "synthetic aerial imagery" in attribution.lower()

        def shot():
            time.sleep(0.5)  # let the compositor draw the clip
            return np.asarray(Image.open(io.BytesIO(browser.screenshot())).convert("RGB")).astype(np.float64)

        # Half and half: the left third is aerial imagery, not a blank canvas.
        half = shot()
        left = half[150:550, 60:330]
        assert left.std() > 20, left.std()

        # Drag the slider's handle to the right edge: aerial imagery everywhere…
        rect = browser.js("(() => { const r = document.getElementById('swipe').getBoundingClientRect();"
                          " return [r.left, r.top, r.width, r.height]; })()")
        cy = rect[1] + rect[3] / 2
        browser.drag(rect[0] + rect[2] / 2, cy, rect[0] + rect[2] - 2, cy)
        assert float(browser.js("document.getElementById('swipe').value")) > 0.95
        aerial = shot()
        # …then to the left edge: the map everywhere.
        browser.drag(rect[0] + rect[2] - 17, cy, rect[0] + 2, cy)
        assert float(browser.js("document.getElementById('swipe').value")) < 0.05
        source_map = shot()
    finally:
        browser.close()
    right = (slice(150, 550), slice(670, 940))
    # The right third showed the map at half; the slider turned it into the aerial layer and back.
    assert np.abs(aerial[right] - half[right]).mean() > 20
    assert np.abs(source_map[right] - half[right]).mean() < 5
    assert np.abs(source_map[150:550, 60:330] - left).mean() > 20
