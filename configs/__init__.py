"""Ready YAML recipes, shipped as package data (no code here)."""
