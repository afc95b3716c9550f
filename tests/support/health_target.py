#!/usr/bin/env python3
"""A health-check target for the tests: GET /health answers by the mode
read from STATE_FILE on every request:

  ok    -> 200
  500   -> 500 (any number: that status)
  hang  -> no answer for an hour
  garbage -> 4 KiB of bytes that are not HTTP, then the connection closes

GET /metrics serves what vLLM's own /metrics serves for stall detection,
from STATE_FILE.metrics ("WAITING RUNNING frozen|moving", default
"0 0 moving"): the gauges vllm:num_requests_waiting and
vllm:num_requests_running and the counter vllm:generation_tokens_total
(vllm/v1/metrics/loggers.py, PrometheusStatLogger, rendered by
prometheus_client in text format 0.0.4). "frozen" keeps the token counter
at 100; "moving" adds one per scrape, as generation does.

Usage: health_target.py PORT STATE_FILE [--daemon PID_FILE]

With HEALTH_TARGET_TLS=CERT_FILE:KEY_FILE in the environment it serves
HTTPS with that certificate; with HEALTH_TARGET_CLIENT_CA=CA_FILE too, it
requires a client certificate signed by that CA.

With --daemon the port is bound first, then the process forks: the child
serves, the parent writes the child's pid and exits 0. A restart command
can therefore return as soon as the server is reachable.
"""
import http.server
import os
import ssl
import sys
import time


TOKENS = [100]


def vllm_metrics():
    try:
        with open(STATE_FILE + ".metrics") as f:
            waiting, running, counter = f.read().split()
    except FileNotFoundError:
        waiting, running, counter = "0", "0", "moving"
    if counter == "moving":
        TOKENS[0] += 1
    labels = '{engine="0",model_name="nemotron"}'
    return (
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
        "# TYPE vllm:num_requests_running gauge\n"
        f"vllm:num_requests_running{labels} {float(running)}\n"
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
        "# TYPE vllm:num_requests_waiting gauge\n"
        f"vllm:num_requests_waiting{labels} {float(waiting)}\n"
        "# HELP vllm:generation_tokens_total Number of generation tokens processed.\n"
        "# TYPE vllm:generation_tokens_total counter\n"
        f"vllm:generation_tokens_total{labels} {float(TOKENS[0])}\n"
        "# HELP vllm:generation_tokens_created Number of generation tokens processed.\n"
        "# TYPE vllm:generation_tokens_created gauge\n"
        f"vllm:generation_tokens_created{labels} 1.7e+09\n"
    ).encode()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/metrics":
            body = vllm_metrics()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        try:
            with open(STATE_FILE) as f:
                mode = f.read().strip() or "ok"
        except FileNotFoundError:
            mode = "ok"
        if mode == "hang":
            time.sleep(3600)
            return
        if mode == "garbage":
            self.wfile.write(bytes((i * 7919 + 13) % 256 for i in range(4096)))
            self.close_connection = True
            return
        code = 200 if mode == "ok" else int(mode)
        body = b'{"status":"ok"}' if code == 200 else b'{"status":"error"}'
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True


if __name__ == "__main__":
    port, STATE_FILE = int(sys.argv[1]), sys.argv[2]
    server = Server(("127.0.0.1", port), Handler)
    tls = os.environ.get("HEALTH_TARGET_TLS")
    if tls:
        cert, key = tls.split(":")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        client_ca = os.environ.get("HEALTH_TARGET_CLIENT_CA")
        if client_ca:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(client_ca)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    if len(sys.argv) > 4 and sys.argv[3] == "--daemon":
        pid = os.fork()
        if pid:
            with open(sys.argv[4], "w") as f:
                f.write(str(pid))
            os._exit(0)
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
    server.serve_forever()
