"""Models: turning a name, a module or a checkpoint into the base classifier of [0, 1] pixels.

* :mod:`~vision_rs.models.hub` builds timm / torchvision / embedded models and checkpoints, offline;
* :mod:`~vision_rs.models.adapters` reads a model's input spec (mean, std, size, crop) and wraps it so
  that normalisation is its first layer;
* :mod:`~vision_rs.models.checkpoints` loads weights safely (safetensors or weights-only torch files);
* :mod:`~vision_rs.models.provenance` fingerprints where a model and its weights came from;
* :mod:`~vision_rs.models.denoising` and :mod:`~vision_rs.models.diffusion` put a denoiser in front of a
  model (denoised smoothing);
* :mod:`~vision_rs.models.embedded` holds the offline defaults: the digits data, clips and scenes, and the
  small models trained on them.

This wing imports the sampling wing and the foundation modules, nothing above them.
"""
