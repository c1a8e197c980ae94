"""Differential privacy inside MPC: the home of what is to come, nothing yet.

It will hold DP-SGD under MPC, wrapping the optimizer step as Opacus does (per-example
gradients clipped and summed on shares, noise added before the step); the noise mechanisms
(Laplace and Gaussian sampled from integers, so that the parties draw them jointly on the ring
without floating-point leaks); and the privacy accountant that tracks the budget spent over
the steps. mpcft.finetune will use it; it stands on mpcft.nn and mpcft.runtime only.
"""
