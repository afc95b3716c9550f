#!/usr/bin/env python3
"""A metrics endpoint that misbehaves on request, for the scrape proxy's
tests (tests/it/inference_proxy.rs). GET /metrics answers by the mode read
from STATE_FILE on every request (GET /health always answers 200):

  page            -> 200, a small Prometheus text page (text/plain;
                     version=0.0.4), its first line naming the Accept header
                     it was asked with; gzip-encoded when the request's
                     Accept-Encoding lists gzip and STATE_FILE.gzip exists
  length N        -> 200 with Content-Length N, then N bytes of sample
                     lines, streamed in 64 KiB writes
  chunked N       -> the same N bytes, chunked (no Content-Length)
  endless         -> chunked sample lines until the client goes away
  trickle         -> headers at once, then one line a second
  hang            -> no answer for an hour
  status N        -> that status, a short body

Every body is generated as it is written: this process never holds a page.

Usage: metrics_target.py PORT STATE_FILE
"""
import gzip
import http.server
import os
import sys
import time

LINE = b"inferwatch_test_filler_total 1\n"  # 31 bytes
BLOCK = LINE * (65536 // len(LINE))


def page(accept):
    return (
        f"# accept: {accept}\n"
        "# HELP vllm:generation_tokens_total Number of generation tokens processed.\n"
        "# TYPE vllm:generation_tokens_total counter\n"
        'vllm:generation_tokens_total{engine="0",model_name="tiny"} 42.0\n'
    ).encode()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def mode(self):
        try:
            with open(STATE_FILE) as f:
                return f.read().split()
        except FileNotFoundError:
            return ["page"]

    def head(self, status=200, length=None, extra=()):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        for k, v in extra:
            self.send_header(k, v)
        if length is None:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def stream(self, n, chunked):
        while n > 0:
            part = BLOCK[: min(n, len(BLOCK))]
            self.chunk(part) if chunked else self.wfile.write(part)
            n -= len(part)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def do_GET(self):
        if self.path == "/health":
            self.head(200, 3)
            self.wfile.write(b"ok\n")
            return
        mode = self.mode()
        try:
            self.answer(mode)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def answer(self, mode):
        kind = mode[0]
        if kind == "page":
            body = page(self.headers.get("Accept", ""))
            extra = []
            if "gzip" in self.headers.get("Accept-Encoding", "") and os.path.exists(STATE_FILE + ".gzip"):
                body = gzip.compress(body)
                extra = [("Content-Encoding", "gzip")]
            self.head(200, len(body), extra)
            self.wfile.write(body)
        elif kind in ("length", "chunked"):
            n = int(mode[1])
            self.head(200, n if kind == "length" else None)
            self.stream(n, kind == "chunked")
        elif kind == "endless":
            self.head(200)
            while True:
                self.chunk(BLOCK)
        elif kind == "trickle":
            self.head(200)
            while True:
                self.chunk(LINE)
                self.wfile.flush()
                time.sleep(1)
        elif kind == "hang":
            time.sleep(3600)
        else:
            body = b"no\n"
            self.head(int(mode[1]), len(body))
            self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True


if __name__ == "__main__":
    port, STATE_FILE = int(sys.argv[1]), sys.argv[2]
    Server(("127.0.0.1", port), Handler).serve_forever()
