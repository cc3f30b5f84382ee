"""What `Authentication-Results` (RFC 8601) headers prove about a mail's sender (pure).

Anybody can write an Authentication-Results header into a mail, naming any server. Only
the ones our own servers added count, and those sit at the top of the header block, above
everything the sender or the sender's relays wrote. The rule (RFC 8601 §5):

1. Walk the Received and Authentication-Results headers from the top, in order.
2. An Authentication-Results header counts only while no Received header written by a
   foreign host has been passed: the first Received header whose `by` host is not ours
   ends the trusted part (ours: a trusted authserv-id or `[agents] trusted_hosts`, or a
   host under one of them, e.g. `mx.example.com` under the id `example.com`). Our border
   MX's own Received line (`from` the sender's host `by` our MX) does not end it: milters
   such as OpenDKIM insert their header just below it.
3. Within the trusted part, only headers whose authserv-id is trusted count, and for each
   method the topmost header with a verdict for it decides: a `dmarc=fail` of our MX
   above a `dmarc=pass` further down means fail, whoever wrote the second. (Within that
   one header every result counts: a mail may carry several DKIM signatures.)
4. A pass proves the From address only when it names it: `dmarc=pass` with
   `header.from` equal to the From domain, `dkim=pass` with `header.d` equal to the From
   domain or a parent of it. A pass that names nothing is no proof.

A sender who connects straight to our MX has no relay of their own whose Received line
could end the trusted part; their forged header then sits just below our MX's genuine
ones and loses by rule 3 for every method our MX evaluates. Have the MX evaluate DKIM and
DMARC (or remove incoming headers that carry its authserv-id, as RFC 8601 asks).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

_COMMENT = re.compile(r"\([^()]*\)")
_RESULT = re.compile(r"^\s*([a-z0-9_-]+)\s*=\s*([a-z]+)\b(.*)$", re.IGNORECASE | re.DOTALL)
_PROPERTY = re.compile(r"\b(header\.[a-z]+)\s*=\s*\"?([^\s;\"]+)", re.IGNORECASE)
_BY = re.compile(r"\bby\s+\[?([a-z0-9.:_-]+)", re.IGNORECASE)
METHODS = ("dmarc", "dkim")


def _uncomment(value: str) -> str:
    text = value
    for _ in range(3):  # comments may nest a little
        text = _COMMENT.sub(" ", text)
    return text


def results(value: str) -> tuple[str, list[tuple[str, str, dict[str, str]]]]:
    """('authserv-id', [(method, result, {property: value})]) of one header value."""
    parts = [p.strip() for p in _uncomment(value).split(";")]
    head = parts[0].split()
    server = head[0].lower() if head else ""
    found = []
    for part in parts[1:]:
        match = _RESULT.match(part)
        if match:
            props = {k.lower(): v.lower() for k, v in _PROPERTY.findall(match.group(3))}
            found.append((match.group(1).lower(), match.group(2).lower(), props))
    return server, found


def received_by(value: str) -> str:
    """The host that wrote a Received header (its `by` clause), '' if none."""
    found = _BY.search(_uncomment(value.partition(";")[0]))
    return found.group(1).lower().rstrip(".") if found else ""


def _ours(host: str, names: Sequence[str]) -> bool:
    return bool(host) and any(host == n or host.endswith("." + n) for n in names)


def trusted_results(trace: Iterable[tuple[str, str]], trusted: Iterable[str],
                    hosts: Iterable[str] = ()) -> list[str]:
    """The Authentication-Results values our own servers wrote, top first (rules 1–3's
    selection; `trace`: (lower header name, value) in the mail's order)."""
    ids = [t.lower() for t in trusted]
    names = [*ids, *(h.lower() for h in hosts)]
    found = []
    for name, value in trace:
        if name == "received":
            if not _ours(received_by(value), names):
                break
        elif name == "authentication-results" and results(value)[0] in ids:
            found.append(value)
    return found


def sender_proven(headers: Iterable[str], trusted: Iterable[str], from_addr: str) -> str:
    """How a trusted server vouches for `from_addr` ('dmarc=pass from mx…'), or ''.
    `headers`: trusted Authentication-Results values, top first (see trusted_results)."""
    trusted_ids = {t.lower() for t in trusted}
    domain = from_addr.rpartition("@")[2].lower()
    if not trusted_ids or not domain:
        return ""
    first: dict[str, int] = {}  # method -> the header that decides it
    proofs: dict[str, str] = {}
    dmarc_failed = False
    for index, value in enumerate(headers):
        server, found = results(value)
        if server not in trusted_ids:
            continue
        for method, result, props in found:
            if method not in METHODS or first.setdefault(method, index) != index:
                continue
            dmarc_failed = dmarc_failed or (method, result) == ("dmarc", "fail")
            proofs[method] = (proofs.get(method)
                              or _verdict(method, result, props, domain, server))
    if dmarc_failed:  # our MX judged the From forged, whatever a DKIM signature says
        return ""
    return proofs.get("dmarc") or proofs.get("dkim") or ""


def _verdict(method: str, result: str, props: dict[str, str], domain: str,
             server: str) -> str:
    """What one result says about `domain`: a proof, or '' (it decides the method either
    way: a result that proves nothing is not outvoted by a pass further down)."""
    if result != "pass":
        return ""
    if method == "dmarc" and props.get("header.from") == domain:
        return f"dmarc=pass from {server}"
    signer = props.get("header.d", "")
    if method == "dkim" and signer and (domain == signer or domain.endswith("." + signer)):
        return f"dkim=pass ({signer}) from {server}"
    return ""
