"""Test fixtures that are code rather than pytest fixtures: tiny random pipelines built from configs
(:mod:`.tiny_pipelines`). Never installed; the research scripts in ``tools/`` use them too."""
