"""Who is calling: verify a workload token and return the identity it proves.

Local mode: HMAC tokens minted by the local cluster (``control_plane.api.tokens``).
Kube mode: a TokenReview with audience ``remora-ca`` against the API server.
"""

from __future__ import annotations

import abc
import asyncio
from dataclasses import dataclass
from typing import Any

from control_plane.api import tokens
from control_plane.api.ports import CA_TOKEN_AUDIENCE


class AuthError(ValueError):
    """The token proves nothing; the message says why (sent to the proxy, logged, counted)."""


@dataclass(frozen=True)
class Caller:
    namespace: str
    service_account: str
    pod: str | None  # when the token is bound to a pod


class Authenticator(abc.ABC):
    @abc.abstractmethod
    async def authenticate(self, token: str) -> Caller: ...


class LocalTokenAuthenticator(Authenticator):
    def __init__(self, key: bytes, audience: str = CA_TOKEN_AUDIENCE) -> None:
        self.key = key
        self.audience = audience

    async def authenticate(self, token: str) -> Caller:
        try:
            c = tokens.verify(self.key, token, self.audience)
        except tokens.TokenError as exc:
            raise AuthError(str(exc)) from None
        return Caller(c.namespace, c.service_account, c.pod or None)


_SA_PREFIX = "system:serviceaccount:"
_POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"


def caller_from_token_review(status: dict[str, Any]) -> Caller:
    """Read a TokenReview status (as a dict); AuthError unless authenticated as a service account."""
    if not status.get("authenticated"):
        raise AuthError(f"TokenReview: not authenticated: {status.get('error') or 'token rejected'}")
    user = status.get("user") or {}
    name = user.get("username") or ""
    if not name.startswith(_SA_PREFIX) or name.count(":") != 3:
        raise AuthError(f"TokenReview: {name!r} is not a service account")
    ns, sa = name[len(_SA_PREFIX):].split(":")
    if CA_TOKEN_AUDIENCE not in (status.get("audiences") or [CA_TOKEN_AUDIENCE]):
        raise AuthError(f"TokenReview: token is not for audience {CA_TOKEN_AUDIENCE}")
    pods = (user.get("extra") or {}).get(_POD_NAME_EXTRA) or []
    return Caller(ns, sa, pods[0] if pods else None)


class TokenReviewAuthenticator(Authenticator):
    """Kubernetes TokenReview via the kubernetes client (blocking, so run in a thread)."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client  # imported here: local mode never needs it

        self._api = client.AuthenticationV1Api(api_client)
        self._client = client

    def _review(self, token: str) -> dict[str, Any]:
        body = self._client.V1TokenReview(
            spec=self._client.V1TokenReviewSpec(token=token, audiences=[CA_TOKEN_AUDIENCE])
        )
        result = self._api.create_token_review(body)
        return self._api.api_client.sanitize_for_serialization(result.status) or {}

    async def authenticate(self, token: str) -> Caller:
        try:
            status = await asyncio.to_thread(self._review, token)
        except AuthError:
            raise
        except Exception as exc:  # API errors: the caller cannot be verified now
            raise AuthError(f"TokenReview failed: {exc}") from None
        return caller_from_token_review(status)
