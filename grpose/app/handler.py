"""The app's HTTP handler: routes, the request body's size limit, and errors as one-line JSON (a
bad request 400, a body too large 413, anything unexpected 500 with its traceback on the
console); a request that fails never stops the server."""
from __future__ import annotations

import json
import os
import sys
import traceback
from http.server import BaseHTTPRequestHandler

from grpose.app.validate import AppError
from grpose.pipeline.poses import PoseError

PAGE = os.path.join(os.path.dirname(__file__), "page.html")


def one_line(text: str, most: int = 300) -> str:
    """A message on one line, at most `most` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= most else line[:most - 3] + "..."


def make_handler(app):
    """The request handler class serving `app` (an `App`)."""
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):  # quiet: the app prints what matters
            pass

        def reply(self, status: int, body, kind: str = "application/json") -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the page went away
                self.close_connection = True

        def answer(self, fn) -> None:
            try:
                body, status = fn(), 200
            except (AppError, PoseError, FileNotFoundError, ValueError) as err:
                body, status = {"error": one_line(err)}, 400  # bad input, caught where read
            except Exception as err:  # noqa: BLE001 - the server keeps serving
                print(f"grpose app: {self.command} {self.path} failed:", file=sys.stderr)
                traceback.print_exc(file=sys.stderr)
                body, status = {"error": one_line(f"internal error ({type(err).__name__}: "
                                                  f"{err}); the traceback is on the server's "
                                                  "console")}, 500
            self.reply(status, body)

        def do_GET(self):
            if self.path in ("/", "/index.html"):
                with open(PAGE, "rb") as f:
                    self.reply(200, f.read(), "text/html; charset=utf-8")
            elif self.path == "/api/bundles":
                self.answer(app.listing)
            elif self.path == "/api/poses":
                self.answer(lambda: {"poses": app.poses()})
            elif self.path == "/api/progress":
                self.answer(app.progress)
            else:
                self.reply(404, {"error": "not found"})

        def read_request(self) -> dict | None:
            """The JSON body, or None after answering why not (400 / 413)."""
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0:
                self.reply(400, {"error": "the request has no valid Content-Length"})
                return None
            if length > app.limits.max_body:
                self.close_connection = True  # the body is left unread
                self.reply(413, {"error": f"the request body is {length} bytes; at most "
                                          f"{app.limits.max_body}"})
                return None
            try:
                request = json.loads(self.rfile.read(length) or b"{}")
            except (json.JSONDecodeError, UnicodeDecodeError):
                self.reply(400, {"error": "the request is not JSON"})
                return None
            if not isinstance(request, dict):
                self.reply(400, {"error": "the request must be a JSON object"})
                return None
            return request

        def do_POST(self):
            routes = {"/api/pose": app.pose_answer, "/api/generate": app.generate}
            if self.path not in routes:
                return self.reply(404, {"error": "not found"})
            request = self.read_request()
            if request is not None:
                self.answer(lambda: routes[self.path](request))
    return Handler
