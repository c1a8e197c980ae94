"""Independent protocols run side by side, their openings sharing rounds.

parallel(ctx, f_1, ..., f_k) returns [f_1(ctx_1), ..., f_k(ctx_k)] for branches f_j that do not
depend on each other. Each branch is a greenlet (a coroutine of the calling thread) with a
context whose session merges exchanges: the branches run one at a time, in order, each until
it asks to exchange (an opening: sharing.open_low, open_many, binary.open_bits, king
openings) or returns; then the j-th exchange of every branch still running travels as one
message per peer, their bytes end to end in branch order, and the branches resume in order.
Every party runs the same branches in the same order, so messages, dealer requests and PRG
draws come in the same order at every party, as if the branches had run one after the other;
only the rounds are shared. Rounds: the largest branch's; bytes: the sum (parallel_cost). A
branch communicates through exchanges only (gather, broadcast, send and recv raise). Reveals
what the branches reveal.
Greenlets, not threads: everything stays on the calling thread, its malloc arena and its
OpenMP team, with no handoffs between threads. Branches side by side hold their working sets
at once: GELU of 1.5M values peaks at 2.2-3.5 GB instead of 1.6 GB and runs 2.4-2.7 s instead
of 1.7-2.0 s on loopback (page faults), for 3 rounds fewer; a LoRA step's time is unchanged.
"""
import copy

import torch
from greenlet import getcurrent, greenlet

from .cost import Cost
from .sharing import concatenated


class _Abort(BaseException):
    """Ends a parked branch when a sibling or the merged exchange failed (not an Exception, so a
    branch's own handlers do not swallow it)."""


class _Branch:
    def __init__(self):
        self.request = self.reply = self.result = self.error = self.coroutine = None
        self.started = self.done = False


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
    """The caller runs the first branch (the lead) itself and, at each of its exchanges and
    after it returns, steps the others (greenlets whose parent is the caller) one at a time
    until each parks at its next exchange or ends, then sends the round's merged exchange."""

    def __init__(self, session):
        self.session = session
        self.finished = False
        self.lead, self.others, self.home = None, [], None

    def exchange(self, branch: _Branch, tensors: dict) -> dict:
        """A branch's exchange: the lead's drives a round; another branch parks (switches back
        to the caller) and gets its reply when stepped again."""
        if branch is self.lead:
            return self._round(tensors)
        branch.request = tensors
        reply = self.home.switch()
        if reply is None:
            raise _Abort()
        return reply

    def run(self, ctx, functions) -> list:
        self.home = getcurrent()
        self.lead, *self.others = branches = [_Branch() for _ in functions]
        for branch, function in zip(self.others, functions[1:]):
            branch.coroutine = greenlet(lambda b=branch, f=function: self._body(ctx, b, f), parent=self.home)
        try:
            self.lead.result = functions[0](self._context(ctx, self.lead))
            self.lead.done = True
            while any(not b.done for b in self.others):
                self._round(None)
        finally:
            for branch in self.others:        # after a failure: end the parked ones (_Abort)
                if branch.started and not branch.done:
                    branch.reply = None
                    branch.coroutine.switch(None)
            self.finished = True
        return [b.result for b in branches]

    def _context(self, ctx, branch: _Branch):
        own = copy.copy(ctx)
        own.session = _BranchSession(ctx.session, self, branch)
        return own

    def _body(self, ctx, branch: _Branch, function) -> None:
        try:
            branch.result = function(self._context(ctx, branch))
        except _Abort:
            pass
        except BaseException as error:      # raised again by the caller, in _step
            branch.error = error
        finally:
            branch.done = True

    def _round(self, lead_request: dict | None) -> dict | None:
        """Step every other branch that is not parked at an exchange, then exchange the lead's
        request (if any) and theirs together; the lead's reply (theirs wait for their step)."""
        for branch in self.others:
            if not branch.done and branch.request is None:
                self._step(branch)
        waiting = [b for b in self.others if not b.done]
        requests = ([lead_request] if lead_request is not None else []) + [b.request for b in waiting]
        if not requests:
            return None
        replies = self._merged_exchange(requests)
        for branch, reply in zip(waiting, replies[len(requests) - len(waiting):]):
            branch.request, branch.reply = None, reply
        return replies[0] if lead_request is not None else None

    def _step(self, branch: _Branch) -> None:
        """Run one branch (with its reply, if parked) until it asks to exchange or ends; re-raise
        its error here."""
        if branch.started:
            reply, branch.reply = branch.reply, None
            branch.coroutine.switch(reply)
        else:
            branch.started = True
            branch.coroutine.switch()
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
    """The tensors' bytes end to end, on their device if they share one."""
    device = tensors[0].device if all(t.device == tensors[0].device for t in tensors) else torch.device("cpu")
    return concatenated([t.contiguous().reshape(-1).view(torch.uint8).to(device) for t in tensors])


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
