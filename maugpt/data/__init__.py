"""MAU-Set: the data files, source builders, synthetic data, shards and the DataModule."""
