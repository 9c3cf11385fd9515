"""The typed shape of an answer to an escalation (LangGraph validates resume values against it
before saving them, and publishes its JSON schema with the interrupt)."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Discriminator, Field
from typing_extensions import NotRequired, TypedDict

_Text = Annotated[str, Field(pattern=r"\S")]


class _Approve(TypedDict):
    type: Literal["approve"]
    message: NotRequired[str]
    resolver: NotRequired[str]


class _Reject(TypedDict):
    type: Literal["reject"]
    message: NotRequired[str]
    resolver: NotRequired[str]


class _EditArgs(TypedDict):
    text: _Text


class _EditedAction(TypedDict):
    name: NotRequired[str]
    args: _EditArgs


class _Edit(TypedDict):
    type: Literal["edit"]
    edited_action: _EditedAction
    message: NotRequired[str]
    resolver: NotRequired[str]


ReviewAnswer = Annotated[Union[_Approve, _Edit, _Reject], Discriminator("type")]  # noqa: UP007


class _Decisions(TypedDict):
    decisions: Annotated[list[ReviewAnswer], Field(min_length=1, max_length=1)]


#: ``{"decisions": [decision]}`` (HumanInTheLoopMiddleware's HITLResponse) or the decision itself
RESUME_SCHEMA = Union[_Decisions, ReviewAnswer]  # noqa: UP007
