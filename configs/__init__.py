"""YAML search spaces and shipped defaults (read through clconv.resources)."""
