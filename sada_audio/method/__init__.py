"""The SADA method itself: ODE math, the stability criterion, token selection, per-call state.

Nothing in this subpackage knows diffusers classes; it sees tensors, step indices and the ODE
coordinates that a solver adapter provides.
"""
