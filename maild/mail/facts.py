"""Extract the facts a support ticket needs from a customer's text (German and English).

Labelled lines come first ("Kundennummer: 12345", "Order no. - 778899", table rows);
what is not labelled is looked for in free text with patterns that are reliable enough
(phone numbers, version strings, operating systems, quoted error messages, reference
numbers next to their keyword). Pure: text and sender in, a `Facts` value out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from maild.mail.bounded import bounded

FACTS = (
    "contact_name", "email", "phone", "company", "occurred", "location", "device", "os",
    "software_version", "network", "action", "error_message", "reproducible",
    "order_numbers", "customer_numbers",
)
LIST_FACTS = frozenset({"order_numbers", "customer_numbers"})
MAX_NUMBERS = 100  # reference numbers kept per list and mail
MAX_SIGNATURE_LINES = 40  # lines of a signature searched for the company

Value = str | tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Facts:
    """What a ticket knows of the customer's situation: a text per fact ("" unknown) and
    the reference numbers as tuples. Stored as JSON with the known facts only (`to_json`),
    read back tolerantly (`from_json`: unknown keys and wrong types dropped)."""

    contact_name: str = ""
    email: str = ""
    phone: str = ""
    company: str = ""
    occurred: str = ""
    location: str = ""
    device: str = ""
    os: str = ""
    software_version: str = ""
    network: str = ""
    action: str = ""
    error_message: str = ""
    reproducible: str = ""
    order_numbers: tuple[str, ...] = ()
    customer_numbers: tuple[str, ...] = ()

    def get(self, fact: str) -> Value:
        """The value of `fact` by name ("" for a name that is no fact)."""
        return getattr(self, fact) if fact in _FIELDS else ""

    def known(self) -> list[tuple[str, Value]]:
        """(name, value) of every known fact, in `FACTS` order."""
        return [(fact, value) for fact in FACTS if (value := getattr(self, fact))]

    def __bool__(self) -> bool:
        return any(getattr(self, fact) for fact in FACTS)

    def to_json(self) -> dict[str, str | list[str]]:
        return {fact: list(value) if isinstance(value, tuple) else value
                for fact, value in self.known()}

    @classmethod
    def from_json(cls, data: Mapping[str, object] | None) -> Facts:
        values: dict[str, Value] = {}
        for fact, value in (data or {}).items():
            if fact in LIST_FACTS and isinstance(value, list | tuple):
                values[fact] = tuple(str(v) for v in value if str(v))
            elif fact in _FIELDS and fact not in LIST_FACTS and isinstance(value, str):
                values[fact] = value
        return cls(**values)  # type: ignore[arg-type]

    def merge(self, new: Facts) -> Facts:
        """The facts after one more message: known values stay, gaps fill, lists grow."""
        values: dict[str, Value] = {}
        for fact in FACTS:
            old, more = getattr(self, fact), getattr(new, fact)
            if isinstance(old, tuple):
                values[fact] = old + tuple(v for v in dict.fromkeys(more) if v not in old)
            else:
                values[fact] = old or more
        return Facts(**values)  # type: ignore[arg-type]

    def missing(self, required: Iterable[str]) -> list[str]:
        """The required facts not known yet, in the configured order."""
        return [fact for fact in required if not self.get(fact)]


_FIELDS = frozenset(FACTS)


_NORM = re.compile(r"[\s.\-_:]+")


def _norm(label: str) -> str:
    return _NORM.sub("", label.lower())


_ALIASES: dict[str, tuple[str, ...]] = {
    "contact_name": ("name", "ihr name", "dein name", "ansprechpartner", "ansprechpartnerin",
                     "kontakt", "kontaktperson", "contact", "contact person", "contact name"),
    "company": ("firma", "unternehmen", "firmenname", "company", "company name",
                "organisation", "organization", "kunde firma"),
    "phone": ("telefon", "tel", "telefonnummer", "rufnummer", "rückrufnummer", "handy", "mobil",
              "mobilnummer", "phone", "phone number", "telephone", "mobile", "cell", "fon"),
    "email": ("e-mail", "email", "mail", "e-mail-adresse"),
    "customer_numbers": ("kundennummer", "kundennummern", "kunden-nr", "kundennr", "kd-nr",
                         "kdnr", "kd.-nr", "customer number", "customer no", "customer #",
                         "customer id", "account no", "account number", "cust no"),
    "order_numbers": ("auftragsnummer", "auftragsnummern", "auftrags-nr", "auftragsnr",
                      "auftrag", "bestellnummer", "bestell-nr", "bestellnr", "angebotsnummer",
                      "lieferscheinnummer", "vorgangsnummer", "rechnungsnummer", "order number",
                      "order numbers", "order no", "order", "orders", "po number", "po",
                      "invoice number", "reference", "referenz"),
    "occurred": ("zeitpunkt", "datum", "wann", "seit wann", "when", "date", "time",
                 "first occurred", "since"),
    "location": ("ort", "wo", "standort", "filiale", "where", "location", "site"),
    "device": ("gerät", "endgerät", "device", "hardware", "handheld", "smartphone",
               "tablet", "rechner", "computer"),
    "os": ("betriebssystem", "os", "operating system", "plattform", "platform", "system",
           "android version", "ios version", "windows version"),
    "software_version": ("version", "app-version", "app version", "software version",
                         "softwareversion", "app ver", "programmversion", "client version",
                         "software", "app"),
    "network": ("netzwerk", "netz", "verbindung", "netzverbindung", "internet", "network",
                "connection", "netzwerkverbindung"),
    "action": ("was habe ich gemacht", "was hast du gemacht", "was wurde gemacht", "vorgehen",
               "schritte", "aktion", "what did you do", "what happened", "steps",
               "steps to reproduce", "action"),
    "error_message": ("fehlermeldung", "fehler", "meldung", "error message", "error",
                      "message", "error text"),
    "reproducible": ("reproduzierbar", "reproducible", "can reproduce", "reproduzierbar?",
                     "wiederholbar", "reproducible?"),
}
LABELS: dict[str, str] = {_norm(a): fact for fact, aliases in _ALIASES.items() for a in aliases}
_LABEL_WORDS = sorted({a for aliases in _ALIASES.values() for a in aliases}, key=len, reverse=True)
_LABEL_RE = "|".join(re.escape(a) for a in _LABEL_WORDS)
# A label, then ':', '=', '|', ' - ' or two blanks (after an optional '?'), then the
# value: one character at least follows the separator (a blank makes the value empty);
# its trailing blanks and '|' are cut in Python (as a pattern they cost cubic time).
_LABELLED = re.compile(
    rf"^\s*+(?:[-*•]\s*+|\|\s*+)?(?P<label>{_LABEL_RE})\.?(?:\s*+\?\s*+|\s*+)"
    r"(?:(?:[:=|]|(?<=\s)[-–]\s|(?<=\s\s))(?=.)|(?<=\s\s\s)$)\s*+(?P<value>.*)",
    re.IGNORECASE,
)

# A reference number: letters, digits, '-' and '/', a digit after the first character,
# at most 64 characters (a bound keeps every search over it linear).
_NUMBER = r"#?[A-Z0-9](?=[A-Z\-/]{0,63}\d)[A-Z0-9\-/]{0,63}+(?![A-Z0-9\-/])"
_NUMBER_RE = re.compile(r"(?<![A-Z0-9])" + _NUMBER, re.IGNORECASE)
_CUSTOMER_FREE = re.compile(
    r"(?:kundennummer|kunden-?nr\.?|kd\.?-?\s?nr\.?|customer\s+(?:number|no\.?|#|id)"
    r"|account\s+(?:number|no\.?))\s*+(?:is|lautet|ist|:|#)?\s*+(" + _NUMBER + ")",
    re.IGNORECASE,
)
_ORDER_FREE = re.compile(
    r"(?:auftrags?(?:nummer|-?nr\.?)?|bestell(?:nummer|-?nr\.?)|angebotsnummer"
    r"|orders?(?:\s++(?:number|no\.?|#))?|po(?:\s++number)?)\s*+[:#]?\s*+"
    r"(" + _NUMBER + r"(?:\s*+(?:,|and|und)\s*+" + _NUMBER + r")*)",
    re.IGNORECASE,
)
_ORDER_PROSE = re.compile(
    r"(?:order|auftrags|bestell)(?:\s*+number|nummer)[^\n:]{0,30}?\s(?:is|lautet|ist)\s++("
    + _NUMBER + ")",
    re.IGNORECASE,
)
_PHONE = re.compile(
    r"(?<![\w.])(\+\d{1,3}[\s\-]?(?:\(0\)\s?)?\d[\d\s\-/()]{5,}\d|\(\d{3}\)\s?\d{3}-\d{4}"
    r"|0\d{2,5}[\s\-/]?\d[\d\s\-]{3,}\d)(?![\w.])"
)
_VERSION = re.compile(
    r"(?:app-?version|softwareversion|software\s+version|version|app|client|portal|ver\.?"
    r"|auf|to)\s*(?:von\s+|(?:ihrer|unserer|der|deiner|your|our)\s+\w+\s+)?"
    r"v?(\d+\.\d+(?:\.\d+)*)\b|\bv(\d+\.\d+(?:\.\d+)+)\b",
    re.IGNORECASE,
)
_OS = re.compile(
    r"\b(Android\s*\d+(?:\.\d+)*|iPadOS\s*\d+(?:\.\d+)*|iOS\s*\d+(?:\.\d+)*"
    r"|Windows\s*(?:11|10|8\.1|8|7|Server\s*\d{4})|macOS\s*\d+(?:\.\d+)*"
    r"|Mac\s?OS\s?X?\s*\d+(?:\.\d+)*|Ubuntu\s*[\d.]+|Linux|ChromeOS)\b",
    re.IGNORECASE,
)
_DEVICE = re.compile(
    r"\b(Samsung\s+Galaxy\s+\w+|iPhone\s?\d+\w*(?:\s(?:Pro|Max|mini|Plus))*"
    r"|iPad(?:\s(?:Air|Pro|mini))?|Pixel\s\d+\w*|Zebra\s[A-Z]{2}\d+|Honeywell\s[A-Z]{2}\d+"
    r"|MacBook(?:\s(?:Air|Pro))?|Dell\s\w+|Lenovo\s\w+|Surface\s\w+|Kassen-PC|Laptop|PC)\b",
    re.IGNORECASE,
)
_NETWORKS = (
    "VPN", "mobile data", "mobiles Netz", "mobilen Daten", "Mobilfunk", "LTE", "5G", "4G",
    "3G", "Firmen-WLAN", "WLAN", "Wi-Fi", "WiFi", "company network", "Firmennetz",
    "office LAN", "LAN", "Ethernet",
)
_NETWORK = [re.compile(rf"(?<![\w-]){re.escape(n)}(?![\w-])(?:\s*\([^)]{{1,20}}\))?",
                       re.IGNORECASE) for n in _NETWORKS]
_ERROR_QUOTED = re.compile(
    r"(?:fehlermeldung|meldung|fehler|error(?:\s+message)?|message|says|shows|zeigt|kommt"
    r"|erscheint|crashes\s+with|fails\s+with|failed\s+with)[^\"„“»'.]{0,25}+"
    r"[\"„“»'](?P<msg>[^\"“”«']{2,200}+)[\"“”«']",
    re.IGNORECASE,
)
_NOT_REPRODUCIBLE = re.compile(
    r"nicht\s+(?:mehr\s+)?reproduzier|nicht\s+reproduzieren|could\s*n[o']t\s+reproduce"
    r"|can\s*n?[o']?t\s+reproduce|not\s+reproducible|unable\s+to\s+reproduce"
    r"|konnte\s+(?:den\s+fehler\s+)?nicht\s+reproduz|einmalig",
    re.IGNORECASE,
)
_REPRODUCIBLE = re.compile(
    r"reproduzierbar|reproducible|jedes\s+mal|bei\s+jedem|every\s+time|each\s+time"
    r"|\balways\b|immer\s+(?:derselbe|der\s+gleiche|wieder)|happens\s+with\s+every"
    r"|every\s+(?:scan|order|attempt)",
    re.IGNORECASE,
)
_DATE = re.compile(
    r"\b(\d{1,2}\.\d{1,2}\.\d{2,4}(?:,?\s*(?:ca\.\s*|gegen\s*|um\s*)?\d{1,2}(?::\d{2})?"
    r"\s*Uhr)?|(?:Mon|Tues|Wednes|Thurs|Fri|Satur|Sun)day,?\s+\d{1,2}\s+"
    r"(?:January|February|March|April|May|June|July|August|September|October|November"
    r"|December)(?:\s+\d{4})?|\d{1,2}\s+(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
    r"\w*\s+\d{4})",
)
_SINCE = re.compile(
    r"\b((?:seit|since|ab|from|am|on)\s+(?:heute|gestern|vorgestern|this|today|yesterday"
    r"|(?:Montag|Dienstag|Mittwoch|Donnerstag|Freitag|Samstag|Sonntag|Monday|Tuesday"
    r"|Wednesday|Thursday|Friday|Saturday|Sunday)|\d{1,2}:\d{2}(?:\s*(?:Uhr|am|pm))?"
    r"|\d{1,2}\s*(?:Uhr|am|pm)\b)"
    r"(?:[ ,]+(?:Morgen|morgen|früh|Mittag|Nachmittag|Abend|morning|afternoon|evening"
    r"|night|um|at|gegen|around|\d{1,2}(?::\d{2})?\s*(?:Uhr|am|pm)?)){0,3})",
    re.IGNORECASE,
)
_LOCATION = re.compile(
    r"(?:auf\s+der\s+Baustelle|in\s+der\s+Filiale|im\s+Lager|am\s+Standort|at\s+our"
    r"|in\s+our)\s+([A-ZÄÖÜ][\w\-]+(?:\s[A-ZÄÖÜ][\w\-]+)?)",
)
_COMPANY_SUFFIX = re.compile(
    r"\b(GmbH|AG|KG|Ltd\.?|Limited|Inc\.?|plc|B\.?V\.?|LLC|UG|e\.\s?K\.|SE|S\.A\.|Co\.)(?!\w)"
)
_GREETING = re.compile(
    r"^\s*(viele\s+grüße|mit\s+freundlichen\s+grüßen|freundliche\s+grüße|beste\s+grüße"
    r"|liebe\s+grüße|gruß|grüße|lg|vg|mfg|best\s+regards|kind\s+regards|regards|best"
    r"|thanks!?|thank\s+you|thx|cheers|greetings|sincerely|danke!?)[,.!]?\s*$",
    re.IGNORECASE,
)
_QUOTE_HEADER = re.compile(
    r"^\s*+(?:On\s.+\swrote:|Am\s(?>.+?\sschrieb).*:|Le\s.+\sa\sécrit\s?:)\s*+$",
    re.IGNORECASE,
)
_NOT_A_NAME = re.compile(
    r"helpdesk|support|team|info|service|lager|office|admin|noreply|buchhaltung|sales",
    re.IGNORECASE,
)
_STEP = re.compile(r"^\s*+1[.)]\s++(.+)$")
_UPDATE_WORD = re.compile(r"\bauf\b|\bto\b")
_LIST_SEPARATOR = re.compile(r"[,;]")
_TITLE = re.compile(r"^(?:i\.\s?A\.|i\.\s?V\.|Dr\.|Prof\.|Mr\.?|Mrs\.?|Ms\.?)\s*+")
_SEGMENT_SEPARATOR = re.compile(r"\s[|,]\s|,\s")
_YES = ("ja", "yes", "y", "immer", "always", "jedes mal", "every time")
_NO = ("nein", "no", "n", "nicht", "not", "einmalig", "once")


@dataclass(frozen=True, slots=True)
class Sender:
    address: str
    name: str = ""


@dataclass(slots=True)
class _Found:
    facts: dict[str, str | list[str]] = field(default_factory=dict)

    def put(self, fact: str, value: str) -> None:
        value = value.strip().strip("\"'„“”").strip()
        if not value or fact in self.facts:
            return
        self.facts[fact] = value[:300]

    def add_numbers(self, fact: str, numbers: Iterable[str]) -> None:
        current = self.facts.setdefault(fact, [])
        assert isinstance(current, list)
        seen = set(current)
        for number in numbers:
            if len(current) >= MAX_NUMBERS:
                break
            cleaned = number.strip().lstrip("#").rstrip(".,;:")
            if cleaned and any(c.isdigit() for c in cleaned) and cleaned not in seen:
                current.append(cleaned)
                seen.add(cleaned)
        if not current:
            del self.facts[fact]


def new_content(text: str) -> str:
    """The customer's own new text: quoted lines and the history under a quote header go.
    Reads at most `bounded.MAX_TEXT` characters, in lines of `bounded.MAX_LINE`."""
    kept = []
    for line in bounded(text).splitlines():
        if _QUOTE_HEADER.match(line):
            break
        if line.lstrip().startswith(">"):
            continue
        kept.append(line)
    return "\n".join(kept)


def extract(text: str, sender: Sender,
            extra_patterns: Mapping[str, Sequence[str]] | None = None) -> Facts:
    """All facts found in `text` written by `sender`; lists for reference numbers."""
    body = new_content(text)
    found = _Found()
    _labelled(body, found)
    _free_text(body, found)
    for fact, patterns in (extra_patterns or {}).items():
        for pattern in patterns:
            matches = re.findall(pattern, body)
            if fact in LIST_FACTS:
                found.add_numbers(fact, matches)
            elif matches:
                found.put(fact, matches[0])
    _who(body, sender, found)
    return Facts.from_json(found.facts)


def _labelled(body: str, found: _Found) -> None:
    for line in body.splitlines():
        match = _LABELLED.match(line)
        if not match:
            continue
        label = _norm(match.group("label"))
        fact = LABELS.get(label)
        value = _trailing_cut(match.group("value"))
        if fact is None or not value.strip(" |"):
            continue
        value = value.strip(" |")
        if fact in LIST_FACTS:
            found.add_numbers(fact, _NUMBER_RE.findall(value))
        elif fact == "reproducible":
            _put_yes_no(found, value)
        elif fact == "os" and label in ("androidversion", "iosversion", "windowsversion"):
            found.put("os", f"{label.removesuffix('version').capitalize()} {value}")
        elif fact in ("device", "network", "software_version", "phone"):
            found.put(fact, _LIST_SEPARATOR.split(value)[0])
        elif fact == "action" and value.endswith(":"):
            continue
        else:
            found.put(fact, value)


def _trailing_cut(value: str) -> str:
    """A labelled value without its trailing blanks and one table bar ('a |' → 'a')."""
    value = value.rstrip()
    return value[:-1].rstrip() if value.endswith("|") else value


def _put_yes_no(found: _Found, value: str) -> None:
    lowered = value.lower().strip()
    if lowered.startswith(_NO):
        found.put("reproducible", "no")
    elif lowered.startswith(_YES):
        found.put("reproducible", "yes")


def _free_text(body: str, found: _Found) -> None:
    found.add_numbers("customer_numbers", _CUSTOMER_FREE.findall(body))
    for group in _ORDER_FREE.findall(body):
        found.add_numbers("order_numbers", _NUMBER_RE.findall(group))
    found.add_numbers("order_numbers", _ORDER_PROSE.findall(body))
    versions = [a or b for a, b in _VERSION.findall(body)]
    if versions:
        found.put("software_version", versions[-1] if _UPDATE_WORD.search(body)
                  and len(versions) > 1 else versions[0])
    for fact, pattern in (("os", _OS), ("device", _DEVICE), ("occurred", _DATE),
                          ("occurred", _SINCE)):
        match = pattern.search(body)
        if match:
            found.put(fact, match.group(1))
    for pattern in _NETWORK:
        match = pattern.search(body)
        if match:
            found.put("network", match.group(0))
            break
    match = _ERROR_QUOTED.search(body)
    if match:
        found.put("error_message", " ".join(match.group("msg").split()))
    if _NOT_REPRODUCIBLE.search(body):
        found.put("reproducible", "no")
    elif _REPRODUCIBLE.search(body):
        found.put("reproducible", "yes")
    match = _LOCATION.search(body)
    if match:
        found.put("location", match.group(1))
    steps = [m.group(1) for line in body.splitlines() if (m := _STEP.match(line))]
    if steps:
        found.put("action", steps[0])
    match = _PHONE.search(_signature(body) or body) or _PHONE.search(body)
    if match:
        found.put("phone", match.group(1))


def _signature(body: str) -> str:
    """The lines after the last greeting ('Viele Grüße', 'Best regards', …), if any."""
    lines = body.splitlines()
    for index in range(len(lines) - 1, -1, -1):
        if _GREETING.match(lines[index]):
            return "\n".join(lines[index + 1:])
    return ""


def _who(body: str, sender: Sender, found: _Found) -> None:
    found.put("email", sender.address)
    name = _person(sender.name)
    signature = _signature(body) or "\n".join(body.splitlines()[-6:])
    sig_lines = [line.strip() for line in signature.splitlines() if line.strip()]
    if not name:
        name = next((p for line in sig_lines if (p := _person(line.split(",")[0]))), "")
    if name:
        found.put("contact_name", name)
    name = str(found.facts.get("contact_name", ""))
    if name:  # "Laura Chen, RetailCo Ltd, +1 …" at the top counts as a signature too
        known = set(sig_lines)
        sig_lines += [line.strip() for line in body.splitlines()
                      if name in line and "," in line and line.strip() not in known]
    company = _company(sig_lines[:MAX_SIGNATURE_LINES], name)
    if company:
        found.put("company", company)


def _person(text: str) -> str:
    """A person's name from a display name or a signature line, or ''."""
    text = _TITLE.sub("", text.strip().strip('"'))
    text = text.split("|")[0].strip()
    if "," in text:
        last, _, first = text.partition(",")
        text = f"{first.strip()} {last.strip()}"
    words = text.split()
    if not 2 <= len(words) <= 4 or _NOT_A_NAME.search(text) or "@" in text:
        return ""
    if not all(w[0].isupper() or w in ("de", "van", "von", "der", "da") for w in words):
        return ""
    if any(ch.isdigit() for ch in text) or _COMPANY_SUFFIX.search(text):
        return ""
    return text


def _company(sig_lines: list[str], name: str) -> str:
    segments = [seg.strip() for line in sig_lines for seg in _SEGMENT_SEPARATOR.split(line)]
    for seg in segments:
        if _COMPANY_SUFFIX.search(seg) and not _PHONE.search(seg) and ":" not in seg:
            return seg
    if not name:
        return ""
    plain = [s for s in segments if s and not _PHONE.search(s) and "@" not in s
             and ":" not in s and not s.lower().startswith(("www", "http", "tel", "phone",
                                                            "mobil", "fon", "t:", "m:"))]
    for index, seg in enumerate(plain):
        if name in seg:
            for other in plain[index + 1:index + 2] + plain[max(index - 1, 0):index]:
                if len(other.split()) <= 5 and not other.endswith(".") and name not in other:
                    return other
    return ""
