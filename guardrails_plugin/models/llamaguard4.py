"""Llama Guard 4 (12B): Llama Guard 3's protocol on the Llama 4 tokenizer.

Protocol (reference: shared/reference/more-guards.md section 2). **No primary source was found for
the chat template or the exact prompt text** (the llama.com page was unreachable). What this adapter
relies on, and where each item comes from:

* the official usage (HF blog, co-released with Meta) [code]: ``processor.apply_chat_template`` on
  messages whose content is a list of typed parts, ``add_generation_prompt=True``, greedy, 10 new
  tokens; outputs ``unsafe\\nS9`` and, with ``excluded_category_keys=["S9", "S2", "S1"]``, ``safe``;
* the rendered prompt and a generation (``'\\n\\nunsafe<|end_of_text|>'``, blank line id 368,
  ``unsafe`` id 72110) [third-party run of the real processor]; a second third-party note on the
  template (typed parts, optional ``categories`` / ``excluded_category_keys``, S1..S14 for text
  only, a literal ``\\n\\n`` after each message). These are [unverified];
* the output format and parser are Llama Guard 3's (same family, and the blog's outputs agree).

Everything unverified sits in one constant each below, so it is one line to change once the real
tokenizer files are at hand: ``TYPED_PARTS`` (content shape; the model folder's own template is
still checked first), ``SCORE_PREFIX`` (the blank line before the label), ``CODES`` (S1..S14).
"""

from __future__ import annotations

from typing import ClassVar

from .base import read_chat_template
from .llamaguard3 import LlamaGuard3

#: [third-party, unverified] the HF processor's template takes typed parts (plain strings render an
#: empty conversation); a local folder's template overrides this guess.
TYPED_PARTS = True
#: [third-party, unverified] the template ends at ``<|header_end|>`` and the model writes the blank
#: line (id 368 in the one run seen) before the label, so fast scoring forces it, as for 3.
SCORE_PREFIX = "\n\n"
#: [third-party, unverified] S1..S14 for text-only conversations (llama-stack maps LG4 to S1..S13)
CODES: tuple[str, ...] = tuple(f"S{i}" for i in range(1, 15))


class LlamaGuard4(LlamaGuard3):
    family = "llamaguard4"
    default_model_id = "meta-llama/Llama-Guard-4-12B"
    variants = {"12B": "meta-llama/Llama-Guard-4-12B"}
    default_max_new_tokens = 32  # the blog uses 10; room for "\n\n" and a list of codes
    codes_by_variant: ClassVar[dict[str | None, tuple[str, ...]]] = {"12B": CODES, None: CODES}
    score_prefix: ClassVar[str] = SCORE_PREFIX

    def typed_parts(self) -> bool:
        tpl = read_chat_template(self.model_dir)
        if tpl is not None:  # the real template decides: does it look inside typed parts?
            return any(m in tpl for m in ("'type'", '"type"', "['text']", '["text"]'))
        return TYPED_PARTS


__all__ = ["CODES", "LlamaGuard4", "SCORE_PREFIX", "TYPED_PARTS"]
