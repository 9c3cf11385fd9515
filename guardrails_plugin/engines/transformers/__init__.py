"""The in-process transformers engine, split by job: ``engine`` (loading, public async API),
``encoding`` (special-token-safe tokenisation), ``batching`` (worker thread, micro-batches,
generation), ``sessions`` (KV reuse), ``scoring`` (fast scoring), ``state`` (work items, shared state).
Importing it imports torch."""

from .engine import TransformersEngine

__all__ = ["TransformersEngine"]
