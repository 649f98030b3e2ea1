"""The canonical event and item tables every reader produces and every later stage consumes.

Events (one row per shopper action), in this column order:
  user_id     string            raw id, never empty
  item_id     string            raw id, never empty
  event       category          one of EVENT_TYPES
  timestamp   datetime64[ms, UTC]  all NaT when the data has no time (``has_time`` False)
  seq         int64             position of the row in its source (file order); the tie-breaker
                                that makes "order becomes time" for data without timestamps
optional:
  session_id  string
  price       float64
  quantity    float64
  split       category          'train' / 'test' — a predefined split that evaluation must honour

Items (one row per item_id): item_id (string), optional category_id (string),
parent_category_id (string), available (bool), and free attribute columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

EVENT_TYPES: tuple[str, ...] = ("view", "addtocart", "purchase")
EVENT_DTYPE = pd.CategoricalDtype(list(EVENT_TYPES), ordered=True)
SPLIT_VALUES: tuple[str, ...] = ("train", "test")
SPLIT_DTYPE = pd.CategoricalDtype(list(SPLIT_VALUES))
TIMESTAMP_DTYPE = "datetime64[ms, UTC]"

REQUIRED_EVENT_COLUMNS: tuple[str, ...] = ("user_id", "item_id", "event", "timestamp", "seq")
OPTIONAL_EVENT_COLUMNS: tuple[str, ...] = ("session_id", "price", "quantity", "split")
ITEM_COLUMNS: tuple[str, ...] = ("item_id", "category_id", "parent_category_id", "available")

# Synonyms seen in public shop logs. A user's own mapping (``map=...``) is applied first and
# wins; a name in neither is an error, never a silent drop.
DEFAULT_EVENT_ALIASES: dict[str, str] = {
    "view": "view", "pv": "view", "click": "view", "clk": "view", "detail": "view",
    "fav": "view", "favorite": "view", "favourite": "view", "collect": "view",
    "addtocart": "addtocart", "add_to_cart": "addtocart", "add-to-cart": "addtocart",
    "cart": "addtocart",
    "purchase": "purchase", "buy": "purchase", "order": "purchase", "transaction": "purchase",
}


@dataclass(frozen=True)
class BadRowReport:
    """What ``on_bad_rows='skip'`` dropped, by reason, with a few examples each."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    duplicates_dropped: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def lines(self) -> list[str]:
        out = []
        for reason, n in self.counts.items():
            examples = "; ".join(self.examples.get(reason, [])[:3])
            out.append(f"skipped {n} bad rows: {reason} (e.g. {examples})")
        if self.duplicates_dropped:
            out.append(f"dropped {self.duplicates_dropped} exact duplicate events")
        return out


@dataclass(frozen=True)
class EventData:
    """What a reader returns: validated events, item metadata, and what it noticed."""

    events: pd.DataFrame
    items: pd.DataFrame
    source: str
    has_time: bool
    report: BadRowReport = field(default_factory=BadRowReport)


def empty_items() -> pd.DataFrame:
    return pd.DataFrame({"item_id": pd.Series([], dtype="string")})
