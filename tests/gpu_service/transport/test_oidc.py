"""Push authentication with real OIDC tokens: signed with a test RSA key, whose certificate a
local HTTP server publishes the way Google publishes its own (``{kid: x509 PEM}``)."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt

from gpu_service.app import create_app
from gpu_service.inference.model import load_model
from gpu_service.settings import Settings
from tests.support.service import envelope

AUDIENCE = "https://gpu-service.example.run.app/"
PUSH_SA = "pubsub-push@test-project.iam.gserviceaccount.com"


class KeyPair:
    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, kid)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(self.key, hashes.SHA256())
        )
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        pem = self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self.signer = crypt.RSASigner.from_string(pem, key_id=kid)

    def token(self, **overrides: Any) -> str:
        now = int(time.time())
        claims = {
            "iss": "https://accounts.google.com",
            "aud": AUDIENCE,
            "sub": "1234567890",
            "email": PUSH_SA,
            "email_verified": True,
            "iat": now,
            "exp": now + 3600,
        }
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(self.signer, claims).decode()


class CertsServer:
    def __init__(self) -> None:
        self.certs: dict[str, str] = {}
        self.fetches = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                owner.fetches += 1
                body = json.dumps(owner.certs).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "public, max-age=3600")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/oauth2/v1/certs"


@pytest.fixture(scope="module")
def keys() -> dict[str, KeyPair]:
    return {"a": KeyPair("kid-a"), "b": KeyPair("kid-b"), "evil": KeyPair("kid-a")}


@pytest.fixture(scope="module")
def certs(keys: dict[str, KeyPair]) -> Iterator[CertsServer]:
    server = CertsServer()
    server.certs = {keys["a"].kid: keys["a"].cert_pem}
    yield server
    server.httpd.shutdown()


@pytest.fixture(scope="module")
def client(certs: CertsServer, gcs_server) -> Iterator[Any]:
    settings = Settings(
        project="test-project",
        push_audience=AUDIENCE,
        push_service_account=PUSH_SA,
        push_certs_url=certs.url,
        lime_num_samples=16,
    )
    app = create_app(settings, model=load_model())
    yield app.test_client()
    app.extensions["gpu_service"].close()


def _missing_object_envelope(bucket: str) -> dict:
    return envelope(
        {
            "schema": "dicom-inference-request/1",
            "source": {"bucket": bucket, "name": "nowhere/missing.dcm", "generation": "1"},
            "dicom": {},
        }
    )


def _post(client: Any, token: str | None, body: Any) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.post("/", json=body, headers=headers)


def test_valid_token_is_accepted(client: Any, keys: dict[str, KeyPair], bucket_name: str) -> None:
    response = _post(client, keys["a"].token(), _missing_object_envelope(bucket_name))
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["outcome"] == "failed"  # processed: the object does not exist


def test_missing_or_malformed_token_is_401(client: Any) -> None:
    assert _post(client, None, {}).status_code == 401
    assert client.post("/", json={}, headers={"Authorization": "Basic dXNlcjpwYXNz"}).status_code == 401
    assert _post(client, "not.a.jwt", {}).status_code == 401


@pytest.mark.parametrize(
    "claims",
    [
        {"aud": "https://someone-else.example/"},
        {"iss": "https://evil.example.com"},
        {"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200},
    ],
    ids=["wrong-audience", "wrong-issuer", "expired"],
)
def test_invalid_claims_are_401(client: Any, keys: dict[str, KeyPair], claims: dict) -> None:
    assert _post(client, keys["a"].token(**claims), {}).status_code == 401


def test_forged_signature_is_401(client: Any, keys: dict[str, KeyPair]) -> None:
    # Same key id as the published certificate, different private key.
    assert _post(client, keys["evil"].token(), {}).status_code == 401


def test_other_identity_is_403(client: Any, keys: dict[str, KeyPair]) -> None:
    other = keys["a"].token(email="someone@evil.iam.gserviceaccount.com")
    assert _post(client, other, {}).status_code == 403
    assert _post(client, keys["a"].token(email_verified=False), {}).status_code == 403


def test_rotated_key_is_fetched_once(
    client: Any, certs: CertsServer, keys: dict[str, KeyPair], bucket_name: str
) -> None:
    before = certs.fetches
    assert _post(client, keys["a"].token(), _missing_object_envelope(bucket_name)).status_code == 200
    assert certs.fetches == before  # cached for max-age
    certs.certs = {keys["a"].kid: keys["a"].cert_pem, keys["b"].kid: keys["b"].cert_pem}
    assert _post(client, keys["b"].token(), _missing_object_envelope(bucket_name)).status_code == 200
    assert certs.fetches == before + 1


def test_health_endpoints_need_no_token(client: Any) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
