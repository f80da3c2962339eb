"""Small helpers the package itself needs, with no dependency beyond the standard library."""
