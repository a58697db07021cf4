"""Research and maintenance scripts, run from a checkout (``python -m tools.<name>``); not installed.

They measure, train and ablate; the installed package (``sada_audio``) never imports them.
"""
