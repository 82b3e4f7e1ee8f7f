"""HTTP serving of embedders and rerankers (``pip install 'retrievals[server]'``); run it with
``python -m retrievals.pipelines.serve``."""
