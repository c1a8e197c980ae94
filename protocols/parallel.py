"""Independent protocols run side by side, their openings sharing rounds.

parallel(ctx, f_1, ..., f_k) returns [f_1(ctx_1), ..., f_k(ctx_k)] for branches f_j that do not
depend on each other. Each branch runs in its own thread with a context whose session merges
exchanges: the branches run one at a time, in order, each until it asks to exchange (an opening:
sharing.open_low, open_many, binary.open_bits, king openings) or returns; then the j-th exchange
of every branch still running travels as one message per peer, their bytes end to end in branch
order, and the branches resume in order. Every party runs the same branches in the same order,
so messages, dealer requests and PRG draws come in the same order at every party, as if the
branches had run one after the other; only the rounds are shared.
Rounds: the largest branch's; bytes: the sum (parallel_cost). A branch communicates through
exchanges only (gather, broadcast, send and recv raise). Reveals what the branches reveal.
"""
import copy
import threading

import torch

from .cost import Cost


class _Abort(BaseException):
    """Ends a parked branch when a sibling or the merged exchange failed (not an Exception, so a
    branch's own handlers do not swallow it)."""


class _Branch:
    def __init__(self, index: int):
        self.index = index
        self.request = self.reply = self.result = self.error = None
        self.done = False
        self.resume = threading.Event()
        self.parked = threading.Event()


class _BranchSession:
    """A session whose exchanges go through the scheduler while it runs; everything else, and
    everything once the branches have returned (objects made in a branch, such as a SignGate,
    keep its context), is the session's own."""

    def __init__(self, session, scheduler, branch: _Branch):
        self._session, self._scheduler, self._branch = session, scheduler, branch

    def __getattr__(self, name):
        if name in ("gather", "broadcast", "send", "recv") and not self._scheduler.finished:
            raise RuntimeError(f"a parallel branch communicates through exchanges only, not {name}")
        return getattr(self._session, name)

    def exchange(self, tensors, dtype=None, shape=None):
        if self._scheduler.finished:
            return self._session.exchange(tensors, dtype, shape)
        if dtype is not None or shape is not None:
            raise RuntimeError("a parallel branch receives what it sends: no other dtype or shape")
        return self._scheduler.exchange(self._branch, dict(tensors))

    def all_gather(self, tensor, dtype=None, shape=None):
        if self._scheduler.finished:
            return self._session.all_gather(tensor, dtype, shape)
        received = self.exchange({peer: tensor for peer in self._session.peers}, dtype, shape)
        received[self._session.rank] = tensor
        return [received[r] for r in range(self._session.world_size)]


class _Scheduler:
    def __init__(self, session):
        self.session = session
        self.aborted = self.finished = False

    def exchange(self, branch: _Branch, tensors: dict) -> dict:
        """In a branch's thread: post the request, park, and return the reply once resumed."""
        branch.request = tensors
        branch.resume.clear()
        branch.parked.set()
        branch.resume.wait()
        if branch.reply is None:
            raise _Abort()
        reply, branch.reply = branch.reply, None
        return reply

    def run(self, ctx, functions) -> list:
        branches = [_Branch(i) for i in range(len(functions))]
        threads = [threading.Thread(target=self._body, args=(ctx, b, f), daemon=True,
                                    name=f"parallel-branch-{b.index}") for b, f in zip(branches, functions)]
        for thread in threads:
            thread.start()
        try:
            for branch in branches:
                self._step(branch)
            while True:
                waiting = [b for b in branches if not b.done]
                if not waiting:
                    break
                replies = self._merged_exchange([b.request for b in waiting])
                for branch, reply in zip(waiting, replies):
                    branch.request, branch.reply = None, reply
                    self._step(branch)
        finally:
            self.aborted = True               # unblock every branch still parked (after a failure)
            for branch in branches:
                if not branch.done:
                    branch.reply = None
                    branch.resume.set()
            for thread in threads:
                thread.join()
            self.finished = True
        return [b.result for b in branches]

    def _body(self, ctx, branch: _Branch, function) -> None:
        branch.resume.wait()
        if self.aborted:                      # a sibling failed before this branch started
            branch.done = True
            return
        try:
            own = copy.copy(ctx)
            own.session = _BranchSession(ctx.session, self, branch)
            branch.result = function(own)
        except _Abort:
            pass
        except BaseException as error:      # handed to the scheduler's thread, which raises it
            branch.error = error
        finally:
            branch.done = True
            branch.parked.set()

    def _step(self, branch: _Branch) -> None:
        """Run one branch until it asks to exchange or ends; re-raise its error here."""
        branch.parked.clear()
        branch.resume.set()
        branch.parked.wait()
        if branch.error is not None:
            raise branch.error

    def _merged_exchange(self, requests: list) -> list:
        """One exchange carrying every request's tensor for each peer, bytes end to end."""
        peers = list(requests[0])
        if any(list(r) != peers for r in requests):
            raise RuntimeError("parallel branches exchanged with different peers in the same round")
        merged = {peer: _joined([r[peer] for r in requests]) for peer in peers}
        received = self.session.exchange(merged)
        replies = [{} for _ in requests]
        for peer in peers:
            start = 0
            for reply, request in zip(replies, requests):
                sent = request[peer]
                size = sent.numel() * sent.element_size()
                chunk = received[peer][start:start + size].to(sent.device)
                reply[peer] = _viewed(chunk, sent)
                start += size
        return replies


def _joined(tensors: list) -> torch.Tensor:
    device = tensors[0].device if all(t.device == tensors[0].device for t in tensors) else torch.device("cpu")
    return torch.cat([t.contiguous().reshape(-1).view(torch.uint8).to(device) for t in tensors])


def _viewed(chunk: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The bytes `chunk` as a tensor of like's dtype and shape."""
    if chunk.storage_offset() % like.element_size():
        chunk = chunk.clone()
    return chunk.view(like.dtype).reshape(like.shape)


def parallel(ctx, *functions) -> list:
    """[f(ctx) for f in functions] with the openings of the j-th rounds of all of them sent
    together (module docstring). Cost: parallel_cost of theirs."""
    if len(functions) < 2:
        return [f(ctx) for f in functions]
    return _Scheduler(ctx.session).run(ctx, functions)


def parallel_cost(*costs: Cost) -> Cost:
    """Branches side by side: the most rounds, the bytes summed, the j-th openings of every
    branch one opening (so that with_opening("king") restates it too)."""
    openings = None
    if all(c.openings is not None for c in costs):
        merged = []
        for j in range(max(len(c.openings) for c in costs)):
            present = [c.openings[j] for c in costs if j < len(c.openings)]
            merged.append((present[0][0], tuple(s for _, segments in present for s in segments)))
        openings = tuple(merged)
    return Cost(max(c.rounds for c in costs), sum(c.bytes_sent for c in costs), openings)
