"""List, then watch, one resource on a Kubernetes API server, and keep doing it whatever happens.

What the API server can do to a watcher, and what this does about it:

- the watch ends (``timeoutSeconds``, a restarted server, a dropped connection): watch again from
  the last resourceVersion seen (events and BOOKMARKs carry it), no re-list;
- that resourceVersion is too old (410 Gone, as an HTTP status or an ERROR event): re-list;
- the resource is not served (404: a CRD not installed, or not at this API version): try the
  next version in the kind's list (Istio's ``v1``, then ``v1beta1``), else warn and retry later,
  slowly; the other kinds are watched on their own threads and never wait for this one.

Blocking (the kubernetes client's urllib3 pool); ``ListWatch.run`` is meant for a thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("remora.control.kube")
RETRY = 2.0  # after a failed list or watch
MISSING_RETRY = 30.0  # after every version answered 404: a CRD may be installed later
WATCH_TIMEOUT = 300  # the server ends each watch after this; we watch again from where we were


@dataclass(frozen=True)
class Kind:
    kind: str
    group: str  # "" for the core API
    versions: tuple[str, ...]  # preferred first
    plural: str
    required: bool = True  # False: the control plane works (and is ready) without it

    def api_version(self, version: str) -> str:
        return f"{self.group}/{version}" if self.group else version

    def path(self, version: str, namespace: str | None = None) -> str:
        base = f"/apis/{self.group}/{version}" if self.group else f"/api/{version}"
        return f"{base}/namespaces/{namespace}/{self.plural}" if namespace else f"{base}/{self.plural}"


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class Gone(Exception):
    """The resourceVersion we asked for is no longer kept: list again."""


class NotServed(Exception):
    """No version of the kind is served (its CRD is missing)."""


class ListWatch:
    """Lists and watches one kind; calls ``on_list(items, version)`` after each (re-)list and
    ``on_event(type, obj)`` for each watch event, ``on_list_failed(why, missing)`` when a list
    fails (``missing``: the kind is not served at all).
    Objects carry apiVersion and kind."""

    def __init__(self, client: Any, kind: Kind, on_list: Callable[[list[dict[str, Any]], str], None],
                 on_event: Callable[[str, dict[str, Any]], None], stop: threading.Event,
                 field_selector: str | None = None, on_list_failed: Callable[[str, bool], None] | None = None,
                 retry: float = RETRY, missing_retry: float = MISSING_RETRY) -> None:
        self.client, self.kind = client, kind
        self.on_list, self.on_event, self.on_list_failed = on_list, on_event, on_list_failed
        self.stop = stop
        self.field_selector = field_selector
        self.retry, self.missing_retry = retry, missing_retry
        self.version: str | None = None  # the version being watched
        self.resource_version: str | None = None
        self._open: set[Any] = set()

    # -- HTTP -------------------------------------------------------------------------------

    def _get(self, path: str, **query: Any) -> Any:
        params = [(n, v) for n, v in query.items() if v is not None]
        if self.field_selector:
            params.append(("fieldSelector", self.field_selector))
        method, url, headers, _, _ = self.client.param_serialize(
            "GET", path, query_params=params, header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        resp = self.client.call_api(method, url, header_params=headers,
                                    _request_timeout=WATCH_TIMEOUT + 30).response
        if resp.status >= 400:
            text = resp.data.decode(errors="replace")[:300]
            resp.release_conn()
            raise ApiError(resp.status, text)
        return resp

    def list(self) -> list[dict[str, Any]]:
        """List at the first served version (remembered for the watch); NotServed when none is."""
        for version in self.kind.versions:
            try:
                resp = self._get(self.kind.path(version))
            except ApiError as exc:
                if exc.status == 404:
                    continue
                raise
            try:
                body = json.loads(resp.data)
            finally:
                resp.release_conn()
            if version != self.version:
                if version != self.kind.versions[0]:
                    log.warning("%s: %s is not served; using %s", self.kind.plural,
                                self.kind.api_version(self.kind.versions[0]), self.kind.api_version(version))
                self.version = version
            self.resource_version = (body.get("metadata") or {}).get("resourceVersion") or None
            return [self._stamp(item) for item in body.get("items") or []]
        self.version = None
        tried = ", ".join(self.kind.api_version(v) for v in self.kind.versions)
        raise NotServed(f"{self.kind.kind} is not served by the API server (tried {tried}); "
                        "is its CRD installed?")

    def _stamp(self, obj: dict[str, Any]) -> dict[str, Any]:
        assert self.version is not None
        return {**obj, "apiVersion": self.kind.api_version(self.version), "kind": self.kind.kind}

    def watch(self) -> None:
        """One watch from ``resource_version`` until the server ends it; Gone on 410."""
        assert self.version is not None
        try:
            resp = self._get(self.kind.path(self.version), watch="true", allowWatchBookmarks="true",
                             resourceVersion=self.resource_version, timeoutSeconds=WATCH_TIMEOUT)
        except ApiError as exc:
            if exc.status == 410:
                raise Gone(str(exc)) from None
            raise
        self._open.add(resp)
        try:
            if self.stop.is_set():  # stopped while connecting: close() may have missed this one
                return
            for line in _lines(resp):
                if self.stop.is_set():
                    return
                if not line.strip():
                    continue
                event = json.loads(line)
                kind, obj = event.get("type", ""), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone(obj.get("message", "resourceVersion too old"))
                    raise ApiError(int(obj.get("code") or 500), obj.get("message", str(obj)))
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                if rv:
                    self.resource_version = rv
                if kind != "BOOKMARK":
                    self.on_event(kind, self._stamp(obj))
        finally:
            self._open.discard(resp)
            with contextlib.suppress(Exception):  # a watch stream is never reused: close it, or the
                resp.close()  # pool would keep it open and the server would keep streaming to it
            resp.release_conn()

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        listed = missing_reported = False
        while not self.stop.is_set():
            try:
                if not listed:
                    items = self.list()
                    if missing_reported:
                        log.warning("%s: now served at %s", self.kind.plural,
                                    self.kind.api_version(self.version or ""))
                    self.on_list(items, self.version or "")
                    listed, missing_reported = True, False
                if self.stop.is_set():
                    return
                self.watch()
                self.stop.wait(0.2)  # the server ended the watch: resume from resource_version
                continue
            except Gone as exc:
                log.info("%s: %s; listing again", self.kind.plural, exc)
                listed = False
                continue
            except NotServed as exc:
                listed = False
                # Once as a warning; a CRD that stays missing is a configuration, not news.
                log.log(logging.DEBUG if missing_reported else logging.WARNING, "%s: %s; retrying every %.0fs",
                        self.kind.plural, exc, self.missing_retry)
                missing_reported = True
                if self.on_list_failed:
                    self.on_list_failed(str(exc), True)
                self.stop.wait(self.missing_retry)
                continue
            except Exception as exc:  # the API server went away, a bad response, RBAC...
                log.warning("%s: list/watch failed, retrying in %.0fs: %s", self.kind.plural, self.retry, exc)
                if not listed and self.on_list_failed:
                    self.on_list_failed(f"list failed: {exc}", False)
                if self.resource_version is None:
                    listed = False  # nothing to resume from
            self.stop.wait(self.retry)

    def close(self) -> None:
        """Unblock a thread stuck reading a watch (with ``stop`` set first)."""
        for resp in list(self._open):
            with contextlib.suppress(Exception):  # closing on the way out
                (getattr(resp, "shutdown", None) or resp.close)()


def _lines(resp: Any) -> Iterator[str]:
    """Newline-delimited JSON events from a streaming urllib3 response."""
    buf = b""
    for chunk in resp.stream(4096):
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line.decode()
    if buf.strip():
        yield buf.decode()
