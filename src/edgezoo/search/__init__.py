"""Hardware-aware architecture search: latency sources, NetAdapt, (and the UIB search space and strategies).

Kept import-light on purpose: each submodule pulls in what it needs (ONNX Runtime, the training engine) only when
it is imported, so ``import edgezoo.search.latency`` does not drag in the supernet, and vice versa.
"""
