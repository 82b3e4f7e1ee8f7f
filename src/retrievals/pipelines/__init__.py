"""Command-line drivers: ``python -m retrievals.pipelines.<name>`` (also under torchrun)."""
