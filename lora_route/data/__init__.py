"""Data: prompt templates, parallel-corpus loaders, direction sampling and collation with loss masks."""
