"""Checkpointable Grain batches of MV-DiT latent items (from shards or the synthetic source).

`make_latent_batches` turns a latent source (`LatentShardSource`, `SyntheticLatentSource`: items
are latent-record dicts) into an endless MapDataset of this process's share of each global
batch, every batch from one latent shape; `LatentBatchBuilder` stacks one block.
"""
from __future__ import annotations

import dataclasses

import grain
import numpy as np

from mtvjax.data.latent_records import FIRST_JOINTS, LATENTS_LOGVAR
from mtvjax.data.loader import index_batches
from mtvjax.data.text_embeddings import pad_rows


@dataclasses.dataclass
class LatentBatchBuilder:
    """This process's block of one global batch of latent items (a Grain map, deterministic).

    Returns `latents`, `ref_latents`, `motion`, `first_joints` `[b, 24, 3]` (an item's own, else
    its `motion[0]`) and, where every item has them, `latents_logvar`, `motion_tokens`, `text`
    (+ `text_lens`, zero-padded to `text_rows` or the longest) and `image`. A batch where only
    some items have `latents_logvar` is refused (posterior sampling cannot be per item).
    """

    source: object
    text_rows: int = 0
    process_index: int = 0
    process_count: int = 1

    def __call__(self, indices: np.ndarray) -> dict:
        local = len(indices) // self.process_count
        items = [self.source[int(i)]
                 for i in indices[self.process_index * local:(self.process_index + 1) * local]]
        shapes = {it["latents"].shape for it in items}
        if len(shapes) > 1:
            raise ValueError(f"a batch mixes latent shapes {sorted(shapes)}; batch by shape")
        batch = {name: np.stack([it[name] for it in items]).astype(np.float32)
                 for name in ("latents", "ref_latents", "motion")}
        batch[FIRST_JOINTS] = np.stack([
            it[FIRST_JOINTS] if it.get(FIRST_JOINTS) is not None else it["motion"][0]
            for it in items]).astype(np.float32)
        with_logvar = [it.get(LATENTS_LOGVAR) is not None for it in items]
        if all(with_logvar):
            batch[LATENTS_LOGVAR] = np.stack([it[LATENTS_LOGVAR] for it in items]
                                             ).astype(np.float32)
        elif any(with_logvar):
            without = [it["key"] for it, has in zip(items, with_logvar) if not has]
            raise ValueError(f"a batch mixes items with and without latents_logvar (without: "
                             f"{', '.join(without[:5])}); build every record with the posterior "
                             "or none")
        if all(it["motion_tokens"] is not None for it in items):
            batch["motion_tokens"] = np.stack([it["motion_tokens"] for it in items])
        if all(it["text"] is not None for it in items):
            rows = self.text_rows or max(it["text"].shape[0] for it in items)
            batch["text"], batch["text_lens"] = pad_rows([it["text"] for it in items], rows,
                                                          "data.text_rows")
        if all(it["image"] is not None for it in items):
            batch["image"] = np.stack([it["image"] for it in items])
        batch["index"] = np.asarray(indices[self.process_index * local:
                                            (self.process_index + 1) * local], np.int64)
        return batch


def make_latent_batches(source, batch_size: int, seed: int, process_index: int = 0,
                        process_count: int = 1, text_rows: int = 0) -> grain.MapDataset:
    """Endless MapDataset of this process's share of each global batch: per-epoch shuffle,
    every batch from one latent shape (items grouped by `source.shape_key`)."""
    if batch_size % process_count:
        raise ValueError(f"global batch {batch_size} does not divide over {process_count} "
                         "processes")
    groups = [source.shape_key(i) for i in range(len(source))]
    ds = index_batches(len(source), batch_size, seed, groups if len(set(groups)) > 1 else None)
    return ds.map(LatentBatchBuilder(source, text_rows, process_index, process_count))
