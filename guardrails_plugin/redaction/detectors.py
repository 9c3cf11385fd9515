"""Span detectors for data: Presidio's pattern recognizers (and detect-secrets' token patterns),
run without any NLP model.

Presidio's AnalyzerEngine normally loads a spaCy model for names and locations; the recognizers
used here are all pattern based (regex plus a checksum or validator: Luhn for cards, the IBAN
check digits, phonenumbers for phones), so the analyzer runs on Presidio's ``NoOpNlpEngine`` and
nothing is downloaded. Two adjustments, both so that nothing leaves the machine or slips through:

* the e-mail recognizer checks the domain with ``tldextract``, whose default fetches the public
  suffix list over the network; ours uses tldextract's bundled snapshot only;
* Presidio's SSN recognizer drops the published sample numbers (123-45-6789, ...); a guard that
  flagged a text as private data redacts an SSN-shaped value whatever it is.

API keys and secrets come from detect-secrets' regex plugins (AWS, GitHub, GitLab, Slack, Stripe,
JWT, private key blocks, ...), wrapped as Presidio recognizers. Custom regexes come from config.

Presidio is the optional ``redaction`` extra; ``Detectors.build`` raises GuardConfigError naming
it when detectors are listed but Presidio is missing (``detectors: auto`` then means none).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import pkgutil
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import GuardConfigError
from ..types import RedactedSpan

if TYPE_CHECKING:
    from ..config import RedactionConfig

log = logging.getLogger("guardrails_plugin")

EXTRA_HINT = "span detectors need Presidio: pip install 'guardrails-plugin[redaction]'"

#: longest match of each detector, in characters: a stream holds back this much behind the judged
#: end so that a value split over deltas is judged whole before any of it is released
MAX_CHARS: dict[str, int] = {
    "email": 128, "phone": 24, "credit_card": 23, "iban": 42, "ssn": 11, "national_id": 24,
    "ip": 45, "mac": 17, "url": 256, "secret": 128,
}

#: Presidio recognizer classes behind each detector name (national ids: the pattern-based ones)
_PRESIDIO: dict[str, tuple[str, ...]] = {
    "email": ("EmailRecognizer",),
    "phone": ("PhoneRecognizer",),
    "credit_card": ("CreditCardRecognizer",),
    "iban": ("IbanRecognizer",),
    "ssn": ("UsSsnRecognizer",),
    "national_id": ("UkNinoRecognizer", "UsItinRecognizer", "UsPassportRecognizer", "EsNifRecognizer",
                    "ItFiscalCodeRecognizer", "InAadhaarRecognizer", "SgFinRecognizer", "PlPeselRecognizer"),
    "ip": ("IpRecognizer",),
    "mac": ("MacAddressRecognizer",),
    "url": ("UrlRecognizer",),
}

#: detect-secrets plugins left out: IPPublicDetector (the ip detector covers it), and the ones
#: keyed on words near a value (too broad to redact by)
_SECRET_SKIP = {"IPPublicDetector", "BasicAuthDetector", "CloudantDetector", "IbmCloudIamDetector",
                "IbmCosHmacDetector", "SoftlayerDetector"}
#: detect-secrets finds a private key by its BEGIN line; the redaction covers the whole block (or,
#: in a stream, everything from the BEGIN line to the judged end)
_KEY_BLOCK = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?(?:-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|\Z)")


def presidio_available() -> bool:
    """Installed (found, not imported: importing Presidio pulls in spaCy, seconds of start-up)."""
    return all(importlib.util.find_spec(m) is not None for m in ("presidio_analyzer", "presidio_anonymizer"))


@dataclass
class Detectors:
    """The configured detectors of one stage. ``find(text)`` returns their spans, sorted, merged
    where they overlap (the longer entity names the merged span)."""

    names: list[str]
    min_score: float = 0.0
    custom: dict[str, tuple[str, int]] = field(default_factory=dict)
    _engine: Any = None

    @classmethod
    def build(cls, config: RedactionConfig) -> Detectors:
        custom = {n: (c, 64) if isinstance(c, str) else (c.pattern, c.max_chars) for n, c in config.custom.items()}
        if config.detectors == "auto":
            names = list(MAX_CHARS) if presidio_available() else []
            if not names and not custom:
                return cls([], config.min_score)
        else:
            names = list(config.detectors)
        if (names or custom) and not presidio_available():
            raise GuardConfigError(f"redaction detectors {names + list(custom)} configured, but {EXTRA_HINT}")
        return cls(names, config.min_score, custom)

    @property
    def empty(self) -> bool:
        return not self.names and not self.custom

    @property
    def max_chars(self) -> int:
        """The longest value any configured detector matches (streams hold back this much)."""
        return max([MAX_CHARS[n] for n in self.names] + [m for _, m in self.custom.values()], default=0)

    def find(self, text: str) -> list[RedactedSpan]:
        """Spans of ``text`` the detectors match. Raises whatever a detector raises: the caller
        redacts the whole window then (fail closed)."""
        if self.empty or not text:
            return []
        results = self.ready().analyze(text=text, language="en", score_threshold=self.min_score)
        found = [(r.start, r.end, r.entity_type, (r.recognition_metadata or {}).get("recognizer_name", ""))
                 for r in results if r.end > r.start]
        return _merge(found, self._source)

    def ready(self) -> Any:
        """The analyzer, built on first use (``Guard.warmup`` builds it at start-up): a Guard that
        never redacts never imports Presidio, which imports spaCy (seconds)."""
        if self._engine is None:
            self._engine = _analyzer(tuple(self.names), tuple(self.custom.items()))
        return self._engine

    def _source(self, entity: str) -> str:
        return _ENTITY_SOURCE.get(entity) or (f"custom:{entity[7:].lower()}" if entity.startswith("CUSTOM_") else "secret")

    def timed_find(self, text: str) -> tuple[list[RedactedSpan], float]:
        t0 = time.perf_counter()
        spans = self.find(text)
        return spans, (time.perf_counter() - t0) * 1e3


_ENTITY_SOURCE = {
    "EMAIL_ADDRESS": "email", "PHONE_NUMBER": "phone", "CREDIT_CARD": "credit_card", "IBAN_CODE": "iban",
    "US_SSN": "ssn", "IP_ADDRESS": "ip", "MAC_ADDRESS": "mac", "URL": "url", "UK_NINO": "national_id",
    "US_ITIN": "national_id", "US_PASSPORT": "national_id", "ES_NIF": "national_id", "IT_FISCAL_CODE": "national_id",
    "IN_AADHAAR": "national_id", "SG_NRIC_FIN": "national_id", "PL_PESEL": "national_id",
}


def _merge(found: list[tuple[int, int, str, str]], source: Any) -> list[RedactedSpan]:
    out: list[list[Any]] = []  # [start, end, entity, length of the entity's own match]
    for s, e, ent, _ in sorted(found, key=lambda f: (f[0], -(f[1] - f[0]))):
        if out and s < out[-1][1]:
            last = out[-1]
            if e - s > last[3]:
                last[2], last[3] = ent, e - s
            last[1] = max(last[1], e)
        else:
            out.append([s, e, ent, e - s])
    return [RedactedSpan(start=s, end=e, by="detector", source=source(ent), category=ent) for s, e, ent, _ in out]


# -- building the analyzer (only with Presidio installed) ------------------------------------------


@functools.lru_cache(maxsize=8)  # stages with the same detectors share one analyzer
def _analyzer(names: tuple[str, ...], custom: tuple[tuple[str, tuple[str, int]], ...]) -> Any:
    from presidio_analyzer import AnalyzerEngine, Pattern, PatternRecognizer, RecognizerRegistry
    from presidio_analyzer import predefined_recognizers as pr
    from presidio_analyzer.nlp_engine import NoOpNlpEngine

    recognizers: list[Any] = []
    for name in names:
        if name == "secret":
            recognizers.extend(_secret_recognizers())
            continue
        for cls_name in _PRESIDIO[name]:
            cls = {"EmailRecognizer": _offline_email(), "UsSsnRecognizer": _any_ssn()}.get(cls_name) or getattr(pr, cls_name)
            recognizers.append(cls(supported_language="en"))
    for cname, (pattern, _) in custom:
        entity = "CUSTOM_" + re.sub(r"\W+", "_", cname).upper()
        recognizers.append(PatternRecognizer(supported_entity=entity, patterns=[Pattern(cname, pattern, 1.0)],
                                             supported_language="en", name=f"custom:{cname}"))
    nlp = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}])
    registry = RecognizerRegistry(recognizers=recognizers, supported_languages=["en"])
    return AnalyzerEngine(registry=registry, nlp_engine=nlp, supported_languages=["en"])


def _offline_email() -> type:
    import tldextract
    from presidio_analyzer.predefined_recognizers import EmailRecognizer

    # the bundled public suffix list snapshot: no fetch, no cache directory
    extract = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True)

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return extract(pattern_text).fqdn != ""

    return OfflineEmailRecognizer


def _any_ssn() -> type:
    from presidio_analyzer.predefined_recognizers import UsSsnRecognizer

    samples = {"123456789", "987654320", "078051120"}

    class AnySsnRecognizer(UsSsnRecognizer):
        def invalidate_result(self, pattern_text: str) -> bool:
            digits = "".join(c for c in pattern_text if c.isdigit())
            return False if digits in samples else bool(super().invalidate_result(pattern_text))

    return AnySsnRecognizer


def _secret_recognizers() -> list[Any]:
    """detect-secrets' regex plugins as one Presidio recognizer (entity SECRET)."""
    from presidio_analyzer import EntityRecognizer, RecognizerResult

    patterns = _secret_patterns()

    class SecretRecognizer(EntityRecognizer):
        def load(self) -> None:
            pass

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            out = []
            for rx in patterns:
                for m in rx.finditer(text):
                    # a plugin whose regex captures the value after a keyword (``aws_key = "(...)"``)
                    # redacts only the value; a group at the start (``(ghp|gho)_...``) is the prefix
                    g = m.lastindex or 0
                    s, e = m.span(g) if g and m.group(g) and m.start(g) > m.start() else m.span()
                    if e > s:
                        out.append(RecognizerResult("SECRET", s, e, 1.0))
            return out

    return [SecretRecognizer(supported_entities=["SECRET"], supported_language="en", name="detect-secrets")]


def _secret_patterns() -> list[re.Pattern[str]]:
    try:
        import detect_secrets.plugins as plugins
        from detect_secrets.plugins.base import RegexBasedDetector
    except ImportError:
        raise GuardConfigError(f"the secret detector needs detect-secrets: {EXTRA_HINT}") from None
    found: list[re.Pattern[str]] = [_KEY_BLOCK]
    for info in pkgutil.iter_modules(plugins.__path__):
        mod = importlib.import_module(f"{plugins.__name__}.{info.name}")
        for obj in vars(mod).values():
            if (isinstance(obj, type) and issubclass(obj, RegexBasedDetector) and obj.__module__ == mod.__name__
                    and obj.__name__ not in _SECRET_SKIP and obj.__name__ != "PrivateKeyDetector"
                    and isinstance(obj.denylist, (list, tuple))):
                found.extend(obj.denylist)
    return found


__all__ = ["EXTRA_HINT", "MAX_CHARS", "Detectors", "presidio_available"]
