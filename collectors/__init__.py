"""Built-in collectors (`uniobs.collectors` entry points)."""
