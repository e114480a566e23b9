"""MNIST on disk and in batches: fetch, IDX files and shards (stream), prepare (shards), augment."""
