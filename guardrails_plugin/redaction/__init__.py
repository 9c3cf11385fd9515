"""Redaction that redacts spans, not messages (see redact.py for the rules).

detectors.py: exact spans for data (Presidio recognizers, detect-secrets patterns, custom regexes);
localise.py: pieces of a flagged window judged by the guard itself; apply.py: writing the spans
by strategy; vault.py: reversible prompt redaction; redact.py: the Redactor that ties them together.
Presidio is the optional ``redaction`` extra; without it only guard localisation runs.
"""

from .apply import apply, merge, redact_slice, replacement
from .detectors import EXTRA_HINT, MAX_CHARS, Detectors, presidio_available
from .localise import LocaliseFailed, localise, split_pieces
from .redact import Redactor
from .vault import Restorer, Vault

__all__ = [
    "EXTRA_HINT", "MAX_CHARS", "Detectors", "LocaliseFailed", "Redactor", "Restorer", "Vault", "apply", "localise",
    "merge", "presidio_available", "redact_slice", "replacement", "split_pieces",
]
