"""Data: record readers, images, labels, batching, sampling and the demo data set."""
