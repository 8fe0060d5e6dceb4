"""The DeepHandMesh network: model, backbone, snapshots, provenance, the pose fit through the decoder."""
