"""Decompose: the recipe pack (mine, pack) and lossless drafting with it (draft)."""
