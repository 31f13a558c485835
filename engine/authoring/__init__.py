"""Authoring attribute systems: from tables (:mod:`.table`, :mod:`.pokeapi`), from LLM drafts
(:mod:`.draft`, :mod:`.llm`), and refinement on labelled images with the model frozen
(:mod:`.refine` pure, :mod:`.refining` embeds the images; :mod:`.dspy_opt` optional).

This layer sits *above* the engine (refinement scores with it); the system format
below (:mod:`systems`) never imports it.
"""

from engine.authoring.draft import DraftRejected, build_prompt, import_draft

__all__ = ["DraftRejected", "build_prompt", "import_draft"]
