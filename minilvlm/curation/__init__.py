"""Data and model curation: perplexity filtering of training records, model soups."""
