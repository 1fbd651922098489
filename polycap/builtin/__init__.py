"""Built-in plugins: parts of polycap registered through the same hooks as external ones."""
