"""Where a training run's shared examples come from, batch by batch.

`PartiesData`: every compute party is a data owner and shares its own examples when a batch
needs them. `OwnersData`: data owners outside the parties sealed share files beforehand
(mpcft.data.owners). Both offer the trainer: `names` (label names), `counts` (examples per
owner, from which the public schedule is drawn), `test` (the plaintext held-out split at
rank 0, else None), `train_batch(batch)` and `test_batches(batch_size)`. A batch is a list of
(owner, index) pairs; its shares are SharedTensors (x, mask or None, one-hot y), the mask
of 0/1 integers (frac_bits 0).
"""
import torch

from mpcft.encoder import frozen_features
from mpcft.protocols import sharing
from mpcft.runtime.envelope import SealedFileError
from mpcft.runtime.errors import ConfigError
from mpcft.tensor import SharedTensor

from . import owners as owner_files
from .files import load_data


def by_owner(batch) -> dict[int, list[int]]:
    """A batch of (owner, index) pairs as {owner: its indices in batch order}, owners ascending."""
    grouped = {}
    for owner, index in sorted(batch, key=lambda item: item[0]):
        grouped.setdefault(owner, []).append(index)
    return grouped


def _batch(ctx, xs, ms, ys):
    """The batch's SharedTensors from its owners' shares: features, mask (or None), labels."""
    mask = SharedTensor(ctx, torch.cat(ms), frac_bits=0) if ms else None
    return SharedTensor(ctx, torch.cat(xs)), mask, SharedTensor(ctx, torch.cat(ys))


def share_batch(ctx, batch, features, masks, labels, num_labels: int, feature_shape):
    """Every owner shares its examples of the batch; returns shares (x, mask or None, one-hot y)."""
    xs, ms, ys = [], [], []
    for owner, idx in by_owner(batch).items():
        mine = ctx.rank == owner
        shape = (len(idx),) + tuple(feature_shape)
        x = ctx.fp.encode(features[idx]) if mine else None
        y = ctx.fp.encode(torch.nn.functional.one_hot(labels[idx], num_labels).double()) if mine else None
        xs.append(sharing.share(ctx, x, owner, shape))
        ys.append(sharing.share(ctx, y, owner, (len(idx), num_labels)))
        if len(feature_shape) == 2:
            m = masks[idx].to(torch.int64) if mine else None
            ms.append(sharing.share(ctx, m, owner, shape[:2]))
    return _batch(ctx, xs, ms, ys)


class PartiesData:
    """Every compute party is a data owner: it runs the frozen layers on its own texts and
    shares the results batch by batch (pairwise seeds: no bytes sent). Rank 0 also holds the
    plaintext held-out split. `config`: the run's mpcft.finetune.FinetuneConfig."""

    def __init__(self, ctx, config, encoder, tokenizer, mpc_layers: int):
        (texts, labels), self.test, self.names = load_data(config, ctx.rank, ctx.world_size)
        self.ctx, self.seq_len, self.encoder, self.tokenizer = ctx, config.seq_len, encoder, tokenizer
        self.mpc_layers = mpc_layers
        self.features, self.masks = frozen_features(encoder, tokenizer, texts, self.seq_len, mpc_layers)
        self.labels = torch.tensor(labels, dtype=torch.int64)
        self.counts = [int(c) for c in ctx.session.all_gather(torch.tensor([len(texts)]))]
        hidden = encoder.config.hidden_size
        self.feature_shape = (self.seq_len, hidden) if mpc_layers else (hidden,)

    def train_batch(self, batch):
        return share_batch(self.ctx, batch, self.features, self.masks, self.labels, len(self.names),
                           self.feature_shape)

    def test_batches(self, batch_size: int):
        """(batches, shares of a batch) for the held-out split, which rank 0 shares."""
        ctx = self.ctx
        size = int(ctx.session.broadcast(torch.tensor([len(self.test[0]) if self.test else 0]), 0,
                                         dtype=torch.int64, shape=(1,))[0])
        features = masks = labels = None
        if ctx.rank == 0:
            features, masks = frozen_features(self.encoder, self.tokenizer, self.test[0], self.seq_len,
                                              self.mpc_layers)
            labels = torch.tensor(self.test[1], dtype=torch.int64)
        batches = [[(0, i) for i in range(start, min(size, start + batch_size))]
                   for start in range(0, size, batch_size)]
        return batches, lambda batch: share_batch(ctx, batch, features, masks, labels, len(self.names),
                                                  self.feature_shape)


class OwnersData:
    """Data owners outside the parties sent sealed share files (mpcft.data.owners): each party
    reads its own, opened with its private key `key` and checked against the cluster CA `ca`;
    nothing is shared during training. The held-out parts are evaluated in MPC."""

    def __init__(self, ctx, config, encoder, mpc_layers: int, key, ca):
        if config.plaintext_baseline:
            raise ConfigError("--plaintext-baseline needs every owner's plaintext: not with --owner-shares")
        if key is None or ca is None:
            raise ConfigError("--owner-shares needs the parties' certificates (a TLS cluster)")
        self.ctx = ctx
        self.owners = owner_files.load_owner_shares(
            config.owner_shares, ctx.rank, ctx.world_size, key, ca, ctx.frac_bits,
            owner_files.model_fingerprint(encoder), owner_files.sealing_pins(config.owner_sealing))
        owner_files.check_same_files(ctx.session, self.owners)
        header = self.owners[0].header
        if header["mpc_layers"] != mpc_layers:
            raise SealedFileError(f"the share files were made for {header['mpc_layers']} MPC layers, this run "
                                  f"has {mpc_layers}: use the owners' --mode and --layers")
        self.names, self.test = header["labels"], None
        self.counts = [o.count("train") for o in self.owners]

    def train_batch(self, batch):
        return self._shares("train", batch)

    def test_batches(self, batch_size: int):
        items = [(o, i) for o, owner in enumerate(self.owners) for i in range(owner.count("test"))]
        batches = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
        return batches, lambda batch: self._shares("test", batch)

    def _shares(self, part: str, batch):
        """This party's shares (x, masks or None, one-hot labels) of a batch of `part`."""
        xs, ms, ys = [], [], []
        for o, idx in by_owner(batch).items():
            tensors = self.owners[o].parts[part]
            xs.append(tensors["features"][idx])
            ys.append(tensors["labels"][idx])
            if "masks" in tensors:
                ms.append(tensors["masks"][idx])
        return _batch(self.ctx, xs, ms, ys)
