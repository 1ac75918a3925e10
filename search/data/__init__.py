"""The data: sources (MedMNIST, folders, images + masks, label tables), conversion and ingest,
the node cache and the split reader (search.data.sources has the registry)."""
