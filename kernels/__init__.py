"""OpenCL C sources, shipped as package data (read through clconv.resources)."""
