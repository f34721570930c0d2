"""Scoring a model against real aerials: :mod:`.evaluation` (the run and its report),
:mod:`.metrics`, :mod:`.baselines` and the structure score's judge (:mod:`.judge`)."""
