"""Latency measurement for ONNX models (ONNX Runtime today; TensorRT and reports in later work)."""
