"""Communication accounting per party: bytes, rounds and dealer traffic, overall and per region.

`bytes_sent`/`bytes_received` count tensor payload bytes only (`tensor.nbytes`), so protocol
cost formulas can be checked exactly; `wire_bytes_*` add frame headers. Each `exchange`,
`all_gather`, `gather` or `broadcast` is one round, a bare `send` or `recv` one round each,
and everything inside `with comm.round():` one round together. Traffic with the dealer is kept
apart (`dealer_*`). Regions (`with comm.region("matmul"):`) nest; a region's key is the path of
active region names joined by "/", and traffic counts in every active region.

Time (wall seconds, `time.perf_counter`): a region's `calls` and `seconds` count its entries
and the time spent inside it, added when it exits (so a snapshot taken inside a region does
not yet hold that entry's time); the total's are those of the outermost regions. Where the
session blocks, the time counts in the total and every active region, as traffic does:
`send_seconds` in sends to peers (serialising, encrypting, waiting for socket buffer room),
`wait_seconds` in receives from peers (waiting for their data), `dealer_wait_seconds` for the
dealer's replies, `prg_seconds` expanding correlation shares from the dealer seed's PRG
(protocols/sources.py). A region's `compute_seconds` is what is left: its own work.
A `CommStats` belongs to one session and is used from the thread that drives it.
"""
import contextlib
import dataclasses
import time


@dataclasses.dataclass
class Counts:
    bytes_sent: int = 0
    bytes_received: int = 0
    wire_bytes_sent: int = 0
    wire_bytes_received: int = 0
    rounds: int = 0
    dealer_bytes_sent: int = 0
    dealer_bytes_received: int = 0
    dealer_requests: int = 0
    calls: int = 0
    seconds: float = 0.0
    send_seconds: float = 0.0
    wait_seconds: float = 0.0
    dealer_wait_seconds: float = 0.0
    prg_seconds: float = 0.0

    def __sub__(self, other):
        return Counts(**{f.name: getattr(self, f.name) - getattr(other, f.name)
                         for f in dataclasses.fields(self)})

    def __add__(self, other):
        return Counts(**{f.name: getattr(self, f.name) + getattr(other, f.name)
                         for f in dataclasses.fields(self)})

    @property
    def compute_seconds(self) -> float:
        """Seconds inside the region not spent sending, waiting for peers or the dealer, or
        expanding correlations: the party's own work."""
        return (self.seconds - self.send_seconds - self.wait_seconds - self.dealer_wait_seconds
                - self.prg_seconds)


FIELDS = tuple(f.name for f in dataclasses.fields(Counts))
TIME_FIELDS = ("seconds", "send_seconds", "wait_seconds", "dealer_wait_seconds", "prg_seconds")


@dataclasses.dataclass
class CommSnapshot:
    """Frozen counts: `total` plus one `Counts` per region; subtract two to get the difference."""
    total: Counts
    regions: dict

    def __getattr__(self, name):
        if name in FIELDS or name == "compute_seconds":
            return getattr(self.total, name)
        raise AttributeError(name)

    def region(self, name):
        return self.regions.get(name, Counts())

    def __sub__(self, other):
        names = set(self.regions) | set(other.regions)
        return CommSnapshot(self.total - other.total,
                            {n: self.region(n) - other.region(n) for n in names})

    def table(self):
        rows = [("total", self.total)] + sorted(self.regions.items())
        head = ("region", "sent B", "recv B", "wire sent B", "wire recv B", "rounds",
                "dealer sent B", "dealer recv B", "dealer req", "calls", "s", "send s", "wait s",
                "dealer wait s", "PRG s")
        body = [(name,) + tuple(f"{getattr(c, f):.3f}" if f in TIME_FIELDS else str(getattr(c, f))
                                for f in FIELDS) for name, c in rows]
        widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
        lines = [" | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                            for i, (c, w) in enumerate(zip(r, widths))) for r in [head] + body]
        lines.insert(1, "-+-".join("-" * w for w in widths))
        return "\n".join(lines)


class CommStats:
    """Live counters of one session (see the module docstring for what is counted)."""

    def __init__(self):
        self._stack = []        # keys of the active regions, outermost first ("a", "a/b", ...)
        self._group_depth = 0
        self.reset()

    def reset(self):
        """Zero all counters (active regions and round groups stay active)."""
        self._total = Counts()
        self._regions = {}
        self._group_used = False

    def __getattr__(self, name):
        if name in FIELDS or name == "compute_seconds":
            return getattr(self._total, name)
        raise AttributeError(name)

    @property
    def current_region(self):
        return self._stack[-1] if self._stack else None

    @contextlib.contextmanager
    def region(self, name):
        """Attribute the traffic inside the block to region `name` (nested in the active ones)."""
        if "/" in name:
            raise ValueError("region names cannot contain '/'")
        key = f"{self._stack[-1]}/{name}" if self._stack else name
        self._stack.append(key)
        self._regions.setdefault(key, Counts())
        start = time.perf_counter()
        try:
            yield self
        finally:
            elapsed = time.perf_counter() - start
            self._stack.pop()
            timed = [self._regions.setdefault(key, Counts())] + ([] if self._stack else [self._total])
            for counts in timed:
                counts.calls += 1
                counts.seconds += elapsed

    @contextlib.contextmanager
    def round(self):
        """Count all communication inside the block as one round."""
        self._group_depth += 1
        try:
            yield self
        finally:
            self._group_depth -= 1
            if self._group_depth == 0 and self._group_used:
                self._group_used = False
                self._add(rounds=1)

    def snapshot(self):
        return CommSnapshot(dataclasses.replace(self._total),
                            {n: dataclasses.replace(c) for n, c in self._regions.items()})

    def table(self):
        """Printable text table: totals and one row per region."""
        return self.snapshot().table()

    def _active(self):
        yield self._total
        for key in self._stack:
            yield self._regions.setdefault(key, Counts())

    def _add(self, **amounts):
        for counts in self._active():
            for field, amount in amounts.items():
                setattr(counts, field, getattr(counts, field) + amount)

    def count_round(self):
        if self._group_depth:
            self._group_used = True
        else:
            self._add(rounds=1)

    def count_sent(self, payload, wire, seconds=0.0):
        """A send to a peer: payload and wire bytes, and the seconds it took."""
        self._add(bytes_sent=payload, wire_bytes_sent=wire, send_seconds=seconds)

    def count_received(self, payload, wire, wait_seconds=0.0):
        """A receive from a peer: payload and wire bytes, and the seconds spent waiting for it."""
        self._add(bytes_received=payload, wire_bytes_received=wire, wait_seconds=wait_seconds)

    def count_dealer(self, sent, received):
        self._add(dealer_bytes_sent=sent, dealer_bytes_received=received, dealer_requests=1)

    def count_dealer_wait(self, seconds):
        self._add(dealer_wait_seconds=seconds)

    def count_prg(self, seconds):
        self._add(prg_seconds=seconds)
