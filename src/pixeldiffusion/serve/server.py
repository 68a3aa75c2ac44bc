"""The HTTP side of `pixeldiffusion serve`, on the standard library's threading server.

    GET  /                 the page (static/index.html, with static/app.js and static/style.css)
    GET  /api/model        what the model takes: conditioning, class or context names, bounds, defaults
    POST /api/generate     a JSON request (see request.py). Out of bounds: 400 and {"error": message}.
                           Otherwise a stream of JSON lines: {"type": "queued"} while another generation
                           runs, {"type": "frame", ...} per shown step, then {"type": "done", "image": ...}
                           or {"type": "error", "error": message}. Images are PNG data URLs.

One generation runs at a time; up to MAX_WAITING more wait their turn, for at most WAIT_S seconds.
The generate route takes only `Content-Type: application/json`, which a page of another site cannot send
without the browser first asking the server (CORS), and this server never agrees.

Who is answered: a request whose `Host` header names this server, NAME:PORT with the port it listens on and NAME
127.0.0.1, localhost, [::1] or the address it was told to listen on (--host); when that is every address (0.0.0.0,
::), also the machine's name and any numeric address, which no DNS answer can rebind. A page of another site whose
name is pointed at 127.0.0.1 (DNS rebinding) sends its own name and is refused. A POST whose `Origin` is present
must name this server too (http://NAME:PORT). Either refusal: 403.

Bounds: a client has REQUEST_S seconds to send its request (then 408, or the connection closes), each read or
write waits at most TIMEOUT_S seconds (a page that stops reading loses its generation and the turn), and at most
MAX_CONNECTIONS connections are served at once (the next wait to be accepted). Every error, the standard library's
own included (a malformed request line, an unknown method), is one JSON object {"error": message}.
"""

from __future__ import annotations

import base64
import contextlib
import io
import ipaddress
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch

from pixeldiffusion.errors import ConfigError, PixelDiffusionError
from pixeldiffusion.pipeline import Pipeline
from pixeldiffusion.serve.generation import Frame, generate
from pixeldiffusion.serve.request import GenerateRequest, defaults, limits, parse_request
from pixeldiffusion.visualize import auto_scale, image_grid

PAGES = {  # route -> (file in static/, content type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
MAX_BODY = 4096  # bytes of a generate request
MAX_WAITING = 8  # requests waiting behind the running generation
WAIT_S = 600.0  # longest wait for a turn, in seconds
REQUEST_S = 10.0  # longest a client may take to send its whole request, in seconds
TIMEOUT_S = 30.0  # longest wait of any one read or write of a connection, in seconds
MAX_CONNECTIONS = 16  # served at once: room for the generations (1 + MAX_WAITING) and the page's own requests
LOOPBACK = ("127.0.0.1", "localhost", "::1")
EVERY_ADDRESS = ("", "0.0.0.0", "::")
AUTHORITY = re.compile(r"(?:\[(?P<ipv6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9.-]+))(?::(?P<port>[0-9]{1,5}))?", re.I)
SECURITY_HEADERS = {
    # the page's own script, style and requests, images as data: URLs, and no framing by any page (clickjacking)
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate it
    "X-Content-Type-Options": "nosniff",
}


def data_url(images: torch.Tensor) -> str:
    """uint8 images (N, C, H, W) as the PNG grid `pixeldiffusion sample` writes, in a data: URL."""
    grid = image_grid(images, min(len(images), 8), scale=auto_scale(images.shape[-1]))
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def model_info(pipe: Pipeline, *, name: str) -> dict[str, Any]:
    """What the page needs to build its form."""
    model = pipe.config.model
    return {
        "name": name,
        "conditioning": pipe.conditioning,
        "classes": list(pipe.class_names) or [str(i) for i in range(model.num_classes)],
        "context_names": list(pipe.context_names) or [f"context {i}" for i in range(model.context_dim)],
        "image_size": pipe.config.pixel_size,
        "timesteps": pipe.schedule.T,
        "limits": limits(pipe),
        "defaults": defaults(pipe),
        # a distilled run samples in a few network evaluations: the page regenerates as its fields change
        "live": pipe.config.distill.teacher is not None,
        "distilled_from": pipe.config.distill.teacher,
    }


def authority(host: str, port: int) -> str:
    """host:port as a URL writes it: [::1]:8000 for an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_numeric_address(name: str) -> bool:
    """Whether a host name is an IPv4 or IPv6 address written out, not a name that DNS resolves."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class StudioServer(ThreadingHTTPServer):
    """A threading HTTP server holding one pipeline and the turn to generate."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], pipe: Pipeline, *, name: str):
        host = address[0]
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET  # read when the socket is made
        super().__init__(address, Handler)
        self.pipe = pipe
        self.info = model_info(pipe, name=name)
        self.turn = threading.Lock()  # held by the running generation
        self.admission = threading.BoundedSemaphore(1 + MAX_WAITING)  # the running request and those waiting
        self.connections = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.url = f"http://{authority(host, self.server_port)}/"
        self.every_address = host in EVERY_ADDRESS
        self.names = {*LOOPBACK, host.lower()}
        if self.every_address:
            self.names |= {socket.gethostname().lower(), socket.getfqdn().lower()}

    def names_this_server(self, value: str) -> bool:
        """Whether NAME[:PORT], a Host header or an Origin's authority, names this server (the module's rule)."""
        match = AUTHORITY.fullmatch(value)
        if not match or int(match["port"] or 80) != self.server_port:
            return False
        name = (match["ipv6"] or match["name"]).lower()
        return name in self.names or (self.every_address and is_numeric_address(name))

    def process_request(self, request: Any, client_address: Any) -> None:
        self.connections.acquire()  # at MAX_CONNECTIONS, the next connection waits to be accepted
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connections.release()


class Handler(BaseHTTPRequestHandler):
    server: StudioServer
    server_version = "pixeldiffusion"
    default_request_version = "HTTP/1.0"  # not 0.9: a request line naming no version still gets a status line

    def setup(self) -> None:
        self.timeout = TIMEOUT_S  # of each read and write: socketserver sets it on the connection
        super().setup()
        self.late = False
        self.deadline = threading.Timer(REQUEST_S, self._stop_reading)
        self.deadline.daemon = True
        self.deadline.start()

    def finish(self) -> None:
        self.deadline.cancel()
        super().finish()

    def _stop_reading(self) -> None:
        """At the deadline, end the reading of the request: a client sending a byte at a time frees the thread."""
        self.late = True
        with contextlib.suppress(OSError):  # already closed
            self.connection.shutdown(socket.SHUT_RD)

    def _refused(self) -> bool:
        """Answer with its error a request that came too late or not for this server (the module's rule)."""
        host, origin = self.headers.get("Host", ""), self.headers.get("Origin")
        foreign_origin = origin is not None and not (
            origin.startswith("http://") and self.server.names_this_server(origin.removeprefix("http://"))
        )
        if self.late:
            status, error = 408, f"the request took more than {REQUEST_S:g} s to arrive"
        elif not self.server.names_this_server(host):
            status, error = 403, f"the Host header {host!r} does not name this server: open {self.server.url}"
        elif self.command == "POST" and foreign_origin:
            status, error = 403, f"a page of {origin} may not post here: open {self.server.url}"
        else:
            return False
        self._send_json(status, {"error": error})
        return True

    def do_GET(self) -> None:
        if self._refused():
            return
        path = urlsplit(self.path).path
        if path == "/api/model":
            self._send_json(200, self.server.info)
        elif path in PAGES:
            name, content_type = PAGES[path]
            self._send(200, content_type, resources.files(__package__).joinpath("static", name).read_bytes())
        else:
            self._send_json(404, {"error": f"nothing at {path}"})

    def do_POST(self) -> None:
        if self._refused():
            return
        if urlsplit(self.path).path != "/api/generate":
            self._send_json(404, {"error": "POST only to /api/generate"})
            return
        try:
            request = parse_request(self._read_json(), self.server.pipe)
        except ConfigError as e:
            self._send_json(400, {"error": str(e)})
            return
        if not self.server.admission.acquire(blocking=False):
            self._send_json(503, {"error": f"{MAX_WAITING} requests are already waiting: try again in a moment"})
            return
        try:
            self._stream(request)
        finally:
            self.server.admission.release()

    def _read_json(self) -> Any:
        if self.headers.get_content_type() != "application/json":
            raise ConfigError("send the request as Content-Type: application/json")
        length = self.headers.get("Content-Length", "")
        if not length.isdigit() or int(length) > MAX_BODY:
            raise ConfigError(f"the request body must have a Content-Length of at most {MAX_BODY} bytes")
        body = self.rfile.read(int(length))
        if len(body) < int(length):
            raise ConfigError(f"the request body ended after {len(body)} of its {length} bytes")
        try:
            return json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"the request is not valid JSON: {e}") from e

    def _stream(self, request: GenerateRequest) -> None:
        """Wait for the turn, then generate, sending each shown frame as it comes."""
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        try:
            if not self.server.turn.acquire(blocking=False):
                self._send_line({"type": "queued"})
                if not self.server.turn.acquire(timeout=WAIT_S):
                    self._send_line({"type": "error", "error": "waited too long for the other generations"})
                    return
            try:
                start = time.perf_counter()
                images = generate(self.server.pipe, request, on_frame=self._send_frame)
                seconds = round(time.perf_counter() - start, 2)
                self._send_line({"type": "done", "image": data_url(images), "seed": request.seed, "seconds": seconds})
            except PixelDiffusionError as e:
                self._send_line({"type": "error", "error": str(e)})
            finally:
                self.server.turn.release()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the page went away: generation stopped at the frame it could not send

    def _send_frame(self, frame: Frame) -> None:
        self._send_line(
            {
                "type": "frame",
                "step": frame.step,
                "steps": frame.steps,
                "t": frame.t,
                "x_t": data_url(frame.x_t),
                "x0": data_url(frame.x0),
            }
        )

    def _send_line(self, message: dict[str, Any]) -> None:
        self.wfile.write(json.dumps(message).encode() + b"\n")

    def _send_json(self, status: int, value: Any) -> None:
        self._send(status, "application/json", json.dumps(value).encode())

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def end_headers(self) -> None:
        for name, value in SECURITY_HEADERS.items():  # on every answer, streams and errors included
            self.send_header(name, value)
        super().end_headers()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's own refusals (a malformed request line, an unknown method) as JSON too."""
        self.close_connection = True
        self._send_json(code, {"error": message or self.responses[code][0]})


def make_server(pipe: Pipeline, *, host: str = "127.0.0.1", port: int = 8000, name: str = "model") -> StudioServer:
    """A server for a pipeline, bound but not yet serving (port 0: any free port, see `.server_port`)."""
    try:
        return StudioServer((host, port), pipe, name=name)
    except OSError as e:
        raise PixelDiffusionError(f"cannot listen on {authority(host, port)}: {e.strerror or e}") from e


def serve(run_dir: str | Path, *, host: str = "127.0.0.1", port: int = 8000, device: str = "auto") -> None:
    """Serve the page for the latest checkpoint of a training run (or any model `Pipeline.from_pretrained` opens)
    until interrupted (Ctrl-C)."""
    pipe = Pipeline.from_pretrained(run_dir, device=device)
    with make_server(pipe, host=host, port=port, name=Path(run_dir).name) as server:
        print(f"serving {run_dir} at {server.url}  (Ctrl-C to stop)", flush=True)
        if host not in LOOPBACK:
            print(f"warning: {host} is not a loopback address: anyone who can reach it can use the model", flush=True)
        server.serve_forever()
