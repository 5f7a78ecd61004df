"""A real `swarm join` process serving its HTTP API over TLS with API keys: 401 without a key, 200 with one,
`/healthz` and `/metrics` open, a declared 10 MB body refused with 413 before it is sent, refusals in /metrics."""

from __future__ import annotations

import datetime
import ipaddress
import json
import re
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.integration.nodes import NodeProcess

pytestmark = [pytest.mark.timeout(120)]

KEY = "sk-test-5f2c9a"
BIG = 10 * 2**20


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return cert_path, key_path


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> Iterator[tuple[NodeProcess, ssl.SSLContext]]:
    workdir = tmp_path_factory.mktemp("guard")
    cert, key = _self_signed(workdir)
    keys = workdir / "api_keys"
    keys.write_text(f"# keys of this test\n\n{KEY}\nsk-other\n")
    args = ["--api-key-file", str(keys), "--tls-cert", str(cert), "--tls-key", str(key),
            "--set", "node.max_body_bytes=65536"]  # fmt: skip
    process = NodeProcess(workdir, "guarded", args).wait_ready(timeout_s=60)
    try:
        yield process, ssl.create_default_context(cafile=str(cert))
    finally:
        process.stop()


def _http_refused(client: httpx.Client) -> dict[str, float]:
    text = client.get("/metrics").text
    return {m[0]: float(m[1]) for m in re.findall(r'swarm_http_refused_total\{code="(\d+)"\} (\S+)', text)}


def test_keys_open_paths_and_tls(node) -> None:
    process, trust = node
    assert process.http.startswith("https://127.0.0.1:")
    with httpx.Client(base_url=process.http, verify=trust, timeout=10) as client:
        assert client.get("/healthz").status_code == 200
        before = _http_refused(client).get("401", 0.0)
        for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": KEY}):
            response = client.get("/v1/models", headers=headers)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "invalid_api_key"
        unauthorized = client.post("/v1/completions", json={"model": "tiny", "prompt": "x"})
        assert unauthorized.status_code == 401
        assert client.get("/v1/swarm/peers").status_code == 401
        ok = client.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200 and ok.json() == {"object": "list", "data": []}
        # Past the key, input errors are 400s and 404s naming the field, never a 500.
        auth = {"Authorization": "Bearer sk-other"}
        bad = client.post("/v1/completions", headers=auth, json={"model": "tiny", "prompt": "x", "max_tokens": "9"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "max_tokens"
        missing = client.post("/v1/completions", headers=auth, json={"model": "tiny", "prompt": "x"})
        assert missing.status_code == 404 and missing.json()["error"]["param"] == "model"
        assert _http_refused(client)["401"] == before + 5
    with pytest.raises(httpx.ConnectError):  # a client that does not trust the certificate gets nowhere
        httpx.get(f"{process.http}/healthz", timeout=10)


def test_declared_huge_body_gets_413_without_being_sent(node) -> None:
    """Headers announce 10 MB; only 1 KiB follows, and the node answers 413 at once instead of waiting."""
    process, trust = node
    host, port = process.http.removeprefix("https://").rsplit(":", 1)
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {BIG}\r\n\r\n").encode()  # fmt: skip
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        trust.wrap_socket(raw, server_hostname=host) as tls,
    ):
        tls.sendall(head + b"{" * 1024)
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = tls.recv(4096)
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    with httpx.Client(base_url=process.http, verify=trust, timeout=10) as client:
        assert _http_refused(client)["413"] >= 1
        # A streamed (chunked) body over node.max_body_bytes is refused too; the node still answers after it.
        chunks = (b"x" * 8192 for _ in range(BIG // 8192))
        response = client.post("/v1/completions", headers={"Authorization": f"Bearer {KEY}"}, content=chunks)
        assert response.status_code == 413
        assert client.get("/healthz").status_code == 200


def test_status_command_with_a_key(node) -> None:
    process, _ = node
    cert = process.info_file.parent / "cert.pem"
    keys = process.info_file.parent / "api_keys"
    cmd = [sys.executable, "-m", "swarm", "status", "--http", process.http, "--json", "--ca-cert", str(cert)]
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "401" in refused.stderr
    out = subprocess.run([*cmd, "--api-key-file", str(keys)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert [row["peer_id"] for row in json.loads(out.stdout)] == [process.peer_id]
