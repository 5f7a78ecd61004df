"""Which llama.cpp server the serving bench is pointed at decides the request bodies it sends."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from serving.bench_workload import BenchRequest
from swarm.bench.bench_http import llama_cpp_server


def _serve(has_props: bool):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if has_props and self.path == "/props" else 404)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


@pytest.mark.parametrize("has_props", [True, False])
def test_llama_server_gets_token_ids_and_llama_cpp_python_gets_text(has_props):
    httpd = _serve(has_props)
    try:
        server, kind = llama_cpp_server(f"http://127.0.0.1:{httpd.server_address[1]}/v1", [257])
    finally:
        httpd.shutdown()
    body = server.body(BenchRequest(0.0, [72, 105], 4))
    if has_props:
        assert kind == "llama-server"
        assert body["prompt"] == [72, 105] and body["ignore_eos"] and "logit_bias" not in body
    else:
        assert kind == "llama-cpp-python"
        assert isinstance(body["prompt"], str) and len(body["prompt"]) == 2 and body["logit_bias"] == {"257": -100}
    assert server.url.endswith("/v1/completions")
