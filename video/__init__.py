"""vision_rs.video: certifying video classifiers (clip reading with decord, video model adapters,
temporal Smooth-Reduce over sub-clips). Not implemented yet: planned on top of the core engine."""
