"""How far one check travels through the package: the files it enters and the calls that climb back
up the layer graph (pyproject's import-linter layers), for

1. a prompt check from ``GuardMiddleware.before_model`` (one HumanMessage, scripted guard), and
2. the chunks of a streamed 40-word answer after the first, through the LiteLLM guardrail's
   streaming hook: each chunk's path plus the checks they set off and the stream's end, on every
   thread (a second stream, so imports and first-use building are not counted).

A call from module A into module B is a *climb* when B's layer is above A's (e.g. the runner calling
back into the facade). Calls inside one file and into the standard library are not counted.

    python benchmarks/call_walk.py                 # this checkout
    python benchmarks/call_walk.py --checkout DIR  # another tree's guardrails_plugin (before/after)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import tomllib
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def _layers(root: Path) -> dict[str, int]:
    """module (first part below guardrails_plugin) -> layer number, higher = further up."""
    cfg = tomllib.loads((root / "pyproject.toml").read_text())
    contract = next(c for c in cfg["tool"]["importlinter"]["contracts"] if c["type"] == "layers")
    out: dict[str, int] = {}
    rows = contract["layers"]
    for depth, row in enumerate(rows):
        for name in row.replace("|", ":").split(":"):
            out[name.strip().strip("()")] = len(rows) - depth
    return out


class Walk:
    def __init__(self, pkg: Path, layers: dict[str, int]):
        self.pkg, self.layers = str(pkg) + os.sep, layers
        self.on = False
        self.files: list[str] = []
        self.climbs: list[tuple[str, str]] = []

    def _rel(self, filename: str) -> str | None:
        return filename[len(self.pkg):] if filename.startswith(self.pkg) else None

    def _layer(self, rel: str) -> int:
        return self.layers.get(rel.split(os.sep)[0].removesuffix(".py"), 0)

    def profile(self, frame, event, arg):  # noqa: ANN001 - sys.setprofile's signature
        if not self.on or event != "call":
            return
        callee = self._rel(frame.f_code.co_filename)
        if callee is None:
            return
        if callee not in self.files:
            self.files.append(callee)
        back = frame.f_back
        caller = self._rel(back.f_code.co_filename) if back is not None else None
        if caller and caller != callee and self._layer(callee) > self._layer(caller):
            pair = (caller, callee)
            if pair not in self.climbs:
                self.climbs.append(pair)

    def report(self, title: str) -> None:
        print(f"\n## {title}: {len(self.files)} package files, {len(self.climbs)} climbs back up")
        for f in self.files:
            print(f"  {f}")
        for a, b in self.climbs:
            print(f"  climb: {a} -> {b}")


def _prompt_walk(walk: Walk) -> None:
    from langchain_core.messages import HumanMessage

    from guardrails_plugin import Guard, GuardConfig
    from guardrails_plugin.engines import ScriptedEngine
    from guardrails_plugin.langchain import GuardMiddleware

    safe = "The user greets.\nAnswers: \nRequest: unharmful\nCompletion: compliance\nResponse: unharmful\n"
    guard = Guard(GuardConfig(), engine=ScriptedEngine(lambda _: safe))
    mw = GuardMiddleware(guard)
    state = {"messages": [HumanMessage("hello there")]}
    mw.before_model(state, None)  # warm: imports, loop thread, first-use building
    walk.on = True
    mw.before_model({"messages": [HumanMessage("how are you")]}, None)
    walk.on = False
    guard.close()


def _chunk_walk(walk: Walk) -> None:
    from litellm.types.utils import Delta, ModelResponseStream, StreamingChoices

    from guardrails_plugin import Guard, GuardConfig
    from guardrails_plugin.engines import ScriptedEngine
    from guardrails_plugin.litellm import GuardrailsPluginGuardrail

    def respond(prompt: str) -> str:
        if "Judgment" in prompt or "Analysis" in prompt:
            return '"Analysis": fine.\n"Judgment": 0'
        return "fine\nAnswers: \nRequest: unharmful\nCompletion: compliance\nResponse: unharmful\n"

    guard = Guard(GuardConfig(), engine=ScriptedEngine(respond))
    rail = GuardrailsPluginGuardrail(guard=guard, guardrail_name="walk", event_hook="post_call", default_on=True)
    words = [f"word{i} " for i in range(40)]
    request = {"model": "m", "messages": [{"role": "user", "content": "tell me a story"}], "stream": True}

    async def upstream():
        for i, w in enumerate(words):
            yield ModelResponseStream(id="c", model="m", choices=[StreamingChoices(
                index=0, delta=Delta(content=w, role="assistant" if i == 0 else None),
                finish_reason="stop" if i == len(words) - 1 else None)])

    async def run(traced: bool) -> None:
        n = 0
        async for _ in rail.async_post_call_streaming_iterator_hook(None, upstream(), dict(request)):
            n += 1
            walk.on = traced and n >= 2  # every chunk after the first, and the checks they start
        walk.on = False

    asyncio.run(run(False))  # warm: imports and first-use building
    asyncio.run(run(True))
    guard.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkout", type=Path, default=Path(__file__).resolve().parents[1],
                   help="tree whose guardrails_plugin/ and pyproject.toml to walk")
    args = p.parse_args()
    root = args.checkout.resolve()
    sys.path.insert(0, str(root))
    import guardrails_plugin

    pkg = Path(guardrails_plugin.__file__).parent
    assert pkg.parent == root, f"imported {pkg}, not {root}"
    layers = _layers(root)
    print(f"# call walk of {root}")
    for title, fn in (("prompt check from GuardMiddleware.before_model", _prompt_walk),
                      ("LiteLLM stream chunks (hook + their checks)", _chunk_walk)):
        walk = Walk(pkg, layers)
        sys.setprofile(walk.profile)
        threading.setprofile(walk.profile)
        try:
            fn(walk)
        finally:
            sys.setprofile(None)
            threading.setprofile(None)  # type: ignore[arg-type]
        walk.report(title)


if __name__ == "__main__":
    main()
