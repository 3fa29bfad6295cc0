"""Mixed scripts in usernames: Unicode UTS #39 "Moderately Restrictive", at sign-up.

``аlice`` with a Cyrillic ``а`` looks like ``alice`` and is another user. UTS #39 section
5 decides which mixtures of scripts are safe to allow in an identifier:

* the script sets of every character (Script_Extensions; Common and Inherited characters
  such as digits and ``._-@`` count for every script) must have a common member, with
  Han-bearing characters also counting as Japanese (Jpan), Korean (Kore) and Chinese
  (Hanb), Hiragana and Katakana as Jpan, Hangul as Kore, Bopomofo as Hanb; so ``김민준``,
  ``田中さん`` and ``kim민준`` pass (Latin with Hangul and Han is how Korean is written);
* or the scripts are Latin plus one other Recommended script that is neither Cyrillic
  nor Greek (``bangkokไทย``).

Anything else (Latin with Cyrillic or Greek, three unrelated scripts) is refused. Script
data comes from the ``regex`` module's Unicode tables (Python's own ``unicodedata`` has
no Script property).
"""

from __future__ import annotations

import regex

# UAX #31 Table 4 (Recommended scripts), by ISO 15924 code.
RECOMMENDED = [
    "Arab",
    "Armn",
    "Beng",
    "Bopo",
    "Cyrl",
    "Deva",
    "Ethi",
    "Geor",
    "Grek",
    "Gujr",
    "Guru",
    "Hang",
    "Hani",
    "Hebr",
    "Hira",
    "Kana",
    "Knda",
    "Khmr",
    "Laoo",
    "Latn",
    "Mlym",
    "Mymr",
    "Orya",
    "Sinh",
    "Taml",
    "Telu",
    "Thaa",
    "Thai",
    "Tibt",
]
_PATTERNS = {code: regex.compile(rf"\p{{scx={code}}}") for code in RECOMMENDED}
_SHARED = regex.compile(r"[\p{scx=Zyyy}\p{scx=Zinh}]")
_OTHER = "Zzzz"  # a character of a script outside the recommended ones

# Writing systems made of several scripts (UTS #39 5.1, augmented script sets).
_AUGMENTED = {
    "Hani": {"Hanb", "Jpan", "Kore"},
    "Hira": {"Jpan"},
    "Kana": {"Jpan"},
    "Hang": {"Kore"},
    "Bopo": {"Hanb"},
}


def scripts_of(char: str) -> set[str] | None:
    """The augmented script set of ``char``; None for characters of every script."""
    found = {code for code, pattern in _PATTERNS.items() if pattern.match(char)}
    if not found:
        return None if _SHARED.match(char) else {_OTHER}
    for code in tuple(found):
        found |= _AUGMENTED.get(code, set())
    return found


def mixture_allowed(text: str) -> bool:
    """Whether ``text`` is at most Moderately Restrictive (UTS #39 5.2)."""
    if text.isascii():
        return True
    sets = [s for s in map(scripts_of, text) if s is not None]
    if not sets:
        return True
    if set.intersection(*sets):
        return True  # a single script, or one writing system (Jpan, Kore, Hanb)
    # Latin plus one other recommended script, Cyrillic and Greek excepted.
    others = [s for s in sets if "Latn" not in s]
    if len(others) == len(sets):
        return False
    common = set.intersection(*others) - {"Cyrl", "Grek", _OTHER}
    return bool(common)
