"""Rewrites and redirects (VirtualService ``rewrite`` and ``redirect``) on a request's target.

Paths here include the query string; rewrites change the path part and keep the query, as
Envoy's prefix_rewrite / regex_rewrite do.
"""

from __future__ import annotations

from control_plane.api.model import Redirect, Rewrite, RouteMatch
from control_plane.api.re2 import compile_re2


def split(path: str) -> tuple[str, str]:
    """(path, "?query" or "")."""
    p, sep, q = path.partition("?")
    return p, sep + q


def rewrite_path(rw: Rewrite, path: str, matched: RouteMatch | None) -> str:
    """The upstream path: uri replaces the matched prefix (or the whole path), uriRegexRewrite
    substitutes every match of its regex, with \\1-style group references."""
    p, query = split(path)
    if rw.uri_regex is not None:
        pattern = compile_re2(rw.uri_regex.match)
        return pattern.sub(rw.uri_regex.rewrite, p) + query
    if rw.uri is None:
        return path
    uri = matched.uri if matched is not None else None
    if uri is not None and uri.prefix is not None:
        cut = len(uri.prefix)
        return (rw.uri + p[cut:]) + query
    return rw.uri + query


def rewrite_authority(rw: Rewrite, authority: str) -> str:
    return rw.authority if rw.authority is not None else authority


def redirect_location(rd: Redirect, scheme: str, authority: str, path: str) -> str:
    """The Location of a redirect: each of scheme, authority, port and path replaced if given.

    The query string is kept unless the new uri carries its own (Envoy's path_redirect).
    """
    host = rd.authority if rd.authority is not None else authority
    if rd.port is not None:
        host = f"{_host_only(host)}:{rd.port}"
    p, query = split(path)
    if rd.uri is not None:
        p, query = (rd.uri, "") if "?" in rd.uri else (rd.uri, query)
    return f"{rd.scheme or scheme}://{host}{p}{query}"


def _host_only(authority: str) -> str:
    if authority.startswith("["):  # [v6]:port
        return authority.split("]", 1)[0] + "]"
    return authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority
