"""The web page of `pixeldiffusion serve`: requests out of bounds are refused with a message, a generation streams
its frames then the PNG `pixeldiffusion sample` makes, concurrent requests wait their turn, requests for another
name (DNS rebinding) or from another site's page are refused, slow clients and connections are bounded, and the page
works in a real headless browser (Debian's chromium, driven by Selenium through chromium-driver)."""

import base64
import http.client
import io
import json
import math
import re
import shutil
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

import pixeldiffusion.serve.server as server_module
from conftest import tiny_config
from pixeldiffusion.cli import parser
from pixeldiffusion.config import DistillConfig
from pixeldiffusion.models import UNet
from pixeldiffusion.pipeline import Pipeline
from pixeldiffusion.sampling import SAMPLERS
from pixeldiffusion.schedule import NoiseSchedule
from pixeldiffusion.serve import make_server
from pixeldiffusion.serve.generation import Frame, generate
from pixeldiffusion.serve.request import MAX_IMAGES, MAX_STEPS
from pixeldiffusion.training import train
from pixeldiffusion.visualize import auto_scale, image_grid

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
# Without the flags that stop its background connections, Chromium waits on this machine's closed network.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1000,600",
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A class-conditional run (the digits have labels) of three steps of the tiny model."""
    path = tmp_path_factory.mktemp("serve") / "run"
    train(tiny_config(max_steps=3, checkpoint_every=3), path)
    return path


@pytest.fixture(scope="module")
def pipe(run_dir):
    return Pipeline.from_run(run_dir, device="cpu")


@contextmanager
def serving(pipe, host="127.0.0.1"):
    """A server for the pipeline on a free port of `host`, answering from a thread of its own."""
    with make_server(pipe, host=host, port=0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield server
        finally:
            server.shutdown()


@pytest.fixture(scope="module")
def server(pipe):
    with serving(pipe) as server:
        yield server


def request(server, body, *, content_type="application/json", headers=None) -> http.client.HTTPResponse:
    """POST /api/generate with a JSON body (or raw bytes); the answer is read by the caller."""
    connection = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=60)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    connection.request("POST", "/api/generate", body=data, headers={"Content-Type": content_type, **(headers or {})})
    return connection.getresponse()


def get(server, path="/api/model", headers=None, address="127.0.0.1") -> http.client.HTTPResponse:
    """GET a path (the Host header is the address's unless given); the answer is read by the caller."""
    connection = http.client.HTTPConnection(address, server.server_port, timeout=60)
    connection.request("GET", path, headers=headers or {})
    return connection.getresponse()


def raw(server, data: bytes) -> tuple[int, dict]:
    """The status and JSON body of the answer to bytes sent as they are on a fresh connection."""
    with socket.create_connection(("127.0.0.1", server.server_port), timeout=60) as connection:
        connection.sendall(data)
        response = http.client.HTTPResponse(connection)
        response.begin()
        return response.status, json.loads(response.read())


def messages(response):
    """The JSON lines of a streamed answer, as they arrive."""
    for line in response:
        yield json.loads(line)


def png(data_url: str) -> Image.Image:
    """The image of a PNG data URL."""
    prefix = "data:image/png;base64,"
    assert data_url.startswith(prefix)
    image = Image.open(io.BytesIO(base64.b64decode(data_url[len(prefix) :])))
    assert image.format == "PNG"
    return image


def grid_size(n: int) -> tuple[int, int]:
    """The size of the PNG grid of n 16 x 16 images, as `pixeldiffusion sample` writes it."""
    return image_grid(torch.zeros(n, 1, 16, 16, dtype=torch.uint8), min(n, 8), scale=auto_scale(16)).size


@pytest.mark.parametrize(
    "body, message",
    [
        ({"steps": MAX_STEPS + 1}, f"steps must be a whole number from 1 to {MAX_STEPS}, got {MAX_STEPS + 1}"),
        ({"steps": 2.5}, f"steps must be a whole number from 1 to {MAX_STEPS}, got 2.5"),
        ({"n": MAX_IMAGES + 1}, f"n must be a whole number from 1 to {MAX_IMAGES}, got {MAX_IMAGES + 1}"),
        ({"guidance": math.nan}, "guidance must be a number from 0 to 20, got NaN"),
        ({"guidance": -1}, "guidance must be a number from 0 to 20, got -1"),
        ({"sampler": "euler"}, f'sampler must be one of {", ".join(SAMPLERS)}, got "euler"'),
        ({"label": "seven"}, "unknown class 'seven'; the classes are: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9"),
        ({"context": [1.0]}, "this model is class-conditional: it takes no context vector"),
    ],
    ids=["steps>limit", "steps-fraction", "n>limit", "guidance-nan", "guidance<0", "sampler", "class", "context"],
)
def test_a_request_out_of_bounds_is_refused_with_a_message(server, body, message):
    response = request(server, body)
    assert response.status == 400
    assert json.loads(response.read()) == {"error": message}


def test_only_json_requests_are_taken(server):
    """A form of another site can post application/x-www-form-urlencoded without asking the server first."""
    response = request(server, b"steps=3", content_type="application/x-www-form-urlencoded")
    assert response.status == 400
    assert json.loads(response.read()) == {"error": "send the request as Content-Type: application/json"}


def test_a_generation_streams_its_frames_then_the_png_of_sample(server, pipe):
    body = {"label": "7", "sampler": "ddpm", "steps": 5, "guidance": 2.0, "seed": 1, "n": 3}
    response = request(server, body)
    assert response.status == 200 and response.getheader("Content-Type") == "application/x-ndjson"
    *frames, done = messages(response)
    assert [(f["type"], f["step"], f["steps"]) for f in frames] == [("frame", step, 5) for step in range(1, 6)]
    assert frames[-1]["t"] == 0
    assert all(png(f["x_t"]).size == png(f["x0"]).size == grid_size(3) for f in frames)
    assert done["type"] == "done" and done["seed"] == 1
    expected = pipe.sample(3, labels=[7], sampler="ddpm", steps=5, guidance=2.0, seed=1).grid()
    assert png(done["image"]).size == expected.size == grid_size(3)
    assert np.array_equal(np.asarray(png(done["image"])), np.asarray(expected))


def test_a_second_request_waits_for_the_first_then_both_finish(server, monkeypatch):
    started, release = threading.Event(), threading.Event()

    def held_generate(*args, **kwargs):  # the first generation keeps its turn until the second one is queued
        started.set()
        release.wait(60)
        return generate(*args, **kwargs)

    monkeypatch.setattr(server_module, "generate", held_generate)
    body = {"label": 3, "steps": 2, "n": 1}
    first = []
    thread = threading.Thread(target=lambda: first.extend(messages(request(server, body))))
    thread.start()
    assert started.wait(60)
    second = messages(request(server, body))
    assert next(second) == {"type": "queued"}
    release.set()
    second = list(second)
    thread.join(60)
    assert [m["type"] for m in first] == [m["type"] for m in second] == ["frame", "frame", "done"]
    assert first[-1]["image"] == second[-1]["image"]  # the same settings and seed: the same PNG


def test_the_server_listens_on_loopback_by_default(pipe):
    with make_server(pipe, port=0) as server:
        assert server.server_address[0] == "127.0.0.1"
    assert parser().parse_args(["serve", "--run", "runs/digits"]).host == "127.0.0.1"


@pytest.mark.parametrize("name", ["attacker.example", "127.0.0.1.attacker.example", "localhost:1", "127.0.0.1@x"])
def test_a_request_for_another_name_is_refused(server, name):
    """DNS rebinding: a page of attacker.example, its name now pointing at 127.0.0.1, sends Host: attacker.example."""
    host = name if ":" in name else f"{name}:{server.server_port}"
    refusal = {"error": f"the Host header {host!r} does not name this server: open {server.url}"}
    response = get(server, "/", headers={"Host": host})
    assert (response.status, json.loads(response.read())) == (403, refusal)
    response = request(server, {"steps": 2}, headers={"Host": host})
    assert (response.status, json.loads(response.read())) == (403, refusal)


def test_a_request_without_a_host_is_refused(server):
    status, answer = raw(server, b"GET /api/model HTTP/1.0\r\n\r\n")
    assert (status, answer) == (403, {"error": f"the Host header '' does not name this server: open {server.url}"})


@pytest.mark.parametrize("name", ["127.0.0.1", "localhost", "LocalHost", "[::1]"])
def test_the_names_of_loopback_are_answered(server, name):
    response = get(server, headers={"Host": f"{name}:{server.server_port}"})
    assert response.status == 200 and json.loads(response.read())["name"] == "model"


@pytest.mark.parametrize(
    "origin", ["http://attacker.example", "http://attacker.example:{port}", "null", "https://127.0.0.1:{port}"]
)
def test_a_post_from_a_page_of_another_site_is_refused(server, origin):
    origin = origin.format(port=server.server_port)
    response = request(server, {"steps": 2}, headers={"Origin": origin})
    assert response.status == 403
    assert json.loads(response.read()) == {"error": f"a page of {origin} may not post here: open {server.url}"}


@pytest.mark.parametrize("origin", ["http://127.0.0.1:{port}", "http://localhost:{port}", None])
def test_a_post_from_the_page_itself_or_no_page_is_taken(server, origin):
    headers = {"Origin": origin.format(port=server.server_port)} if origin else {}
    response = request(server, {"steps": MAX_STEPS + 1}, headers=headers)  # past the gate: judged on its fields
    assert response.status == 400 and "steps must be" in json.loads(response.read())["error"]


def test_a_server_on_every_address_answers_its_numeric_addresses_and_its_name(pipe):
    with make_server(pipe, host="0.0.0.0", port=0) as server:
        port = server.server_port
        for name in ("192.0.2.7", "[2001:db8::7]", "0.0.0.0", "localhost", socket.gethostname()):
            assert server.names_this_server(f"{name}:{port}"), name
        assert not server.names_this_server(f"attacker.example:{port}")
        assert not server.names_this_server(f"192.0.2.7:{port + 1}")


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback here")
def test_the_server_listens_on_ipv6_loopback(pipe):
    with serving(pipe, host="::1") as server:
        assert server.url == f"http://[::1]:{server.server_port}/"
        response = get(server, "/", address="::1")  # Host: [::1]:PORT
        assert response.status == 200 and b"pixeldiffusion" in response.read()


@pytest.mark.parametrize("path", ["/", "/static/app.js", "/api/model", "/nothing"])
def test_every_answer_forbids_framing_by_other_pages(server, path):
    response = get(server, path)
    response.read()
    policy = response.getheader("Content-Security-Policy")
    assert "frame-ancestors 'none'" in policy and "default-src 'self'" in policy
    assert response.getheader("X-Frame-Options") == "DENY"


@pytest.mark.parametrize(
    "data, status, error",
    [
        (b"PUT / HTTP/1.0\r\n\r\n", 501, "Unsupported method ('PUT')"),
        (b"NONSENSE\r\n\r\n", 400, "Bad request syntax ('NONSENSE')"),
    ],
    ids=["method", "request-line"],
)
def test_a_malformed_request_gets_a_json_error(server, data, status, error):
    assert raw(server, data) == (status, {"error": error})


def test_a_slow_or_silent_client_is_cut_off_without_holding_up_others(pipe, monkeypatch):
    monkeypatch.setattr(server_module, "REQUEST_S", 0.5)
    with serving(pipe) as server:
        address = ("127.0.0.1", server.server_port)
        with (
            socket.create_connection(address, timeout=60) as silent,
            socket.create_connection(address, timeout=60) as slow,
        ):
            slow.sendall(f"GET /api/model HTTP/1.0\r\nHost: 127.0.0.1:{server.server_port}\r\n".encode())  # no end
            assert get(server).status == 200  # answered meanwhile
            assert silent.recv(1024) == b""  # closed by the server, well before the client's 60 s
            response = http.client.HTTPResponse(slow)
            response.begin()
            assert response.status == 408
            assert json.loads(response.read()) == {"error": "the request took more than 0.5 s to arrive"}


def test_connections_beyond_the_bound_wait_to_be_accepted(pipe, monkeypatch):
    monkeypatch.setattr(server_module, "MAX_CONNECTIONS", 2)
    monkeypatch.setattr(server_module, "REQUEST_S", 60.0)  # the two silent connections are not cut off meanwhile
    with serving(pipe) as server:
        address = ("127.0.0.1", server.server_port)
        first, second = (socket.create_connection(address, timeout=60) for _ in range(2))  # silent: both held
        with second, socket.create_connection(address, timeout=1) as third:
            with first:
                third.sendall(f"GET /api/model HTTP/1.0\r\nHost: 127.0.0.1:{server.server_port}\r\n\r\n".encode())
                with pytest.raises(TimeoutError):  # not served while two connections are
                    third.recv(1024)
            third.settimeout(60)  # the first gone, the third is served
            response = http.client.HTTPResponse(third)
            response.begin()
            assert response.status == 200


def test_a_page_that_stops_reading_gives_up_the_turn(pipe, monkeypatch):
    monkeypatch.setattr(server_module, "TIMEOUT_S", 0.5)
    started = threading.Event()
    noise = torch.randint(0, 256, (16, 3, 64, 64), dtype=torch.uint8)

    def endless_frames(pipe, request, *, on_frame):  # frames until the socket buffers are full many times over
        started.set()
        for step in range(1, 101):
            on_frame(Frame(step=step, steps=100, t=0, x_t=noise, x0=noise))
        return noise

    monkeypatch.setattr(server_module, "generate", endless_frames)
    with serving(pipe) as server, socket.socket() as page:
        page.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        page.connect(("127.0.0.1", server.server_port))
        body = json.dumps({"steps": 2, "n": 1})
        page.sendall(
            f"POST /api/generate HTTP/1.0\r\nHost: 127.0.0.1:{server.server_port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode()
        )  # and never reads the answer
        assert started.wait(60)
        assert server.turn.acquire(timeout=60), "the turn stayed with a page that reads nothing"
        server.turn.release()


@pytest.fixture(scope="module")
def downloads(tmp_path_factory):
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(tmp_path_factory, downloads):
    """Headless Chromium, with a fresh profile, saving downloads in `downloads`."""
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no headless browser here: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('profile')}"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads)})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def page(run_dir):
    """The address of the page of `pixeldiffusion serve --run RUN --port 0`, started as a user would."""
    command = ["-m", "pixeldiffusion", "serve", "--run", str(run_dir), "--port", "0", "--device", "cpu"]
    process = subprocess.Popen([sys.executable, *command], stdout=subprocess.PIPE, text=True)
    first_line = process.stdout.readline()  # serving RUN at http://127.0.0.1:PORT/  (Ctrl-C to stop)
    address = re.search(r"http://127\.0\.0\.1:\d+/", first_line)
    assert address, f"pixeldiffusion serve said {first_line!r}"
    yield address.group()
    process.terminate()
    process.wait(10)


def open_page(browser, url):
    """Load the page and wait until it has built its form from /api/model."""
    browser.get(url)
    WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "generate").is_enabled())


def fill(browser, **values):
    """Type values into the page's fields."""
    for field, value in values.items():
        box = browser.find_element(By.ID, field)
        box.clear()
        box.send_keys(str(value))


def test_the_page_generates_a_class_live_and_downloads_the_png(browser, downloads, page, tmp_path):
    open_page(browser, page)
    assert not browser.find_element(By.ID, "context-field").is_displayed()
    Select(browser.find_element(By.ID, "label")).select_by_visible_text("7")
    Select(browser.find_element(By.ID, "sampler")).select_by_value("ddim")
    fill(browser, steps=4, guidance=2, seed=5, n=2)
    browser.execute_script(  # record every status line the page shows
        """window.statuses = [];
        new MutationObserver((changes) => changes.forEach((c) => c.addedNodes.forEach((n) => statuses.push(n.data))))
          .observe(document.getElementById("status"), { childList: true });"""
    )
    browser.find_element(By.ID, "generate").click()
    download = browser.find_element(By.ID, "download")
    WebDriverWait(browser, 120).until(lambda b: download.is_displayed())
    browser.save_screenshot(str(tmp_path / "page.png"))  # the page after the generation, to look at

    statuses = browser.execute_script("return window.statuses")
    assert [status.split(":")[0] for status in statuses[1:-1]] == [f"Step {i} of 4" for i in range(1, 5)]
    assert statuses[-1].startswith("Done in")
    assert browser.find_element(By.ID, "x_t").get_attribute("src") == download.get_attribute("href")
    download.click()
    saved = downloads / "pixeldiffusion-seed-5.png"
    WebDriverWait(browser, 30).until(lambda b: saved.exists())
    with Image.open(saved) as image:
        assert image.format == "PNG" and image.size == grid_size(2)


def test_the_page_shows_why_a_request_is_refused(browser, page):
    open_page(browser, page)
    refusals = [
        ({"steps": 5000}, "steps must be a whole number from 1 to 1000, got 5000"),
        ({"steps": 4, "n": 17}, "n must be a whole number from 1 to 16, got 17"),
        ({"n": 2, "guidance": -1}, "guidance must be a number from 0 to 20, got -1"),
    ]
    for values, message in refusals:
        fill(browser, **values)
        browser.find_element(By.ID, "generate").click()
        WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "generate").is_enabled())
        assert browser.find_element(By.ID, "error").text == message
        assert not browser.find_element(By.ID, "download").is_displayed()


def test_the_page_offers_the_condition_the_model_takes(browser):
    cfg = tiny_config()
    cfg = replace(cfg, model=replace(cfg.model, num_classes=0, context_dim=2))
    pipe = Pipeline(
        UNet(cfg.model), NoiseSchedule.from_config(cfg.diffusion.schedule), cfg, context_names=("hero", "food")
    )
    with serving(pipe) as server:
        open_page(browser, f"http://127.0.0.1:{server.server_port}/")
        assert not browser.find_element(By.ID, "label-field").is_displayed()
        boxes = browser.find_elements(By.CSS_SELECTOR, "#context label")
        assert [box.text for box in boxes] == ["hero", "food"]
        boxes[1].click()
        fill(browser, steps=2, n=2)
        browser.find_element(By.ID, "generate").click()
        WebDriverWait(browser, 60).until(lambda b: b.find_element(By.ID, "download").is_displayed())


def test_the_page_of_a_distilled_model_generates_as_you_type(browser):
    """A distilled run ("live") generates on loading and again at every change, the latest settings winning."""
    cfg = tiny_config()
    cfg = replace(
        cfg,
        model=replace(cfg.model, num_classes=10),
        distill=DistillConfig(teacher="runs/teacher"),
        sample=replace(cfg.sample, steps=2),
    )
    pipe = Pipeline(UNet(cfg.model), NoiseSchedule.from_config(cfg.diffusion.schedule), cfg)
    with serving(pipe) as server:
        open_page(browser, f"http://127.0.0.1:{server.server_port}/")
        assert "distilled from runs/teacher" in browser.find_element(By.ID, "model").text
        status = browser.find_element(By.ID, "status")
        WebDriverWait(browser, 60).until(lambda b: "(seed 0)" in status.text)  # no click: generated on loading
        fill(browser, seed=41)  # one change per key typed: 4, then 41 while 4 may still be generating
        WebDriverWait(browser, 60).until(lambda b: "(seed 41)" in status.text)
        Select(browser.find_element(By.ID, "label")).select_by_visible_text("3")
        WebDriverWait(browser, 60).until(lambda b: browser.find_element(By.ID, "download").is_displayed())
        first = browser.find_element(By.ID, "x_t").get_attribute("src")
        fill(browser, seed=42)
        WebDriverWait(browser, 60).until(lambda b: "(seed 42)" in status.text)
        assert browser.find_element(By.ID, "x_t").get_attribute("src") != first
