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
3. Within the trusted part, only headers whose authserv-id is trusted count, and of
   those only the topmost header of each authserv-id: what our MX wrote last. Every
   header below it with the same id may be the sender's (a sender who connects straight
   to our MX writes theirs just below our MX's genuine one). A method the topmost header
   does not name is no proof, whatever a header further down says of it; a
   `dmarc=fail` in it means forged, whatever a DKIM signature says; `dmarc=none` (no
   policy) proves nothing. (Within that one header every result counts: a mail may carry
   several DKIM signatures.)
4. A pass proves the From address only when it names it: `dmarc=pass` with
   `header.from` equal to the From domain, `dkim=pass` with `header.d` equal to the From
   domain or a parent of it. A pass that names nothing is no proof.

So the MX must write a header for every mail, signed or not, with DKIM or DMARC in the
topmost one (rspamd and Google do; OpenDKIM needs `AlwaysAddARHeader yes`, and with
OpenDMARC beside it, OpenDMARC must run after OpenDKIM so its header is on top), or
remove incoming headers that carry its authserv-id, as RFC 8601 asks. An MX that writes
nothing for an unsigned mail leaves the sender's forged header on top: with such an MX,
set no `trusted_authserv_ids`.
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
    proofs: dict[str, str] = {}
    seen: set[str] = set()
    for value in headers:
        server, found = results(value)
        if server not in trusted_ids or server in seen:
            continue  # only the topmost header of each of our servers (rule 3)
        seen.add(server)
        for method, result, props in found:
            if (method, result) == ("dmarc", "fail"):
                return ""  # our MX judged the From forged, whatever a signature says
            if method in METHODS and method not in proofs:
                proof = _verdict(method, result, props, domain, server)
                if proof:
                    proofs[method] = proof
    return proofs.get("dmarc") or proofs.get("dkim") or ""


def _verdict(method: str, result: str, props: dict[str, str], domain: str,
             server: str) -> str:
    """What one result says about `domain`: a proof, or ''."""
    if result != "pass":
        return ""
    if method == "dmarc" and props.get("header.from") == domain:
        return f"dmarc=pass from {server}"
    signer = props.get("header.d", "")
    if method == "dkim" and signer and (domain == signer or domain.endswith("." + signer)):
        return f"dkim=pass ({signer}) from {server}"
    return ""
