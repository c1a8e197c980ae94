"""Federated fine-tuning on Flower with the MPC parties as secure aggregator.

Clients train locally (client.py, optionally with local DP-SGD: local_dp.py) and seal shares of
their update to the aggregators (updates.py); SecureFedAvg (strategy.py) relays them through
the hand-off (handoff.py) to the aggregator parties (aggregator.py), which compute the weighted,
clipped and optionally noised FedAvg in MPC (aggregation.py). `mpcft federated` runs it all on
one machine (simulation.py); app.py and flower_app.py are the Flower App for deployments.
"""
