"""`mai export onnx`: a trained model made into the ONNX files the scanner runs,
each proven before it is final.

- `onnx`: the entry point (`export_onnx`), a CNN through torch to fp32, fp16 or int8;
- `probe_head`: a probe's head as a tiny ONNX graph, proven against the numpy head;
- `probe`: a probe's export (its head, and its backbone's fp16 graph);
- `proof`: the write - check - parity - rename rule every export follows;
- `cli`: the `mai export` Click group, which the `mai` command mounts.

The package imports the core (`mai`) and the training wing's registry and
checkpoints (`mai_train`); the core and the scanner never import it, and in the
training wing only the `mai` command does (`tests/core/test_structure.py`).
"""
