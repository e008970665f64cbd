"""Analysis: what the judgement reads from the store, and the statistics it uses."""
