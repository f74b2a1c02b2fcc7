"""Authentication of Pub/Sub push requests: the OIDC token Pub/Sub attaches, verified with google-auth.

Cloud Run can check the token itself (``--no-allow-unauthenticated``), but the service
also verifies it so that it is safe wherever it runs (a load balancer, ingress "all",
a misconfigured IAM binding): the signature against Google's certificates, the
audience, the issuer, and the email of the push subscription's service account.
401 for a missing or invalid token (no identity), 403 for a valid token of someone else.

Certificates are cached for their ``Cache-Control: max-age`` and refetched once when a
token names a key id we do not have (key rotation), instead of once per request.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Mapping
from typing import Any

import requests
from google.auth import exceptions as gauth_exceptions
from google.auth import jwt

ISSUERS = frozenset({"https://accounts.google.com", "accounts.google.com"})
DEFAULT_CERTS_TTL_S = 300.0
CLOCK_SKEW_S = 10


class AuthError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class CertsCache:
    def __init__(self, url: str, session: requests.Session | None = None, timeout_s: float = 10.0) -> None:
        self.url = url
        self._session = session or requests.Session()
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._certs: dict[str, str] = {}
        self._expires = 0.0

    def get(self, refresh: bool = False) -> dict[str, str]:
        with self._lock:
            if refresh or not self._certs or time.monotonic() >= self._expires:
                response = self._session.get(self.url, timeout=self._timeout_s)
                response.raise_for_status()
                certs = response.json()
                if not isinstance(certs, dict) or not certs:
                    raise ValueError("certificate endpoint returned no keys")
                self._certs = {str(k): str(v) for k, v in certs.items()}
                self._expires = time.monotonic() + _max_age(response.headers.get("Cache-Control"))
            return dict(self._certs)


def _max_age(cache_control: str | None) -> float:
    match = re.search(r"max-age=(\d+)", cache_control or "")
    return float(match.group(1)) if match else DEFAULT_CERTS_TTL_S


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


class PushAuthenticator:
    def __init__(
        self,
        audience: str,
        service_account: str | None,
        certs_url: str,
        session: requests.Session | None = None,
    ) -> None:
        self.audience = audience
        self.service_account = service_account
        self.certs = CertsCache(certs_url, session)

    def _decode(self, token: str) -> Mapping[str, Any]:
        try:
            certs = self.certs.get()
        except (requests.RequestException, ValueError) as exc:
            # We cannot tell a good token from a bad one: 503 lets Pub/Sub retry later.
            raise AuthError(503, f"cannot fetch token certificates: {type(exc).__name__}") from exc
        try:
            return jwt.decode(token, certs=certs, audience=self.audience, clock_skew_in_seconds=CLOCK_SKEW_S)
        except (ValueError, gauth_exceptions.GoogleAuthError) as exc:
            if "Certificate for key id" not in str(exc):
                raise
        return jwt.decode(  # unknown key id: Google rotated its keys
            token,
            certs=self.certs.get(refresh=True),
            audience=self.audience,
            clock_skew_in_seconds=CLOCK_SKEW_S,
        )

    def verify(self, authorization: str | None) -> Mapping[str, Any]:
        """The token's claims, or :class:`AuthError` (401 no/invalid token, 403 wrong identity)."""
        token = bearer_token(authorization)
        if not token:
            raise AuthError(401, "missing bearer token")
        try:
            claims = self._decode(token)
        except AuthError:
            raise
        except (ValueError, gauth_exceptions.GoogleAuthError) as exc:
            raise AuthError(401, f"invalid token: {exc}") from exc
        if claims.get("iss") not in ISSUERS:
            raise AuthError(401, "token not issued by Google")
        if self.service_account:
            if claims.get("email") != self.service_account:
                raise AuthError(403, "token is not from the push subscription's service account")
            if claims.get("email_verified") is not True:
                raise AuthError(403, "token email is not verified")
        return claims
