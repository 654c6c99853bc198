"""Field runtime: numpy, OpenCV and ONNX Runtime / TensorRT only. Never imports torch."""
