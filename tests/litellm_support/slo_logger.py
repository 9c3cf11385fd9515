"""A LiteLLM logging callback the test proxies load (``litellm_settings.callbacks:
[slo_logger.slo_logger]``): appends each call's standard logging object's guardrail information
to the JSONL file named by ``GP_SLO_LOG``, as Langfuse / OTel callbacks would receive it."""

from __future__ import annotations

import json
import os
from typing import Any

from litellm.integrations.custom_logger import CustomLogger


class SloLogger(CustomLogger):
    def _write(self, kwargs: dict[str, Any], outcome: str) -> None:
        path = os.environ.get("GP_SLO_LOG")
        slo = kwargs.get("standard_logging_object") or {}
        if not path:
            return
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"outcome": outcome, "call_id": slo.get("id") or kwargs.get("litellm_call_id"),
                                "call_type": slo.get("call_type"),
                                "guardrail_information": slo.get("guardrail_information")}, default=str) + "\n")

    async def async_log_success_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._write(kwargs, "success")

    async def async_log_failure_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._write(kwargs, "failure")


slo_logger = SloLogger()
