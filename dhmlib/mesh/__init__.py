"""Triangle meshes: OBJ/PLY files, checks, point–triangle distance, vertex normals."""
