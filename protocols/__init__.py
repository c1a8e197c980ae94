"""MPC protocols over additive shares in Z_2^64."""
