"""SADA settings that several test files share."""

# An earlier audio preset with a fixed Lagrange phase (published criterion skipping on steps 10-19, anchors
# every 5th step from 20): the steps it calls between skips are where the "stable" and "accelerated" shallow
# rules put shallow steps.
FIXED_PHASE: dict = {
    "acc_range": (10, 49),
    "max_interval": 4,
    "lagrange_step": 20,
    "lagrange_int": 5,
    "anchor_tolerance": None,
    "max_lagrange_int": None,
}
