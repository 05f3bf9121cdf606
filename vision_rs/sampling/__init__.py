"""The sampling core: how noisy draws are made, counted and turned into certificates.

One loop serves every method (:mod:`~vision_rs.sampling.engine`): a noise distribution
(:mod:`~vision_rs.sampling.noise`) fills a reused buffer with noisy copies of the input, a view
(:mod:`~vision_rs.sampling.views`, :mod:`~vision_rs.sampling.patches`, with the model's evaluation resize
and crop of :mod:`~vision_rs.sampling.preprocess`) turns them into model inputs, a tally counts the
votes on the device, and a method (:mod:`~vision_rs.sampling.methods`) bounds the counts
(:mod:`~vision_rs.sampling.stats`) into a certificate (:mod:`~vision_rs.sampling.certificates`, pure
functions; :mod:`~vision_rs.sampling.results` holds the result types). Sequential stopping rules live in
:mod:`~vision_rs.sampling.sequential`.

This wing imports only the foundation modules at the top of the package (errors, params).
"""
