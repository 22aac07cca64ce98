"""The inference runner IoT Edge module: serves input messages and Open Inference Protocol requests
through a model loaded in the TEE.

Functional core: :mod:`.batching` (latency-bounded batches, duplicate suppression),
:mod:`.model_slot` (hot-swap bookkeeping), :mod:`.selection` (which version to serve),
:mod:`.decode` (message bodies -> tensors), :mod:`.signature` (tensors checked against the model's
signature, limits), :mod:`.plan` (stacking and batch splits), :mod:`.outputs` (answers, summaries),
:mod:`.settings` (twin limits and results), :mod:`.model_info` (reported metadata), :mod:`.oip`
(KServe v2 requests and responses), :mod:`.stats`. Imperative shell: :mod:`.service`,
:mod:`.delivery` (result messages), :mod:`.oip_server` (HTTP), :mod:`.main`.
"""
