"""Portal languages: French, German and English from Babel catalogues, compiled at start-up.

The ``.po`` files under ``translations/`` are the only source: they are compiled in memory when
the application starts (``load_catalogues``), so no binary ``.mo`` can go stale in the
repository and there is no build step. Message ids are the English text; a message missing
from a catalogue falls back to it. Times are shown in Luxembourg time, formatted for the
language by Babel.
"""

from __future__ import annotations

import datetime as dt
import gettext
import io
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from zoneinfo import ZoneInfo

from babel import Locale, dates
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

LANGUAGES = ("fr", "de", "en")
"""The portal's languages; French, the regulation's language, is the default."""
DEFAULT_LANGUAGE = "fr"
LANGUAGE_NAMES = {"fr": "Français", "de": "Deutsch", "en": "English"}
"""Each language named in itself, as the language switcher shows it."""
TRANSLATIONS = Path(__file__).parent / "translations"
DOMAIN = "messages"
TIMEZONE = ZoneInfo("Europe/Luxembourg")


def N_(message: str) -> str:
    """Mark a message for extraction where it is defined; it is translated where it is shown."""
    return message


def catalogue_path(lang: str) -> Path:
    return TRANSLATIONS / lang / "LC_MESSAGES" / f"{DOMAIN}.po"


@cache
def catalogue(lang: str) -> gettext.GNUTranslations:
    """The compiled catalogue of ``lang`` (fuzzy entries are left out, as ``msgfmt`` does)."""
    with catalogue_path(lang).open("rb") as po:
        messages = read_po(po, locale=lang, domain=DOMAIN)
    buffer = io.BytesIO()
    write_mo(buffer, messages)
    buffer.seek(0)
    return gettext.GNUTranslations(buffer)


def load_catalogues() -> None:
    """Compile every catalogue now, so a broken ``.po`` stops the start-up, not a page."""
    for lang in LANGUAGES:
        catalogue(lang)


def supported(lang: str | None) -> str | None:
    """``lang`` if the portal offers it (``de-LU`` counts as ``de``), else None."""
    if not lang:
        return None
    base = lang.strip().replace("_", "-").split("-", 1)[0].lower()
    return base if base in LANGUAGES else None


def from_accept_language(header: str | None) -> str | None:
    """The best offered language of an ``Accept-Language`` header, by quality."""
    if not header:
        return None
    ranked: list[tuple[float, int, str]] = []
    for index, part in enumerate(header.split(",")):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        lang = supported(tag)
        if lang and quality > 0:
            ranked.append((-quality, index, lang))
    return min(ranked)[2] if ranked else None


@dataclass(frozen=True, slots=True)
class Translator:
    """Messages, dates and times in one language."""

    lang: str

    def catalogue(self) -> gettext.GNUTranslations:
        return catalogue(self.lang)

    def gettext(self, message: str, **params: object) -> str:
        """The translation of ``message`` with ``%(name)s`` parameters filled in."""
        text = catalogue(self.lang).gettext(message)
        return text % params if params else text

    def ngettext(self, singular: str, plural: str, n: int, **params: object) -> str:
        text = catalogue(self.lang).ngettext(singular, plural, n)
        return text % {"n": n, **params}

    def datetime(self, value: dt.datetime | None, format: str = "medium") -> str:
        """A stored (naive UTC) or aware time, in Luxembourg time."""
        if value is None:
            return ""
        aware = value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value
        return dates.format_datetime(aware, format=format, tzinfo=TIMEZONE, locale=Locale.parse(self.lang))

    def time(self, value: dt.datetime) -> str:
        aware = value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value
        return dates.format_time(aware, format="short", tzinfo=TIMEZONE, locale=Locale.parse(self.lang))

    def date(self, value: dt.date | dt.datetime | None, format: str = "medium") -> str:
        if value is None:
            return ""
        if isinstance(value, dt.datetime):
            aware = value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value
            value = aware.astimezone(TIMEZONE).date()
        return dates.format_date(value, format=format, locale=Locale.parse(self.lang))
