"""Training: paired data (:mod:`.data`, :mod:`.pairs`), validation splits
(:mod:`.regions`) and the training loop (:mod:`.trainer`)."""
