"""The edge agent stand-in: IoT Edge's edgeAgent, with local processes instead of containers.

It connects to the hub stand-in as the device's ``$edgeAgent`` module, reads the deployment from its
desired properties, runs each module as a process with the environment IoT Edge gives a container
(the full ``IOTEDGE_*`` set and a workload API socket, so ``create_from_edge_environment()`` takes
its production path), and reports ``runtimeStatus`` and ``lastDesiredStatus``.

Functional core: ``deployment`` (parse), ``module_map`` (image -> entry point), ``create_options``,
``environment``, ``reconcile`` (desired vs running -> actions), ``reported`` (reported properties).
Imperative shell: ``processes``, ``identities``, ``runtime`` and ``__main__``.
"""
