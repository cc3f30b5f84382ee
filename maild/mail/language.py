"""Guess whether a customer wrote German or English, from common words."""

from __future__ import annotations

import re

_WORD = re.compile(r"[a-zäöüß']+")
_GERMAN = frozenset(
    "und der die das ist nicht ich wir sie mit für auf bei ein eine einen dem den des "
    "bitte danke hallo grüße grüßen geht funktioniert fehler seit wenn kann können "
    "haben habe hat wird werden noch auch mein meine unser unsere ihr ihre zu von "
    "sehr geehrte damen herren liebe viele gruß freundlichen".split()
)
_ENGLISH = frozenset(
    "the and is not we you with for on at a an of this that it my our your please "
    "thanks thank hello hi regards dear error since when can could have has will "
    "does doesn't don't work working best kind sincerely to from it's again broken help "
    "i me cannot can't since still nothing anything problem issue".split()
)


def guess(text: str, default: str = "de") -> str:
    """'de' or 'en' by which language's common words dominate; `default` on a tie."""
    words = _WORD.findall(text[:5000].lower())
    german = sum(w in _GERMAN for w in words)
    english = sum(w in _ENGLISH for w in words)
    if german == english:
        return default
    return "de" if german > english else "en"
