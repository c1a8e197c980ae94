"""Z_2^64 ring arithmetic, fixed-point encoding and secure randomness (no networking)."""
