"""Hardware-aware architecture search: a MobileNetV4 search space as data, a weight-sharing UIB supernet trained
with the sandwich rule, evolutionary / two-stage / random search under a latency limit, and the pipeline behind
``edgezoo search``. A found architecture is a spec file (:mod:`edgezoo.models.arch_spec`) that loads without this
package. Submodules are imported where used (``edgezoo.search.space``, ``.supernet``, ``.strategies``, …)."""
