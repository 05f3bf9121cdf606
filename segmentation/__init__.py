"""vision_rs.segmentation: certifying segmentation masks (per-pixel and localized smoothing with
collective certificates). Not implemented yet: planned on top of the core engine."""
