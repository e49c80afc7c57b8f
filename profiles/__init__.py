"""fdq.profiles."""
