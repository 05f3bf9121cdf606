"""Data-set runs: certify many inputs, write every finished row at once, resume, summarise and plot.

* :mod:`~vision_rs.runs.inputs` collects files and their labels (ImageFolder layout, class files);
* :mod:`~vision_rs.runs.datasets` is the one resumable loop shared by image, video and segmentation runs
  (and :func:`~vision_rs.runs.datasets.certify_dataset` for images);
* :mod:`~vision_rs.runs.files` writes the TSV / JSONL run files and the run record, and refuses to mix runs;
* :mod:`~vision_rs.runs.summaries` and :mod:`~vision_rs.runs.plots` turn finished rows into certified
  accuracy tables and curves;
* :mod:`~vision_rs.runs.distributed` shares a run over ``torchrun`` processes.

This wing may import the smoothed classifier (:mod:`vision_rs.smoothing`) and everything below it.
"""
