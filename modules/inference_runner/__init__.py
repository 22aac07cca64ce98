"""The inference runner IoT Edge module: serves input messages through a model loaded in the TEE.

Functional core: :mod:`.batching` (latency-bounded batches, duplicate suppression),
:mod:`.model_slot` (hot-swap bookkeeping), :mod:`.selection` (which version to serve),
:mod:`.decoding` (input messages -> tensors), :mod:`.stats`. Imperative shell: :mod:`.service`,
:mod:`.main`.
"""
