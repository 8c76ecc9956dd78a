"""Data: tokenizer and chat templates, record readers, images, labels, batching, sampling and the
demo data set."""
