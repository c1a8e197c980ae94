"""Federated learning with the MPC parties as secure aggregator: the home of what is to come,
nothing yet.

It will hold FedAvg on Flower, in which clients train on their own data and the compute
parties sum their secret-shared updates, so no single server sees a client's update; with
client-level differential privacy, noise from mpcft.privacy's mechanisms added to the
aggregate, and data owners' envelopes (mpcft.data.owners) for the clients' shares.
"""
