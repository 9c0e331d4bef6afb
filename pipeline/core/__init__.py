"""Rules and shapes every layer shares; imports nothing else of ours."""
