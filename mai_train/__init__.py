"""MAI's training spine: data sets, architectures, training, evaluation and
calibration, ONNX export, VLM fine-tuning and pairing, and the `mai` command.
Builds on the core (`mai/`); torch loads inside the commands that need it."""
