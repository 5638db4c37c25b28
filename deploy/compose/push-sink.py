"""A stand-in push gateway for the Compose demo.

POST /push with sunset's JSON and the right bearer token -> 200 and one JSON line on stdout
(`docker compose logs push-sink`); a wrong token -> 401, as a real gateway would answer.
GET / -> how many notices arrived. Standard library only, so the stock python image runs it.
"""

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN = os.environ.get("PUSH_TOKEN", "")
PORT = int(os.environ.get("PORT", "8080"))
lock = threading.Lock()
received = 0


class Handler(BaseHTTPRequestHandler):
    # Keep-alive: sunset keeps a small pool of HTTP/1.1 connections open.
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        global received
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path != "/push":
            return self.reply(404, {"error": "not found"})
        if TOKEN and self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self.reply(401, {"error": "wrong or missing bearer token"})
        try:
            notice = json.loads(body)
        except ValueError:
            return self.reply(400, {"error": "body is not JSON"})
        with lock:
            received += 1
        print(
            json.dumps(
                {
                    "idempotency_key": self.headers.get("Idempotency-Key"),
                    "user_id": notice.get("user_id"),
                    "locale": notice.get("locale"),
                    "title": notice.get("title"),
                },
                ensure_ascii=False,
            ),
            flush=True,
        )
        self.reply(200, {"accepted": True})

    def do_GET(self):
        self.reply(200, {"received": received})

    def reply(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        # One line per notice (above) instead of an access log line per request.
        pass


if __name__ == "__main__":
    print(f"push sink listening on :{PORT}", flush=True)
    ThreadingHTTPServer(("0.0.0.0", PORT), Handler).serve_forever()
