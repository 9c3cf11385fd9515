"""ScriptedEngine: canned guard completions. A test double, NOT a guard.

Use it for tests, demos and an offline try-out of policy and integrations only: it judges nothing.
It returns strings you give it (a list consumed in order, cycling) or whatever a callable returns
for the rendered prompt. An exception raised by the callable is an engine failure, exactly as a
crashed model server would be; ``latency_s`` simulates the guard's time to answer.

``ScriptedEngine.from_rules({regex: outcome})`` is the try-out form: regexes over the judged text
pick an outcome, and the answer is written in the format of whichever guard family's prompt it
receives (the family adapter's ``canned_output``), so any config, any stage routing, works.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import GuardEngineError
from ..types import GuardRequest, Stage
from .base import EngineBase, GenerationRequest, render_plain


class CannedFamily(Protocol):
    """What ``from_rules`` needs of a guard family (a ``models.GuardModel`` subclass): its
    variants, stages, prompts and canned answers. Engines sit below the families in the import
    graph, so the families are handed in (``from_rules(families=...)``, or ``use_families`` by the
    Guard that runs the engine), never imported here."""

    variants: dict[str, str]
    stages: frozenset[Stage]

    def __call__(self, name: str | None = None) -> Any: ...


Responder = Callable[[str], str]
#: a rule's outcome: "harmful" / "safe" / True / False, a risk in [0, 1], a mapping
#: {risk, categories, harmful}, or "unavailable" (the guard is down) / "unparseable" (garbage)
Outcome = str | bool | float | Mapping[str, Any]


class ScriptedEngine(EngineBase):
    """Returns canned completions; for tests and demos only. It cannot fast-score (``score``
    raises ScoringUnsupported) and keeps no sessions."""

    def __init__(
        self,
        responder: Sequence[str] | Responder,
        *,
        latency_s: float = 0.0,
        name: str = "scripted",
    ):
        if callable(responder):
            self._fn: Responder = responder
        else:
            items = list(responder)
            if not items:
                raise ValueError("ScriptedEngine needs at least one canned completion")
            cycle = itertools.cycle(items)
            lock = threading.Lock()

            def _next(_: str) -> str:
                with lock:
                    return next(cycle)

            self._fn = _next
        self.latency_s = latency_s
        self.name = name
        self.calls = 0  #: number of generate() calls
        self.prompts: list[str] = []  #: every rendered prompt seen, in order
        self.rules: list[tuple[str, Any]] = []  #: the rules of a from_rules engine
        #: the guard families a from_rules engine answers for (None: not handed in yet)
        self.families: list[CannedFamily] | None = None

    async def generate(
        self, requests: Sequence[GenerationRequest], *, timeout: float | None = None
    ) -> list[str]:
        self.calls += 1
        rendered = [self.render(r) for r in requests]
        self.prompts.extend(rendered)
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        out: list[str] = []
        for text in rendered:
            try:
                completion = self._fn(text)
            except GuardEngineError:
                raise
            except Exception as exc:  # a responder that raises stands for a crashed engine
                raise GuardEngineError(f"scripted responder raised {exc!r}") from exc
            if not isinstance(completion, str):
                raise GuardEngineError(f"scripted responder returned {type(completion).__name__}")
            out.append(completion)
        return out

    @classmethod
    def from_rules(
        cls,
        rules: Mapping[str, Outcome] | Iterable[tuple[str, Outcome]],
        *,
        default: Outcome = "safe",
        latency_s: float = 0.0,
        families: Iterable[CannedFamily] | None = None,
    ) -> ScriptedEngine:
        """A rule-based stand-in for the guard models, for trying the plugin without weights.
        NOT A GUARD: regexes judge nothing a real attacker would not get past.

        ``rules`` maps a regex (searched case-insensitively in the text the guard judges: the
        prompt, the reasoning or the answer) to an outcome; the first rule that matches decides,
        else ``default``. Outcomes: ``"harmful"`` (risk 1.0), ``"safe"``, a risk such as ``0.35``
        (in the escalate band when ``escalate_threshold`` is 0.3), ``{"risk": 0.9, "categories":
        ["INF"]}`` (our category codes, for ``category_actions`` such as ``{INF: redact}``), or
        ``"unavailable"`` / ``"unparseable"`` to watch the fail mode. The answer is written in the
        format of the guard family whose prompt arrives (``families``: the GuardModel classes;
        by default the families of the Guard it is handed to, see ``use_families``), as far as
        that format can say it (GuardReasoner has no risk grades or categories)."""
        table = list(rules.items()) if isinstance(rules, Mapping) else list(rules)
        compiled = [(re.compile(p, re.IGNORECASE), _outcome(o)) for p, o in table]
        fallback = _outcome(default)
        probes: list[_Probe] = []

        def respond(rendered: str) -> str:
            if not probes:  # built on first use, from the families given or handed in since
                if engine.families is None:
                    raise GuardEngineError("ScriptedEngine.from_rules: no guard families to answer for; pass "
                                           "families= or hand the engine to a Guard")
                probes.extend(_probes(engine.families))
            found = _match(probes, rendered)
            if found is None:
                raise GuardEngineError("ScriptedEngine.from_rules: this guard prompt is in no known family's format")
            probe, judged = found
            out = next((o for rx, o in compiled if rx.search(judged)), fallback)
            if out.fail == "unavailable":
                raise GuardEngineError("ScriptedEngine.from_rules: scripted outage (rule outcome 'unavailable')")
            if out.fail == "unparseable":
                return "scripted garbage: no verdict in here"
            return probe.model.canned_output(
                probe.stage, harmful=out.harmful, risk=out.risk, categories=list(out.categories)
            )

        engine = cls(respond, latency_s=latency_s, name="scripted-rules (NOT a guard)")
        engine.rules = table
        engine.families = list(families) if families is not None else None
        return engine

    def use_families(self, families: Iterable[CannedFamily]) -> None:
        """The guard families ``from_rules`` answers for when none were given (the Guard that
        runs this engine hands in its registry); families given to ``from_rules`` are kept."""
        if self.families is None:
            self.families = list(families)


# -- from_rules: outcomes and family formats -----------------------------------------------------

_FAILS = ("unavailable", "unparseable")


@dataclass(frozen=True)
class _Out:
    harmful: bool
    risk: float
    categories: tuple[str, ...] = ()
    fail: str | None = None


def _outcome(spec: Outcome) -> _Out:
    """A rule outcome in one shape; a malformed one is a ValueError when the engine is built."""
    if isinstance(spec, str):
        word = spec.strip().lower()
        if word in _FAILS:
            return _Out(True, 1.0, fail=word)
        if word in ("harmful", "unsafe", "block"):
            return _Out(True, 1.0)
        if word in ("safe", "unharmful", "allow"):
            return _Out(False, 0.0)
        raise ValueError(f"unknown rule outcome {spec!r} (harmful, safe, unavailable, unparseable, a risk or a mapping)")
    if isinstance(spec, bool):
        return _Out(spec, 1.0 if spec else 0.0)
    if isinstance(spec, (int, float)):
        spec = {"risk": float(spec)}
    if isinstance(spec, Mapping):
        unknown = set(spec) - {"risk", "categories", "harmful"}
        if unknown:
            raise ValueError(f"rule outcome keys are risk, categories, harmful; got {sorted(unknown)}")
        harmful = spec.get("harmful")
        risk = float(spec["risk"]) if "risk" in spec else (0.0 if harmful is False else 1.0)
        if not 0.0 <= risk <= 1.0:
            raise ValueError(f"rule risk must be in [0, 1], got {risk}")
        cats = spec.get("categories") or ()
        cats = (cats,) if isinstance(cats, str) else tuple(str(c).upper() for c in cats)
        return _Out(bool(risk >= 0.5 if harmful is None else harmful), risk, cats)
    raise ValueError(f"unknown rule outcome {spec!r}")


#: stand-ins for the texts a probe prompt carries; plain letters survive every adapter's escaping
_MARK = {"prompt": "QZXPROBEPROMPTQZX", "reasoning": "QZXPROBEREASONINGQZX", "response": "QZXPROBERESPONSEQZX"}
_MARKS = re.compile("|".join(_MARK.values()))


@dataclass(frozen=True)
class _Probe:
    model: Any  # an instance of a GuardModel class
    stage: Stage
    pattern: re.Pattern[str]
    judged: int  # group number of the judged text
    weight: int  # fixed characters matched: the most specific format wins


def _probes(families: Iterable[CannedFamily]) -> list[_Probe]:
    """One pattern per (family variant, stage): the family's own rendering of marker texts, with
    the markers turned into capture groups."""
    out: list[_Probe] = []
    for fam in families:
        for inst in _variants(fam):
            for stage in sorted(fam.stages, key=str):
                req = GuardRequest(
                    stage=stage, prompt=_MARK["prompt"],
                    reasoning=_MARK["reasoning"] if stage is Stage.REASONING else None,
                    response=_MARK["response"] if stage is Stage.RESPONSE else None,
                )
                try:
                    rendered = render_plain(inst.build_input(req))
                except Exception:  # noqa: BLE001 - a variant that needs a model folder, options, ...
                    continue
                parts = _MARKS.split(rendered)
                marks = _MARKS.findall(rendered)
                want = _MARK[str(stage)]
                if want not in marks:
                    continue
                body = "".join("(.*?)" + re.escape(c) for c in parts[1:])
                pattern = re.compile("^" + re.escape(parts[0]) + body + "$", re.DOTALL)
                judged = len(marks) - marks[::-1].index(want)
                out.append(_Probe(inst, stage, pattern, judged, sum(map(len, parts))))
    return out


def _variants(fam: CannedFamily) -> list[Any]:
    names: list[str | None] = [h.rsplit("/", 1)[-1] for h in fam.variants.values()] or [None]
    found = []
    for name in names:
        try:
            found.append(fam(name))
        except Exception:  # noqa: BLE001 - a variant that cannot be built without its folder
            continue
    return found


def _match(probes: Sequence[_Probe], rendered: str) -> tuple[_Probe, str] | None:
    best: tuple[_Probe, str] | None = None
    for p in probes:
        m = p.pattern.match(rendered)
        if m and (best is None or p.weight > best[0].weight):
            best = (p, m.group(p.judged))
    return best
