"""Data: tokenizer and chat templates (record formats, images and batching come later)."""
