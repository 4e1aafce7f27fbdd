"""Readers for the formats retrieval users have, and datasets to try re-rankers on."""

__all__: list[str] = []
