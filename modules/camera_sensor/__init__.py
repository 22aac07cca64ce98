"""Camera sensor module: renders images and sends them to the runner's Open Inference Protocol endpoint."""
