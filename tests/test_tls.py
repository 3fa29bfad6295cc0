"""TLS served by the proxy itself (tls_cert/tls_key), with a certificate made in the test."""

from __future__ import annotations

import asyncio
import datetime
import io
import ipaddress
import ssl
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from conftest import StartSims, group, make_settings
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from identity import PASSWORD, auth_settings
from mongo import free_port

from olbproxy.app import AUTHENTICATOR, create_app
from olbproxy.cli import main
from olbproxy.config import load
from olbproxy.logs import Logs
from olbproxy.server import serve


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mac-studio.local")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_the_proxy_serves_https_and_logs_logins_as_encrypted(
    start_sims: StartSims, tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path)
    (sim,) = await start_sims(1, tokens_per_second=0)
    port = free_port()
    settings = replace(
        make_settings(group("20b", ("gpt-oss:20b",), [sim]), auth=auth_settings()),
        listen_port=port,
        tls_cert=str(cert),
        tls_key=str(key),
    )
    app = await create_app(settings)

    async def add_user(app: web.Application) -> None:
        await app[AUTHENTICATOR].accounts.add_user("kim", PASSWORD)

    app.on_startup.append(add_user)
    listening: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    logs = Logs("INFO", "text", stream := _Lines())
    logs.start()
    server = asyncio.create_task(serve(settings, app=app, ready=listening.set_result, stop=stop))
    try:
        assert await asyncio.wait_for(listening, 10) == [f"https://127.0.0.1:{port}"]
        trust = ssl.create_default_context(cafile=str(cert))
        async with aiohttp.ClientSession() as http:
            async with http.get(f"https://127.0.0.1:{port}/", ssl=trust) as resp:
                assert await resp.text() == "Ollama is running"
            body = {"username": "kim", "password": PASSWORD}
            url = f"https://127.0.0.1:{port}/api/auth/login"
            async with http.post(url, json=body, ssl=trust) as resp:
                assert resp.status == 200
            # Plain HTTP on the TLS port gets nowhere.
            with pytest.raises(aiohttp.ClientError):
                async with http.get(f"http://127.0.0.1:{port}/") as resp:
                    await resp.read()
            # A client that does not trust the certificate refuses it.
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with http.get(f"https://127.0.0.1:{port}/") as resp:
                    await resp.read()
    finally:
        stop.set()
        await server
        logs.stop()
    login = next(line for line in stream.lines if "event=login" in line)
    assert "user=kim" in login and "tls=yes" in login


class _Lines(io.StringIO):
    """A text stream that keeps what was written, line by line."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def write(self, text: str) -> int:
        self.lines.extend(line for line in text.splitlines() if line)
        return len(text)

    def flush(self) -> None:
        pass


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("JWT_SECRET_FILE", "OLLAMA_ENDPOINTS", "OLBPROXY_LISTEN", "MONGODB_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JWT_SECRET", "a-secret-of-forty-eight-characters-for-the-test")


def test_check_config_loads_the_certificate_as_serve_does(
    environment: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert, key = self_signed(tmp_path)
    config = tmp_path / "olbproxy.yaml"
    text = "listen: 127.0.0.1:11434\nstore: {{backend: memory}}\ntls_cert: {}\ntls_key: {}\n"
    config.write_text(text.format(cert, key), encoding="utf-8")
    assert main(["check-config", str(config)]) == 0
    assert "listen https://127.0.0.1:11434" in capsys.readouterr().out

    key.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    expected = (
        f"olbproxy: configuration error: {config}: tls_cert/tls_key: {cert} and {key} are "
        "not a PEM certificate chain and its private key"
    )
    for argv in (["check-config", str(config)], ["serve", "--config", str(config)]):
        assert main(argv) == 2
        assert capsys.readouterr().err.startswith(expected)

    key.unlink()
    assert main(["check-config", str(config)]) == 2
    assert capsys.readouterr().err == (
        f"olbproxy: configuration error: {config}: tls_cert/tls_key: {key}: no such file "
        "(relative paths are relative to the working directory)\n"
    )


async def test_status_trusts_the_proxys_own_certificate(
    start_sims: StartSims, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = self_signed(tmp_path)
    (sim,) = await start_sims(1, tokens_per_second=0)
    port = free_port()
    config = tmp_path / "olbproxy.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{port}\ntls_cert: {cert}\ntls_key: {key}\n"
        "auth: {enabled: false}\nstore: {backend: memory}\n"
        f'groups: [{{name: 20b, models: ["gpt-oss:20b"], endpoints: ["{sim.url}"]}}]\n',
        encoding="utf-8",
    )
    monkeypatch.delenv("OLLAMA_ENDPOINTS", raising=False)
    settings = load(config, {})
    listening: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    server = asyncio.create_task(serve(settings, ready=listening.set_result, stop=stop))
    try:
        await asyncio.wait_for(listening, 10)
        code = await asyncio.to_thread(main, ["status", "--config", str(config)])
    finally:
        stop.set()
        await server
    assert code == 0
