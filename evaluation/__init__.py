"""Audio quality evaluation and benchmarks (installed as sada_audio.evaluation)."""
