"""Command-line interface of sada-audio (installed as sada_audio.cli)."""
