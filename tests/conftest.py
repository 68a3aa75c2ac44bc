"""Shared fixtures: tiny configurations that train in seconds on a CPU, and the CLI run as a user runs it."""

import subprocess
import sys
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pixeldiffusion.config import TRAIN_FIELDS, RunConfig, with_fields
from pixeldiffusion.recipes import default_config

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = REPO.parent / "shared" / "data" / "mnist"


# tiny_config's keywords: the fields of the training groups by name (as the old `train` group had them)
TINY_KEYWORDS = {name: ".".join(filter(None, where)) for name, where in TRAIN_FIELDS.items()}


def tiny_config(**fields) -> RunConfig:
    """The digits recipe shrunk to a model of ~60k parameters and a handful of steps; keywords name fields of the
    training groups (max_steps=4, lr=..., precision=... for the runtime)."""
    cfg = default_config("digits")
    cfg = replace(
        cfg,
        model=replace(cfg.model, base_channels=8, norm_groups=4, attention_heads=1),
        sample=replace(cfg.sample, steps=3, n=4, precision="fp32"),  # fp32: tests compare samples bit for bit
    )
    given = {
        "max_steps": 4,
        "batch_size": 16,
        "log_every": 1,
        "checkpoint_every": 2,
        "warmup_steps": 2,
        "precision": "fp32",
        **fields,
    }
    return with_fields(cfg, {TINY_KEYWORDS[name]: value for name, value in given.items()})


@pytest.fixture
def tiny():
    return tiny_config


# The tiny model and a short run as command-line flags (the CLI's counterpart of tiny_config).
TINY_FLAGS = ["--base-channels", "8", "--norm-groups", "4", "--attention-heads", "1", "--batch-size", "16",
              "--log-every", "1", "--precision", "fp32", "--sample-steps", "2", "--sample-precision", "fp32",
              "--warmup-steps", "2"]  # fmt: skip


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """`python -m pixeldiffusion ARGS` in a fresh process, its output captured."""
    command = [sys.executable, "-m", "pixeldiffusion", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=cwd)


class Server:
    """Serves `files` (URL path -> bytes); paths in `cut_short` announce their full length but send half."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut_short: set[str] = set()
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if self.path in server.cut_short else body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)


@pytest.fixture
def server():
    running = Server()
    running.thread.start()
    yield running
    running.httpd.shutdown()
    running.httpd.server_close()
    running.thread.join(timeout=5)
