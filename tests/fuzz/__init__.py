"""Hypothesis fuzzing of what reaches a party from outside (issue 15): frames, handshakes,
dealer requests, cluster files, sealed owner files, CSV/TSV; see harness.py."""
