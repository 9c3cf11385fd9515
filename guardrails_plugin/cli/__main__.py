"""`python -m guardrails_plugin.cli`."""

from . import main

main()
