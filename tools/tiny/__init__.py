"""Training the embedded tiny MusicLDM (``python -m tools.tiny.train``): the procedural music it learns from
(:mod:`.music`), its untrained architectures (:mod:`.components`) and the trainer (:mod:`.train`). The trained
model itself ships in the package (:data:`sada_audio.tiny.TINY_MUSICLDM_PATH`)."""
