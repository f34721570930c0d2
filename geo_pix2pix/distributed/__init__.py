"""Running on several processes: Dask clusters (:mod:`.cluster`), render's tile-row tasks
(:mod:`.render`) and data-parallel training under torchrun (:mod:`.ddp`)."""
