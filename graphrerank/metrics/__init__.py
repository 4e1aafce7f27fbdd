"""Retrieval evaluation: average precision, revisited Oxford/Paris, re-ID and class-level mAP."""

__all__: list[str] = []
