"""Authentication of Pub/Sub push requests: the OIDC token Pub/Sub attaches, verified with
google-auth (``google.oauth2.id_token``) over a caching session (CacheControl), as Google documents.

Verified here too, not only by Cloud Run, so the service is safe wherever it runs: signature,
audience, issuer and the push subscription's service account. 401: no or invalid token;
403: a valid token of someone else; 503: the certificates cannot be fetched (Pub/Sub retries).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import cachecontrol
import requests
from google.auth import exceptions as gauth_exceptions
from google.auth.transport import requests as gauth_requests
from google.oauth2 import id_token

ISSUERS = frozenset({"https://accounts.google.com", "accounts.google.com"})
CLOCK_SKEW_S = 10
CERTS_TIMEOUT_S = 10.0


class AuthError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _CertsRequest(gauth_requests.Request):
    """google-auth's transport over one caching session, one fetch at a time (requests sessions
    are not documented as thread-safe). ``revalidate`` bypasses the cache and refreshes it."""

    def __init__(self, session: requests.Session, revalidate: bool = False) -> None:
        super().__init__(session)
        self._lock = threading.Lock()
        self._revalidate = revalidate

    def __call__(
        self, url: str, method: str = "GET", body: Any = None, headers: Any = None, **kw: Any
    ) -> Any:
        headers = dict(headers or {})
        if self._revalidate:
            headers["Cache-Control"] = "no-cache"
        kw.setdefault("timeout", CERTS_TIMEOUT_S)
        with self._lock:
            return super().__call__(url, method=method, body=body, headers=headers, **kw)


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
        self.certs_url = certs_url
        # Certificates are kept for their Cache-Control max-age, not fetched per request.
        cached = cachecontrol.CacheControl(session or requests.Session())
        self._request = _CertsRequest(cached)
        self._revalidating = _CertsRequest(cached, revalidate=True)

    def _verify_token(self, token: str, request: gauth_requests.Request) -> Mapping[str, Any]:
        return id_token.verify_token(
            token,
            request,
            audience=self.audience,
            certs_url=self.certs_url,
            clock_skew_in_seconds=CLOCK_SKEW_S,
        )

    def _decode(self, token: str) -> Mapping[str, Any]:
        try:
            try:
                return self._verify_token(token, self._request)
            except ValueError as exc:
                if "Certificate for key id" not in str(exc):
                    raise
            return self._verify_token(token, self._revalidating)  # unknown key id: Google rotated its keys
        except (gauth_exceptions.TransportError, requests.RequestException) as exc:
            # We cannot tell a good token from a bad one: 503 lets Pub/Sub retry later.
            raise AuthError(503, f"cannot fetch token certificates: {type(exc).__name__}") from exc

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
