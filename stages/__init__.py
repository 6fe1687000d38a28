"""Built-in stage plugins (CPT, Align, SFT, GRPO) and reward plugins."""
