"""Fencing tokens: the rule that keeps a processor which lost its partitions (a zombie)
from writing storage after another one took them over.

Each ownership of a partition gets a token from storage (:meth:`channels.store.Store.claim`),
higher than every token given out for that partition before. A writer puts the tokens of
the partitions it owns on each :class:`~channels.store.Batch` (``Batch.fence``); storage
refuses the batch, in the same atomic step that would write it, when it holds a higher
token for any of them (:func:`admit`). A batch that is admitted raises the stored tokens
to its own where they were lower or missing (storage lost its data), so a zombie is
refused again from then on. The design and its limits: ``docs/guarantees.md`` (6).

Pure: both stores apply this one function to the tokens they hold.
"""

from __future__ import annotations

from collections.abc import Mapping


class FencedError(Exception):
    """Storage holds a newer owner's token for a partition of the batch: nothing of the
    batch was written. Not retriable: the writer no longer owns the partition and must
    stop writing it."""

    retriable = False


def admit(stored: Mapping[int, int | None], fence: Mapping[int, int]) -> dict[int, int]:
    """Check a batch's tokens (``fence``: partition -> token) against the ones storage
    holds (``stored``; ``None`` or absent: none). Raises :class:`FencedError` when a stored
    token is higher than the batch's; otherwise returns the tokens storage must raise
    (partition -> the batch's token, where the stored one is lower or missing)."""
    raise_to: dict[int, int] = {}
    for partition, token in fence.items():
        held = stored.get(partition)
        if held is None or held < token:
            raise_to[partition] = token
        elif held > token:
            raise FencedError(
                f"partition {partition} belongs to a newer owner (token {held} > {token})"
            )
    return raise_to
