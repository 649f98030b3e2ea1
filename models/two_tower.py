"""The two-tower model: a user tower over recent history, an item tower over id, category and
attributes.

Both towers read one TorchRec ``EmbeddingCollection`` through ``KeyedJaggedTensor`` inputs, so
the item-id table is shared (a history item and a candidate item are the same row) and the
tables can be sharded by ``DistributedModelParallel``. Item attributes (brand, categories, price
bucket: ``features.item_attributes``) are a multi-valued feature, mean-pooled by a TorchRec
``EmbeddingBagCollection``, so items that share them share part of their vector. The user tower
encodes the last L events (item, event type, time gap), never a per-user id row: a shopper unseen
in training gets an embedding from a few events, and deleting their events deletes their
influence.

The model returns embeddings; the loss lives in ``training/``. Next to the tower score the model
carries a small "interest" term: how strongly each item of the history (by event type, how many
steps back and how many days ago) predicts that the shopper comes back to it. Training learns
those weights with the same softmax, so on shops where people buy what they just looked at the
ranking uses that signal, and where they do not (review data) it learns to ignore it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchrec import (
    EmbeddingBagCollection,
    EmbeddingBagConfig,
    EmbeddingCollection,
    EmbeddingConfig,
    KeyedJaggedTensor,
    PoolingType,
)

from features.config import setting
from models.attention import attention_mask, keep_off_fused_path
from models.buckets import (
    AGE_BUCKETS,
    GAP_BUCKETS,
    RECENCY_BUCKETS,
    STEP_BUCKETS,
    log_bucket,
    step_bucket,
)
from models.pooling import recency_pool, running_pool, weighted_mean
from models.take import take

# TorchRec's EmbeddingBagCollection calls torch.fx's is_fx_tracing, which logs a notice meant for
# TorchRec's authors into every training run; it says nothing about this model.
logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)

N_EVENT_TYPES = 3


@dataclass(frozen=True)
class TwoTowerConfig:
    n_items: int
    n_categories: int = 0
    n_attributes: int = 0
    dim: int = setting(64, "embedding size of both towers")
    history_len: int = 50
    encoder: str = setting(
        "pooling",
        "user-tower encoder: transformer (causal self-attention over the history) or pooling "
        "(weighted mean)")
    n_layers: int = setting(2, "transformer layers")
    n_heads: int = setting(2, "attention heads per transformer layer")
    mask_padding: bool = setting(
        True,
        "transformer: keep the padding left of a short history out of attention (bundles "
        "saved before this setting load with it off, as they were trained)")
    newest_item: bool = setting(
        True,
        "add the newest event's item vector (the item tower's: id, category and attributes, as "
        "the index holds it) to the user vector; training adds it whole, the served weight is "
        "chosen on validation (0, 1 or 1.5)")
    dropout: float = setting(0.2, "dropout in the user tower")
    temperature: float = setting(0.05, "softmax temperature over cosine scores")
    interest: bool = setting(
        True,
        "learn the 'comes back to what they looked at' term next to the tower score")
    recency: bool = setting(
        True,
        "pooling: weigh each event also by how many events back it lies from the position "
        "being predicted (a learned bias per log2 bucket), instead of position vectors counted "
        "from the end of the training window (bundles saved before this setting load with it "
        "off, as they were trained)")
    attention_recency: bool = setting(
        True,
        "transformer: bias each head's attention by how many events back the key lies from "
        "the query (a learned bias per log2 bucket, shared by the layers), instead of position "
        "vectors counted from the end of the training window (bundles saved before this "
        "setting load with it off, as they were trained)")

    history_item_tower: bool = setting(
        False,
        "the user tower reads each history event's item as the item tower encodes it (id, "
        "category and attributes, the vectors the index holds) instead of its id row; off by "
        "default: on Toys, Sports and Tmall its towers gained on the test folds while "
        "validation split (BENCHMARKS.md, 'Tried on the pooling towers')")
    item_id_dropout: float = setting(
        0.0,
        "share of candidate items whose id vector training drops, so category and attributes "
        "alone learn to place an item (new items have no id vector)")
    attributes: bool = setting(
        True,
        "feed the items' attributes (metadata columns, the Amazon item2attributes) to the item "
        "tower")

    def to_dict(self) -> dict:
        return asdict(self)


class TwoTower(nn.Module):
    def __init__(self, cfg: TwoTowerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        tables = [EmbeddingConfig(name="item", embedding_dim=d, num_embeddings=cfg.n_items,
                                  feature_names=["hist_item", "cand_item"])]
        if cfg.n_categories:
            tables.append(EmbeddingConfig(name="category", embedding_dim=d,
                                          num_embeddings=cfg.n_categories,
                                          feature_names=["cand_category"]))
        self.embeddings = EmbeddingCollection(tables=tables, device=torch.device("cpu"))
        for table in self.embeddings.embeddings.values():
            nn.init.normal_(table.weight, std=1.0 / math.sqrt(d))
        self.attribute_bags = None
        if cfg.n_attributes:
            self.attribute_bags = EmbeddingBagCollection(
                tables=[EmbeddingBagConfig(name="attribute", embedding_dim=d,
                                           num_embeddings=cfg.n_attributes,
                                           feature_names=["cand_attribute"],
                                           pooling=PoolingType.MEAN)],
                device=torch.device("cpu"))
            for table in self.attribute_bags.embedding_bags.values():
                nn.init.normal_(table.weight, std=1.0 / math.sqrt(d))
        self.event_emb = nn.Embedding(N_EVENT_TYPES, d)
        self.gap_emb = nn.Embedding(GAP_BUCKETS, d)
        # The recency settings weigh events by steps back instead (pooling or attention).
        self.pos_emb = None if self._steps_back_recency else nn.Embedding(cfg.history_len, d)
        # Small side embeddings: at N(0, 1) they would drown the item vectors (norm ~1) and the
        # towers would spend their first epochs learning to ignore them.
        for side in (self.event_emb, self.gap_emb, self.pos_emb):
            if side is not None:
                nn.init.normal_(side.weight, std=0.02)
        self.input_norm = nn.LayerNorm(d)
        self.dropout = nn.Dropout(cfg.dropout)
        if cfg.encoder == "transformer":
            layer = nn.TransformerEncoderLayer(d, cfg.n_heads, dim_feedforward=2 * d,
                                               dropout=cfg.dropout, batch_first=True,
                                               norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
            if cfg.attention_recency:
                # Attention bias per steps-back bucket and head; starts flat, as the pool's.
                self.attention_recency = nn.Parameter(torch.zeros(RECENCY_BUCKETS, cfg.n_heads))
                keep_off_fused_path(self.encoder)   # a float mask: see there
        elif cfg.encoder == "pooling":
            self.encoder = None
            self.pool_score = nn.Linear(d, 1)  # attention-weighted pooling over the history
            if cfg.recency:
                # Log-weight of an event by its steps back from the predicted position; starts
                # flat, so the content score decides until training finds a use for recency.
                self.pool_recency = nn.Parameter(torch.zeros(RECENCY_BUCKETS))
        else:
            raise ValueError(f"encoder must be 'transformer' or 'pooling', got {cfg.encoder!r}")
        if cfg.newest_item:
            # The newest item's weight outside training: a buffer, so that it is saved with the
            # weights and validation can set it (``training.fit.validate_newest``).
            self.register_buffer("newest_weight", torch.tensor(1.0))
        if not 0.0 <= cfg.item_id_dropout < 1.0:
            raise ValueError(f"item_id_dropout must be in [0, 1), got {cfg.item_id_dropout}")
        self.user_out = nn.Linear(d, d)
        self.item_out = nn.Linear(d, d)
        # Interest term: log-weights per event type, steps back and age, and an overall scale.
        self.interest_event = nn.Parameter(torch.tensor([0.0, 1.0, 1.0]))
        self.interest_step = nn.Parameter(-0.3 * torch.arange(STEP_BUCKETS, dtype=torch.float32))
        self.interest_age = nn.Parameter(torch.zeros(AGE_BUCKETS))
        self.interest_scale = nn.Parameter(torch.tensor(1.0 if cfg.interest else 0.0),
                                           requires_grad=cfg.interest)

    # ---- sparse look-ups (one KeyedJaggedTensor per call, as TorchRec shards them) ----
    @property
    def _serving_tables(self) -> bool:
        """Serving from unsharded tables: look-ups index the tables directly, without the
        KeyedJaggedTensor that training and sharded (DistributedModelParallel) tables need."""
        return not self.training and type(self.embeddings) is EmbeddingCollection

    def _lookup(self, hist_items: torch.Tensor, hist_lengths: torch.Tensor,
                cand_items: torch.Tensor, cand_categories: torch.Tensor | None
                ) -> dict[str, torch.Tensor]:
        """Each feature's embedded values, (n, dim): ``hist_item``, ``cand_item`` and
        ``cand_category`` (when the model has categories)."""
        if self._serving_tables:
            # Serving (unsharded tables): index the tables directly. Packing a one-request
            # KeyedJaggedTensor cost more than the look-up itself (the serving profile's top
            # entry); the values are the same rows of the same tables.
            tables = self.embeddings.embeddings
            out = {"hist_item": tables["item"].weight[hist_items.long()],
                   "cand_item": tables["item"].weight[cand_items.long()]}
            if self.cfg.n_categories:
                out["cand_category"] = tables["category"].weight[cand_categories.long()]
            return out
        batch = hist_lengths.numel()
        # Candidates ride in the first bag of the batch: every feature shares the batch size.
        cand_lengths = torch.zeros(batch, dtype=torch.long)
        if batch:
            cand_lengths[0] = cand_items.numel()
        keys, values, lengths = ["hist_item", "cand_item"], [hist_items, cand_items], \
            [hist_lengths, cand_lengths]
        if self.cfg.n_categories:
            keys.append("cand_category")
            values.append(cand_categories)
            lengths.append(cand_lengths)
        kjt = KeyedJaggedTensor.from_lengths_sync(keys=keys, values=torch.cat(values).long(),
                                                  lengths=torch.cat(lengths).long())
        return {key: jagged.values() for key, jagged in self.embeddings(kjt).items()}

    def _attribute_vectors(self, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Mean attribute vector per item, (n, dim); zeros for an item without attributes."""
        kjt = KeyedJaggedTensor.from_lengths_sync(keys=["cand_attribute"], values=values.long(),
                                                  lengths=lengths.long())
        return self.attribute_bags(kjt)["cand_attribute"]

    def forward(self, items: torch.Tensor, events: torch.Tensor, gaps: torch.Tensor,
                mask: torch.Tensor, cand_items: torch.Tensor, cand_categories: torch.Tensor,
                cand_attribute_values: torch.Tensor, cand_attribute_lengths: torch.Tensor,
                cand_attribute_sets: torch.Tensor,
                pair_query: torch.Tensor, pair_items: torch.Tensor, pair_events: torch.Tensor,
                pair_steps: torch.Tensor, pair_age_days: torch.Tensor, hist_cand: torch.Tensor):
        """Training pass (what ``DistributedModelParallel`` wraps): user vectors at every
        position (B, L, dim), candidate item vectors (C, dim) and the interest triples.
        ``hist_cand`` (B, L): each history event's position among the candidates, which hold
        every history item (``training.loss``), for ``with_newest_item``."""
        cands = self.item_embed(cand_items, cand_categories, cand_attribute_values,
                                cand_attribute_lengths, cand_attribute_sets)
        hist_vectors = take(cands, hist_cand)
        users = self.user_embed(items, events, gaps, mask, all_positions=True,
                                history_vectors=hist_vectors)
        users = self.with_newest_item(users, hist_vectors, mask)
        interest = self.interest(pair_items, pair_events, pair_steps, pair_age_days, pair_query)
        return users, cands, interest

    def item_embed(self, item_idx: torch.Tensor, category_idx: torch.Tensor | None = None,
                   attribute_values: torch.Tensor | None = None,
                   attribute_lengths: torch.Tensor | None = None,
                   attribute_sets: torch.Tensor | None = None) -> torch.Tensor:
        """Normalized item vectors, shape (n, dim). category_idx -1 means unknown; the
        attributes are attribute rows, concatenated, with one length per bag: each item's own
        bag, or with ``attribute_sets`` (each item's bag) the distinct bags among the items, so
        that items sharing one are pooled once (``models.inputs.ItemTable.take`` builds them).

        An item row outside the id table (-1, or one added after training) has no id vector:
        it is its category and attributes. Training drops the id vector of a share
        ``item_id_dropout`` of the candidates, so those alone learn to stand for an item.
        """
        empty = torch.zeros(0, dtype=torch.long)
        known_id = (item_idx >= 0) & (item_idx < self.cfg.n_items)
        if self.training and self.cfg.item_id_dropout > 0:
            known_id &= torch.rand(item_idx.shape) >= self.cfg.item_id_dropout
        item_idx = torch.where(known_id, item_idx, 0)
        cats = None
        if self.cfg.n_categories:
            cats = (category_idx if category_idx is not None else torch.full_like(item_idx, -1))
            known_cat = cats >= 0
            cats = cats.clamp(min=0)
        out = self._lookup(empty, torch.zeros(1, dtype=torch.long), item_idx, cats)
        vec = out["cand_item"] * known_id.unsqueeze(1)
        if self.cfg.n_categories:
            vec = vec + out["cand_category"] * known_cat.unsqueeze(1)
        if self.attribute_bags is not None and attribute_lengths is not None:
            bags = self._attribute_vectors(attribute_values, attribute_lengths)
            vec = vec + (bags if attribute_sets is None else take(bags, attribute_sets))
        return F.normalize(self.item_out(vec) + vec, dim=-1)

    def user_embed(self, items: torch.Tensor, events: torch.Tensor, gaps: torch.Tensor,
                   mask: torch.Tensor, all_positions: bool = False,
                   history_vectors: torch.Tensor | None = None) -> torch.Tensor:
        """Encode right-aligned histories (B, L): item rows, event codes, hours to the next
        event (NaN without time) and a validity mask. Returns normalized (B, dim) vectors of the
        last position, or (B, L, dim) for every position when ``all_positions`` (training).
        With ``history_item_tower`` the events' items are ``history_vectors`` (B, L, dim), their
        ``item_embed`` vectors, instead of the id rows of ``items``."""
        length = items.shape[1]
        if self.cfg.history_item_tower:
            if history_vectors is None:
                raise ValueError("history_item_tower: pass the item vectors of the history's "
                                 "events (history_vectors)")
            x = history_vectors * mask.unsqueeze(-1)
        else:
            x = self._history_items(items, mask)
        x = x + self.event_emb(events.clamp(min=0)) + self.gap_emb(log_bucket(gaps, GAP_BUCKETS))
        if not self._steps_back_recency:
            # Positions are counted from the right: the newest event is always the last id.
            x = x + self.pos_emb.weight[self.cfg.history_len - length:]
        x = self.dropout(self.input_norm(x)) * mask.unsqueeze(-1)
        if self.encoder is not None:
            recency = self.attention_recency if self.cfg.attention_recency else None
            h = self.encoder(x, mask=attention_mask(mask, self.cfg.n_heads,
                                                    self.cfg.mask_padding, recency))
            h = h if all_positions else h[:, -1]
        else:
            h = self._pool(x, mask, all_positions)
        # Only the last position is served: the output layer runs on it alone, (B, dim).
        h = h * (mask.unsqueeze(-1) if all_positions else mask[:, -1:])
        return F.normalize(self.user_out(h) + h, dim=-1)

    def _history_items(self, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The item vectors of right-aligned histories, (B, L, dim), zero where padded."""
        if self._serving_tables:
            # The (B, L) grid indexed at once, padding masked after.
            weight = self.embeddings.embeddings["item"].weight
            return weight[items] * mask.unsqueeze(-1)
        flat = self._lookup(items[mask], mask.sum(1), torch.zeros(0, dtype=torch.long),
                            torch.zeros(0, dtype=torch.long) if self.cfg.n_categories
                            else None)["hist_item"]
        x = torch.zeros(*items.shape, self.cfg.dim, dtype=flat.dtype)
        x[mask] = flat
        return x

    @property
    def ignores_padding(self) -> bool:
        """The user vector of a history is the same however much padding is left of it, so a
        batch can be as wide as its longest history: pooling weighs padding 0, and the masked
        transformer never attends to it (the unmasked one of older bundles does)."""
        return self.encoder is None or self.cfg.mask_padding

    @property
    def _steps_back_recency(self) -> bool:
        """Events are placed by steps back from the position predicted, not by position
        vectors: ``recency`` for pooling, ``attention_recency`` for the transformer."""
        if self.cfg.encoder == "pooling":
            return self.cfg.recency
        return self.cfg.attention_recency

    def _pool(self, x: torch.Tensor, mask: torch.Tensor, all_positions: bool) -> torch.Tensor:
        """Attention-weighted mean of the events up to each position (``models.pooling``):
        (B, L, dim) for every position, else (B, dim) for the last."""
        logits = self.pool_score(x).squeeze(-1).masked_fill(~mask, -1e9)
        if self.cfg.recency:
            return recency_pool(x, logits, self.pool_recency, all_positions)
        if not all_positions:
            return weighted_mean(x, logits)   # padding: exp(-1e9) is exactly 0
        return running_pool(x, logits, mask)

    def with_newest_item(self, users: torch.Tensor, newest_items: torch.Tensor,
                         present: torch.Tensor) -> torch.Tensor:
        """The user vectors (..., dim) plus the item vectors of each history's newest event
        (``item_embed``'s, as the index holds them), normalized again; ``present`` (...) is
        False where there is no event, and those stay zero. Training adds the item whole,
        serving with ``newest_weight`` (chosen on validation).

        A history's summary weighs the event that just happened like the others; the item's
        own vector says what came last, the strongest single cue in next-item data. It is the
        item tower's vector, not the history's id row, so it carries the item's category and
        attributes: the items a new one resembles rank high after it, and new items (attributes
        only) find their place. Where the whole history matters more (what a shopper carts over
        the coming days), validation turns it down."""
        if not self.cfg.newest_item:
            return users
        weight = 1.0 if self.training else self.newest_weight
        present = present.unsqueeze(-1)
        return F.normalize(users + weight * newest_items * present, dim=-1) * present

    def interest(self, hist_items: torch.Tensor, hist_events: torch.Tensor,
                 steps_back: torch.Tensor, age_days: torch.Tensor, query: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sparse boost for the items in each query's history: (query, item, boost) triples.

        Each (query, history event) pair adds exp(w_event + w_steps + w_age) to the item's
        interest mass m; the boost is scale * log(1 + m), so repeats saturate. Callers add it to
        the tower logits (``logits.index_put_((query, item), boost, accumulate=True)``).
        """
        log_w = (take(self.interest_event, hist_events.clamp(min=0))
                 + take(self.interest_step, step_bucket(steps_back))
                 + take(self.interest_age, log_bucket(age_days, AGE_BUCKETS)))
        n_items = self.cfg.n_items
        keys, inverse = torch.unique(query * n_items + hist_items, return_inverse=True)
        mass = torch.zeros(keys.numel(), dtype=log_w.dtype).index_add(0, inverse, torch.exp(log_w))
        return keys // n_items, keys % n_items, self.interest_scale * torch.log1p(mass)

