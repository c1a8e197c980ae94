"""Correlation sources: where a party's correlations come from, behind one interface.

`CorrelationSource.get(kind, **params)` returns this party's shares of the next correlation
of that layout (protocols/correlations.py); `with source.step(name):` brackets one unit of
work that repeats (a training step, an evaluation batch), so that a source may prepare the
next one (name the steps whose shapes differ apart, e.g. by batch size: shapes are layouts); `source.new_epoch(e)` moves to key epoch e (a checkpoint), where counts restart. A plan, the requests of a run or a step, is one format everywhere: a list of
{"kind": kind, "params": params} (JSON as it is).

- `DealerCorrelations`: online; each party expands its seed and asks the dealer for its runs
  of the derived values (correlations.correction_cuts); a step prefetches the last plan of
  the same name; a large elementwise correlation is asked for in pieces
  (correlations.split_layout), within the dealer's bound on one request. The seconds spent
  expanding PRG streams count in the session's `comm.count_prg` (mpcft.runtime.comm).
- `FileCorrelations`: offline, from a file `write_offline` made from a recorded plan.
- `RecordingCorrelations`: wraps another source and records its plan.
"""
import abc
import collections
import contextlib
import json
import pathlib
import struct
import time

import numpy as np
import torch

from mpcft.kernels import fresh_seed

from .correlations import (Correlation, correction_bytes, dealer_corrections, join_pieces, layout_id,
                           party_correlation, party_shares, random_count, receives, split_layout)


def request(kind: str, params: dict) -> dict:
    """One entry of a plan."""
    return {"kind": kind, "params": params}


class CorrelationSource(abc.ABC):
    """Hands a party its shares of correlations, in the order its protocols ask for them."""

    @abc.abstractmethod
    def get(self, kind: str, **params) -> Correlation:
        """This party's shares of the next correlation of layout (kind, params)."""

    @contextlib.contextmanager
    def step(self, name: str = "step"):
        """One unit of repeating work named `name`; a source may prepare for it (default: nothing)."""
        yield

    def new_epoch(self, epoch: int) -> None:
        """Move to key epoch `epoch` (later than the current one): correlation k of a layout is
        then the k-th of that layout since the move (protocols/correlations.py)."""
        raise NotImplementedError(f"{type(self).__name__} has no key epochs: checkpoints need "
                                  f"online correlations (DealerCorrelations)")


class DealerCorrelations(CorrelationSource):
    """Correlations fetched online: each party expands its seed and asks the dealer for the
    corrections of its runs (correlations.party_correlation).

    Every party counts the correlations of each layout it used; correlation k of layout L is
    the same at every party, whatever the order of requests across layouts. Inside
    `step(name)`, each party first asks for the plan of the last step of that name, so that
    the dealer computes while the parties work instead of when they wait.
    """

    def __init__(self, session, max_ahead_bytes: int = 1 << 30, max_request_elements: int = 1 << 26):
        if session.dealer_seed is None:
            raise ValueError("this session has no dealer: start one (mpcft launch --dealer) "
                             "or use FileCorrelations for an offline run")
        self.session = session
        self.max_ahead_bytes = max_ahead_bytes
        self.max_request_elements = max_request_elements   # larger elementwise ones go in pieces
        self._used = collections.Counter()     # layout -> correlations of it used here
        self._asked = collections.Counter()    # layout -> correlations of it asked for
        self._ahead = {}                       # (layout, number) -> (reply, bytes) not yet used
        self._ahead_bytes = 0
        self._plans = {}                       # step name -> plan of its last run
        self._recording = None                 # the plan of the step in progress
        self.epoch = 0

    def get(self, kind: str, **params) -> Correlation:
        pieces = split_layout(kind, params, self.max_request_elements)
        if pieces is None:
            return self._get(kind, params)
        return join_pieces(kind, params, [self._get(kind, piece) for piece in pieces])

    def _get(self, kind: str, params: dict) -> Correlation:
        layout = layout_id(kind, params)
        number = self._used[layout]
        self._used[layout] += 1
        if self._recording is not None:
            self._recording.append(request(kind, params))
        corrections, waited = None, []
        if receives(kind, params, self.session.rank, self.session.world_size):
            ahead = self._ahead.pop((layout, number), None)
            if ahead is None:
                reply = self._ask(kind, params, layout)
            else:
                reply, nbytes = ahead
                self._ahead_bytes -= nbytes
            corrections = _timed(reply.result, waited)
        start = time.perf_counter()
        correlation = party_correlation(kind, params, number, self.session.dealer_seed,
                                        self.session.rank, self.session.world_size, corrections, self.epoch)
        self.session.comm.count_prg(time.perf_counter() - start)
        return Correlation(correlation.random, self._timed_expansion(correlation.derived, waited))

    def _timed_expansion(self, expand, waited: list):
        """`expand` (the derived values: PRG draws around this party's runs, and the dealer's
        corrections of them), its seconds but the wait for the dealer (`waited`, which the
        session counts as such) counted as the session's PRG time (session.comm.count_prg)."""
        def timed():
            start = time.perf_counter()
            values = expand()
            self.session.comm.count_prg(time.perf_counter() - start - sum(waited))
            return values
        return timed

    def new_epoch(self, epoch: int) -> None:
        if self._recording is not None:
            raise RuntimeError("a key epoch begins between steps, not inside one")
        if not epoch > self.epoch:
            raise ValueError(f"key epoch {epoch} is not after the current one, {self.epoch}")
        self.epoch = epoch
        self._used.clear()
        self._asked.clear()
        self._ahead.clear()            # answers of the old epoch: never used (their replies are
        self._ahead_bytes = 0          # still received in order, by the next request's result)

    @contextlib.contextmanager
    def step(self, name: str = "step"):
        if self._recording is not None:
            raise RuntimeError(f"step {name!r} started inside another step: steps do not nest")
        self.prefetch(self._plans.get(name, []))
        self._recording = []
        try:
            yield
            self._plans[name] = self._recording
        finally:
            self._recording = None

    def _ask(self, kind: str, params: dict, layout: str):
        number = self._asked[layout]
        self._asked[layout] += 1
        return self.session.dealer_request_async(kind, number=number, epoch=self.epoch, **params)

    def last_plan(self, name: str) -> list:
        """The plan of the last completed step called `name` ([] if none)."""
        return list(self._plans.get(name, []))

    @property
    def pending_prefetch(self) -> int:
        """Answers asked for in advance and not used yet."""
        return len(self._ahead)

    def prefetch(self, plan: list) -> None:
        """Expect the next requests to be `plan`: ask the dealer for this party's corrections
        of them now. Answers are bound to (layout, number), so a wrong guess wastes nothing:
        the answer waits until its layout comes next. At most max_ahead_bytes of answers are
        held ahead."""
        rank, world_size = self.session.rank, self.session.world_size
        wanted = collections.Counter()
        for entry in plan:
            kind, params = entry["kind"], entry["params"]
            if not receives(kind, params, rank, world_size):
                continue
            layout = layout_id(kind, params)
            wanted[layout] += 1
            if self._asked[layout] >= self._used[layout] + wanted[layout]:
                continue
            nbytes = correction_bytes(kind, params, rank, world_size)
            if self._ahead_bytes + nbytes > self.max_ahead_bytes:
                break
            number = self._asked[layout]
            self._ahead[(layout, number)] = (self._ask(kind, params, layout), nbytes)
            self._ahead_bytes += nbytes


def _timed(call, seconds: list):
    """call, its seconds appended to `seconds`."""
    def timed():
        start = time.perf_counter()
        try:
            return call()
        finally:
            seconds.append(time.perf_counter() - start)
    return timed


class RecordingCorrelations(CorrelationSource):
    """Wraps a correlation source and records the plan of every request."""

    def __init__(self, inner: CorrelationSource):
        self.inner = inner
        self.plan: list[dict] = []

    def get(self, kind: str, **params) -> Correlation:
        self.plan.append(request(kind, params))
        return self.inner.get(kind, **params)

    def step(self, name: str = "step"):
        return self.inner.step(name)

    def new_epoch(self, epoch: int) -> None:
        self.inner.new_epoch(epoch)

    def save_plan(self, path) -> None:
        pathlib.Path(path).write_text(json.dumps(self.plan))


_MAGIC = b"MPCFTCOR"


def write_offline(plan: list[dict], world_size: int, out_dir, seeds=None) -> list[pathlib.Path]:
    """Generate every correlation of `plan` ahead of time into one file per party.

    Each file holds that party's full shares in plan order: a JSON index after a magic
    header, then the raw int64 arrays. Seeds default to fresh OS randomness.
    """
    seeds = seeds or [fresh_seed() for _ in range(world_size)]
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_party = [[] for _ in range(world_size)]
    numbers = collections.Counter()
    for entry in plan:
        kind, params = entry["kind"], entry["params"]
        layout = layout_id(kind, params)
        number, numbers[layout] = numbers[layout], numbers[layout] + 1
        corrections = dealer_corrections(kind, params, number, seeds)
        for rank in range(world_size):
            per_party[rank].append(party_shares(kind, params, number, seeds[rank], rank, world_size,
                                                corrections[rank] or None))
    paths = []
    for rank, entries in enumerate(per_party):
        path = out_dir / f"party-{rank}.corr"
        index = [dict(r, shapes=[list(t.shape) for t in e]) for r, e in zip(plan, entries)]
        header = json.dumps({"world_size": world_size, "rank": rank, "index": index}).encode()
        with open(path, "wb") as f:
            f.write(_MAGIC + struct.pack("<Q", len(header)) + header)
            for tensors in entries:
                for t in tensors:
                    f.write(t.contiguous().numpy().tobytes())
        paths.append(path)
    return paths


class FileCorrelations(CorrelationSource):
    """Serves pre-generated correlations from a party file, checking each request matches."""

    def __init__(self, path, rank: int):
        self.path = pathlib.Path(path)
        with open(self.path, "rb") as f:
            if f.read(len(_MAGIC)) != _MAGIC:
                raise ValueError(f"{self.path} is not an mpcft correlation file")
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        if header["rank"] != rank:
            raise ValueError(f"{self.path} holds party {header['rank']}'s correlations, not party {rank}'s")
        self.index = header["index"]
        self.data = np.memmap(self.path, dtype=np.uint8, mode="r", offset=len(_MAGIC) + 8 + length)
        self.position = 0     # plan entries served
        self.offset = 0

    def get(self, kind: str, **params) -> Correlation:
        if self.position >= len(self.index):
            raise RuntimeError(f"{self.path}: the program asked for more correlations than were "
                               f"recorded ({len(self.index)}); record the plan again")
        entry = self.index[self.position]
        if entry["kind"] != kind or entry["params"] != json.loads(json.dumps(params)):
            raise RuntimeError(f"{self.path}: request {self.position} is {kind} {params}, but the file "
                               f"holds {entry['kind']} {entry['params']}: the program changed since recording")
        self.position += 1
        out = []
        for shape in entry["shapes"]:
            nbytes = int(np.prod(shape, dtype=np.int64)) * 8
            raw = np.array(self.data[self.offset:self.offset + nbytes]).view(np.int64).reshape(shape)
            self.offset += nbytes
            out.append(torch.from_numpy(raw))
        count = random_count(kind, params)
        return Correlation(out[:count], out[count:])
