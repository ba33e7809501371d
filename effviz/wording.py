"""Wording shared by the reports, the CLI and the app: light enough for any of them to import."""
from __future__ import annotations


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """``count`` with its noun in the right number: "1 thread", "2 threads", "0 threads".

    ``plural`` is for nouns that do not just take an "s". Counts here come from the machine or
    the user (one thread, one model picked), so a fixed plural would read "1 threads".
    """
    return f"{count} {noun if count == 1 else plural or noun + 's'}"
