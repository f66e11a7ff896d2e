"""A tiny HTTP server that the node agent runs as a pod's process in the devcluster tests.

``python http_server.py --port N [--ready-after S] [--ignore-sigterm] [--exit-after S]``:
``GET /health`` answers 200 once ``--ready-after`` seconds have passed (503 before);
``GET /whoami`` answers the pod's name, namespace and the process id as JSON.
Listens on 127.0.0.1 only. Stdlib only: it runs under any Python.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--ready-after", type=float, default=0.0)
    parser.add_argument("--exit-after", type=float, default=0.0)
    parser.add_argument("--exit-code", type=int, default=3)
    parser.add_argument("--ignore-sigterm", action="store_true")
    args = parser.parse_args()
    started = time.monotonic()

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/health":
                ready = time.monotonic() - started >= args.ready_after
                self._send(200 if ready else 503, {"ready": ready})
            elif self.path == "/whoami":
                self._send(
                    200,
                    {
                        "pod": os.environ.get("POD_NAME"),
                        "namespace": os.environ.get("POD_NAMESPACE"),
                        "pid": os.getpid(),
                        "port": args.port,
                        "greeting": os.environ.get("GREETING"),
                    },
                )
            else:
                self._send(404, {})

        def log_message(self, format: str, *fmt_args: object) -> None:
            pass

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    if args.exit_after > 0:
        timer = threading.Timer(args.exit_after, lambda: os._exit(args.exit_code))
        timer.daemon = True
        timer.start()
    server.serve_forever()


if __name__ == "__main__":
    main()
