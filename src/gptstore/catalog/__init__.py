"""The store's domain: names, tables, the repository of models and versions, model cards,
lineage and the importers of base models. Knows nothing of HTTP or training loops."""
