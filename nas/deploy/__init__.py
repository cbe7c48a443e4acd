"""Deployment formats. Take a pruned model; give what runs outside this project: an HF folder
written by its family, model.onnx (nas.deploy.onnx), and the exported bundle with config.yaml and a
README (nas.deploy.bundle)."""
