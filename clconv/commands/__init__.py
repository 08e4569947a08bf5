"""Sub-commands of the ``clconv`` command line (see clconv.cli)."""
