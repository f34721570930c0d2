"""The command line: `geo-pix2pix` (:mod:`.main`) and its option types (:mod:`.options`)."""
