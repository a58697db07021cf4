"""The embedded default model: a tiny MusicLDM trained by this project on procedurally synthesised music.

``TINY_MUSICLDM_PATH`` is the shipped ``MusicLDMPipeline`` folder (load it with
``sada_audio.pipelines.load_pipeline("tiny-musicldm")``); its Griffin-Lim vocoder (:mod:`.vocoder`) and log-mel
front end (:mod:`.features`) are the only code it needs. The training data and the trainer live in the
repository's ``tools/tiny/`` (not installed). See ``MODEL_CARD.md`` in the folder.
"""

from pathlib import Path

__all__ = ["TINY_MUSICLDM_PATH"]

TINY_MUSICLDM_PATH = Path(__file__).resolve().parent.parent / "assets" / "tiny-musicldm"
