"""Our category vocabulary, shared by every guard family.

``Verdict.categories`` always holds codes from this vocabulary, whatever the guard calls its
categories, so one ``category_actions`` entry (``{INF: redact}``) acts on Llama Guard's ``S7``,
Qwen3Guard's ``PII`` and FlexGuard's ``INF`` alike. The guard's own category names stay visible in
``Verdict.label`` / ``Verdict.rationale``.

The codes are FlexGuard's (the first family with categories here), with its definitions. Each family
file maps its native categories onto them (``CATEGORY_MAP``); a native category with no fitting code
maps to nothing (the verdict still counts, it just matches no ``category_actions`` entry). The full
mapping table is in docs/guard-models.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

#: code -> what it covers (FlexGuard-Qwen3-8B model card wording)
VOCABULARY: dict[str, str] = {
    "VIO": "Violence and Harm: physical or psychological harm, threats, self-harm, weapons",
    "ILG": "Illegal and Improper Behaviors: evasion of law/regulation, fraud, drugs, hacking",
    "SEX": "Sexual and Inappropriate Sexual Content, minors-related sexual content included",
    "INF": "Information Security and Privacy: leaking PII, doxxing, highly identifying info",
    "DIS": "Bias, Discrimination, and Harassment: hate speech, identity attacks, insults, slurs",
    "MIS": "Misinformation and Unreliable Content, especially in high-risk domains",
    "JAIL": "Model Security and Jailbreak Attempts: prompt injection, role-play, bypassing safety",
}
CODES: tuple[str, ...] = tuple(VOCABULARY)


def map_categories(native: Iterable[str], table: Mapping[str, str | None]) -> list[str]:
    """Our codes for a guard's ``native`` categories (order kept, duplicates and unmapped dropped).
    Lookup is case-insensitive."""
    lowered = {k.lower(): v for k, v in table.items()}
    out: list[str] = []
    for name in native:
        code = lowered.get(name.strip().lower())
        if code and code not in out:
            out.append(code)
    return out


__all__ = ["CODES", "VOCABULARY", "map_categories"]
