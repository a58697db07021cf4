"""SADA settings that several test files share."""

# The audio preset's adaptive Lagrange phase leaves no step for a shallow call (every accelerated step is a skip
# or an anchor); with its earlier fixed phase (published criterion on steps 10-19, anchors every 5th step from
# 20) the steps it calls between skips are where shallow steps go.
FIXED_PHASE: dict = {
    "acc_range": (10, 49),
    "max_interval": 4,
    "lagrange_step": 20,
    "anchor_tolerance": None,
    "max_lagrange_int": None,
}
