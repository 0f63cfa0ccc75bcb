"""MAI's torch-free core: what a scan needs (preprocessing, provenance, the model
card reader, the ONNX Runtime session, backbones, VLM inference). The scanner
(`scanner/`) and the training spine (`mai_train/`) build on it; it imports
neither (ARCHITECTURE.md)."""
