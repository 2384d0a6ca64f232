"""Data prep on Ray: reader → workers (image, text, grounding) → shard writer → manifest.

The job is ``job.run(config.PrepConfig)``. This package imports nothing itself: the index's
reader processes import ``index`` alone, not Ray."""
