"""The search parameters: one type for every caller, torch-free.

Server and index must agree on them (what two layers agree on lives in model/, as the prompt
formats do), and the wire models build them without importing the index: `SearchParams` is
what a search is asked for — how many documents (`k`), how many ANN
candidates the GA-kernel rerank sees (`k_prime`), metadata `filters`, the ranking `mode`, the
hybrid `lexical_weight`, which `collections` — built by the request models themselves
(`RetrieveRequest.to_search_params`, the `retrieval` options of /generate and chat), by the
CLI and by the evaluation, and read by the service and the index. The modes and the defaults
are written here once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

SEARCH_MODES = ("dense", "hybrid", "lexical")
DEFAULT_MODE = "hybrid"
# hybrid: the BM25 side's share of the fused score (index.index._fuse); above one half, so that
# when the two sides disagree completely (the best words in the document the embedding ranks
# last) the words win: what a name, an id or a caption's words ask for
LEXICAL_WEIGHT = 0.6
# the ANN candidates per result when a request does not say (k_prime = K_PRIME_FACTOR x k)
K_PRIME_FACTOR = 5
DEFAULT_COLLECTION = "default"
# group_by: the metadata keys results can be grouped by (one result per value)
GROUP_KEYS = ("source",)


@dataclass(frozen=True)
class SearchParams:
    """One search. `mode`/`lexical_weight` None: the server's defaults (`with_defaults`)."""

    k: int = 5
    k_prime: int | None = None
    filters: dict[str, Any] | None = None
    mode: str | None = None
    lexical_weight: float | None = None
    collections: tuple[str, ...] = (DEFAULT_COLLECTION,)
    with_images: bool = False
    # results whose `score` (the mode's ranking score) is below it are left out
    score_threshold: float | None = None
    # one result per value of this metadata key (documents without it: each its own group)
    group_by: str | None = None
    # documents never returned (more-like-this leaves out the document it starts from)
    exclude_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in SEARCH_MODES:
            raise ValueError(f"search mode must be one of {', '.join(SEARCH_MODES)}, got {self.mode!r}")
        if self.lexical_weight is not None and not 0.0 <= self.lexical_weight <= 1.0:
            raise ValueError(f"lexical_weight must lie in [0, 1], got {self.lexical_weight}")
        if not self.collections:
            raise ValueError("a search needs at least one collection")
        if self.group_by is not None and self.group_by not in GROUP_KEYS:
            raise ValueError(f"group_by must be one of {', '.join(GROUP_KEYS)}, got {self.group_by!r}")

    @property
    def collection(self) -> str:
        """The one collection of a single-collection search."""
        return self.collections[0]

    @property
    def candidates(self) -> int:
        """K': the ANN candidates the rerank sees."""
        return max(self.k, self.k_prime or K_PRIME_FACTOR * self.k)

    def with_defaults(self, mode: str = DEFAULT_MODE, lexical_weight: float = LEXICAL_WEIGHT) -> SearchParams:
        """The unset mode and weight filled in (a server's configured defaults)."""
        return self.replace(mode=self.mode or mode,
                            lexical_weight=lexical_weight if self.lexical_weight is None else self.lexical_weight)

    def replace(self, **changes: Any) -> SearchParams:
        return dataclasses.replace(self, **changes)


__all__ = ["DEFAULT_COLLECTION", "DEFAULT_MODE", "GROUP_KEYS", "K_PRIME_FACTOR", "LEXICAL_WEIGHT", "SEARCH_MODES",
           "SearchParams"]
