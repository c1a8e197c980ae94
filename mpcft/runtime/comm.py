"""Communication accounting per party: bytes, rounds and dealer traffic, overall and per region.

`bytes_sent`/`bytes_received` count tensor payload bytes only (`tensor.nbytes`), so protocol
cost formulas can be checked exactly; `wire_bytes_*` add frame headers. Each `exchange`,
`all_gather`, `gather` or `broadcast` is one round, a bare `send` or `recv` one round each,
and everything inside `with comm.round():` one round together. Traffic with the dealer is kept
apart (`dealer_*`). Regions (`with comm.region("matmul"):`) nest; a region's key is the path of
active region names joined by "/", and traffic counts in every active region.
A `CommStats` belongs to one session and is used from the thread that drives it.
"""
import contextlib
import dataclasses


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

    def __sub__(self, other):
        return Counts(**{f.name: getattr(self, f.name) - getattr(other, f.name)
                         for f in dataclasses.fields(self)})

    def __add__(self, other):
        return Counts(**{f.name: getattr(self, f.name) + getattr(other, f.name)
                         for f in dataclasses.fields(self)})


FIELDS = tuple(f.name for f in dataclasses.fields(Counts))


@dataclasses.dataclass
class CommSnapshot:
    """Frozen counts: `total` plus one `Counts` per region; subtract two to get the difference."""
    total: Counts
    regions: dict

    def __getattr__(self, name):
        if name in FIELDS:
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
                "dealer sent B", "dealer recv B", "dealer req")
        body = [(name,) + tuple(str(getattr(c, f)) for f in FIELDS) for name, c in rows]
        widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
        lines = [" | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                            for i, (c, w) in enumerate(zip(r, widths))) for r in [head] + body]
        lines.insert(1, "-+-".join("-" * w for w in widths))
        return "\n".join(lines)


class CommStats:
    """Live counters of one session (see the module docstring for what is counted)."""

    def __init__(self):
        self._stack = []
        self._group_depth = 0
        self.reset()

    def reset(self):
        """Zero all counters (active regions and round groups stay active)."""
        self._total = Counts()
        self._regions = {}
        self._group_used = False

    def __getattr__(self, name):
        if name in FIELDS:
            return getattr(self._total, name)
        raise AttributeError(name)

    @property
    def current_region(self):
        return "/".join(self._stack) or None

    @contextlib.contextmanager
    def region(self, name):
        """Attribute the traffic inside the block to region `name` (nested in the active ones)."""
        if "/" in name:
            raise ValueError("region names cannot contain '/'")
        self._stack.append(name)
        self._regions.setdefault(self.current_region, Counts())
        try:
            yield self
        finally:
            self._stack.pop()

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
        for depth in range(1, len(self._stack) + 1):
            yield self._regions.setdefault("/".join(self._stack[:depth]), Counts())

    def _add(self, **amounts):
        for counts in self._active():
            for field, amount in amounts.items():
                setattr(counts, field, getattr(counts, field) + amount)

    def count_round(self):
        if self._group_depth:
            self._group_used = True
        else:
            self._add(rounds=1)

    def count_sent(self, payload, wire):
        self._add(bytes_sent=payload, wire_bytes_sent=wire)

    def count_received(self, payload, wire):
        self._add(bytes_received=payload, wire_bytes_received=wire)

    def count_dealer(self, sent, received):
        self._add(dealer_bytes_sent=sent, dealer_bytes_received=received, dealer_requests=1)
