"""Party program for the process tests, started by `mpcft party` / `mpcft launch`.

    party_program.py exchange   all-to-all, all_gather and (if there is a dealer) a dealer ping;
                                prints "RESULT <json>"
    party_program.py kill K     repeated 4 MB exchanges; party K kills itself (SIGKILL) in round 3
"""
import json
import os
import signal
import sys
import time

import torch

from mpcft.runtime import init


def exchange(session):
    received = session.exchange({p: torch.full((1000,), 100 * session.rank + p) for p in session.peers})
    ok = all(bool((t == 100 * p + session.rank).all()) for p, t in received.items())
    gathered = [int(t[0]) for t in session.all_gather(torch.tensor([session.rank * 7]))]
    ping = ([t.tolist() for t in session.dealer_request("ping", values=[session.rank])]
            if session.dealer_seed is not None else None)
    print("RESULT " + json.dumps({"rank": session.rank, "ok": ok, "gathered": gathered,
                                  "ping": ping, "rounds": session.comm.rounds}), flush=True)


def kill(session, victim):
    data = torch.zeros(512 * 1024, dtype=torch.int64)
    for step in range(1000):
        if step == 3 and session.rank == victim:
            print(f"KILLING {time.time()}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        session.exchange({p: data for p in session.peers})


if __name__ == "__main__":
    with init() as session:
        if sys.argv[1] == "exchange":
            exchange(session)
        else:
            kill(session, int(sys.argv[2]))
