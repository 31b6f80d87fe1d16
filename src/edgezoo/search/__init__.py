"""Hardware-aware architecture search: a MobileNetV4 search space as data, a weight-sharing UIB supernet trained
with the sandwich rule, evolutionary / two-stage / random search under a latency limit, latency sources (roofline,
a per-block table measured on this host, the roofline corrected by it), NetAdapt, and the pipelines behind
``edgezoo search``, ``edgezoo latency-table`` and ``edgezoo adapt``. A found architecture is a spec file
(:mod:`edgezoo.models.arch_spec`) that loads without this package.

Kept import-light on purpose: each submodule pulls in what it needs (ONNX Runtime, the training engine) only when
it is imported, so ``import edgezoo.search.latency`` does not drag in the supernet, and vice versa.
"""
