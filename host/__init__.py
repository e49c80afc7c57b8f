"""fdq.host."""
