"""The embedded default model: a tiny MusicLDM trained by this project on procedurally synthesised music.

``TINY_MUSICLDM_PATH`` is the shipped ``MusicLDMPipeline`` folder (load it with
``sada_audio.pipelines.load_pipeline("tiny-musicldm")``); :mod:`sada_audio.tiny.music` generates the
training data, :mod:`sada_audio.tiny.train` retrains every component. See ``MODEL_CARD.md`` in the folder.
"""

from pathlib import Path

__all__ = ["TINY_MUSICLDM_PATH"]

TINY_MUSICLDM_PATH = Path(__file__).resolve().parent.parent / "assets" / "tiny-musicldm"
