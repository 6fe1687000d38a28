"""Loading models/tokenizers/processors by name or path, tiny presets, vocabulary extension."""
