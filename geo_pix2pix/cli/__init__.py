"""The command line: `geo-pix2pix` (:mod:`.main`, the group), one module per command, their
shared helpers (:mod:`.common`, :mod:`.signals`) and option types (:mod:`.options`)."""
